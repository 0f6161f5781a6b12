"""GPU-hours of a sweep's transfer jobs, estimated before they run (``plan``, ``plan --dry-run``, ``status``).

Per transfer job: the images it trains on (whole batches x epochs, as the training loop takes them) divided by
the images per second of its (student, teacher) pair, plus one evaluation pass over the eval set per epoch.

The rate of a pair comes from ``MEASURED`` when that pair was measured at the job's batch size and input size
with the same frozen models (teacher, and s0 where the method runs it): "measured pair". Otherwise it is
"scaled from parameter counts": a forward pass is taken to cost parameters x input pixels (each model's own
input size, or the student's with ``inputs = "student"``), a training step of the student three forward passes
(forward and backward), and the GPU's reference pair (its first row in ``MEASURED``) fixes the seconds per
unit. Parameter counts stand in for FLOPs, which the shipped tables do not
hold: they rank convolutions that slide over large feature maps too cheap against transformers and MLPs, and
they leave out the fixed costs of each step (kernel launches, the optimiser's per-tensor work), so for models
far smaller than the reference the estimate is a lower bound. Every job is counted with its own teacher and s0
forward passes; where ``teacher_cache`` reads their logits back the sweep takes less (bench/teacher_cache.py).

No torch here: a login node's ``plan --dry-run`` runs this module.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zoo_sweep.config.params import TransferParams, used_rows
from zoo_sweep.errors import UserError
from zoo_sweep.pipeline.jobs import Job, TransferPayload
from zoo_sweep.transfer.catalog import CATALOG
from zoo_sweep.zoo.entry import ModelEntry

MEASURED_PAIR = "measured pair"
SCALED = "scaled from parameter counts"
REFERENCE_SIDE = 224  # pixels per side that a unit of work is counted at
SMALL = 0.01  # a job below this share of the reference pair's work per image: per-step costs dominate it


@dataclass(frozen=True)
class MeasuredRate:
    """Training images per second of one (student, teacher) transfer job on one kind of GPU (BENCHMARKS.md)."""
    gpu: str
    student: str  # timm architecture, at its default size
    teacher: str
    student_params: int  # at 1,000 classes (zoo/_info/timm_params.json)
    teacher_params: int
    runs_s0: bool  # the method ran the frozen student too (kl_dp), or not (kl)
    batch_size: int
    input_size: int
    images_per_s: float
    source: str


# resnet50 <- convnext_tiny, bf16 autocast, channels-last, 1,000 classes. The first row of each GPU is the
# reference that scaled estimates are computed from.
MEASURED: tuple[MeasuredRate, ...] = (
    MeasuredRate("NVIDIA H200", "resnet50", "convnext_tiny", 25_557_032, 28_589_128, True, 128, 224, 16.04 * 128,
                 "BENCHMARKS.md, GPU: NVIDIA H200, data path on the GPU (kl_dp, 16.04 steps/s)"),
    MeasuredRate("NVIDIA H100", "resnet50", "convnext_tiny", 25_557_032, 28_589_128, True, 128, 224, 13.4 * 128,
                 "BENCHMARKS.md, GPU: NVIDIA H100, (b) transfer steps/s (kl_dp, 13.4 steps/s)"),
    MeasuredRate("NVIDIA H100", "resnet50", "convnext_tiny", 25_557_032, 28_589_128, False, 128, 224, 15.7 * 128,
                 "BENCHMARKS.md, GPU: NVIDIA H100, (b) transfer steps/s (kl, 15.7 steps/s)"),
)
GPUS = tuple(dict.fromkeys(r.gpu for r in MEASURED))


@dataclass(frozen=True)
class JobEstimate:
    job_id: str
    student: str
    teachers: tuple[str, ...]
    method: str
    train_images: int  # over all epochs (and stages)
    eval_images: int  # over all evaluation passes
    images_per_s: float  # training images per second
    seconds: float  # training and evaluation
    basis: str  # MEASURED_PAIR or SCALED
    small: bool = False  # scaled, and far below the reference pair's work per image


@dataclass
class Estimate:
    gpu: str
    jobs: list[JobEstimate] = field(default_factory=list)
    at_most: bool = False  # the jobs are chosen after measurement: an upper bound on how many
    note: str = ""  # why there is no estimate (a set not reachable from here, no transfer jobs)
    reference: MeasuredRate | None = None

    @property
    def seconds(self) -> float:
        return sum(j.seconds for j in self.jobs)

    @property
    def gpu_hours(self) -> float:
        return self.seconds / 3600

    def by_basis(self) -> dict[str, tuple[int, float]]:
        """Basis -> (jobs, GPU-hours)."""
        out: dict[str, tuple[int, float]] = {}
        for j in self.jobs:
            n, h = out.get(j.basis, (0, 0.0))
            out[j.basis] = (n + 1, h + j.seconds / 3600)
        return out

    def line(self) -> str:
        """One line: the total, on which GPU, and how it was made."""
        if self.note:
            return f"GPU estimate: {self.note}"
        bound = "at most " if self.at_most else ""
        groups = self.by_basis()
        parts = []
        for basis, (n, h) in groups.items():
            what = f"{n:,} {basis}"
            if basis == SCALED and self.reference is not None:
                r = self.reference
                what += (f" (x input pixels, against {r.student} <- {r.teacher} at {r.images_per_s:,.0f} img/s, "
                         f"batch {r.batch_size}, {r.input_size} px)")
            parts.append(what + (f": {hours(h)}" if len(groups) > 1 else ""))
        small = sum(j.small for j in self.jobs)
        tail = (f"; a lower bound for the {small:,} whose models are far smaller than that pair (their per-step "
                "costs are left out)") if small else ""
        return (f"GPU estimate: {bound}{hours(self.gpu_hours)} of transfer on one {self.gpu}, {bound}"
                f"{len(self.jobs):,} job(s): {'; '.join(parts)}; every job's teacher and s0 forward passes counted, "
                f"evaluation included{tail}")


def hours(h: float) -> str:
    return f"{h:,.1f} GPU-h" if h >= 0.1 else f"{h:.2g} GPU-h ({h * 3600:.2g} s)"


def input_side(entry: ModelEntry) -> int:
    """Pixels per side the model takes: its data config's, else the size its timm name ends in (a pretrained tag's
    "_384", or a patch model's "..._patch16_384"; elsewhere a trailing number is no size: regnety_320,
    mobilenetv3_large_100), else 224."""
    size = (entry.data_cfg or {}).get("input_size")
    if size:
        return int(size[-1])
    base, _, tag = entry.arch.partition(".")
    for part, named_by_size in ((tag, True), (base, "patch" in base)):
        m = re.search(r"_(\d{3,4})$", part)
        if named_by_size and m:
            return int(m.group(1))
    return REFERENCE_SIDE


def work(entry: ModelEntry, params: Mapping[str, int], side: int | None = None) -> float:
    """One forward pass over one image, in parameter x (side / 224)^2 units (``side``: the input's, when the
    model does not get its own)."""
    return params[entry.name] * ((side or input_side(entry)) / REFERENCE_SIDE) ** 2


def reference(gpu: str) -> MeasuredRate:
    for r in MEASURED:
        if r.gpu == gpu:
            return r
    raise ValueError(f"no measured transfer rate for {gpu!r}; known: {', '.join(GPUS)}")


def _ref_units(r: MeasuredRate) -> float:
    return 3 * r.student_params + r.teacher_params + (r.student_params if r.runs_s0 else 0)


def _measured(gpu: str, student: ModelEntry, teacher: ModelEntry, runs_s0: bool, batch: int) -> MeasuredRate | None:
    """The measured row for this pair of plain timm architectures (no size-changing constructor arguments)."""
    if student.kwargs or teacher.kwargs:
        return None
    s, t = student.arch.split(".")[0], teacher.arch.split(".")[0]
    for r in MEASURED:
        if (r.gpu, r.student, r.teacher, r.runs_s0, r.batch_size) == (gpu, s, t, runs_s0, batch) and \
                input_side(student) == input_side(teacher) == r.input_size:
            return r
    return None


@dataclass(frozen=True)
class _Stage:
    """A run of the training loop inside a job: its teachers, whether s0 runs, and its share of each epoch."""
    teachers: tuple[ModelEntry, ...]
    runs_s0: bool
    fraction: float = 1.0


def _stages(p: TransferPayload) -> list[_Stage]:
    """The training-loop runs a job makes (transfer/multi.py): one for a single teacher or the parallel modes
    (every teacher in every step), one per teacher for the sequential modes (1/K of each epoch when
    compute-matched) and for a soup's ingredients."""
    if not p.multi:
        return [_Stage((p.teacher,), CATALOG[p.method].needs_s0)]
    teachers = tuple(p.teachers or ())
    if p.method in CATALOG:
        return [_Stage(teachers, CATALOG[p.method].needs_s0)]
    s0 = CATALOG[p.multi_method or "kl_dp"].needs_s0
    fraction = 1 / len(teachers) if p.method.endswith("_matched") else 1.0
    return [_Stage((t,), s0, fraction) for t in teachers]


