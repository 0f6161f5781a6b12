"""The transfer training loop: one student learns from one teacher (or a stack of teachers) with one method.

The student trains; the teacher(s) and the frozen copy of the student (s0) stay in eval mode (CD and CRD may
keep the teacher in train mode: ``teacher_bn``). Each model sees the same (augmented) batch: through its own
data config (``inputs = "own"``), or at the student's resolution and crop with only its own mean/std
(``inputs = "student"``, the reference code). After every epoch the student (or the weights the method
evaluates, e.g. MCL's slow weights) is evaluated on the eval set, the method's ``after_eval`` hook runs (MCL with
``mcl_reset = "reference"`` sets the student to the slow weights), the transfer metrics are computed against
s0's and the teacher's records, and a checkpoint is written; a rerun with the same checkpoint folder continues
from the last finished epoch and ends with the same metrics.

On CUDA the forward passes run in bf16 autocast with channels-last tensors; on the CPU everything stays in
float32 (CPU bf16 is slow and changes results). ``RunOptions.compile`` runs the forward passes (and so the
student's backward) through ``torch.compile``, ``fused`` steps SGD with one fused kernel: both change the
arithmetic's order only, and are held to the GPU check's tolerance against the plain run
(tests/integration/test_transfer_speed.py).

Batches and their augmentation come from a generator seeded by the seed alone and used for nothing else, so
every job with the same transfer set, seed, batch size, augmentation and inputs feeds its models the same
stream; that is what lets a teacher's (or s0's) logits be computed once per sweep and read back
(``teacher_cache`` / ``s0_cache``, see logit_store.py).

A run is a ``TransferJob`` (what is learnt from what, and measured against what) and ``RunOptions`` (where and
how it runs); ``TransferRun`` holds the run's state and does it in stages: set-up, resume, one epoch at a time
(batches, frozen logits, the method's loss), evaluation and checkpoint.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zoo_sweep.config.params import (  # TransferParams: callers also import it from here
    TransferParams,
    used_rows,
)
from zoo_sweep.data.images import ImageSet, model_input
from zoo_sweep.errors import UserError
from zoo_sweep.ids import content_id
from zoo_sweep.paths import write_atomic
from zoo_sweep.science.records import predict
from zoo_sweep.transfer.augment import augment_batch
from zoo_sweep.transfer.logit_store import cacheable_roles
from zoo_sweep.transfer.methods import METHODS, Extras
from zoo_sweep.transfer.metrics import transfer_metrics


class Diverged(Exception):
    """The loss stopped being finite: the job ends as 'diverged', not as a result."""


@dataclass
class TransferJob:
    """One transfer: ``teacher`` / ``teacher_cfg`` are one model and its data config, or lists of them for the
    multi-teacher methods (their logits reach the loss as a K x B x C stack); ``s0_correct`` and
    ``teacher_correct`` are per-sample correctness on the eval set, before transfer."""
    student: torch.nn.Module
    teacher: Any
    method: str
    hp: TransferParams
    seed: int
    transfer_set: ImageSet
    eval_set: ImageSet
    student_cfg: dict
    teacher_cfg: Any
    s0_correct: np.ndarray
    teacher_correct: np.ndarray


@dataclass
class RunOptions:
    """Where and how a run goes. ``ckpt_dir``: where the per-epoch checkpoint lives; an existing one is resumed
    and the folder is removed when the run ends (done or diverged). ``on_epoch(epoch, rows)`` is called after
    each epoch's checkpoint. ``epoch_fraction`` < 1 trains on that share of each epoch's batches
    (compute-matched sequential stages). ``teacher_cache`` / ``s0_cache``: ``LogitCache`` objects
    (single-teacher, logits-only methods): an epoch whose logits are stored is read back instead of running
    that model, one that is not is computed and stored."""
    device: str = "cpu"
    eval_batch_size: int = 256
    ckpt_dir: str | Path | None = None
    on_epoch: Callable[[int, list[dict]], None] | None = None
    epoch_fraction: float = 1.0
    teacher_cache: Any = None
    s0_cache: Any = None
    compile: bool = False
    fused: bool = False


def _checkpoint_key(method: str, hp: TransferParams, seed: int, n_teachers: int, epoch_fraction: float) -> str:
    # a checkpoint written for other settings is never resumed (the folder normally is per job anyway)
    return content_id({"method": method, "hp": asdict(hp), "seed": seed, "teachers": n_teachers,
                       "fraction": epoch_fraction})


def save_checkpoint(obj, path: Path) -> None:
    """A kill mid-write leaves the previous checkpoint intact."""
    write_atomic(path, lambda tmp: torch.save(obj, tmp))


def load_checkpoint(path: Path, device="cpu") -> dict | None:
    """A checkpoint of ours (tensors, numbers, strings and plain containers), or None when the file holds
    anything else: it is read without unpickling objects, since its path under the results folder is
    predictable and a file placed there must not run code. A run then starts again from epoch 1."""
    import pickle

    try:
        c = torch.load(path, map_location=device, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, TypeError, AttributeError):
        return None
    return c if isinstance(c, dict) else None


def run_transfer(job: TransferJob, opts: RunOptions | None = None, **options) -> list[dict]:
    """Train ``job.student`` in place; returns one metrics dict per epoch (docs/methods.md, transfer metrics).
    At the end the student holds the weights that were evaluated (MCL: the slow weights). ``options``: fields
    of ``RunOptions`` that override ``opts``."""
    return TransferRun(job, dataclasses.replace(opts or RunOptions(), **options)).run()


def _as_list(x) -> list:
    return list(x) if isinstance(x, (list, tuple)) else [x]


@dataclass
class _Frozen:
    """A frozen role's logits this epoch: read back from the cache, or a list collecting them to store."""
    read: torch.Tensor | None
    new: list | None


