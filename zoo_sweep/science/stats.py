"""Confidence intervals for sweep results: plain functions on numpy arrays.

Most intervals are a percentile bootstrap: the rows (one row = one (student, teacher) pair of one method; or
whole groups of rows, see ``bootstrap_paired_diff``) are resampled with replacement ``n_boot`` times from a
seeded generator, the statistic is recomputed on each resample, and the interval is the (1 - level)/2 and
(1 + level)/2 quantiles of those values. The same seed gives the same interval, so a report is reproducible.

``hierarchical_mean`` (and ``hierarchical_paired_diff``) take rows of single runs labelled by student, pair and
seed, nested as students > pairs > seeds. Seeds are averaged within a pair, pairs are averaged, and the interval
resamples whole students only (each with all of its pairs and seeds), its deviations from the estimate widened
by sqrt(n/(n-1)) * t/z for n students; with fewer than 5 students it is a t interval over the student means
(``CI.method`` says which). ``seed_sd`` is the pooled seed-to-seed standard deviation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from statistics import NormalDist

import numpy as np

N_BOOT = 2000
LEVEL = 0.95
SEED = 0


@dataclass(frozen=True)
class CI:
    """A point estimate with its interval; ``n`` is the number of resampled units (pairs; students for the
    hierarchical intervals); ``method`` says how the interval was computed."""

    estimate: float
    lo: float
    hi: float
    n: int
    method: str = "bootstrap"

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


def hierarchical_mean(x, students, pairs=None, seeds=None, n_boot: int = N_BOOT, level: float = LEVEL,
                      seed: int = SEED) -> CI:
    """Mean of ``x`` over rows of single runs nested as students > pairs (within a student) > seeds (within a
    pair), with an interval that resamples students. ``n`` is the number of students.

    ``students``, ``pairs`` and ``seeds`` give one label per row. A pair is a (student, ``pairs`` label), so the
    teacher's name is enough; ``pairs=None``: the rows of a student are the seeds of one unit (e.g. a method that
    ignores the teacher), and with ``seeds`` also None every row is a unit of its own (e.g. pairs whose seeds are
    already averaged). ``seeds`` only checks that no (student, pair, seed) appears twice; rows in a pair are its
    seeds either way. Rows with NaN ``x`` are dropped with their labels.

    The estimate averages the seeds of each pair and then the pairs, so it is ``bootstrap_mean`` of the
    seed-averaged pairs, and a student weighs by its number of pairs, whatever the number of seeds.

    The interval resamples whole students with replacement, each with all its pairs and seeds, and recomputes
    the estimate (sum of the drawn students' pair means over their number of pairs, so students with more pairs
    count more, as in the estimate). A student's mean already carries its pairs' and seeds' variation in the
    right proportion (var = s_student^2 + s_pair^2 / P + s_seed^2 / (P R)); resampling pairs within students and
    seeds within pairs as well adds those inner terms a second time, so the coverage would depend on how the
    variance splits (far too wide when seeds dominate, still too narrow with few students when students
    dominate). The lower levels are therefore kept as they are (resampling at the top level only: Davison &
    Hinkley 1997, sec. 3.8; Field & Welsh 2007; Ren et al. 2010). Resampling n students alone under-covers
    too: the bootstrap variance is (n - 1)/n of the unbiased one, and a normal-width interval ignores that the
    variance is estimated from n students (the plain 95 % percentile interval covers about 86 % with 6
    students, 88 % with 8). So the bootstrap deviations from the estimate are scaled by
    sqrt(n / (n - 1)) * t_{n-1} / z, in the spirit of Hesterberg's (2015) expanded percentile interval: for a
    symmetric spread of student means this is the t interval over the students, while the bootstrap keeps any
    skew and the weighting of students with unequal numbers of pairs. In the simulation of
    ``tests/unit/test_stats.py`` (1,000 sweeps per design with known student, pair and seed variances:
    balanced, unbalanced, seed- and student-dominated, 6 to 12 students) the 95 % interval covers the true mean
    in 93.6-95.5 % of sweeps (94.2 % on average over six simulation seeds), where the plain student bootstrap
    covers 85.6-91.6 %.

    With 2 to 4 students (too few distinct resamples) the interval is the t interval over the student means:
    estimate +- t_{n-1} * se, se = sqrt(n / (n - 1) * sum_s (S_s - est K_s)^2) / K (S_s: the sum of student s's
    pair means, K_s their number, K all pairs; with equal K_s this is sd(student means) / sqrt(n)). One student:
    the estimate only, NaN bounds."""
    x = np.asarray(x, dtype=float).ravel()
    labels = [None if v is None else np.asarray(v, dtype=object).ravel() for v in (students, pairs, seeds)]
    if any(v is not None and v.size != x.size for v in labels):
        raise ValueError("x and its students, pairs and seeds must have the same length")
    if not 0 < level < 1:
        raise ValueError(f"level must lie between 0 and 1, not {level}")
    keep = ~np.isnan(x)
    x = x[keep]
    if x.size == 0:
        return NAN_CI
    stud, pair, seeds = (None if v is None else v[keep] for v in labels)
    return _over_students(*_student_sums(x, stud, pair, seeds), n_boot, level, seed)


def _over_students(sums: np.ndarray, counts: np.ndarray, n_boot: int, level: float, seed: int) -> CI:
    """``hierarchical_mean``'s estimate and interval from each student's sum of pair means and number of pairs."""
    n = sums.size
    est = float(sums.sum() / counts.sum())
    if n == 1:
        return CI(est, float("nan"), float("nan"), 1, "one student: no interval")
    if n < 5:
        se = math.sqrt(n / (n - 1) * float(((sums - est * counts) ** 2).sum())) / counts.sum()
        q = t_quantile((1 + level) / 2, n - 1)
        return CI(est, est - q * se, est + q * se, n, f"t over {n} student means")
    idx = resample_indices(n, n_boot, seed)
    boot = sums[idx].sum(axis=1) / counts[idx].sum(axis=1)
    q_lo, q_hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    scale = math.sqrt(n / (n - 1)) * t_quantile((1 + level) / 2, n - 1) / NormalDist().inv_cdf((1 + level) / 2)
    return CI(est, float(est + scale * (q_lo - est)), float(est + scale * (q_hi - est)), n,
              f"bootstrap over {n} students, t-scaled")


def hierarchical_paired_diff(a, b, students, pairs=None, seeds=None, n_boot: int = N_BOOT, level: float = LEVEL,
                             seed: int = SEED) -> CI:
    """``hierarchical_mean(a - b, ...)``: two methods' results on the same rows (row i of a and b is the same
    student, pair and seed); rows where either is NaN are dropped."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError("paired samples must have the same length")
    return hierarchical_mean(a - b, students, pairs, seeds, n_boot, level, seed)