def estimate_job(job: Job, params: Mapping[str, int], n_transfer: int, n_eval: int,
                 gpu: str = GPUS[0]) -> JobEstimate:
    """Seconds of one transfer job on ``gpu``: its training images at its pair's rate, plus its evaluation."""
    p = job.payload
    if not isinstance(p, TransferPayload):
        raise ValueError(f"job {job.id} is a {job.kind} job, not a transfer job")
    hp = TransferParams.from_dict(p.hp)
    ref = reference(gpu)
    c_ref = 1 / (ref.images_per_s * _ref_units(ref))  # seconds per unit of work
    w_s = work(p.student, params)
    side = input_side(p.student) if hp.inputs == "student" else None  # every model at the student's size
    rows = used_rows(n_transfer, hp.batch_size)
    train = evals = 0
    train_s = eval_s = units = 0.0
    measured = True
    for st in _stages(p):
        batches = max(1, round(math.ceil(rows / hp.batch_size) * st.fraction))  # as the training loop counts
        images = min(batches * hp.batch_size, rows) * hp.epochs
        u = 3 * w_s + sum(work(t, params, side) for t in st.teachers) + (w_s if st.runs_s0 else 0)
        m = _measured(gpu, p.student, st.teachers[0], st.runs_s0, hp.batch_size) if len(st.teachers) == 1 else None
        c = 1 / (m.images_per_s * u) if m is not None else c_ref  # a measured pair's eval at its own rate too
        measured = measured and m is not None
        train_s += images * u * c
        eval_s += n_eval * hp.epochs * w_s * c
        train, evals, units = train + images, evals + n_eval * hp.epochs, units + u * images
    return JobEstimate(job.id, p.student.name, tuple(p.teacher_names), p.method, train, evals, train / train_s,
                       train_s + eval_s, MEASURED_PAIR if measured else SCALED,
                       small=not measured and units / train < SMALL * _ref_units(ref))


