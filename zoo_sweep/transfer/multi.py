"""Multi-teacher transfer (docs/methods.md, "Multi-teacher"): parallel, sequential curricula, and model soups.

A run is a ``MultiJob`` (the student, its teachers and what they are measured against) and the training
loop's ``RunOptions``. Each mode is a plain function over the single-teacher loop (``run_transfer``):

- ``parallel``: one run; per sample the target comes from the most confident of s0 and all teachers
  (supervised: highest true-class probability; unsupervised: highest max probability).
- ``sequential``: one stage per teacher, ordered by teacher accuracy (``asc`` or ``desc``); before each
  stage s0 is replaced by the current student (run_transfer copies the student it is given).
  ``compute_matched`` trains each stage on 1/K of every epoch's batches, so the whole curriculum costs the
  steps of one single-teacher run (the paper gave sequential K x the epochs of the other methods).
- ``soup``: one separate transfer per teacher from the same start, then the uniform average of the
  transferred students' weights (a model soup); it has one metrics row (epoch 1), after the average.

Metrics of a multi-teacher run compare the student with the *union* of its teachers: ``teacher_correct``
is True where any teacher is right, so rho_pos counts knowledge held by some teacher and not the student.
Epochs of sequential runs are numbered through the stages (stage 2 of 3-epoch stages starts at epoch 4).
Every mode resumes from ``ckpt_dir``: a finished stage or soup ingredient is kept as a file, the stage in
progress resumes from its epoch checkpoint; the folder is removed when the run ends.
"""

from __future__ import annotations

import copy
import dataclasses
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zoo_sweep.data.images import ImageSet
from zoo_sweep.science.records import predict
from zoo_sweep.transfer.catalog import MULTI_MODES
from zoo_sweep.transfer.metrics import transfer_metrics
from zoo_sweep.transfer.train import (
    Diverged,
    RunOptions,
    TransferJob,
    TransferParams,
    load_checkpoint,
    run_transfer,
    save_checkpoint,
)


@dataclass
class MultiJob:
    """A student, its teachers (with their data configs, eval-set accuracies and per-sample correctness), and
    the single-teacher method of sequential stages and soup ingredients."""
    student: torch.nn.Module
    teachers: list
    accuracies: list[float]
    hp: TransferParams
    seed: int
    transfer_set: ImageSet
    eval_set: ImageSet
    student_cfg: dict
    teacher_cfgs: list[dict]
    s0_correct: np.ndarray
    teacher_corrects: list
    method: str = "kl_dp"

    def single(self, i: int, seed: int, teacher_correct: Any = None) -> TransferJob:
        """The single-teacher job of teacher i (measured against ``teacher_correct``, default its own)."""
        return TransferJob(self.student, self.teachers[i], self.method, self.hp, seed, self.transfer_set,
                           self.eval_set, self.student_cfg, self.teacher_cfgs[i], self.s0_correct,
                           self.teacher_corrects[i] if teacher_correct is None else teacher_correct)

    @property
    def union(self) -> np.ndarray:
        return union_correct(self.teacher_corrects)


def union_correct(teacher_corrects) -> np.ndarray:
    """Per sample: True where at least one teacher is right."""
    return np.any(np.stack([np.asarray(c, dtype=bool) for c in teacher_corrects]), axis=0)


def curriculum(accuracies, order: str) -> list[int]:
    """Teacher indices by accuracy, ascending or descending (ties keep the given order)."""
    if order not in ("asc", "desc"):
        raise ValueError(f"curriculum order must be 'asc' or 'desc', got {order!r}")
    return sorted(range(len(accuracies)), key=lambda i: accuracies[i] * (1 if order == "asc" else -1))


def compute_matched(n_teachers: int) -> float:
    """Share of each epoch a sequential stage trains on so K stages cost one single-teacher run."""
    return 1.0 / n_teachers


def average_weights(states: list[dict]) -> dict:
    """Uniform average of state dicts; integer buffers (BatchNorm batch counters) come from the first."""
    out = {}
    for k, v in states[0].items():
        out[k] = torch.stack([s[k].float() for s in states]).mean(0).to(v.dtype) if v.is_floating_point() else v
    return out


