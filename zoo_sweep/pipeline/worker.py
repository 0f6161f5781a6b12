"""The work a worker does for one job, and the warm worker that keeps imports, data and weights loaded.

``Worker`` is a plain class: a notebook can call ``Worker(home).run(job)`` directly; the launcher wraps it
in ``ray.remote`` so it lives on as an actor across jobs (one per GPU, GPU fraction or CPU slot), paying
torch/timm import, data decoding and model loading once rather than per job. Workers never write the
store: they return results to the driver.
"""

from __future__ import annotations

import os
import socket
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np


class Worker:
    def __init__(self, home: str, threads: int | None = None):
        import torch

        from zoo_sweep.paths import Paths

        if threads:
            torch.set_num_threads(threads)
        self.paths = Paths(Path(home))
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.name = f"{socket.gethostname()}:{os.getpid()}:{self.device}"
        self._sets: dict = {}
        self._weights: OrderedDict = OrderedDict()  # model name -> state dict, least recently used first

    def info(self) -> str:
        return self.name

    def image_set(self, spec: dict, role: str):
        """A job payload's eval or transfer set (``role``), mapped from the cache (decoded on first use)."""
        from zoo_sweep.data.images import load_image_set
        from zoo_sweep.data.sets import SUBSET_SEED

        args = {"ref": spec[role], "image_size": spec["image_size"], "class_map": spec.get("class_map"),
                "subset": spec.get(f"{role}_subset"), "subset_seed": spec.get("subset_seed", SUBSET_SEED)}
        key = tuple(args.values())
        if key not in self._sets:
            self._sets[key] = load_image_set(**args, cache_dir=self.paths.cache)
        return self._sets[key]

    def model(self, entry_dict: dict):
        """A fresh model instance; weights come from a small in-memory cache after the first load."""
        import copy

        from zoo_sweep.pipeline.plan import entry_from_dict
        from zoo_sweep.zoo.models import create

        entry = entry_from_dict(entry_dict)
        if entry.name in self._weights:
            self._weights.move_to_end(entry.name)
            model = create(entry, pretrained=False)
            model.load_state_dict(self._weights[entry.name])
        else:
            model = create(entry)
            self._weights[entry.name] = copy.deepcopy(model.state_dict())
            while len(self._weights) > 8:
                self._weights.popitem(last=False)
        return model.eval()

    def logit_caches(self, streams: dict[str, str]) -> dict:
        """Role ("teacher" / "s0") -> LogitCache for the stream keys the launcher chose (logit_cache.py)."""
        from zoo_sweep.transfer.logit_store import LogitCache, device_kind

        return {role: LogitCache(self.paths.logits / key / device_kind(self.device)) for role, key in streams.items()}

    def run(self, job: dict) -> dict:
        t0 = time.time()
        out = getattr(self, f"_{job['kind']}")(job["spec"], job.get("inputs") or {})
        out.update(worker=self.name, seconds=time.time() - t0)
        return out

    def _noop(self, spec: dict, _inputs: dict) -> dict:
        """Does nothing (optionally sleeps): measures the scheduler's own per-job cost (bench/scheduler.py)."""
        if spec.get("sleep"):
            time.sleep(spec["sleep"])
        return {"state": "done"}

    def _predict(self, spec: dict, inputs: dict) -> dict:
        from zoo_sweep.science.records import BATCH_MEMO, accuracy, predict
        from zoo_sweep.zoo.models import data_config

        images = self.image_set(spec, "eval")
        model = self.model(spec["model"])
        if model.num_classes != images.num_classes:
            raise ValueError(f"{spec['model']['name']} has {model.num_classes} outputs but the eval set "
                             f"has {images.num_classes} classes")
        rec = predict(model, images, data_config(model), inputs.get("batch_size", "auto"), spec["topk"], self.device,
                      memo=self.paths.cache / BATCH_MEMO, name=spec["model"]["name"])
        return {"state": "done", "record": rec, "accuracy": accuracy(rec, images.labels.numpy())}

    def _transfer(self, spec: dict, inputs: dict) -> dict:
        from zoo_sweep.transfer.train import Diverged, TransferParams, run_transfer
        from zoo_sweep.zoo.models import data_config

        ev, tr = self.image_set(spec, "eval"), self.image_set(spec, "transfer")
        from zoo_sweep.ids import content_id
        from zoo_sweep.science.records import predict
        from zoo_sweep.transfer.multi import run_multi

        # the payload determines the job, so its hash names the checkpoint folder across retries and launches
        ckpt = self.paths.checkpoints / content_id(spec)
        hp = TransferParams.from_dict(spec["hp"])
        student = self.model(spec["student"])
        s0_correct = np.asarray(inputs["s0_correct"])
        try:
            if "teachers" not in spec:
                teacher = self.model(spec["teacher"])
                caches = self.logit_caches(inputs.get("streams") or {})
                rows = run_transfer(student, teacher, spec["method"], hp, spec["seed"], tr, ev, data_config(student),
                                    data_config(teacher), s0_correct, np.asarray(inputs["teacher_correct"]),
                                    self.device, ckpt_dir=ckpt, teacher_cache=caches.get("teacher"),
                                    s0_cache=caches.get("s0"))
                return {"state": "done", "rows": rows, "logits_read": sum(c.reads for c in caches.values())}
            # multi-teacher: every teacher's correctness comes from its prediction record (the launcher sends
            # them); a caller without records (a notebook) gets one evaluation pass per teacher instead
            teachers = [self.model(e) for e in spec["teachers"]]
            cfgs = [data_config(t) for t in teachers]
            correct = [np.asarray(c) for c in inputs.get("teachers_correct") or
                       [predict(t, ev, c, topk=1, device=self.device)["pred"] == ev.labels.numpy()
                        for t, c in zip(teachers, cfgs)]]
            rows = run_multi(spec["method"], student, teachers, [c.mean() for c in correct], hp, spec["seed"], tr, ev,
                             data_config(student), cfgs, s0_correct, correct, self.device,
                             method=spec["multi_method"], ckpt_dir=ckpt)
        except Diverged as e:
            return {"state": "diverged", "error": str(e)}
        # the row's own teacher name wins over the launcher's (the payload's first teacher)
        name = "+".join(e["name"] for e in spec["teachers"])
        return {"state": "done", "rows": [{**r, "teacher": name} for r in rows]}


def build_zoo_model(recipe, cache_dir: str, image_size: int, threads: int = 1):
    """Train one embedded-zoo model (runs as a Ray task); returns (state_dict, info) to the driver."""
    import torch

    from zoo_sweep.zoo.digits import train_recipe

    torch.set_num_threads(threads)
    return train_recipe(recipe, cache_dir, image_size)