def estimate_gpu_hours(plan_or_jobs: Any, params: Mapping[str, int] | None = None, *, gpu: str = GPUS[0],
                       n_transfer: int | None = None, n_eval: int | None = None) -> Estimate:
    """The GPU-hours of a plan's transfer jobs (a ``pipeline.plan.Plan``), or of a list of jobs (its transfer
    jobs count).

    ``params``: parameter count per model name (a plan's own by default). ``n_transfer`` / ``n_eval``: images
    in the transfer and eval sets, counted from each job's sets when not given. A plan whose transfer pairs
    are chosen after measurement gives an upper bound: as many pairs as its policy may pick, the costliest by
    parameter counts, with the controls of every model (``Estimate.at_most``)."""
    reference(gpu)
    if hasattr(plan_or_jobs, "transfer_jobs"):
        plan = plan_or_jobs
        params = plan.params if params is None else params
        if plan.transfer_jobs is None:
            return _upper_bound(plan, params, gpu, n_transfer, n_eval)
        jobs = list(plan.transfer_jobs)
    else:
        jobs = list(plan_or_jobs)
    if params is None:
        raise ValueError("params: a parameter count per model name is needed for a list of jobs")
    return _estimate(jobs, params, gpu, n_transfer, n_eval)


def _estimate(jobs: Iterable[Job], params: Mapping[str, int], gpu: str, n_transfer: int | None,
              n_eval: int | None, at_most: bool = False) -> Estimate:
    out = Estimate(gpu, at_most=at_most, reference=reference(gpu))
    counts: dict[tuple[Any, ...], int] = {}
    for job in jobs:
        p = job.payload
        if not isinstance(p, TransferPayload):
            continue
        n_tr = n_transfer if n_transfer is not None else _count(counts, p, "transfer")
        n_ev = n_eval if n_eval is not None else _count(counts, p, "eval")
        if n_tr == 0:
            return Estimate(gpu, note=f"the transfer set {p.transfer} is not reachable from here, so its images "
                                      "cannot be counted")
        out.jobs.append(estimate_job(job, params, n_tr, n_ev, gpu))
    if not out.jobs:
        out.note = "no transfer jobs"
    return out


def _count(counts: dict[tuple[Any, ...], int], p: TransferPayload, role: str) -> int:
    """Images of a job's transfer or eval set, counted once per set (nothing is decoded)."""
    from zoo_sweep.data.sets import SUBSET_SEED, count_images

    seed = SUBSET_SEED if p.subset_seed is None else p.subset_seed
    key = (getattr(p, role), p.image_size, p.class_map, getattr(p, f"{role}_subset"), seed)
    if key not in counts:
        counts[key] = count_images(*key)
    return counts[key]