class TransferRun:
    """The state of one run and its stages; ``run()`` does them all."""

    def __init__(self, job: TransferJob, opts: RunOptions):
        self.job, self.opts, self.hp = job, opts, job.hp
        self.m = METHODS[job.method]
        self.teachers, self.t_cfgs = _as_list(job.teacher), _as_list(job.teacher_cfg)
        self._check()
        self.device = opts.device
        self.cuda = str(opts.device).startswith("cuda")
        self.fmt = torch.channels_last if self.cuda else torch.contiguous_format
        self.stored = torch.bfloat16 if self.cuda else torch.float32  # what forward() gives: caching is lossless
        torch.manual_seed(job.seed)
        self._models()
        self._optimizer()
        self._data()
        self.rows: list[dict] = []
        self.start, self.step = 1, 0

    # ------------------------------------------------------------------ set-up
    def _check(self) -> None:
        j, o = self.job, self.opts
        if self.m.multi != isinstance(j.teacher, (list, tuple)):
            raise ValueError(f"method {j.method!r} {'needs a list of' if self.m.multi else 'takes one'} teacher(s)")
        roles = cacheable_roles(j.method)
        if (o.teacher_cache is not None and "teacher" not in roles) or (o.s0_cache is not None and "s0" not in roles):
            raise ValueError(f"method {j.method!r} cannot read cached logits for that role")

    def _models(self) -> None:
        """s0 (copied where the student is: moved when it first runs), frozen teachers, the method's state."""
        j = self.job
        self.s0 = copy.deepcopy(j.student).eval() if self.m.needs_s0 else None
        j.student.to(self.device, memory_format=self.fmt)
        for mod in self.frozen:
            mod.eval()
            for q in mod.parameters():
                q.requires_grad_(False)
        if self.m.needs_features and self.hp.teacher_bn == "train":
            for t in self.teachers:
                t.train()  # the reference leaves the teacher backbone in train mode: BatchNorm on batch statistics
        info = {"n_train": len(j.transfer_set), "device": self.device, "seed": j.seed, "labels": j.transfer_set.labels}
        self.state = self.m.make_state(j.student, self.teachers[0], self.hp, info) if self.m.make_state else None

    @property
    def frozen(self) -> list[torch.nn.Module]:
        return self.teachers + ([self.s0] if self.s0 is not None else [])

    def _optimizer(self) -> None:
        params = list(self.job.student.parameters()) + (self.state.parameters() if self.state else [])
        self.opt = torch.optim.SGD(params, lr=self.hp.lr_of(self.m.lr_param), momentum=self.hp.momentum,
                                   weight_decay=self.hp.weight_decay, fused=self.opts.fused or None)
        self.gen = torch.Generator().manual_seed(self.job.seed)  # the data stream: order and augmentation only
        self.method_gen = torch.Generator().manual_seed(self.job.seed + 1)  # the methods' own draws (CRD negatives)

    def _data(self) -> None:
        j, hp = self.job, self.hp
        self.n = len(j.transfer_set)
        self.full = used_rows(self.n, hp.batch_size)
        self.per_epoch = max(1, round(-(-self.full // hp.batch_size) * self.opts.epoch_fraction))
        self.rows_per_epoch = min(self.per_epoch * hp.batch_size, self.full)
        self.images, self.train_labels = j.transfer_set.images, j.transfer_set.labels.to(self.device)
        if self.cuda:
            # frozen models not yet on the GPU may still move there (a cache miss): count them as if they had
            later = sum(q.nbytes for mod in self.frozen for q in mod.parameters() if not q.is_cuda)
            if self.images.nbytes < 0.2 * (torch.cuda.mem_get_info(self.device)[0] - later):
                self.images = self.images.to(self.device)  # the whole uint8 set fits: batches gathered on the GPU

    # ------------------------------------------------------------------ checkpoints
    @property
    def ckpt(self) -> Path | None:
        return Path(self.opts.ckpt_dir) / "last.pt" if self.opts.ckpt_dir is not None else None

    @property
    def key(self) -> str:
        return _checkpoint_key(self.job.method, self.hp, self.job.seed, len(self.teachers), self.opts.epoch_fraction)

    def resume(self) -> None:
        if self.ckpt is None or not self.ckpt.is_file():
            return
        c = load_checkpoint(self.ckpt, self.device)
        if c is None or c.get("key") != self.key:
            return
        self.job.student.load_state_dict(c["student"])
        self.opt.load_state_dict(c["opt"])
        self.gen.set_state(c["gen"])
        if "method_gen" in c:
            self.method_gen.set_state(c["method_gen"])
        torch.set_rng_state(c["rng"])
        if self.cuda and c.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(c["cuda_rng"])
        if self.state is not None:
            self.state.load_state_dict(c["method"])
        self.rows, self.start, self.step = c["rows"], c["epoch"] + 1, c["step"]

    def save(self, epoch: int) -> None:
        if self.ckpt is None:
            return
        save_checkpoint({"key": self.key, "epoch": epoch, "step": self.step, "rows": self.rows,
                         "student": self.job.student.state_dict(), "opt": self.opt.state_dict(),
                         "gen": self.gen.get_state(), "method_gen": self.method_gen.get_state(),
                         "rng": torch.get_rng_state(), "cuda_rng": torch.cuda.get_rng_state() if self.cuda else None,
                         "method": self.state.state_dict() if self.state is not None else {}}, self.ckpt)

    # ------------------------------------------------------------------ inputs and forward passes
    def batch_source(self, b: torch.Tensor, b_dev: torch.Tensor) -> torch.Tensor:
        if self.images.is_cuda:
            return self.images[b_dev]
        if self.cuda:  # one pinned, asynchronous copy per batch; every model's transform then runs on the GPU
            return self.images[b].pin_memory().to(self.device, non_blocking=True)
        return self.images[b]

    def batch_images(self, b: torch.Tensor, b_dev: torch.Tensor) -> torch.Tensor:
        """The uint8 batch every model sees: at the student's geometry first (inputs = "student"), then
        augmented from the data stream."""
        x = self.batch_source(b, b_dev)
        if self.hp.inputs == "student":
            x = student_geometry(x, self.job.student_cfg, self.device)
        return augment_batch(self.hp.augment, x, self.gen)

    def forward(self, model, x, cfg, features: bool):
        inp = model_input(x, input_cfg(self.hp.inputs, cfg, x), self.device)
        if self.cuda:
            inp = inp.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.bfloat16) if self.cuda else contextlib.nullcontext():
            return forward_pass(features, self.opts.compile)(model, inp)

    def frozen_forward(self, model, x, cfg, features: bool):
        try:
            return self.forward(model, x, cfg, features)
        except (AssertionError, RuntimeError) as e:
            if self.hp.inputs != "student":
                raise
            raise UserError(f"a frozen model cannot take the student's {tuple(x.shape[-2:])} inputs "
                            f'([transfer] inputs = "student"): use inputs = "own" ({e})') from None

    def cached_or_run(self, cache, epoch: int, models):
        """(logits read back, list collecting this epoch's logits to store): at most one is not None. A frozen
        model moves to the device the first time an epoch computes it: a job that reads every epoch from
        the cache never holds it in device memory."""
        z = cache.load(epoch, self.rows_per_epoch, self.device) if cache is not None else None
        if z is None:
            for mod in models:
                mod.to(self.device, memory_format=self.fmt)  # a no-op once it is there
        return (z, None) if z is not None else (None, None if cache is None else [])

    # ------------------------------------------------------------------ one epoch
    def train_epoch(self, epoch: int) -> tuple[torch.Tensor, Any]:
        """One pass over the epoch's batches: (per-step losses, sum of teacher shares)."""
        self.job.student.train()
        if self.state is not None:
            self.state.train(True)
        losses, share_sum = [], 0.0
        teacher = _Frozen(*self.cached_or_run(self.opts.teacher_cache, epoch, self.teachers))
        s0 = _Frozen(*self.cached_or_run(self.opts.s0_cache, epoch, [self.s0] if self.s0 is not None else []))
        order = torch.randperm(self.n, generator=self.gen)[:self.full]
        # indices move to the device once per epoch: a copy per batch would wait for the GPU each time
        batches = zip(order.split(self.hp.batch_size)[:self.per_epoch], order.to(self.device).split(self.hp.batch_size))
        at = 0  # row of this batch in the epoch's cached logits
        for i, (b, b_dev) in enumerate(batches):
            span = slice(at, at + len(b))
            at += len(b)
            loss, share = self.train_step(b, b_dev, i, span, teacher, s0)
            losses.append(loss)
            share_sum = share_sum + (share.detach() if torch.is_tensor(share) else share)
        for cache, frozen in ((self.opts.teacher_cache, teacher), (self.opts.s0_cache, s0)):
            if frozen.new:
                cache.save(epoch, torch.cat(frozen.new))
        return torch.stack(losses), share_sum

    def train_step(self, b, b_dev, i: int, span: slice, teacher: _Frozen, s0: _Frozen):
        with compile_clock(self.opts.compile):
            return self._step(b, b_dev, i, span, teacher, s0)

    def _step(self, b, b_dev, i: int, span: slice, teacher: _Frozen, s0: _Frozen):
        x = self.batch_images(b, b_dev)
        y = self.train_labels[b_dev]
        z_t, f_t, z_s0 = self.frozen_logits(x, span, teacher, s0)
        z_s, f_s = self.forward(self.job.student, x, self.job.student_cfg, self.m.needs_features)
        ex = Extras(f_s=f_s, f_t=f_t, idx=b, state=self.state, gen=self.method_gen)
        loss, share = self.m.loss(z_s, z_t, z_s0, y, self.hp, ex)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.step += 1
        if self.state is not None:
            self.state.after_step(self.job.student, self.step, i)
        return loss.detach(), share

    @torch.no_grad()
    def frozen_logits(self, x, span: slice, teacher: _Frozen, s0: _Frozen):
        """(teacher logits or the K x B x C stack, teacher features, s0 logits): read back or computed (and
        collected for the cache)."""
        if teacher.read is not None:
            outs = [(teacher.read[span].float(), None)]
        else:
            outs = [self.frozen_forward(t, x, c, self.m.needs_features) for t, c in zip(self.teachers, self.t_cfgs)]
            if teacher.new is not None:
                teacher.new.append(outs[0][0].to(self.stored))
        z_t = torch.stack([o[0] for o in outs]) if self.m.multi else outs[0][0]
        if s0.read is not None:
            z_s0 = s0.read[span].float()
        else:
            z_s0 = self.forward(self.s0, x, self.job.student_cfg, False)[0] if self.s0 is not None else None
            if s0.new is not None:
                s0.new.append(z_s0.to(self.stored))
        return z_t, outs[0][1], z_s0

    def evaluate(self, epoch: int, losses: torch.Tensor, share_sum) -> dict:
        j = self.job
        evaluated = self.state.eval_model(j.student) if self.state is not None else j.student
        rec = predict(evaluated, j.eval_set, j.student_cfg, batch_size=self.opts.eval_batch_size, topk=1,
                      device=self.device)
        if self.state is not None:
            self.state.after_eval(j.student)  # before the checkpoint: a resumed run goes on from the same weights
        labels = j.eval_set.labels.numpy()
        row = transfer_metrics(j.s0_correct, rec["pred"] == labels, j.teacher_correct,
                               labels, j.eval_set.num_classes)
        row = {k: v.item() if isinstance(v, np.generic) else v for k, v in row.items()}  # checkpoints load safely
        row.update(epoch=epoch, train_loss=float(losses.mean()), teacher_share=float(share_sum) / len(losses) * 100)
        return row

    # ------------------------------------------------------------------ the whole run
    def run(self) -> list[dict]:
        self.resume()
        try:
            for epoch in range(self.start, self.hp.epochs + 1):
                losses, share_sum = self.train_epoch(epoch)
                if not torch.isfinite(losses).all():  # checked once per epoch: per step it would stall the GPU
                    raise Diverged(f"loss became {losses[~torch.isfinite(losses)][0].item()} in epoch {epoch}")
                self.rows.append(self.evaluate(epoch, losses, share_sum))
                self.save(epoch)
                if self.opts.on_epoch is not None:
                    self.opts.on_epoch(epoch, self.rows)
        except Diverged:
            self._remove_checkpoint()  # a diverged job is final; resuming would repeat it
            raise
        self.finish()
        return self.rows

    def finish(self) -> None:
        student = self.job.student
        if self.state is not None and self.state.eval_model(student) is not student:
            student.load_state_dict(self.state.eval_model(student).state_dict())  # keep what was evaluated
        student.to(memory_format=torch.contiguous_format)
        self._remove_checkpoint()

    def _remove_checkpoint(self) -> None:
        if self.ckpt is not None:
            shutil.rmtree(self.ckpt.parent, ignore_errors=True)


def time_steps(run: TransferRun, steps: int = 0, seconds: float = 0.0) -> tuple[int, float]:
    """(images, seconds) of ``steps`` training steps of ``run``, or of as many as start within ``seconds``, over
    its first epoch's batches (from the first again when they run out); frozen models run, nothing is
    evaluated, checked or stored. Measures a job's throughput (pipeline/share.py)."""
    run.job.student.train()
    teacher = _Frozen(*run.cached_or_run(None, 1, run.teachers))
    s0 = _Frozen(*run.cached_or_run(None, 1, [run.s0] if run.s0 is not None else []))
    order = torch.randperm(run.n, generator=run.gen)[:run.full].split(run.hp.batch_size)[:run.per_epoch]
    on_device = [b.to(run.device) for b in order]
    sync = torch.cuda.synchronize if run.cuda else (lambda: None)
    sync()
    t0, images, i = time.perf_counter(), 0, 0
    while i < steps or (seconds and time.perf_counter() - t0 < seconds):
        b = order[i % len(order)]
        run.train_step(b, on_device[i % len(order)], i, slice(0, 0), teacher, s0)
        images, i = images + len(b), i + 1
    sync()
    return images, time.perf_counter() - t0


def input_cfg(inputs: str, cfg: dict, x: torch.Tensor) -> dict:
    """The data config a model's input is made with: its own (inputs = "own"), or (inputs = "student", the batch
    already at the student's size) only its mean and std."""
    if inputs == "own":
        return cfg
    return {"input_size": (3, x.shape[-2], x.shape[-1]), "crop_pct": 1.0, "interpolation": "bilinear",
            "mean": cfg["mean"], "std": cfg["std"]}


def student_geometry(x: torch.Tensor, student_cfg: dict, device) -> torch.Tensor:
    """A uint8 batch resized and centre-cropped as the student's data config says, still uint8 (as the
    reference's decoder hands every model the student's crop)."""
    plain = {**student_cfg, "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}
    return model_input(x, plain, device).mul_(255.0).round_().clamp_(0, 255).to(torch.uint8)


def _logits(model, inp):
    return model(inp).float(), None


def _logits_and_features(model, inp):
    f = model.forward_features(inp)
    return model.forward_head(f).float(), model.forward_head(f, pre_logits=True).float()


_COMPILED: dict[bool, Callable] = {}
COMPILE_SECONDS = [0.0]  # this process's time in training steps that compiled a graph (the whole step)


def forward_pass(features: bool, compiled: bool) -> Callable:
    """(logits, pre-logit features or None) of ``model(inp)``. Compiled: one ``torch.compile`` function per
    process, with the model as an argument, so a worker compiles each architecture (and grad mode and batch
    shape) once and every later job's fresh model of it reuses the graph."""
    fn = _logits_and_features if features else _logits
    if not compiled:
        return fn
    if features not in _COMPILED:
        import torch._dynamo

        # a sweep's worker meets many architectures: past the default limit dynamo would run the rest eagerly
        c = torch._dynamo.config
        c.recompile_limit = max(c.recompile_limit, 64)
        c.accumulated_recompile_limit = max(c.accumulated_recompile_limit, 4096)
        _COMPILED[features] = torch.compile(fn)
    return _COMPILED[features]


@contextlib.contextmanager
def compile_clock(on: bool):
    """Around a training step: when it compiled a graph (a new architecture, grad mode or shape), its whole time
    counts as compiling (COMPILE_SECONDS)."""
    if not on:
        yield
        return
    t0, before = time.perf_counter(), compiled_graphs()
    yield
    if compiled_graphs() > before:
        COMPILE_SECONDS[0] += time.perf_counter() - t0


def compiled_graphs() -> int:
    """Graphs ``torch.compile`` has made in this process so far."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])
