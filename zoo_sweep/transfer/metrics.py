"""Transfer metrics of a student after transfer (s_T) against its frozen start (s0) and the teacher (t).

Inputs are per-sample correctness vectors on the eval set; outputs are percentages (docs/methods.md,
"Transfer metrics"). Identity: delta = knowledge_gain - knowledge_loss.

Two transfer rates, under different names:

- sample level (``transfer_rate_sample``): the share of the samples in the positive-flip set of (s0, t) that
  s_T gets right.
- class level (``transfer_rate_class``, the paper's quantity): the knowledge gain of s_T in the teacher's
  top-p % flip classes over all positive flips of (s0, t); a gain need not sit on a sample the teacher gets
  right. ``improve_top{p}`` is the share of s_T's gain that falls in those classes ("top-p % improve").

Top-p % classes are the classes taken in descending count of (s0, t) positive flips until their share reaches
p %. The exact count is the smallest such number of classes; the authors' loop returns that number + 1, and
the paper's figures carry it: the ``*_paper`` columns use that convention (ties in the order as numpy's
``argsort`` reversed, as there). The exact columns break ties by class index.
"""

from __future__ import annotations

import numpy as np

from zoo_sweep.transfer.result_metrics import (
    RATE_TOP_P,
)

TOP_P = RATE_TOP_P


def transfer_metrics(s0_correct, sT_correct, t_correct, labels=None, num_classes: int | None = None) -> dict:
    """The metrics of one evaluation: each eval group's (``result_metrics``); the class-level rates only with
    ``labels`` (and the class count)."""
    s0, sT, t = (np.asarray(v, dtype=bool) for v in (s0_correct, sT_correct, t_correct))
    out: dict = {}
    for group, fn in GROUP_FUNCTIONS.items():
        if group == "class_rates" and labels is None:
            continue
        out.update(fn(s0, sT, t, labels, num_classes or (int(np.max(labels)) + 1 if labels is not None else 0)))
    return out


def _eval(s0, sT, t, _labels, _num_classes) -> dict[str, float]:
    pct = 100.0 / len(s0)
    pos_set, neg_set = ~s0 & t, s0 & ~t
    rho_before = pos_set.sum() * pct
    rho_after = (~sT & t).sum() * pct
    return {
        "student_acc": sT.mean() * 100,
        "s0_acc": s0.mean() * 100,
        "delta": (sT.mean() - s0.mean()) * 100,
        "knowledge_gain": (~s0 & sT).sum() * pct,
        "knowledge_loss": (s0 & ~sT).sum() * pct,
        "rho_pos_before": rho_before,
        "rho_pos_after": rho_after,
        "rho_pos_change": rho_after - rho_before,
        "transfer_rate_sample": float(sT[pos_set].mean() * 100) if pos_set.any() else float("nan"),
        "damage_rate": float((~sT[neg_set]).mean() * 100) if neg_set.any() else float("nan"),
    }


def per_class(mask: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Samples of ``mask`` per true class, as float64 (the dtype the reference sorts)."""
    return np.bincount(np.asarray(labels)[mask], minlength=num_classes).astype(np.float64)


def top_p_classes(counts: np.ndarray, p: float, convention: str = "exact") -> np.ndarray:
    """The classes of the top-p % of ``counts``, largest first.

    "exact": the fewest classes whose share reaches p % (integer arithmetic; ties by class index).
    "paper": the authors' loop, one class more (its share in floating point, its order numpy's argsort).
    An all-zero count has no exact top classes; the authors' loop then returns two.
    """
    total = counts.sum()
    if convention == "paper":
        order = np.argsort(counts)[::-1]
        reached = np.flatnonzero(np.cumsum(counts[order]) / total * 100 >= p) if total else []
        k = (reached[0] + 1 if len(reached) else 1) + 1  # no flips: its share is NaN after one class
        return order[:k]
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.lexsort((np.arange(len(counts)), -counts))
    k = int(np.searchsorted(np.cumsum(counts[order]) * 100 >= p * total, True)) + 1
    return order[:k]


def class_rates(s0, sT, t, labels, num_classes: int) -> dict[str, float]:
    """The class-level transfer rates and top-p % improvements, both conventions (module docstring)."""
    flips = per_class(~s0 & t, labels, num_classes)  # c_k: the teacher's complementary knowledge per class
    gains = per_class(~s0 & sT, labels, num_classes)  # g_k: the knowledge gain of s_T per class
    out = {}
    for convention, suffix in (("exact", ""), ("paper", "_paper")):
        for p in TOP_P:
            g = gains[top_p_classes(flips, p, convention)].sum()
            out[f"improve_top{p}{suffix}"] = _ratio(g, gains.sum())
            if convention == "exact":
                out["transfer_rate_class" + ("" if p == 100 else f"_top{p}")] = _ratio(g, flips.sum())
            elif p == 100:
                out["transfer_rate_class_paper"] = _ratio(g, flips.sum())
    return out


def _ratio(a: float, b: float) -> float:
    return float(a / b * 100) if b else float("nan")


# the function of each eval group of result_metrics.TRANSFER_DECLARED: (s0, s_T, t correctness, labels, class
# count) -> exactly that group's metrics
GROUP_FUNCTIONS = {"eval": _eval, "class_rates": class_rates}
