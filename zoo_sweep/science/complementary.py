"""Complementary knowledge of every ordered pair from the models' prediction records, in one vectorised pass.

Every metric is exact (integer counts; percentages and the entropy are computed from them at the end), and
none loops over pairs or samples in Python. With the correctness matrix C (models x samples):

- flips: both[s, t] = (C @ C.T)[s, t], one 0/1 product through the product kernel chosen for this machine
  (kernels.py: int8, fp32, bf16 or CUDA, all exact); positive flips are r_t - both (r: right counts),
  negative flips the transpose, oracle r_s + r_t - both.
- agreement = both right + both wrong *with the same class* (agreement.py: the wrong predictions grouped by
  (sample, class), each member of a group of two or more adding the group's 0/1 row).
- confidence ensemble = both right + #{s right, t wrong, pmax_s >= pmax_t} + #{t right, s wrong,
  pmax_t > pmax_s} (dominance.py: per-sample confidence orders; one row per run of wrong entries).
- per-class positive flips, their entropy and top-p % class counts, exact and in the paper's convention
  (classes.py: one batched product and a histogram of per-class counts).

The same code runs on CPU or CUDA tensors (``device``). Definitions: docs/methods.md ("Complementary
knowledge"); how and how fast: docs/compare.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from zoo_sweep.science.agreement import same_wrong_counts
from zoo_sweep.science.classes import (  # re-exported: the per-class helpers live there
    TOP_P,
    class_concentration,
    concentration,
    concentration_from_hist,
    per_class_flips,
)
from zoo_sweep.science.dominance import dominance_counts
from zoo_sweep.science.kernels import Kernel, gram01, kernel
from zoo_sweep.science.pair_metrics import PAIR_GROUPS, group_metrics

METRIC_GROUPS = PAIR_GROUPS  # "flips" (accuracy, rho, oracle) is always on
DEFAULT_METRICS = METRIC_GROUPS
__all__ = ["DEFAULT_METRICS", "METRIC_GROUPS", "TOP_P", "class_concentration", "compare_kernel", "concentration",
           "concentration_from_hist", "dominance_counts", "flip_counts", "pair_matrices", "pairs_frame",
           "per_class_flips", "same_wrong_counts"]


def compare_kernel(name: Kernel | str | None = None, device: str | None = None, cache_dir=None) -> Kernel:
    """The product kernel of a compare run: ``name`` (or $ZOO_SWEEP_MATMUL), else CUDA when ``device`` is a
    GPU, else the calibrated fastest CPU kernel."""
    if isinstance(name, Kernel):
        return name
    if name is None and device is not None and torch.device(device).type == "cuda":
        name = "cuda"
    return kernel(name, cache_dir)


def flip_counts(correct: torch.Tensor, k: Kernel | str | None = None) -> torch.Tensor:
    """pos[s, t]: samples the teacher t gets right and the student s gets wrong (counts, float64)."""
    both = gram01(correct, k)
    right = both.diagonal()  # a row's product with itself: its count, without a sum over M x N
    return (right.view(1, -1) - both).double()


# ---------------------------------------------------------------------------------------------- all pairs
@dataclass
class PairInputs:
    """What every group's function reads: the records on the compare device, and the correctness products."""
    preds: torch.Tensor  # models x samples, predicted classes
    labels: torch.Tensor
    pmax: torch.Tensor  # models x samples, each prediction's probability
    num_classes: int
    correct: torch.Tensor  # models x samples, bool
    both: torch.Tensor  # M x M: samples both models get right (the 0/1 product)
    kern: Kernel
    chunk_bytes: int

    @property
    def pct(self) -> float:
        return 100.0 / self.preds.shape[1]


PairGroup = Callable[[PairInputs], dict[str, torch.Tensor]]
# the function of each metric group of pair_metrics.PAIR_GROUPS, in the order they run: each returns M x M
# matrices (row: student, column: teacher) under exactly its group's declared names
GROUP_FUNCTIONS: dict[str, PairGroup] = {}


def pair_group(name: str) -> Callable[[PairGroup], PairGroup]:
    def register(fn: PairGroup) -> PairGroup:
        GROUP_FUNCTIONS[name] = fn
        return fn
    return register


@pair_group("flips")
def _flips(x: PairInputs) -> dict[str, torch.Tensor]:
    m = x.both.shape[0]
    right = x.both.diagonal().clone()  # each row's product with itself: a bool sum over M x N would copy it
    acc = right.double() * x.pct
    pos = (right.view(1, -1) - x.both).double() * x.pct
    student, teacher = acc.view(-1, 1).expand(m, m), acc.view(1, -1).expand(m, m)
    return {"acc_student": student, "acc_teacher": teacher, "acc_gap": teacher - student, "rho_pos": pos,
            "rho_neg": pos.T, "oracle_acc": acc.view(-1, 1) + pos}


