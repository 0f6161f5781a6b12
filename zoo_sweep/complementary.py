"""Complementary knowledge of every ordered pair from the models' prediction records, in one vectorised pass.

Every metric is exact (integer counts; percentages and the entropy are computed from them at the end), and
none loops over pairs or samples in Python. With the correctness matrix C (models x samples, int8):

- flips: both[s, t] = (C @ C.T)[s, t] is one int8 matrix product; positive flips are r_t - both (r: right
  counts), negative flips the transpose, oracle r_s + r_t - both.
- agreement = both right + both wrong *with the same class*. The second term groups the wrong predictions
  by (sample, predicted class): a group of g models adds one to each of its g^2 ordered pairs. Small groups
  are enumerated, large ones become one-hot columns of an int8 matrix product.
- confidence ensemble = both right + #{s right, t wrong, pmax_s >= pmax_t} + #{t right, s wrong,
  pmax_t > pmax_s}. The two dominance counts are split by confidence buckets (global quantiles of pmax):
  pairs in different buckets are settled by one int8 product per bucket edge, pairs in the same bucket of
  the same sample are enumerated and compared. This is the costly metric at zoo scale (see BENCHMARKS.md).
- per-class positive flips: samples are grouped by class, so pos_k for all pairs is one batched product
  (classes x students x teachers); its histogram of per-class counts gives the entropy (sum c ln c) and the
  top-p% class counts exactly, without sorting.

Definitions: ../shared/METRICS.md ("Complementary knowledge").
"""

from __future__ import annotations

import math
import time

import numpy as np
import pandas as pd
import torch

TOP_P = (2, 5, 20, 50)
METRIC_GROUPS = ("flips", "agreement", "ensemble", "classes")  # "flips" (accuracy, rho, oracle) is always on
DEFAULT_METRICS = METRIC_GROUPS
_BF16_EXACT = 256  # integers up to 256 are exact in bfloat16: the inner size of one per-class product chunk


