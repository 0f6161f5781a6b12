"""Complementary knowledge of every ordered pair from the models' prediction records, in one vectorised pass.

Every metric is exact (integer counts; percentages and the entropy are computed from them at the end), and
none loops over pairs or samples in Python. 0/1 matrix products use torch._int_mm (int8 in, int32 out:
oneDNN's AMX/VNNI kernel, ~1.5e12 multiply-adds per second on the 2-core benchmark machine when it is not
shared; bf16 is 2.5x and float32 10x slower there). With the correctness matrix C (models x samples):

- flips: both[s, t] = (C @ C.T)[s, t] is one int8 matrix product; positive flips are r_t - both (r: right
  counts), negative flips the transpose, oracle r_s + r_t - both.
- agreement = both right + both wrong *with the same class*. The second term groups the wrong predictions
  by (sample, predicted class), counted with a bincount per block of samples: a group of g models adds one
  to each of its g^2 ordered pairs. Groups of a few models are enumerated, larger ones become one-hot
  columns of an int8 product, singletons are dropped (they only touch the diagonal).
- confidence ensemble = both right + #{s right, t wrong, pmax_s >= pmax_t} + #{t right, s wrong,
  pmax_t > pmax_s}. The two dominance counts are split by global confidence buckets (quantiles of pmax, read
  from a lookup table over the float bits): a right entry in a higher bucket than a wrong one of the same
  sample dominates it, and every (sample, bucket) holding wrong entries below some right ones is one column
  of an int8 product; right x wrong entries of the same (sample, bucket) are enumerated and compared (in a
  second thread, overlapping the products). The bucket count trades product columns against enumerated
  pairs. This is the costly metric at zoo scale (see BENCHMARKS.md).
- per-class positive flips: samples are grouped by class, so pos_k for all pairs is one batched product
  (classes x students x teachers); its histogram of per-class counts gives the entropy (sum c ln c) and the
  top-p% class counts exactly, without sorting (chunks of students, two at a time: bincount is
  single-threaded).

Definitions: ../shared/METRICS.md ("Complementary knowledge").
"""

from __future__ import annotations

import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import torch

from zoo_sweep.science.pair_metrics import TOP_P

METRIC_GROUPS = ("flips", "agreement", "ensemble", "classes")  # "flips" (accuracy, rho, oracle) is always on
DEFAULT_METRICS = METRIC_GROUPS
_BF16_EXACT = 256  # integers up to 256 are exact in bfloat16: the inner size of one per-class product chunk


# ---------------------------------------------------------------------------------------------- primitives
_CLASS_ROWS = 20  # student rows per batched per-class product (see class_concentration)
_COLS = 61440  # columns (inner size) of one product chunk; a multiple of 64 and no power of two


def _int8(a: torch.Tensor) -> torch.Tensor:
    """0/1 matrix as int8 without a copy for bool (same bytes)."""
    return a.view(torch.int8) if a.dtype == torch.bool else a.to(torch.int8)


def _mm01(a8: torch.Tensor, b8: torch.Tensor) -> torch.Tensor:
    """a8 @ b8 for 0/1 int8 matrices, exact int32: oneDNN's int8 kernel (AMX/VNNI where present)."""
    try:
        return torch._int_mm(a8, b8)
    except (RuntimeError, NotImplementedError):  # builds without the int8 kernel: float32 is exact below 2**24
        return (a8.float() @ b8.float()).round().int()


