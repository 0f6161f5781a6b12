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
from zoo_sweep.science.pair_metrics import CLASS_COUNTS

METRIC_GROUPS = ("flips", "agreement", "ensemble", "classes")  # "flips" (accuracy, rho, oracle) is always on
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
def pair_matrices(preds: torch.Tensor, labels: torch.Tensor, pmax: torch.Tensor, num_classes: int,
                  chunk_bytes: int = 256 << 20, metrics=DEFAULT_METRICS, timings: dict | None = None,
                  kernel: Kernel | str | None = None, device: str | torch.device | None = None,
                  cpu_timings: dict | None = None) -> dict[str, torch.Tensor]:
    """Every pair metric as an M x M matrix (row: student, column: teacher), percentages of the eval set.

    ``metrics`` picks the optional groups: "agreement", "ensemble" (ensemble_acc), "classes" (flip_entropy, top-p
    class counts); accuracies, flips and the oracle are always computed. A group left out is NaN. ``timings``, when
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
    m, n = preds.shape
    clock, cpu_clock = time.perf_counter(), time.process_time()

    def lap(name):
        nonlocal clock, cpu_clock
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        now, cpu_now = time.perf_counter(), time.process_time()
        if timings is not None:
            timings[name] = timings.get(name, 0.0) + now - clock
        if cpu_timings is not None:
            cpu_timings[name] = cpu_timings.get(name, 0.0) + cpu_now - cpu_clock
        clock, cpu_clock = now, cpu_now

    correct = preds == labels.to(preds.dtype).view(1, -1)
    both = gram01(correct, kern)
    right = both.diagonal().clone()  # each row's product with itself: a bool sum over M x N would copy it as int64
    pct = 100.0 / n
    acc = right.double() * pct
    pos = (right.view(1, -1) - both).double() * pct
    out = {
        "acc_student": acc.view(-1, 1).expand(m, m),
        "acc_teacher": acc.view(1, -1).expand(m, m),
        "rho_pos": pos,
        "rho_neg": pos.T,
        "oracle_acc": acc.view(-1, 1) + pos,
        "both_right": both.double() * pct,
    }
    out["acc_gap"] = out["acc_teacher"] - out["acc_student"]
    lap("flips")
    nan = torch.full((m, m), float("nan"), dtype=torch.float64, device=dev)
    if "agreement" in metrics:
        agree = both + same_wrong_counts(preds, labels, num_classes)
        agree.fill_diagonal_(n)
        out["agreement"] = agree.double() * pct
        lap("agreement")
    else:
        out["agreement"] = nan
    if "ensemble" in metrics:
        ge, gt = dominance_counts(correct, torch.as_tensor(pmax).to(dev))
        out["ensemble_acc"] = (both + ge + gt.T).double() * pct
        lap("ensemble")
    else:
        out["ensemble_acc"] = nan
    if "classes" in metrics:
        out.update(class_concentration(correct, labels, num_classes, chunk_bytes, k=kern))
        lap("classes")
    else:
        out["flip_entropy"] = nan
        for c in CLASS_COUNTS:
            out[c] = nan
    return {key: v.cpu() for key, v in out.items()}


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