# ---------------------------------------------------------------------------------------------- primitives
def _gram(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(a @ b.T) for 0/1 matrices, exact int64: int8 inputs, int32 accumulation (AMX/VNNI where present)."""
    a8, b8 = a.to(torch.int8), b.to(torch.int8)
    try:
        return torch._int_mm(a8, b8.T).long()
    except (RuntimeError, NotImplementedError):  # builds without the int8 kernel: float32 is exact below 2**24
        return (a8.float() @ b8.float().T).round().long()


def flip_counts(correct: torch.Tensor) -> torch.Tensor:
    """pos[s, t]: samples the teacher t gets right and the student s gets wrong (counts, float64)."""
    both = _gram(correct, correct)
    right = correct.sum(dim=1)
    return (right.view(1, -1) - both).double()


def _pair_counts(s_idx: torch.Tensor, t_idx: torch.Tensor, m: int) -> torch.Tensor:
    return torch.bincount(s_idx * m + t_idx, minlength=m * m).view(m, m)


def _enumerate_cross(a_key, a_val, b_key, b_val, max_pairs: int = 1 << 24):
    """Yield (ia, ib) index pairs of all entries a, b with equal keys (b_key sorted), in bounded chunks."""
    lo = torch.searchsorted(b_key, a_key, right=False)
    hi = torch.searchsorted(b_key, a_key, right=True)
    cnt = hi - lo
    keep = cnt > 0
    ia_all, lo, cnt = torch.nonzero(keep).flatten(), lo[keep], cnt[keep]
    if ia_all.numel() == 0:
        return
    ends = torch.cumsum(cnt, 0)
    start = 0
    while start < ia_all.numel():
        # as many a-entries as fit in max_pairs (at least one)
        base = int(ends[start - 1]) if start else 0
        stop = int(torch.searchsorted(ends, base + max_pairs, right=True))
        stop = max(stop, start + 1)
        c = cnt[start:stop]
        ia = torch.repeat_interleave(ia_all[start:stop], c)
        first = torch.repeat_interleave(lo[start:stop] - (torch.cumsum(c, 0) - c), c)
        ib = first + torch.arange(ia.numel())
        yield a_val[ia], b_val[ib], ia, ib
        start = stop


# ---------------------------------------------------------------------------------------------- agreement
def same_wrong_counts(preds: torch.Tensor, wrong: torch.Tensor, num_classes: int, dense_min: int | None = None):
    """sw[s, t] = #{x : s and t both wrong at x and predict the same class} (off-diagonal exact).

    Wrong predictions are grouped by (sample, predicted class). A group of g models adds one to g^2 ordered
    pairs: groups smaller than ``dense_min`` are enumerated, larger ones are one-hot columns of an int8
    product (the cheaper side for each; a product column costs about M^2, an enumerated group g^2).
    """
    m, n = preds.shape
    out = torch.zeros(m, m, dtype=torch.int64)
    x, s = torch.nonzero(wrong.T, as_tuple=True)  # sample-major
    if x.numel() == 0:
        return out
    key = x * num_classes + preds.T[x, s].long()
    key, order = torch.sort(key, stable=True)
    s = s[order]
    uniq, counts = torch.unique_consecutive(key, return_counts=True)
    dense_min = dense_min if dense_min is not None else max(2, m // 32)
    group = torch.repeat_interleave(torch.arange(uniq.numel()), counts)
    size = counts[group]
    light = (size >= 2) & (size < dense_min)
    if light.any():
        k, v = key[light], s[light]
        for a, b, _, _ in _enumerate_cross(k, v, k, v):
            out += _pair_counts(a, b, m)
    heavy = size >= dense_min
    if heavy.any():
        hg = group[heavy]
        col = torch.unique_consecutive(hg, return_inverse=True)[1]
        hs = s[heavy]
        cols = int(col.max()) + 1
        step = max(1, (64 << 20) // max(m, 1))  # one-hot chunk of at most ~64 MB
        for c0 in range(0, cols, step):
            sel = (col >= c0) & (col < c0 + step)
            d = torch.zeros(m, min(step, cols - c0), dtype=torch.int8)
            d[hs[sel], col[sel] - c0] = 1
            out += _gram(d, d)
    return out


# ---------------------------------------------------------------------------------------------- ensemble
def dominance_counts(correct: torch.Tensor, pmax: torch.Tensor, buckets: int | None = None):
    """(ge, gt): ge[s, t] = #{x : s right, t wrong, pmax_s >= pmax_t}; gt the same with >."""
    m, n = correct.shape
    p = pmax.to(torch.float32)
    if buckets is None:  # cost model: (B-1) int8 products against enumerating ~pairs/B same-bucket pairs
        per_sample = correct.sum(0).double()
        work = float((per_sample * (m - per_sample)).sum())
        buckets = int(round(math.sqrt(work / max(1.0, m * m * n) * 4000))) if m >= 64 else 1
        buckets = max(1, min(buckets, 64))
    ge = torch.zeros(m, m, dtype=torch.int64)
    if buckets > 1:
        flat = p.flatten()
        gen = torch.Generator().manual_seed(0)
        sample = flat[torch.randint(0, flat.numel(), (min(flat.numel(), 1 << 20),), generator=gen)]
        qs = torch.linspace(0, 1, buckets + 1, dtype=torch.float64)[1:-1]
        edges = torch.unique(torch.quantile(sample.double(), qs).float())
        b = torch.bucketize(p, edges).to(torch.int8)  # same value -> same bucket; buckets strictly ordered
        nb = int(edges.numel()) + 1
        b_right = torch.where(correct, b, torch.tensor(-1, dtype=torch.int8))
        b_wrong = torch.where(correct, torch.tensor(-2, dtype=torch.int8), b)
        for j in range(nb - 1):  # s right in a higher bucket than t wrong in bucket j: p_s > p_t strictly
            ge += _gram(b_right > j, b_wrong == j)
        bt = b.T.contiguous().view(-1).long()
    else:
        nb, bt = 1, None
    cross = ge.clone()
    ge = torch.zeros(m, m, dtype=torch.int64)
    # same sample, same bucket: enumerate right x wrong entries (sample-major) and compare
    ct = correct.T.contiguous().view(-1)
    pt = p.T.contiguous().view(-1)
    fr = torch.nonzero(ct).flatten()  # flat index x * m + model
    fw = torch.nonzero(~ct).flatten()
    kr = (fr // m) * nb + (bt[fr] if bt is not None else 0)
    kw = (fw // m) * nb + (bt[fw] if bt is not None else 0)
    kw, order = torch.sort(kw, stable=True)
    fw = fw[order]
    ties = torch.zeros(m, m, dtype=torch.int64)
    for fs, ft, _, _ in _enumerate_cross(kr, fr, kw, fw):
        a, c = pt[fs], pt[ft]
        pair = (fs % m) * m + ft % m
        ge += torch.bincount(pair[a >= c], minlength=m * m).view(m, m)
        ties += torch.bincount(pair[a == c], minlength=m * m).view(m, m)  # rare: gt = ge - ties
    return cross + ge, cross + ge - ties


# ---------------------------------------------------------------------------------------------- per class
def _class_blocks(mat: torch.Tensor, labels: torch.Tensor, num_classes: int):
    """mat (M x n, 0/1) regrouped as (classes, M, g) bfloat16, zero-padded to the largest class size g."""
    order = torch.argsort(labels, stable=True)
    lab = labels[order]
    sizes = torch.bincount(lab, minlength=num_classes)
    g = max(1, int(sizes.max()))
    if int(sizes.min()) == g:  # equal classes (ImageNet val: 50 each): a reshape, no scatter
        return mat[:, order].to(torch.bfloat16).view(mat.shape[0], num_classes, g).transpose(0, 1).contiguous(), g
    pos = torch.arange(lab.numel()) - (torch.cumsum(sizes, 0) - sizes)[lab]
    out = torch.zeros(num_classes, mat.shape[0], g, dtype=torch.bfloat16)
    out[lab, :, pos] = mat[:, order].T.to(torch.bfloat16)
    return out, g


def per_class_flips(correct: torch.Tensor, labels: torch.Tensor, num_classes: int, rows: slice = slice(None)):
    """pos_k[s, t, k] for the students in ``rows``: positive flips whose true class is k (float64)."""
    wb, g = _class_blocks(~correct[rows], labels, num_classes)
    cb, _ = _class_blocks(correct, labels, num_classes)
    return _class_counts(wb, cb, g).permute(1, 2, 0).double()


def _class_counts(wb: torch.Tensor, cb: torch.Tensor, g: int) -> torch.Tensor:
    """(classes, R, M) int16 counts from class blocks; bf16 products are exact per chunk of <= 256 samples."""
    out = None
    for c0 in range(0, g, _BF16_EXACT):
        part = torch.bmm(wb[:, :, c0:c0 + _BF16_EXACT], cb[:, :, c0:c0 + _BF16_EXACT].transpose(1, 2))
        part = part.to(torch.int16 if g < 32768 else torch.int32)
        out = part if out is None else out.add_(part)
    return out


def concentration(counts: torch.Tensor, top_p=TOP_P) -> dict[str, torch.Tensor]:
    """Entropy (natural log) of the per-class flip distribution and the top-p% class counts, per pair.

    ``counts`` has the classes on the last axis; this sorts them (fine for few pairs or few classes).
    """
    counts = counts.double()
    total = counts.sum(dim=-1)
    p = counts / total.clamp_min(1).unsqueeze(-1)
    entropy = -torch.special.xlogy(p, p).sum(dim=-1)  # 0 log 0 = 0
    share = torch.sort(p, dim=-1, descending=True).values.cumsum(dim=-1)
    out = {"flip_entropy": entropy}
    for q in top_p:
        # the smallest number of classes whose cumulative share reaches q% (0 when there are no flips)
        n = (share < q / 100 - 1e-12).sum(dim=-1) + 1
        out[f"top{q}_classes"] = torch.where(total > 0, n, torch.zeros_like(n))
    return out


def concentration_from_hist(hist: torch.Tensor, top_p=TOP_P) -> dict[str, torch.Tensor]:
    """The same statistics from hist[..., v] = number of classes with exactly v positive flips (exact)."""
    hist = hist.long()
    v = torch.arange(hist.shape[-1])
    cv = hist * v  # flips held at level v
    total = cv.sum(-1)
    clogc = torch.special.xlogy(v.double(), v.double())
    s = (hist.double() * clogc).sum(-1)
    t = total.double().clamp_min(1)
    entropy = torch.where(total > 0, torch.log(t) - s / t, torch.zeros_like(t))
    out = {"flip_entropy": entropy}
    # classes and flips at levels >= v (the top classes are the highest levels), with a zero level past the end
    n_ge = torch.nn.functional.pad(hist.flip(-1).cumsum(-1).flip(-1), (0, 1))
    s_ge = torch.nn.functional.pad(cv.flip(-1).cumsum(-1).flip(-1), (0, 1))
    s_levels = 100 * s_ge[..., 1:-1]  # levels v = 1..V
    for q in top_p:
        need = q * total  # in hundredths: reach q% of the flips <=> 100 * flips >= q * total
        level = (s_levels >= need.unsqueeze(-1)).sum(-1)  # the lowest level still needed: v*
        level = level.clamp_min(1)  # (no flips: any level; the result is zeroed below)
        above_n = n_ge.gather(-1, (level + 1).unsqueeze(-1)).squeeze(-1)
        above_s = s_ge.gather(-1, (level + 1).unsqueeze(-1)).squeeze(-1)
        extra = torch.div(need - 100 * above_s + 100 * level - 1, 100 * level, rounding_mode="floor")
        out[f"top{q}_classes"] = torch.where(total > 0, above_n + extra, torch.zeros_like(total))
    return out


def class_concentration(correct: torch.Tensor, labels: torch.Tensor, num_classes: int,
                        chunk_bytes: int = 256 << 20) -> dict[str, torch.Tensor]:
    """flip_entropy and top-p class counts for all pairs, in chunks of student rows (the counts of a chunk
    are laid out pair-major, so the histogram's increments stay within one pair's bins)."""
    m = correct.shape[0]
    cb, g = _class_blocks(correct, labels, num_classes)
    wb, _ = _class_blocks(~correct, labels, num_classes)
    bins = g + 1
    per_row = m * num_classes * 8 + m * bins * 8 * 3  # counts (int16 twice, int32) + histogram and its sums
    rows_per_chunk = max(1, min(m, chunk_bytes // max(1, per_row)))

    def chunk(start: int) -> dict[str, torch.Tensor]:
        r = slice(start, min(m, start + rows_per_chunk))
        cnt = _class_counts(wb[:, r], cb, g).permute(1, 2, 0).contiguous()  # R x M x classes: pair-major
        nr = cnt.shape[0]
        if num_classes <= 64 or bins > 4096:  # few classes (or huge classes): sort per pair
            return concentration(cnt)
        idx = cnt.to(torch.int32).add_(torch.arange(nr * m, dtype=torch.int32).view(nr, m, 1) * bins)
        hist = torch.bincount(idx.view(-1), minlength=nr * m * bins).view(nr, m, bins)
        return concentration_from_hist(hist)

    results = [chunk(start) for start in range(0, m, rows_per_chunk)]
    return {k: torch.cat([r[k] for r in results]) for k in results[0]}


# ---------------------------------------------------------------------------------------------- all pairs
def pair_matrices(preds: torch.Tensor, labels: torch.Tensor, pmax: torch.Tensor, num_classes: int,
                  chunk_bytes: int = 256 << 20, metrics=DEFAULT_METRICS,
                  timings: dict | None = None) -> dict[str, torch.Tensor]:
    """Every pair metric as an M x M matrix (row: student, column: teacher), percentages of the eval set.

    ``metrics`` picks the optional groups: "agreement", "ensemble" (ensemble_acc), "classes" (flip_entropy,
    top-p class counts); accuracies, flips and the oracle are always computed. A group left out is NaN.
    ``timings``, when given, receives the seconds spent per group.
    """
    unknown = set(metrics) - set(METRIC_GROUPS)
    if unknown:
        raise ValueError(f"unknown metric group(s) {sorted(unknown)}; known: {', '.join(METRIC_GROUPS)}")
    preds, labels = torch.as_tensor(preds).long(), torch.as_tensor(labels).long()
    m, n = preds.shape
    clock = time.perf_counter()

    def lap(name):
        nonlocal clock
        now = time.perf_counter()
        if timings is not None:
            timings[name] = timings.get(name, 0.0) + now - clock
        clock = now

    correct = preds == labels.view(1, -1)
    both = _gram(correct, correct)
    right = correct.sum(dim=1)
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
    nan = torch.full((m, m), float("nan"), dtype=torch.float64)
    if "agreement" in metrics:
        agree = both + same_wrong_counts(preds, ~correct, num_classes)
        agree.fill_diagonal_(n)
        out["agreement"] = agree.double() * pct
        lap("agreement")
    else:
        out["agreement"] = nan
    if "ensemble" in metrics:
        ge, gt = dominance_counts(correct, torch.as_tensor(pmax))
        out["ensemble_acc"] = (both + ge + gt.T).double() * pct
        lap("ensemble")
    else:
        out["ensemble_acc"] = nan
    if "classes" in metrics:
        out.update(class_concentration(correct, labels, num_classes, chunk_bytes))
        lap("classes")
    else:
        out["flip_entropy"] = nan
        for q in TOP_P:
            out[f"top{q}_classes"] = nan
    return out


def pairs_frame(names: list[str], preds, labels, pmax, num_classes: int, metrics=DEFAULT_METRICS) -> pd.DataFrame:
    """All ordered pairs (student != teacher) as rows, ready for the store's pairs table."""
    mats = pair_matrices(torch.as_tensor(preds), torch.as_tensor(labels), torch.as_tensor(pmax), num_classes,
                         metrics=metrics)
    m = len(names)
    s_idx, t_idx = np.nonzero(~np.eye(m, dtype=bool))
    df = pd.DataFrame({"student": np.asarray(names)[s_idx], "teacher": np.asarray(names)[t_idx]})
    for key, mat in mats.items():
        if key == "both_right":
            continue
        df[key] = mat.numpy()[s_idx, t_idx]
    return df