def _upper_bound(plan: Any, params: Mapping[str, int], gpu: str, n_transfer: int | None,
                 n_eval: int | None) -> Estimate:
    """Transfer pairs chosen after measurement: the ``max_selected`` pairs whose jobs cost most by the model
    above (ranked on parameters x pixels, the zoo's ordered pairs at once), their jobs, the multi-teacher jobs,
    and every model's controls."""
    import numpy as np

    from zoo_sweep.data.sets import count_images, set_args
    from zoo_sweep.pipeline.plan import control_jobs, max_selected, transfer_jobs

    d, t = plan.spec.data, plan.spec.transfer
    n_tr = count_images(**set_args(d, "transfer")) if n_transfer is None else n_transfer
    n_ev = count_images(**set_args(d, "eval")) if n_eval is None else n_eval
    if n_tr == 0:
        return Estimate(gpu, at_most=True, note=f"the transfer set {d.transfer} is not reachable from here, so its "
                                                 "images cannot be counted")
    names = [m.name for m in plan.models]
    w = np.array([work(m, params) for m in plan.models])
    # per training image, summed over the spec's methods: the student's step and s0 (a), the teacher (b); the
    # evaluation passes add the student's forward pass per eval image
    per_eval = n_ev / max(1, used_rows(n_tr, t.batch_size))
    a = sum(3 + CATALOG[m].needs_s0 for m in t.methods) + len(t.methods) * per_eval
    cost = a * w[:, None] + len(t.methods) * w[None, :]
    np.fill_diagonal(cost, -np.inf)  # a model never learns from itself
    n = min(max_selected(plan), len(names) * (len(names) - 1))
    top = np.argpartition(cost.ravel(), cost.size - n)[cost.size - n:] if n else np.array([], dtype=int)
    pairs = [(names[i // len(names)], names[i % len(names)]) for i in sorted(top.tolist())]
    jobs = transfer_jobs(plan, pairs) + control_jobs(plan, [(s, s) for s in names])
    return _estimate(jobs, params, gpu, n_tr, n_ev, at_most=True)


@dataclass(frozen=True)
class Finished:
    """A sweep's finished transfer jobs: their stored run time against the estimate for the same jobs."""
    sweep: str
    jobs: int
    actual_s: float  # sum of the jobs' stored seconds (each worker's own run time)
    devices: tuple[str, ...]  # the kinds of device their workers ran on ("cpu", "cuda")
    estimate: Estimate

    def line(self) -> str:
        on = "/".join(self.devices) or "unknown"
        text = (f"{self.sweep}: {self.jobs:,} finished transfer job(s) took {self.actual_s / 3600:,.2f} h "
                f"({self.actual_s:,.0f} s, the sum of their run times, on {on} workers)")
        e = self.estimate
        if e.note:
            return f"{text}; {e.line()}"
        basis = ", ".join(f"{n:,} {b}" for b, (n, _) in e.by_basis().items())
        text += f"; estimated {hours(e.gpu_hours)} on one {e.gpu} ({basis})"
        if self.devices == ("cuda",) and e.seconds > 0:
            text += f": actual / estimated {self.actual_s / e.seconds:.2f}"
        elif "cuda" not in self.devices:
            text += ": the estimate is for a GPU, the jobs ran on CPUs"
        return text


def finished_vs_estimated(store: Any, sweep: str | None, home: str | Path, gpu: str = GPUS[0]) -> list[Finished]:
    """Per sweep (one, or every sweep of the store) with finished transfer jobs: their stored seconds against the
    estimate for those jobs, from the parameter counts the store keeps per model and eval set."""
    import pandas as pd

    from zoo_sweep.storage.store import jobs_of

    done = jobs_of(store, sweep)
    done = done[(done["kind"] == "transfer") & (done["state"] == "done")]
    out = []
    for name in dict.fromkeys(done["sweep"]):
        mine = done[done["sweep"] == name]
        seconds = float(pd.to_numeric(mine["seconds"], errors="coerce").fillna(0.0).sum())
        ids = set(mine["id"])
        try:
            jobs = [Job.from_row(r, home) for r in store.sweep_jobs(name, "transfer") if r["id"] in ids]
        except UserError as e:  # a payload of another version: `status` still shows the jobs themselves
            out.append(Finished(name, len(mine), seconds, (), Estimate(gpu, note=f"not made ({e})")))
            continue
        evals = sorted({j.payload.eval for j in jobs if isinstance(j.payload, TransferPayload)})
        params = {}
        for e in evals:
            rows = store.query("select name, params from models where eval_set = :e and params is not null",
                               {"e": e})
            params.update({str(n): int(p) for n, p in zip(rows["name"], rows["params"])})
        needed = {m.name for j in jobs if isinstance(j.payload, TransferPayload)
                  for m in (j.payload.student, *(j.payload.teachers or (j.payload.teacher,)))}
        missing = sorted(needed - set(params))
        if missing:
            est = Estimate(gpu, note=f"the store holds no parameter count for {', '.join(missing[:3])}"
                                     + (f" and {len(missing) - 3} more" if len(missing) > 3 else ""))
        else:
            est = estimate_gpu_hours(jobs, params, gpu=gpu)
        devices = tuple(sorted({str(w).rsplit(":", 1)[-1] for w in mine["worker"] if w}))
        out.append(Finished(name, len(mine), seconds, devices, est))
    return out