def seed_sd(x, units, seeds=None) -> float:
    """Seed-to-seed standard deviation of ``x``: the within-unit sample standard deviation (ddof 1) pooled over
    the units with at least 2 seeds, weighted by their degrees of freedom (n_u - 1). ``units``: one label per row,
    e.g. "student|teacher|method"; ``seeds`` (optional) checks that no unit has a seed twice. NaN values are
    dropped; NaN when no unit has 2 seeds."""
    x = np.asarray(x, dtype=float).ravel()
    units = np.asarray(units, dtype=object).ravel()
    if units.size != x.size or (seeds is not None and len(seeds) != x.size):
        raise ValueError("x and its units (and seeds) must have the same length")
    keep = ~np.isnan(x)
    x, units = x[keep], units[keep]
    if x.size == 0:
        return float("nan")
    codes, names = _codes(units)
    if seeds is not None:
        _check_unique(codes, np.asarray(seeds, dtype=object).ravel()[keep], "unit")
    n = np.bincount(codes, minlength=len(names))
    mean = np.bincount(codes, weights=x, minlength=len(names)) / n
    df = x.size - len(names)  # sum over units of (n_u - 1); a unit with one seed adds nothing
    if df == 0:
        return float("nan")
    return float(np.sqrt(((x - mean[codes]) ** 2).sum() / df))


def _student_sums(x: np.ndarray, students: np.ndarray, pairs, seeds) -> tuple[np.ndarray, np.ndarray]:
    """Per student: the sum of its pair means (seeds averaged) and its number of pairs."""
    s_codes, s_names = _codes(students)
    if pairs is not None:
        p_codes, p_names = _codes(pairs)
        _, units = np.unique(s_codes * len(p_names) + p_codes, return_inverse=True)
    elif seeds is not None:
        units = s_codes
    else:
        units = np.arange(x.size)
    units = units.ravel()
    if seeds is not None:
        _check_unique(units, seeds, "(student, pair)")
    k = units.max() + 1
    unit_mean = np.bincount(units, weights=x, minlength=k) / np.bincount(units, minlength=k)
    unit_student = np.zeros(k, dtype=int)
    unit_student[units] = s_codes
    sums = np.bincount(unit_student, weights=unit_mean, minlength=len(s_names))
    counts = np.bincount(unit_student, minlength=len(s_names)).astype(float)
    return sums, counts


