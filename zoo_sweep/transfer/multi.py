"""Multi-teacher transfer (METRICS.md, "Multi-teacher"): parallel, sequential curricula, and model soups.

Each mode is a plain function over the single-teacher training loop (``run_transfer``):

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
import shutil
from pathlib import Path

import numpy as np
import torch

from zoo_sweep.science.records import predict
from zoo_sweep.transfer.catalog import MULTI_MODES
from zoo_sweep.transfer.metrics import transfer_metrics
from zoo_sweep.transfer.train import (
    Diverged,
    TransferParams,
    run_transfer,
    save_checkpoint,
)


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


def parallel(student, teachers, hp: TransferParams, seed, transfer_set, eval_set, student_cfg, teacher_cfgs,
             s0_correct, teacher_corrects, device="cpu", supervised: bool = True, ckpt_dir=None, **kw) -> list[dict]:
    return run_transfer(student, list(teachers), "parallel" if supervised else "parallel_unsup", hp, seed,
                        transfer_set, eval_set, student_cfg, list(teacher_cfgs), s0_correct,
                        union_correct(teacher_corrects), device, ckpt_dir=ckpt_dir, **kw)


def sequential(student, teachers, accuracies, hp: TransferParams, seed, transfer_set, eval_set, student_cfg,
               teacher_cfgs, s0_correct, teacher_corrects, device="cpu", order: str = "asc",
               method: str = "kl_dp", matched: bool = False, ckpt_dir=None, **kw) -> list[dict]:
    union = union_correct(teacher_corrects)
    fraction = compute_matched(len(teachers)) if matched else 1.0
    rows: list[dict] = []
    for stage, i in enumerate(curriculum(accuracies, order)):
        done = Path(ckpt_dir) / f"stage{stage}.pt" if ckpt_dir is not None else None
        if done is not None and done.is_file():  # a finished stage of a killed run
            c = torch.load(done, map_location=device, weights_only=False)
            student.load_state_dict(c["student"])
            rows = c["rows"]
            continue
        stage_rows = run_transfer(student, teachers[i], method, hp, seed + stage, transfer_set, eval_set,
                                  student_cfg, teacher_cfgs[i], s0_correct, union, device,
                                  ckpt_dir=Path(ckpt_dir) / f"run{stage}" if ckpt_dir is not None else None,
                                  epoch_fraction=fraction, **kw)
        rows = rows + [{**r, "epoch": r["epoch"] + stage * hp.epochs} for r in stage_rows]
        if done is not None:
            save_checkpoint({"student": student.state_dict(), "rows": rows}, done)
    if ckpt_dir is not None:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    return rows


def soup(student, teachers, hp: TransferParams, seed, transfer_set, eval_set, student_cfg, teacher_cfgs,
         s0_correct, teacher_corrects, device="cpu", method: str = "kl_dp", ckpt_dir=None,
         eval_batch_size: int = 256, **kw) -> list[dict]:
    start = copy.deepcopy(student.state_dict())
    states, finals = [], []
    for i, (t, cfg) in enumerate(zip(teachers, teacher_cfgs)):
        done = Path(ckpt_dir) / f"ingredient{i}.pt" if ckpt_dir is not None else None
        if done is not None and done.is_file():
            c = torch.load(done, map_location="cpu", weights_only=False)
        else:
            student.load_state_dict(start)
            r = run_transfer(student, t, method, hp, seed, transfer_set, eval_set, student_cfg, cfg, s0_correct,
                             teacher_corrects[i], device, eval_batch_size=eval_batch_size,
                             ckpt_dir=Path(ckpt_dir) / f"run{i}" if ckpt_dir is not None else None, **kw)
            c = {"student": {k: v.detach().cpu().clone() for k, v in student.state_dict().items()}, "final": r[-1]}
            if done is not None:
                save_checkpoint(c, done)
        states.append(c["student"])
        finals.append(c["final"])
    student.load_state_dict(average_weights(states))
    rec = predict(student, eval_set, student_cfg, batch_size=eval_batch_size, topk=1, device=device)
    row = transfer_metrics(s0_correct, rec["pred"] == eval_set.labels.numpy(), union_correct(teacher_corrects))
    # one row, numbered epoch 1 so it counts as the final one (the launcher marks epoch == number of rows)
    row.update(epoch=1, train_loss=float(np.mean([f["train_loss"] for f in finals])),
               teacher_share=float(np.mean([f["teacher_share"] for f in finals])))
    if ckpt_dir is not None:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    return [row]


def run_multi(mode: str, student, teachers, accuracies, hp: TransferParams, seed, transfer_set, eval_set,
              student_cfg, teacher_cfgs, s0_correct, teacher_corrects, device="cpu", method: str = "kl_dp",
              ckpt_dir=None) -> list[dict]:
    """One multi-teacher mode by its spec name (MULTI_MODES). A diverged run leaves no checkpoint behind."""
    try:
        return _run_multi(mode, student, teachers, accuracies, hp, seed, transfer_set, eval_set, student_cfg,
                          teacher_cfgs, s0_correct, teacher_corrects, device, method, ckpt_dir)
    except Diverged:
        if ckpt_dir is not None:
            shutil.rmtree(ckpt_dir, ignore_errors=True)
        raise


def _run_multi(mode, student, teachers, accuracies, hp, seed, transfer_set, eval_set, student_cfg, teacher_cfgs,
               s0_correct, teacher_corrects, device, method, ckpt_dir):
    args = (hp, seed, transfer_set, eval_set, student_cfg, teacher_cfgs, s0_correct, teacher_corrects, device)
    if mode in ("parallel", "parallel_unsup"):
        return parallel(student, teachers, *args, supervised=mode == "parallel", ckpt_dir=ckpt_dir)
    if mode.startswith("sequential_"):
        order = mode.split("_")[1]
        return sequential(student, teachers, accuracies, *args, order=order, method=method,
                          matched=mode.endswith("_matched"), ckpt_dir=ckpt_dir)
    if mode == "soup":
        return soup(student, teachers, *args, method=method, ckpt_dir=ckpt_dir)
    raise ValueError(f"unknown multi-teacher mode {mode!r}; known: {', '.join(MULTI_MODES)}")
