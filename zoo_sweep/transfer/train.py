"""The transfer training loop: one student learns from one teacher with one method.

The student trains; the teacher and the frozen copy of the student (s0) stay in eval mode. Each model
sees the same (augmented) batch through its own data config. After every epoch the student is evaluated
on the eval set and the transfer metrics are computed against s0's and the teacher's records.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, fields

import numpy as np
import torch

from ..data import ImageSet, augment, model_input
from ..predict import predict
from .methods import METHODS
from .metrics import transfer_metrics


class Diverged(Exception):
    """The loss stopped being finite: the job ends as 'diverged', not as a result."""


@dataclass(frozen=True)
class TransferParams:
    epochs: int = 2
    batch_size: int = 128
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    temperature: float = 1.0
    alpha: float = 0.5
    augment: bool = True

    @classmethod
    def from_dict(cls, d: dict) -> "TransferParams":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def run_transfer(student: torch.nn.Module, teacher: torch.nn.Module, method: str, hp: TransferParams, seed: int,
                 transfer_set: ImageSet, eval_set: ImageSet, student_cfg: dict, teacher_cfg: dict,
                 s0_correct: np.ndarray, teacher_correct: np.ndarray, device: str = "cpu",
                 eval_batch_size: int = 256) -> list[dict]:
    """Train ``student`` in place; returns one metrics dict per epoch (METRICS.md, transfer metrics)."""
    torch.manual_seed(seed)
    m = METHODS[method]
    student.to(device)
    teacher.to(device).eval()
    s0 = copy.deepcopy(student).eval() if m.needs_s0 else None
    for p in list(teacher.parameters()) + (list(s0.parameters()) if s0 is not None else []):
        p.requires_grad_(False)
    opt = torch.optim.SGD(student.parameters(), lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
    gen = torch.Generator().manual_seed(seed)
    labels = eval_set.labels.numpy()
    n = len(transfer_set)
    rows = []
    for epoch in range(1, hp.epochs + 1):
        student.train()
        losses, shares = [], []
        order = torch.randperm(n, generator=gen)
        # drop a last partial batch: BatchNorm cannot train on a single sample
        for b in order[: n - n % hp.batch_size if n > hp.batch_size else n].split(hp.batch_size):
            x = transfer_set.images[b]
            if hp.augment:
                x = augment(x, gen)
            y = transfer_set.labels[b].to(device)
            with torch.no_grad():
                z_t = teacher(model_input(x, teacher_cfg, device)).float()
                z_s0 = s0(model_input(x, student_cfg, device)).float() if s0 is not None else None
            z_s = student(model_input(x, student_cfg, device)).float()
            loss, share = m.loss(z_s, z_t, z_s0, y, hp)
            if not torch.isfinite(loss):
                raise Diverged(f"loss became {loss.item()} in epoch {epoch}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            shares.append(share)
        rec = predict(student, eval_set, student_cfg, batch_size=eval_batch_size, topk=1, device=device)
        row = transfer_metrics(s0_correct, rec["pred"] == labels, teacher_correct)
        row.update(epoch=epoch, train_loss=float(np.mean(losses)), teacher_share=float(np.mean(shares)) * 100)
        rows.append(row)
    return rows
