"""Which device a launch's workers use. An actor that holds no GPU share must stay on the CPU even on a machine
with a GPU: Ray leaves CUDA_VISIBLE_DEVICES as it is for such actors, so `launch --gpus 0` on a GPU machine
would otherwise run every CPU actor's jobs on the GPU, unasked and unscheduled.

There is no GPU here: ``torch.cuda.is_available`` is replaced to stand for a machine that has one."""

import os

import torch

from zoo_sweep.paths import Paths
from zoo_sweep.pipeline.pool import ActorShape, worker_args
from zoo_sweep.pipeline.worker import Worker


def test_an_actor_without_a_gpu_share_stays_on_the_cpu_of_a_gpu_machine(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    paths, threads = Paths(tmp_path), torch.get_num_threads()
    try:
        on_gpu = Worker(*worker_args(ActorShape(num_gpus=0.5, num_cpus=1, count=2), paths))
        assert on_gpu.device == "cuda" and on_gpu.name.endswith(":cuda")
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "0"
        on_cpu = Worker(*worker_args(ActorShape(num_gpus=0, num_cpus=1, count=16), paths))
        # the job's device, the name jobs.worker keeps, and CUDA hidden before torch could open a context
        assert on_cpu.device == "cpu" and on_cpu.name.endswith(":cpu")
        assert os.environ["CUDA_VISIBLE_DEVICES"] == ""
        assert Worker(str(tmp_path)).device == "cuda"  # a notebook's own Worker: the GPU when it sees one
    finally:
        torch.set_num_threads(threads)