def _gram(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(a @ b.T) for 0/1 matrices (models x samples), exact int64."""
    return _mm01(_int8(a), _int8(b).T).long()


class _Columns:
    """out = sum over columns c of a_c b_c^T for 0/1 columns written in pieces into transposed buffers.

    Rows ``at[i]``, ``bt[i]`` are columns (one model per position); :meth:`take` hands out the next free rows
    and multiplies a full buffer (one int8 product per ~_COLS columns), :meth:`result` the rest.
    """

    def __init__(self, m: int, total: int, symmetric: bool = False):
        cap = max(64, min(int(total), _COLS, (64 << 20) // max(m, 1)))
        self.at = torch.zeros(cap, m, dtype=torch.bool)
        self.bt = self.at if symmetric else torch.zeros(cap, m, dtype=torch.bool)
        self.out = torch.zeros(m, m, dtype=torch.int32)
        self.n = 0

    def take(self, k: int) -> tuple[int, int]:
        if self.n == self.at.shape[0]:
            self.flush()
        k = min(k, self.at.shape[0] - self.n)
        self.n += k
        return self.n - k, self.n

    def flush(self):
        if self.n:
            self.out += _mm01(self.at[:self.n].view(torch.int8).T, self.bt[:self.n].view(torch.int8))
            self.n = 0

    def result(self) -> torch.Tensor:
        self.flush()
        return self.out.long()


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

    Wrong predictions are grouped by (sample, predicted class), counted with one bincount per block of
    samples (no sort). A group of g models adds one to its g^2 ordered pairs: groups of at least
    ``dense_min`` become one-hot columns of int8 products (a column costs about M^2 multiply-adds, which the
    int8 kernel does in ~1 us at M = 1,000), smaller ones are enumerated; singletons only touch the diagonal.
    """
    m, n = preds.shape
    out = torch.zeros(m, m, dtype=torch.int64)
    k = num_classes
    dense_min = max(2, dense_min if dense_min is not None else m // 128)
    span = max(1, (1 << 21) // max(k, m, 1))  # samples per block: ~2M entries and (sample, class) bins
    cols = None
    colmap = torch.empty(span * k, dtype=torch.int64)
    light_key, light_s = [], []
    for x0 in range(0, n, span):
        x, s = torch.nonzero(wrong[:, x0:x0 + span].T, as_tuple=True)  # sample-major
        if x.numel() == 0:
            continue
        key = x * k + preds[:, x0:x0 + span].T.contiguous()[x, s]
        cnt = torch.bincount(key, minlength=span * k)
        size = cnt.index_select(0, key)
        heavy = size >= dense_min
        if bool(heavy.any()):
            groups = torch.nonzero(cnt >= dense_min).flatten()  # heavy (sample, class) bins, ascending
            ncol = groups.numel()
            colmap[groups] = torch.arange(ncol)
            col, hs = colmap[key[heavy]], s[heavy]
            if cols is None:
                cols = _Columns(m, (ncol * n) // max(1, min(n, span)) + 1, symmetric=True)
            c0 = 0
            while c0 < ncol:  # columns of this block, in pieces that fit the buffer
                lo, hi = cols.take(ncol - c0)
                sel = (col >= c0) & (col < c0 + hi - lo) if (c0 or hi - lo < ncol) else slice(None)
                cols.at[lo:hi].zero_()
                cols.at[lo:hi].index_put_((col[sel] - c0, hs[sel]), torch.tensor(True))
                c0 += hi - lo
        light = (size >= 2) & ~heavy
        if bool(light.any()):
            light_key.append(key[light] + x0 * k)
            light_s.append(s[light])
    if cols is not None:
        out += cols.result()
    if light_key:
        key, order = torch.sort(torch.cat(light_key))
        v = torch.cat(light_s)[order]
        for a, b, _, _ in _enumerate_cross(key, v, key, v):
            out += _pair_counts(a, b, m)
    return out


# ---------------------------------------------------------------------------------------------- ensemble
_ENUM_QUEUE = 8  # blocks waiting for the enumeration thread at most (bounds memory)
_ENUM_WORKERS = 1  # threads enumerating same-bucket pairs while the calling thread multiplies
_ACC_LOCK = threading.Lock()
_QUANTILE_SAMPLE = 1 << 22  # entries whose histogram sets the confidence buckets
_RIGHT = 128  # code of a right entry: _RIGHT + its bucket (uint8); a wrong one: its bucket


def _bucket_table(p: torch.Tensor, buckets: int):
    """Global confidence buckets (quantiles of pmax) as a lookup table over float cells: the float32 bits (made
    monotone) cut to 2**19 or 2**20 cells keep the order and put equal values in one cell; a histogram of the
    cells of a subsample turns them into quantile buckets (no binary search per entry)."""
    signed = bool((p.view(torch.int32) < 0).any())  # negative values or -0.0 (which must tie with +0.0)
    flat = _cells(p, signed).reshape(-1)
    step = max(1, flat.numel() // _QUANTILE_SAMPLE)
    hist = torch.bincount(flat[::step], minlength=1 << (20 if signed else 19))
    before = torch.cumsum(hist, 0) - hist
    table = torch.div(before * buckets, max(1, int(hist.sum())), rounding_mode="floor")
    return table.clamp_(max=buckets - 1).to(torch.uint8), signed


def _cells(p: torch.Tensor, signed: bool) -> torch.Tensor:
    if not signed:
        return p.view(torch.int32) >> 12
    bits = (p + 0.0).view(torch.int32)  # -0.0 + 0.0 = +0.0
    return ((bits ^ ((bits >> 31) & 0x7FFFFFFF)) >> 12) + (1 << 19)


def _codes(correct: torch.Tensor, p: torch.Tensor, table, signed: bool) -> torch.Tensor:
    """Sample-major uint8 codes: the bucket of a wrong entry, _RIGHT + the bucket of a right one (n x m)."""
    b = table.index_select(0, _cells(p, signed).reshape(-1)).view(p.shape)
    return b.add_(correct.to(torch.uint8), alpha=_RIGHT).T.contiguous()


def _code_counts(code_t: torch.Tensor):
    """Entry counts per (sample, code) of a sample-major code matrix: n x 256, and each entry's bin."""
    n = code_t.shape[0]
    key = code_t.int() + (torch.arange(n, dtype=torch.int32) * 256).view(n, 1)
    return torch.bincount(key.view(-1), minlength=n * 256).view(n, 256), key


def _choose_buckets(correct: torch.Tensor, p: torch.Tensor) -> int:
    """Bucket count minimising (cross-bucket product columns) * ~M^2 + (same-bucket pairs) * ~20 ns, estimated
    on a subsample of samples."""
    m, n = correct.shape
    if m < 32:
        return 1
    sub = torch.linspace(0, n - 1, min(n, 2048)).long()
    c, q = correct[:, sub].contiguous(), p[:, sub].contiguous()
    col_s = m * m * 0.75e-12 + m * 0.1e-9  # one product column (int8 kernel + building it)
    pair_s = 20e-9  # measured: 64 buckets beat 48 and 96 at M = 1,000 (BENCHMARKS.md)
    best, best_b = None, 1
    for nb in (1, 4, 8, 16, 24, 32, 48, 64, 96, 127):
        cnt, _ = _code_counts(_codes(c, q, *_bucket_table(q, nb)))
        wc, rc = cnt[:, :nb], cnt[:, _RIGHT:_RIGHT + nb]
        above = rc.flip(1).cumsum(1).flip(1) - rc
        cost = int(((wc > 0) & (above > 0)).sum()) * col_s + int((wc * rc).sum()) * pair_s
        if best is None or cost < best:
            best, best_b = cost, nb
    return best_b


def _same_bucket_pairs(code_t, key, pc, mixed, acc):
    """Adds to acc = (ge, ties) the right x wrong pairs of the mixed (sample, bucket) groups of one block."""
    nc, m = code_t.shape
    nb = mixed.shape[1]
    ge, ties = acc
    state = torch.zeros(nc, 256, dtype=torch.uint8)  # per (sample, code): 1 wrong / 2 right entry of a mixed group
    state[:, :nb] = mixed
    state[:, _RIGHT:_RIGHT + nb] = mixed * 2
    st = state.view(-1).index_select(0, key.view(-1))
    fw = torch.nonzero(st == 1).flatten()  # flat x * m + model, sample-major
    fr = torch.nonzero(st == 2).flatten()
    jw, order = torch.sort(code_t.view(-1)[fw], stable=True)  # by bucket, then sample
    fw = fw[order]
    xw = fw // m
    tw = fw - xw * m
    wcount = torch.bincount(jw.long() * nc + xw, minlength=nb * nc)  # wrongs per group, bucket-major
    wstart = torch.cumsum(wcount, 0) - wcount
    pw = pc.view(-1)[tw * nc + xw]  # pc: models x samples of the block
    tw = tw.int()
    xr = fr // m
    sr = fr - xr * m
    gr = (code_t.view(-1)[fr].long() - _RIGHT) * nc + xr  # each right entry's group
    reps, first = wcount[gr].int(), wstart[gr]
    pr, sm = pc.view(-1)[sr * nc + xr], (sr * m).int()
    # each right entry meets the wrongs first..first+reps of its group: rights with similar reps together, each
    # reading a window of `width` wrongs (a sliding view over the sorted wrongs, masked past reps)
    dummy = m * m
    hits, tie_hits = [], []
    cap = 32
    pad = torch.zeros(cap, dtype=pw.dtype)
    pw_pad, tw_pad = torch.cat([pw, pad]), torch.cat([tw, pad.int()])
    width, lo = 2, 0
    while lo < cap:
        sel = torch.nonzero((reps > lo) & (reps <= width)).flatten()
        if sel.numel():
            win_p, win_t = pw_pad.unfold(0, width, 1), tw_pad.unfold(0, width, 1)
            slot = torch.arange(width, dtype=torch.int32).view(1, width)
            rows = max(1, (1 << 21) // width)
            for a in range(0, sel.numel(), rows):
                i = sel[a:a + rows]
                f = first.index_select(0, i)
                pair = torch.index_select(win_t, 0, f).add_(sm.index_select(0, i).view(-1, 1))
                valid = slot < reps.index_select(0, i).view(-1, 1)
                ps, pt = pr.index_select(0, i).view(-1, 1), torch.index_select(win_p, 0, f)
                _add_pairs(hits, tie_hits, pair, valid, ps, pt, dummy)
        lo, width = width, 2 * width
    more = torch.nonzero(reps > cap).flatten()
    if more.numel():
        r, f = reps[more], first[more]
        idx = torch.repeat_interleave(r)
        w = torch.arange(idx.numel()).add_(torch.index_select(f - (torch.cumsum(r, 0) - r), 0, idx))
        pair = torch.index_select(sm[more], 0, idx).add_(torch.index_select(tw, 0, w))
        ps, pt = torch.index_select(pr[more], 0, idx), torch.index_select(pw, 0, w)
        _add_pairs(hits, tie_hits, pair, None, ps, pt, dummy)
    # one histogram per block (a bincount zeroes and adds M^2 bins: not per window class)
    add_ge = torch.bincount(torch.cat(hits), minlength=dummy + 1)[:dummy].view(ge.shape) if hits else None
    add_ties = torch.bincount(torch.cat(tie_hits), minlength=dummy).view(ties.shape) if tie_hits else None
    with _ACC_LOCK:
        if add_ge is not None:
            ge += add_ge
        if add_ties is not None:
            ties += add_ties


def _add_pairs(hits, ties, pair, valid, ps, pt, dummy):
    """Collects pair (s * m + t) into hits where valid and ps >= pt (else the spare bin ``dummy``), and into
    ties where also ps == pt."""
    hit = ps >= pt
    if valid is not None:
        hit &= valid
    hits.append(torch.where(hit, pair, dummy).view(-1))  # misses to a spare bin: no compaction pass
    tie = ps == pt
    if valid is not None:
        tie &= valid
    if bool(tie.any()):
        ties.append(pair[tie])


def _dominance_block(correct, p, x0, span, nb, table, signed, level, acc, pool, jobs, cols_ref):
    """One block of samples of dominance_counts: product columns into cols_ref[0], same-bucket pairs into acc."""
    m = correct.shape[0]
    n = correct.shape[1]
    pc = p[:, x0:x0 + span].contiguous()
    code_t = _codes(correct[:, x0:x0 + span], pc, table, signed)  # nc x m
    nc = code_t.shape[0]
    cnt, key = _code_counts(code_t)
    wc, rc = cnt[:, :nb], cnt[:, _RIGHT:_RIGHT + nb]

    # different buckets: one product column per (sample, bucket) with wrongs in it and rights above
    above = rc.flip(1).cumsum(1).flip(1) - rc
    keep = (wc > 0) & (above > 0)
    if cols_ref[0] is None and bool(keep.any()):
        cols_ref[0] = _Columns(m, int(keep.sum()) * ((n + nc - 1) // nc))
    cols = cols_ref[0]
    for j in range(nb):
        xs = torch.nonzero(keep[:, j]).flatten()
        i = 0
        while i < xs.numel():
            lo, hi = cols.take(xs.numel() - i)
            t = code_t.index_select(0, xs[i:i + hi - lo])
            torch.gt(t, level.fill_(_RIGHT + j), out=cols.at[lo:hi])  # rights above bucket j
            torch.eq(t, level.fill_(j), out=cols.bt[lo:hi])  # wrongs in bucket j
            i += hi - lo

    # same bucket: every right x wrong pair of a (sample, bucket) holding both, compared (in a second thread,
    # overlapping the products of the next blocks; at most two blocks wait, to bound memory)
    mixed = (wc > 0) & (rc > 0)
    if bool(mixed.any()):
        if pool is None:
            _same_bucket_pairs(code_t, key, pc, mixed, acc)
        else:
            while len(jobs) > _ENUM_QUEUE:
                jobs.pop(0).result()
            jobs.append(pool.submit(_same_bucket_pairs, code_t, key, pc, mixed, acc))


def dominance_counts(correct: torch.Tensor, pmax: torch.Tensor, buckets: int | None = None,
                     span: int = 2048):
    """(ge, gt): ge[s, t] = #{x : s right, t wrong, pmax_s >= pmax_t}; gt the same with >.

    Entries are put in global confidence buckets (quantiles of pmax). A right entry in a higher bucket than a
    wrong one of the same sample dominates it strictly: for every (sample, bucket) that holds a wrong entry and
    has right ones above, one column (rights above | wrongs in it) of an int8 product settles all those pairs.
    Right x wrong entries of the same (sample, bucket) are enumerated and their pmax compared (ties counted
    for gt = ge - ties), in a second thread while the calling one builds and multiplies the next columns.
    ``buckets`` (at most 127) defaults to a cost model (about 64 at 1,000 models); samples are processed in
    blocks of ``span`` (arrays of a few MB: no page faults, warm caches). pmax is compared as float32.
    """
    m, n = correct.shape
    p = pmax.to(torch.float32)
    if buckets is None:
        buckets = _choose_buckets(correct, p)
    nb = max(1, min(int(buckets), _RIGHT - 1))
    table, signed = _bucket_table(p, nb)
    acc = (torch.zeros(m, m, dtype=torch.int32), torch.zeros(m, m, dtype=torch.int64))  # same-bucket ge, ties
    level = torch.empty(1, m, dtype=torch.uint8)
    cols_ref = [None]
    pool = ThreadPoolExecutor(_ENUM_WORKERS) if _ENUM_WORKERS else None
    jobs = []
    try:
        for x0 in range(0, n, span):
            _dominance_block(correct, p, x0, span, nb, table, signed, level, acc, pool, jobs, cols_ref)
        for job in jobs:
            job.result()
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    cols = cols_ref[0]
    ge, ties = acc
    ge = ge.long()
    if cols is not None:
        ge += cols.result()
    return ge, ge - ties


# ---------------------------------------------------------------------------------------------- per class
def _class_blocks(mat: torch.Tensor, labels: torch.Tensor, num_classes: int, complement: bool = False):
    """mat (M x n, 0/1) regrouped as (classes, M, g) bfloat16, zero-padded to the largest class size g;
    ``complement``: 1 - mat on the real samples (padding stays 0)."""
    order = torch.argsort(labels, stable=True)
    lab = labels[order]
    sizes = torch.bincount(lab, minlength=num_classes)
    g = max(1, int(sizes.max()))
    if int(sizes.min()) == g:  # equal classes (ImageNet val: 50 each): a reshape, no scatter
        blk = mat.T[order].view(num_classes, g, mat.shape[0]).to(torch.bfloat16).transpose(1, 2).contiguous()
        return (1 - blk if complement else blk), g
    pos = torch.arange(lab.numel()) - (torch.cumsum(sizes, 0) - sizes)[lab]
    out = torch.zeros(num_classes, mat.shape[0], g, dtype=torch.bfloat16)
    vals = mat[:, order].T.to(torch.bfloat16)
    out[lab, :, pos] = 1 - vals if complement else vals
    return out, g


def per_class_flips(correct: torch.Tensor, labels: torch.Tensor, num_classes: int, rows: slice = slice(None)):
    """pos_k[s, t, k] for the students in ``rows``: positive flips whose true class is k (float64)."""
    wb, g = _class_blocks(correct[rows], labels, num_classes, complement=True)
    cb, _ = _class_blocks(correct, labels, num_classes)
    return _class_counts(wb, cb, g).permute(1, 2, 0).double()


def _class_counts(wb: torch.Tensor, cb: torch.Tensor, g: int) -> torch.Tensor:
    """(classes, R, M) counts from class blocks: one bf16 batched product (exact) when a class has at most 256
    samples, else int16/int32 sums of products over chunks of 256 samples."""
    if g <= _BF16_EXACT:
        return torch.bmm(wb, cb.transpose(1, 2))
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
    """The same statistics from hist[..., v] = number of classes with exactly v positive flips (exact).

    One float64 product gives, per pair, the classes and the flips at levels >= v and sum c ln c (integers
    below 2**53 are exact, so are the level sums); the top-p% counts follow with integer arithmetic.
    """
    shape, nv = hist.shape[:-1], hist.shape[-1]
    h = hist.reshape(-1, nv).double()
    v = torch.arange(nv, dtype=torch.float64)
    at_or_above = (v.view(-1, 1) >= v.view(1, -1)).double()  # [u >= v]
    basis = torch.cat([at_or_above, at_or_above * v.view(-1, 1), torch.special.xlogy(v, v).view(-1, 1)], 1)
    r = h @ basis  # (pairs, 2 nv + 1): classes and flips at levels >= v, sum c ln c
    total = r[:, nv].round().long()
    t = total.double().clamp_min(1)
    entropy = torch.where(total > 0, torch.log(t) - r[:, 2 * nv] / t, torch.zeros_like(t))
    out = {"flip_entropy": entropy.view(shape)}
    # v* = the lowest level still needed = #{v >= 1 : 100 * flips at levels >= v >= q * total}; flips at levels
    # >= v fall with v, so it is a search in the reversed (ascending) row
    qs = torch.tensor(top_p, dtype=torch.int64)
    need = total.view(-1, 1) * qs.view(1, -1)  # in hundredths: reach q% <=> 100 * flips >= q * total
    asc = r[:, nv + 1:2 * nv].flip(-1).mul_(100).contiguous()
    level = (nv - 1 - torch.searchsorted(asc, need.double(), right=False)).clamp_min_(1)
    above = torch.clamp(level + 1, max=nv)  # levels > v*: classes and flips there (none past the last level)
    past = (level + 1 >= nv)
    above_n = torch.where(past, 0, r[:, :nv].gather(-1, above.clamp(max=nv - 1)).round().long())
    above_s = torch.where(past, 0, r[:, nv:2 * nv].gather(-1, above.clamp(max=nv - 1)).round().long())
    extra = torch.div(need - 100 * above_s + 100 * level - 1, 100 * level, rounding_mode="floor")
    counts = torch.where(total.view(-1, 1) > 0, above_n + extra, 0)
    for i, q in enumerate(top_p):
        out[f"top{q}_classes"] = counts[:, i].reshape(shape)
    return out


def class_concentration(correct: torch.Tensor, labels: torch.Tensor, num_classes: int,
                        chunk_bytes: int = 256 << 20, threads: int | None = None) -> dict[str, torch.Tensor]:
    """flip_entropy and top-p class counts for all pairs, in chunks of student rows.

    Per chunk: one bf16 batched product gives the per-class counts (classes x students x teachers), one copy
    turns them into pair-major histogram indices (pair * (g + 1) + count, so a pair's increments stay within
    its own bins) and torch.bincount counts them. bincount is single-threaded, so two chunks run at once in
    two Python threads (torch releases the GIL) when torch has more than one thread.
    """
    m = correct.shape[0]
    cb, g = _class_blocks(correct, labels, num_classes)
    if int(torch.bincount(labels, minlength=num_classes).min()) == g:  # no padding: the complement is 1 - cb
        wb = 1 - cb
    else:
        wb, _ = _class_blocks(correct, labels, num_classes, complement=True)
    bins = g + 1
    hist_path = num_classes > 64 and bins <= 4096
    workers = threads if threads is not None else min(2, torch.get_num_threads())
    # per student row: counts (bf16 or int32) + int32 indices + histogram (int64) and its float64 copy + stats
    per_row = m * num_classes * 8 + m * bins * (8 + 8) + m * (2 * bins + 1) * 8 * 2
    rows = max(1, min(m, chunk_bytes // max(1, workers * per_row)))
    # the product runs on up to 40 rows at once (small batches are slow), the histogram on a few rows at a
    # time so that its bins stay in L2 (both measured: 2.2x and 1.3x)
    sub = max(1, min(rows, (2 << 20) // (m * bins * 8)))
    rows = max(sub, min(rows, _CLASS_ROWS) // sub * sub)
    offsets = (torch.arange(sub * m, dtype=torch.int32) * bins).view(sub, m, 1)

    def worker(starts) -> list[tuple[int, list[dict[str, torch.Tensor]]]]:
        done, cnt_buf, idx_buf = [], None, None  # buffers reused: no page faults per chunk
        for start in starts:
            out = []
            done.append((start, out))
            r = slice(start, min(m, start + rows))
            if g <= _BF16_EXACT:
                shape = (num_classes, r.stop - r.start, m)
                if cnt_buf is None or cnt_buf.numel() < math.prod(shape):
                    cnt_buf = torch.empty(num_classes * rows * m, dtype=torch.bfloat16)
                cnt = torch.bmm(wb[:, r], cb.transpose(1, 2), out=cnt_buf[:math.prod(shape)].view(shape))
            else:
                cnt = _class_counts(wb[:, r], cb, g)  # classes x R x M
            if not hist_path:  # few classes (or huge classes): sort per pair
                out.append(concentration(cnt.permute(1, 2, 0)))
                continue
            if idx_buf is None:
                idx_buf = torch.empty(sub, m, num_classes, dtype=torch.int32)
            for a in range(0, cnt.shape[1], sub):
                part = cnt[:, a:a + sub]
                nr = part.shape[1]
                idx = idx_buf[:nr]
                idx.copy_(part.permute(1, 2, 0))  # pair-major
                idx.add_(offsets[:nr])
                hist = torch.bincount(idx.view(-1), minlength=nr * m * bins).view(nr, m, bins)
                out.append(concentration_from_hist(hist))
        return done

    starts = list(range(0, m, rows))
    if workers > 1 and len(starts) > 1:
        with ThreadPoolExecutor(workers) as pool:
            done = [d for part in pool.map(worker, [starts[i::workers] for i in range(workers)]) for d in part]
    else:
        done = worker(starts)
    results = [r for _, out in sorted(done, key=lambda d: d[0]) for r in out]
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
