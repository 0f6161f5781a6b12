"""Bootstrap confidence intervals over pairs (or over students): plain functions on numpy arrays.

Every interval is a percentile bootstrap: the rows (one row = one (student, teacher) pair of one method; or
whole groups of rows, see ``bootstrap_paired_diff``) are resampled with replacement ``n_boot`` times from a
seeded generator, the statistic is recomputed on each resample, and the interval is the (1 - level)/2 and
(1 + level)/2 quantiles of those values. The same seed gives the same interval, so a report is reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

N_BOOT = 2000
LEVEL = 0.95
SEED = 0


@dataclass(frozen=True)
class CI:
    """A point estimate with its bootstrap interval; ``n`` is the number of resampled units (pairs)."""

    estimate: float
    lo: float
    hi: float
    n: int

    def contains(self, value: float) -> bool:
        return bool(self.lo <= value <= self.hi)

    @property
    def width(self) -> float:
        return self.hi - self.lo

    @property
    def excludes_zero(self) -> bool:
        """True when the whole interval lies on one side of 0 (e.g. a difference that is distinguishable)."""
        return bool(self.lo > 0 or self.hi < 0)

    def format(self, digits: int = 2) -> str:
        if np.isnan(self.estimate):
            return ""
        if np.isnan(self.lo):
            return f"{self.estimate:.{digits}f}"
        return f"{self.estimate:.{digits}f} [{self.lo:.{digits}f}, {self.hi:.{digits}f}]"

    def __str__(self) -> str:
        return self.format()


NAN_CI = CI(float("nan"), float("nan"), float("nan"), 0)


def resample_indices(n: int, n_boot: int = N_BOOT, seed: int = SEED) -> np.ndarray:
    """``(n_boot, n)`` row indices drawn with replacement."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def _interval(estimate: float, boot: np.ndarray, n: int, level: float) -> CI:
    boot = boot[~np.isnan(boot)]
    if n < 2 or boot.size == 0:  # one pair: nothing to resample
        return CI(float(estimate), float("nan"), float("nan"), n)
    lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    return CI(float(estimate), float(lo), float(hi), n)


def bootstrap_mean(x, n_boot: int = N_BOOT, level: float = LEVEL, seed: int = SEED) -> CI:
    """Mean of ``x`` with a bootstrap interval (NaNs dropped)."""
    x = np.asarray(x, dtype=float)
    x = x[~np.isnan(x)]
    if x.size == 0:
        return NAN_CI
    boot = x[resample_indices(x.size, n_boot, seed)].mean(axis=1)
    return _interval(x.mean(), boot, x.size, level)


def bootstrap_rate(success, n_boot: int = N_BOOT, level: float = LEVEL, seed: int = SEED) -> CI:
    """Share of true values in percent, e.g. the share of pairs with delta > 0."""
    return bootstrap_mean(np.asarray(success, dtype=float) * 100, n_boot, level, seed)


def student_success(students, delta, n_boot: int = N_BOOT, level: float = LEVEL, seed: int = SEED) -> CI:
    """The paper's transfer success rate: per student the share of its teachers with delta > 0 (percent),
    then the median over students. Pairs are resampled; a student absent from a resample is skipped."""
    codes, _ = _codes(students)
    delta = np.asarray(delta, dtype=float)
    if delta.size == 0:
        return NAN_CI
    s = codes.max() + 1
    point = _median_rates(codes[None, :], (delta > 0)[None, :], s)[0]
    idx = resample_indices(delta.size, n_boot, seed)
    boot = _median_rates(codes[idx], (delta > 0)[idx], s)
    return _interval(point, boot, delta.size, level)


def per_student_rates(students, delta) -> dict:
    """Each student's share of teachers with delta > 0, in percent."""
    codes, names = _codes(students)
    delta = np.asarray(delta, dtype=float)
    n = np.bincount(codes, minlength=len(names))
    k = np.bincount(codes, weights=(delta > 0).astype(float), minlength=len(names))
    return {name: 100 * k[i] / n[i] for i, name in enumerate(names) if n[i]}


def _codes(values):
    names, codes = np.unique(np.asarray(values, dtype=object).astype(str), return_inverse=True)
    return codes.ravel(), list(names)


def _median_rates(codes: np.ndarray, success: np.ndarray, s: int) -> np.ndarray:
    """Rows of (code, success) samples -> per row the median over present students of their success rate."""
    b = codes.shape[0]
    flat = (codes + s * np.arange(b)[:, None]).ravel()
    n = np.bincount(flat, minlength=b * s).reshape(b, s)
    k = np.bincount(flat, weights=success.ravel().astype(float), minlength=b * s).reshape(b, s)
    with np.errstate(invalid="ignore", divide="ignore"):
        rates = np.where(n > 0, 100 * k / np.maximum(n, 1), np.nan)
    return np.nanmedian(rates, axis=1)


