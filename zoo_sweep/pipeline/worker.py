"""The work a worker does for one job, and the warm worker that keeps imports, data and weights loaded.

``Worker`` is a plain class: a notebook can call ``Worker(home).run(job, inputs)`` directly (a typed job,
``pipeline.jobs.Job.from_row`` of a store row); the launcher wraps it
in ``ray.remote`` so it lives on as an actor across jobs (one per GPU, GPU fraction or CPU slot), paying
torch/timm import, data decoding and model loading once rather than per job. Workers never write the
store: they return each job's ``pipeline.jobs.Outcome`` to the driver.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np

from zoo_sweep.pipeline.jobs import JobState, Outcome

DONE, DIVERGED = JobState.DONE, JobState.DIVERGED


def _ray_node() -> str | None:
    """The first 8 hex digits of this process's Ray node id, inside a Ray worker; None elsewhere."""
    import sys

    ray = sys.modules.get("ray")  # a plain Worker (a notebook, tune's trials on one node) never imports Ray
    if ray is None or not ray.is_initialized():
        return None
    try:
        return ray.get_runtime_context().get_node_id()[:8]
    except Exception:
        return None


class Worker:
    def __init__(self, home: str, threads: int | None = None, gpu: bool | None = None,
                 plugins: dict[str, str | None] | None = None):
        """``gpu``: None uses a GPU when the process sees one; False never does. The launcher passes False to
        actors that hold no GPU: Ray leaves CUDA_VISIBLE_DEVICES as it is for them, so on a GPU machine a
        `--gpus 0` launch would otherwise put every CPU actor on the GPU. ``plugins``: the driver's plugin
        modules (``config.methods.plugin_sources``), imported here before any job asks for their methods."""
        if gpu is False:
            os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch first touches CUDA: no context, no memory
        import torch

        from zoo_sweep.config.methods import load_plugins
        from zoo_sweep.paths import Paths

        load_plugins(plugins or {})

        if threads:
            torch.set_num_threads(threads)
        self.paths = Paths(Path(home))
        self.device = "cuda" if gpu is not False and torch.cuda.is_available() else "cpu"
        # the Ray node too: several Ray nodes may share a host name (containers, nodes of one machine)
        node = _ray_node()
        self.name = f"{socket.gethostname()}:{node + ':' if node else ''}{os.getpid()}:{self.device}"
        self._sets: dict = {}
        self._weights: OrderedDict = OrderedDict()  # model ident hash -> state dict, least recently used first

    def info(self) -> str:
        return self.name

    def image_set(self, p, role: str):
        """A job payload's eval or transfer set (``role``), mapped from the cache (decoded on first use)."""
        from zoo_sweep.data.images import load_image_set
        from zoo_sweep.data.sets import SUBSET_SEED

        seed = p.subset_seed if p.subset_seed is not None else SUBSET_SEED
        args = dict(ref=getattr(p, role), image_size=p.image_size, class_map=p.class_map,
                    subset=getattr(p, f"{role}_subset"), subset_seed=seed)
        key = tuple(args.values())
        if key not in self._sets:
            self._sets[key] = load_image_set(**args, cache_dir=self.paths.cache)
        return self._sets[key]

    def model(self, entry):
        """A fresh model instance (``entry``: a ModelEntry); weights come from a small in-memory cache after
        the first load."""
        import copy

        from zoo_sweep.ids import content_id
        from zoo_sweep.zoo.models import create

        key = content_id(entry.ident)  # not the name: a model whose weights or config changed is another model
        if key in self._weights:
            self._weights.move_to_end(key)
            model = create(entry, pretrained=False)
            model.load_state_dict(self._weights[key])
        else:
            model = create(entry)
            self._weights[key] = copy.deepcopy(model.state_dict())
            while len(self._weights) > 8:
                self._weights.popitem(last=False)
        return model.eval()

    def logit_caches(self, streams: dict[str, str]) -> dict:
        """Role ("teacher" / "s0") -> LogitCache for the stream keys the launcher chose (logit_cache.py)."""
        from zoo_sweep.transfer.logit_store import LogitCache, device_kind

        return {role: LogitCache(self.paths.logits / key / device_kind(self.device)) for role, key in streams.items()}

    def run(self, job, inputs: dict | None = None) -> Outcome:
        """Run one job (a ``pipeline.jobs.Job``) with the launcher's per-job ``inputs``; returns its outcome."""
        from zoo_sweep.pipeline.joblog import JobLog

        t0 = time.time()
        self.log = JobLog()  # one job at a time per worker: its lines go back with its outcome
        self.log(f"started on {self.name}")
        out: Outcome = getattr(self, f"_{job.kind}")(job, inputs or {})
        seconds = time.time() - t0
        self.log(f"{out.state} in {seconds:.1f} s" + (f": {out.error}" if out.error else ""))
        return out.but(worker=self.name, seconds=seconds, log=self.log.lines)

    def _noop(self, job, _inputs: dict) -> Outcome:
        """Does nothing (optionally sleeps): measures the scheduler's own per-job cost (bench/scheduler.py)."""
        if job.payload.sleep:
            time.sleep(job.payload.sleep)
        return Outcome(DONE)

    def _compare(self, job, inputs: dict) -> Outcome:
        """All pairs of a compare job on this worker's device (the launcher sends the stacked records once)."""
        return compare_pairs(job.payload.models, inputs, self.device, self.paths.cache)

    def _predict(self, job, inputs: dict) -> Outcome:
        from zoo_sweep.science.records import BATCH_MEMO, accuracy, predict
        from zoo_sweep.zoo.models import data_config

        p = job.payload
        images = self.image_set(p, "eval")
        model = self.model(p.model)
        if model.num_classes != images.num_classes:
            raise ValueError(f"{p.model.name} has {model.num_classes} outputs but the eval set "
                             f"has {images.num_classes} classes")
        rec = predict(model, images, data_config(model), inputs.get("batch_size", "auto"), p.topk, self.device,
                      memo=self.paths.cache / BATCH_MEMO, name=p.model.name)
        return Outcome(DONE, record=rec, accuracy=accuracy(rec, images.labels.numpy()))

    def _transfer(self, job, inputs: dict) -> Outcome:
        from zoo_sweep.transfer.train import Diverged, TransferParams

        p = job.payload
        ev, tr = self.image_set(p, "eval"), self.image_set(p, "transfer")
        # the job id names the checkpoint folder across retries and launches
        ckpt = self.paths.checkpoints / job.id
        hp = TransferParams.from_dict(p.hp)
        try:
            if p.multi:
                return self._multi(p, inputs, hp, tr, ev, ckpt)
            return self._single(p, inputs, hp, tr, ev, ckpt)
        except Diverged as e:
            return Outcome(DIVERGED, error=str(e))

    def measure_start(self, job, inputs: dict, warmup: int) -> None:
        """Set up a single-teacher transfer ``job`` for a throughput measurement and run ``warmup`` steps (the
        compile, the allocator, the first kernels); ``measure_rate`` then times it. Nothing is stored."""
        from zoo_sweep.transfer.train import RunOptions, TransferParams, TransferRun, time_steps

        p = job.payload
        tj = self._transfer_job(p, inputs, TransferParams.from_dict(p.hp), self.image_set(p, "transfer"),
                                self.image_set(p, "eval"))
        self._measured = TransferRun(tj, RunOptions(self.device, **speed_options(inputs)))
        time_steps(self._measured, warmup)

    def measure_rate(self, seconds: float) -> float:
        """Images/s of the job ``measure_start`` set up, training for about ``seconds``."""
        from zoo_sweep.transfer.train import time_steps

        images, took = time_steps(self._measured, seconds=seconds)
        self._measured = None
        return images / took

    def _epoch_logger(self, epochs: int):
        """``on_epoch`` for the training loop: a line per epoch in the job's log; the first call also says which
        epochs a resumed job read back from its checkpoint."""
        from zoo_sweep.pipeline.joblog import epoch_line

        last, first = time.time(), True

        def on_epoch(epoch: int, rows: list[dict]) -> None:
            nonlocal last, first
            if first and len(rows) > 1:
                self.log(f"resumed from its checkpoint after epoch {rows[-2]['epoch']}")
            first = False
            now = time.time()
            self.log(epoch_line(rows[-1], epochs, now - last))
            last = now

        return on_epoch

    @contextlib.contextmanager
    def _speed_log(self, inputs: dict):
        """Says in the job's log which speed options it ran with, and what compiling cost it: a worker
        compiles each architecture once, so the first job of one pays for every later one."""
        from zoo_sweep.transfer.train import COMPILE_SECONDS, compiled_graphs

        o = speed_options(inputs)
        if o["compile"] or o["fused"]:
            self.log("speed options: " + ", ".join(k for k in ("compile", "fused") if o[k]))
        graphs, seconds = compiled_graphs() if o["compile"] else 0, COMPILE_SECONDS[0]
        try:
            yield
        finally:
            if o["compile"] and compiled_graphs() > graphs:
                self.log(f"torch.compile: {compiled_graphs() - graphs} new graph(s); the steps that compiled "
                         f"took {COMPILE_SECONDS[0] - seconds:.1f} s")

    def _transfer_job(self, p, inputs: dict, hp, tr, ev):
        from zoo_sweep.transfer.train import TransferJob
        from zoo_sweep.zoo.models import data_config

        student, teacher = self.model(p.student), self.model(p.teacher)
        return TransferJob(student, teacher, p.method, hp, p.seed, tr, ev, data_config(student), data_config(teacher),
                           np.asarray(inputs["s0_correct"]), np.asarray(inputs["teacher_correct"]))

    def _single(self, p, inputs: dict, hp, tr, ev, ckpt) -> Outcome:
        from zoo_sweep.transfer.train import RunOptions, run_transfer

        job = self._transfer_job(p, inputs, hp, tr, ev)
        caches = self.logit_caches(inputs.get("streams") or {})
        with self._speed_log(inputs):
            rows = run_transfer(job, RunOptions(self.device, ckpt_dir=ckpt, teacher_cache=caches.get("teacher"),
                                                s0_cache=caches.get("s0"), on_epoch=self._epoch_logger(hp.epochs),
                                                **speed_options(inputs)))
        return Outcome(DONE, rows=rows, logits_read=sum(c.reads for c in caches.values()))

    def _multi(self, p, inputs: dict, hp, tr, ev, ckpt) -> Outcome:
        """Every teacher's correctness comes from its prediction record (the launcher sends them); a caller
        without records (a notebook) gets one evaluation pass per teacher instead."""
        from zoo_sweep.science.records import predict
        from zoo_sweep.transfer.multi import MultiJob, run_multi
        from zoo_sweep.transfer.train import RunOptions
        from zoo_sweep.zoo.models import data_config

        student = self.model(p.student)
        teachers = [self.model(e) for e in p.teachers]
        cfgs = [data_config(t) for t in teachers]
        correct = [np.asarray(c) for c in inputs.get("teachers_correct") or
                   [predict(t, ev, c, topk=1, device=self.device)["pred"] == ev.labels.numpy()
                    for t, c in zip(teachers, cfgs)]]
        multi = MultiJob(student, teachers, [c.mean() for c in correct], hp, p.seed, tr, ev, data_config(student),
                         cfgs, np.asarray(inputs["s0_correct"]), correct, method=p.multi_method)
        with self._speed_log(inputs):
            rows = run_multi(p.method, multi, RunOptions(self.device, ckpt_dir=ckpt, **speed_options(inputs),
                                                         on_epoch=self._epoch_logger(hp.epochs)))
        # the row's own teacher name wins over the launcher's (the payload's first teacher)
        name = "+".join(p.teacher_names)
        return Outcome(DONE, rows=[{**r, "teacher": name} for r in rows])