@pair_group("agreement")
def _agreement(x: PairInputs) -> dict[str, torch.Tensor]:
    agree = x.both + same_wrong_counts(x.preds, x.labels, x.num_classes)
    agree.fill_diagonal_(x.preds.shape[1])
    return {"agreement": agree.double() * x.pct}


@pair_group("ensemble")
def _ensemble(x: PairInputs) -> dict[str, torch.Tensor]:
    ge, gt = dominance_counts(x.correct, torch.as_tensor(x.pmax).to(x.correct.device))
    return {"ensemble_acc": (x.both + ge + gt.T).double() * x.pct}


@pair_group("classes")
def _classes(x: PairInputs) -> dict[str, torch.Tensor]:
    return class_concentration(x.correct, x.labels, x.num_classes, x.chunk_bytes, k=x.kern)


def pair_matrices(preds: torch.Tensor, labels: torch.Tensor, pmax: torch.Tensor, num_classes: int,
                  chunk_bytes: int = 256 << 20, metrics=DEFAULT_METRICS, timings: dict | None = None,
                  kernel: Kernel | str | None = None, device: str | torch.device | None = None,
                  cpu_timings: dict | None = None) -> dict[str, torch.Tensor]:
    """Every pair metric as an M x M matrix (row: student, column: teacher), percentages of the eval set.

    ``metrics`` picks the optional groups (pair_metrics.PAIR_GROUPS: "agreement", "ensemble", "classes");
    "flips" (accuracies, flips, the oracle) is always computed. A group left out is NaN. ``timings``, when
    given, receives the seconds spent per group (``cpu_timings``: the process's CPU seconds, every thread's, which a
    busy shared machine inflates far less than wall time). ``kernel`` forces a product kernel (int8, fp32, bf16,
    cuda; default: $ZOO_SWEEP_MATMUL, else the calibrated one); ``device`` the device the work runs on (default:
    CUDA for the cuda kernel, else CPU). Results are CPU tensors, identical whatever the kernel and device.
    """
    unknown = set(metrics) - set(METRIC_GROUPS)
    if unknown:
        raise ValueError(f"unknown metric group(s) {sorted(unknown)}; known: {', '.join(METRIC_GROUPS)}")
    kern = compare_kernel(kernel, device)
    dev = torch.device(device if device is not None else kern.device)
    preds = torch.as_tensor(preds)
    preds = (preds if not preds.is_floating_point() else preds.long()).to(dev)
    labels = torch.as_tensor(labels).long().to(dev)
    clock = _Clock(dev, timings, cpu_timings)
    correct = preds == labels.to(preds.dtype).view(1, -1)
    x = PairInputs(preds, labels, pmax, num_classes, correct, gram01(correct, kern), kern, chunk_bytes)
    m = preds.shape[0]
    out: dict[str, torch.Tensor] = {"both_right": x.both.double() * x.pct}
    for group in METRIC_GROUPS:
        if group == "flips" or group in metrics:
            out.update(GROUP_FUNCTIONS[group](x))
            clock.lap(group)
        else:
            nan = torch.full((m, m), float("nan"), dtype=torch.float64, device=dev)
            out.update({name: nan for name in group_metrics(group)})
    return {key: v.cpu() for key, v in out.items()}


class _Clock:
    """Seconds per metric group, wall and CPU (benchmarks and docs/compare.md read them)."""

    def __init__(self, dev: torch.device, timings: dict | None, cpu_timings: dict | None):
        self.dev, self.timings, self.cpu_timings = dev, timings, cpu_timings
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def lap(self, name: str) -> None:
        if self.dev.type == "cuda":
            torch.cuda.synchronize(self.dev)
        now, cpu_now = time.perf_counter(), time.process_time()
        if self.timings is not None:
            self.timings[name] = self.timings.get(name, 0.0) + now - self.wall
        if self.cpu_timings is not None:
            self.cpu_timings[name] = self.cpu_timings.get(name, 0.0) + cpu_now - self.cpu
        self.wall, self.cpu = now, cpu_now


def pairs_frame(names: list[str], preds, labels, pmax, num_classes: int, metrics=DEFAULT_METRICS,
                kernel: Kernel | str | None = None, device: str | None = None) -> pd.DataFrame:
    """All ordered pairs (student != teacher) as rows, ready for the store's pairs table."""
    mats = pair_matrices(torch.as_tensor(preds), torch.as_tensor(labels), torch.as_tensor(pmax), num_classes,
                         metrics=metrics, kernel=kernel, device=device)
    m = len(names)
    s_idx, t_idx = np.nonzero(~np.eye(m, dtype=bool))
    df = pd.DataFrame({"student": np.asarray(names)[s_idx], "teacher": np.asarray(names)[t_idx]})
    for key, mat in mats.items():
        if key == "both_right":
            continue
        df[key] = mat.numpy()[s_idx, t_idx]
    return df