def _check_unique(units: np.ndarray, seeds: np.ndarray, what: str) -> None:
    s_codes, s_names = _codes(seeds)
    key = units.astype(np.int64) * len(s_names) + s_codes
    if np.unique(key).size < key.size:
        raise ValueError(f"a {what} has the same seed twice; label the rows so that each run appears once")


@lru_cache(maxsize=256)
def t_quantile(p: float, df: int) -> float:
    """Quantile ``p`` of Student's t distribution with ``df`` (a positive integer) degrees of freedom, e.g.
    ``t_quantile(0.975, 3)`` = 3.182. The two-sided probability P(|T| < t) of an integer df is a finite series
    in theta = atan(t / sqrt(df)) (Abramowitz & Stegun 26.7.3-4); it is inverted by bisection on theta."""
    if not 0 < p < 1:
        raise ValueError(f"p must lie between 0 and 1, not {p}")
    if df < 1 or int(df) != df:
        raise ValueError(f"df must be a positive integer, not {df}")
    df = int(df)
    if p == 0.5:
        return 0.0
    target = abs(2 * p - 1)
    lo, hi = 0.0, math.pi / 2
    for _ in range(64):  # pi/2 / 2^64: below a double's resolution
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _t_two_sided(mid, df) < target else (lo, mid)
    t = math.sqrt(df) * math.tan((lo + hi) / 2)
    return t if p > 0.5 else -t


def _t_two_sided(theta: float, df: int) -> float:
    """P(|T| < sqrt(df) tan(theta)) for T ~ t(df), df a positive integer."""
    c2 = math.cos(theta) ** 2
    if df % 2 == 0:  # sin(theta) * (1 + 1/2 c^2 + (1*3)/(2*4) c^4 + ... up to c^(df-2))
        j = np.arange(1, df // 2)
        return math.sin(theta) * (1 + float(np.cumprod((2 * j - 1) / (2 * j) * c2).sum()))
    if df == 1:
        return 2 * theta / math.pi
    j = np.arange(1, (df - 1) // 2)  # 2/pi (theta + sin cos (1 + 2/3 c^2 + (2*4)/(3*5) c^4 + ... up to c^(df-3)))
    series = 1 + float(np.cumprod(2 * j / (2 * j + 1) * c2).sum())
    return 2 / math.pi * (theta + math.sin(theta) * math.cos(theta) * series)


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


def bootstrap_eta(groups, y, n_boot: int = N_BOOT, level: float = LEVEL, seed: int = SEED) -> CI:
    """The correlation ratio η of ``y`` on a categorical ``groups`` (e.g. a model family): sqrt(between-group
    sum of squares / total), the share of y's spread its group explains, in [0, 1]; for two groups it is the
    absolute point-biserial correlation. Rows resampled; NaN in y dropped."""
    y = np.asarray(y, dtype=float)
    g = np.asarray(groups, dtype=object).astype(str)
    keep = ~np.isnan(y)
    y, g = y[keep], g[keep]
    codes, names = _codes(g)
    if y.size < 3 or len(names) < 2 or np.ptp(y) == 0:
        return CI(float("nan"), float("nan"), float("nan"), int(y.size))
    k = len(names)

    def eta(c: np.ndarray, v: np.ndarray) -> np.ndarray:  # rows of resamples (b x n)
        b = c.shape[0]
        flat = (c + k * np.arange(b)[:, None]).ravel()
        n = np.bincount(flat, minlength=b * k).reshape(b, k)
        sums = np.bincount(flat, weights=v.ravel(), minlength=b * k).reshape(b, k)
        mean = v.mean(axis=1, keepdims=True)
        between = (sums ** 2 / np.maximum(n, 1)).sum(axis=1) - v.shape[1] * mean[:, 0] ** 2
        total = ((v - mean) ** 2).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.sqrt(np.clip(np.where(total > 0, between / total, np.nan), 0, 1))

    idx = resample_indices(y.size, n_boot, seed)
    return _interval(eta(codes[None], y[None])[0], eta(codes[idx], y[idx]), int(y.size), level)


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