def _sub(opts: RunOptions, name: str) -> Path | None:
    return Path(opts.ckpt_dir) / name if opts.ckpt_dir is not None else None


def parallel(job: MultiJob, opts: RunOptions, supervised: bool = True) -> list[dict]:
    single = TransferJob(job.student, list(job.teachers), "parallel" if supervised else "parallel_unsup", job.hp,
                         job.seed, job.transfer_set, job.eval_set, job.student_cfg, list(job.teacher_cfgs),
                         job.s0_correct, job.union)
    return run_transfer(single, opts)


def sequential(job: MultiJob, opts: RunOptions, order: str = "asc", matched: bool = False) -> list[dict]:
    union = job.union
    fraction = compute_matched(len(job.teachers)) if matched else 1.0
    rows: list[dict] = []
    for stage, i in enumerate(curriculum(job.accuracies, order)):
        done = _sub(opts, f"stage{stage}.pt")
        c = load_checkpoint(done, opts.device) if done is not None and done.is_file() else None
        if c is not None:  # a finished stage of a killed run
            job.student.load_state_dict(c["student"])
            rows = c["rows"]
            continue
        stage_rows = run_transfer(job.single(i, job.seed + stage, union), opts, ckpt_dir=_sub(opts, f"run{stage}"),
                                  epoch_fraction=fraction)
        rows = rows + [{**r, "epoch": r["epoch"] + stage * job.hp.epochs} for r in stage_rows]
        if done is not None:
            save_checkpoint({"student": job.student.state_dict(), "rows": rows}, done)
    _remove(opts)
    return rows


def soup(job: MultiJob, opts: RunOptions) -> list[dict]:
    start = copy.deepcopy(job.student.state_dict())
    states, finals = [], []
    for i in range(len(job.teachers)):
        done = _sub(opts, f"ingredient{i}.pt")
        c = load_checkpoint(done) if done is not None and done.is_file() else None
        if c is None:
            job.student.load_state_dict(start)
            r = run_transfer(job.single(i, job.seed), opts, ckpt_dir=_sub(opts, f"run{i}"))
            c = {"student": {k: v.detach().cpu().clone() for k, v in job.student.state_dict().items()}, "final": r[-1]}
            if done is not None:
                save_checkpoint(c, done)
        states.append(c["student"])
        finals.append(c["final"])
    job.student.load_state_dict(average_weights(states))
    rec = predict(job.student, job.eval_set, job.student_cfg, batch_size=opts.eval_batch_size, topk=1,
                  device=opts.device)
    labels = job.eval_set.labels.numpy()
    row = transfer_metrics(job.s0_correct, rec["pred"] == labels, job.union, labels,
                           job.eval_set.num_classes)
    # one row, numbered epoch 1 so it counts as the final one (the launcher marks epoch == number of rows)
    row.update(epoch=1, train_loss=float(np.mean([f["train_loss"] for f in finals])),
               teacher_share=float(np.mean([f["teacher_share"] for f in finals])))
    _remove(opts)
    return [row]


def _remove(opts: RunOptions) -> None:
    if opts.ckpt_dir is not None:
        shutil.rmtree(opts.ckpt_dir, ignore_errors=True)


def run_multi(mode: str, job: MultiJob, opts: RunOptions | None = None, **options) -> list[dict]:
    """One multi-teacher mode by its spec name (MULTI_MODES). A diverged run leaves no checkpoint behind.
    ``options``: fields of ``RunOptions`` that override ``opts``."""
    opts = dataclasses.replace(opts or RunOptions(), **options)
    try:
        return _run_multi(mode, job, opts)
    except Diverged:
        _remove(opts)
        raise


def _run_multi(mode: str, job: MultiJob, opts: RunOptions) -> list[dict]:
    if mode in ("parallel", "parallel_unsup"):
        return parallel(job, opts, supervised=mode == "parallel")
    if mode.startswith("sequential_"):
        return sequential(job, opts, order=mode.split("_")[1], matched=mode.endswith("_matched"))
    if mode == "soup":
        return soup(job, opts)
    raise ValueError(f"unknown multi-teacher mode {mode!r}; known: {', '.join(MULTI_MODES)}")