def speed_options(inputs: dict) -> dict[str, bool]:
    """The spec's [run] compile and fused_optimizer, as the launcher sends them with each transfer job
    (``RunSpec.speed``); a caller that sends neither (a notebook) gets both off."""
    return {"compile": bool(inputs.get("compile")), "fused": bool(inputs.get("fused"))}


def compare_pairs(models: list[str], inputs: dict, device: str, cache_dir) -> Outcome:
    """The compare job: every ordered pair's metrics from the stacked records (``inputs``: preds, pmax,
    labels, num_classes; optional kernel). The launcher runs it in the driver, or on a GPU worker when the
    launch has GPUs: the same code, on CPU or CUDA tensors, with identical results."""
    from zoo_sweep.science.complementary import compare_kernel, pairs_frame

    kern = compare_kernel(inputs.get("kernel"), device, cache_dir)
    df = pairs_frame(models, inputs["preds"], inputs["labels"], inputs["pmax"], inputs["num_classes"],
                     kernel=kern, device=device)
    return Outcome(DONE, pairs=df, kernel=kern.describe())


def build_zoo_model(recipe, cache_dir: str, image_size: int):
    """Train one embedded-zoo model (runs as a Ray task) with the portable arithmetic, on one core: the weights
    any x86-64 processor builds from this recipe. Returns (state_dict, info) to the driver."""
    from zoo_sweep.zoo.digits import train_portably

    return train_portably(recipe, cache_dir, image_size)