def bootstrap_paired_diff(a, b, stat: str = "mean", n_boot: int = N_BOOT, level: float = LEVEL,
                          seed: int = SEED, groups=None) -> CI:
    """Difference ``stat(a) - stat(b)`` of two methods run on the same pairs (row i of a and b is one pair);
    pairs are resampled jointly. ``stat`` is "mean" (e.g. of delta) or "rate" (share of values > 0, percent).

    ``groups`` (one label per row, e.g. the student): resample whole groups instead of pairs (a cluster
    bootstrap; ``n`` is then the number of groups). Pairs that share a student share its run-to-run luck, and
    a method that ignores the teacher gives one result per student; resampling pairs as independent then
    makes the interval too narrow."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or (groups is not None and len(groups) != a.size):
        raise ValueError("paired samples (and their groups) must have the same length")
    keep = ~(np.isnan(a) | np.isnan(b))
    a, b = a[keep], b[keep]
    if a.size == 0:
        return NAN_CI
    if stat == "rate":
        a, b = (a > 0) * 100.0, (b > 0) * 100.0
    elif stat != "mean":
        raise ValueError(f"unknown statistic {stat!r}: mean or rate")
    d = a - b
    if groups is None:
        boot = d[resample_indices(d.size, n_boot, seed)].mean(axis=1)
        return _interval(d.mean(), boot, d.size, level)
    codes, names = _codes(np.asarray(groups, dtype=object)[keep])
    sums, counts = np.bincount(codes, weights=d), np.bincount(codes).astype(float)
    idx = resample_indices(len(names), n_boot, seed)
    return _interval(d.mean(), sums[idx].sum(axis=1) / counts[idx].sum(axis=1), len(names), level)


def bootstrap_diff(a, b, stat: str = "mean", n_boot: int = N_BOOT, level: float = LEVEL, seed: int = SEED) -> CI:
    """Difference of two independent samples (methods run on different pairs); each is resampled on its own."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    a, b = a[~np.isnan(a)], b[~np.isnan(b)]
    if a.size == 0 or b.size == 0:
        return NAN_CI
    if stat == "rate":
        a, b = (a > 0) * 100.0, (b > 0) * 100.0
    elif stat != "mean":
        raise ValueError(f"unknown statistic {stat!r}: mean or rate")
    ba = a[resample_indices(a.size, n_boot, seed)].mean(axis=1)
    bb = b[resample_indices(b.size, n_boot, seed + 1)].mean(axis=1)
    return _interval(a.mean() - b.mean(), ba - bb, min(a.size, b.size), level)


def bootstrap_corr(x, y, method: str = "spearman", n_boot: int = N_BOOT, level: float = LEVEL,
                   seed: int = SEED) -> CI:
    """Pearson or Spearman correlation of paired samples, pairs resampled (resamples with a constant column
    have no correlation and are left out)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = ~(np.isnan(x) | np.isnan(y))
    x, y = x[keep], y[keep]
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return CI(float("nan"), float("nan"), float("nan"), int(x.size))
    if method == "spearman":
        x, y = _rank(x), _rank(y)
    elif method != "pearson":
        raise ValueError(f"unknown correlation {method!r}: pearson or spearman")
    idx = resample_indices(x.size, n_boot, seed)
    bx, by = x[idx], y[idx]
    if method == "spearman":  # ranks within each resample
        bx, by = _rank_rows(bx), _rank_rows(by)
    return _interval(_pearson(x[None], y[None])[0], _pearson(bx, by), int(x.size), level)


def _pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x = x - x.mean(axis=1, keepdims=True)
    y = y - y.mean(axis=1, keepdims=True)
    den = np.sqrt((x * x).sum(axis=1) * (y * y).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (x * y).sum(axis=1) / np.where(den > 0, den, 1), np.nan)


def _rank(x: np.ndarray) -> np.ndarray:
    return _rank_rows(x[None])[0]


def _rank_rows(x: np.ndarray) -> np.ndarray:
    """Ranks (1..n, ties get their average rank) within each row of a 2-d array."""
    rows, n = x.shape
    order = np.argsort(x, axis=1, kind="mergesort")
    xs = np.take_along_axis(x, order, axis=1)
    new = np.ones_like(xs, dtype=bool)
    new[:, 1:] = xs[:, 1:] != xs[:, :-1]
    flat = (np.cumsum(new, axis=1) - 1 + n * np.arange(rows)[:, None]).ravel()
    pos = np.tile(np.arange(1, n + 1, dtype=float), rows)
    avg = np.bincount(flat, weights=pos, minlength=rows * n) / np.maximum(np.bincount(flat, minlength=rows * n), 1)
    out = np.empty((rows, n))
    np.put_along_axis(out, order, avg[flat].reshape(rows, n), axis=1)
    return out


def spearman(x, y) -> float:
    """Spearman rank correlation; NaN when either side is constant or fewer than 2 values remain."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = ~(np.isnan(x) | np.isnan(y))
    x, y = x[keep], y[keep]
    if x.size < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(_pearson(_rank(x)[None], _rank(y)[None])[0])
