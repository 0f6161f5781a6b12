"""Per-class positive flips of every pair, and how concentrated they are (entropy, top-p % class counts, exact
and in the paper's convention: pair_metrics.py).

Samples are grouped by class, so the per-class counts of all pairs are one batched 0/1 product (classes x
students x teachers) through the compare stage's product kernel (kernels.py) in its operand type; a
histogram of the per-class counts per pair gives the entropy (sum c ln c) and the top-p % class counts
exactly, without sorting (chunks of students, two at a time: bincount is single-threaded).
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import torch

from zoo_sweep.science.kernels import Kernel, kernel
from zoo_sweep.science.pair_metrics import (
    TOP_P,  # the one list (the store's columns come from it)
)

_CLASS_ROWS = 40  # student rows per batched per-class product (small batches are slow: 20 rows cost 1.4x 60)
_HIST_BYTES = 2 << 20  # histogram of the student rows counted at once: stays in L2
_EXACT = {torch.float32: 1 << 24, torch.bfloat16: 256, torch.float16: 2048}  # whole numbers a float holds


def _class_dtype(kern: Kernel) -> torch.dtype:
    # int8 has no batched kernel; the AMX units that make it fast run bf16 too
    return torch.bfloat16 if kern.dtype in (torch.int8, torch.bfloat16) else torch.float32


def _class_blocks(mat: torch.Tensor, labels: torch.Tensor, num_classes: int, dtype: torch.dtype,
                  complement: bool = False):
    """mat (M x n, 0/1) regrouped as (classes, M, g) of ``dtype``, zero-padded to the largest class size g;
    ``complement``: 1 - mat on the real samples (padding stays 0)."""
    order = torch.argsort(labels, stable=True)
    lab = labels[order]
    sizes = torch.bincount(lab, minlength=num_classes)
    g = max(1, int(sizes.max()))
    if int(sizes.min()) == g:  # equal classes (ImageNet val: 50 each): a reshape, no scatter
        m = mat.shape[0]
        blk = torch.empty(num_classes, m, g, dtype=dtype, device=mat.device)  # converted in one copy
        blk.copy_(mat.index_select(1, order).view(m, num_classes, g).transpose(0, 1))
        return (blk.neg_().add_(1) if complement else blk), g
    pos = torch.arange(lab.numel(), device=mat.device) - (torch.cumsum(sizes, 0) - sizes)[lab]
    out = torch.zeros(num_classes, mat.shape[0], g, dtype=dtype, device=mat.device)
    vals = mat[:, order].T.to(dtype)
    out[lab, :, pos] = 1 - vals if complement else vals
    return out, g


def per_class_flips(correct: torch.Tensor, labels: torch.Tensor, num_classes: int, rows: slice = slice(None),
                    k: Kernel | str | None = None):
    """pos_k[s, t, k] for the students in ``rows``: positive flips whose true class is k (float64)."""
    kern = kernel(k) if not isinstance(k, Kernel) else k
    dt = _class_dtype(kern)
    wb, g = _class_blocks(correct[rows], labels, num_classes, dt, complement=True)
    cb, _ = _class_blocks(correct, labels, num_classes, dt)
    return _class_counts(wb, cb, g, kern).permute(1, 2, 0).double()


def _class_counts(wb: torch.Tensor, cb: torch.Tensor, g: int, kern: Kernel, out=None) -> torch.Tensor:
    """(classes, R, M) counts from class blocks: one batched product in the blocks' type when a class fits its
    exact range (into ``out`` if given), else the kernel's exact chunked product (int32)."""
    if g <= _EXACT[wb.dtype]:
        return torch.bmm(wb, cb.transpose(1, 2), out=out)
    return kern.bmm(wb, cb.transpose(1, 2))


def paper_count(exact: torch.Tensor) -> torch.Tensor:
    """A top-p % class count as the authors' loop returns it (flip_study.py, get_top_p_percent_classes): its
    counter ends one past the classes whose share reached p %, so exact + 1 (its share in floating point
    reaches p % at the same class as the exact integer test: for p = 2, 5, 20, 50 the two cannot differ).
    Without flips the share after one class is 0/0, NaN, which ends the loop with the counter at 2."""
    return exact.clamp_min(1) + 1


def concentration(counts: torch.Tensor, top_p=TOP_P) -> dict[str, torch.Tensor]:
    """Entropy (natural log) of the per-class flip distribution and the top-p% class counts (exact and
    ``_paper``), per pair.

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
        out[f"top{q}_classes_paper"] = paper_count(out[f"top{q}_classes"])
    return out


def concentration_from_hist(hist: torch.Tensor, top_p=TOP_P) -> dict[str, torch.Tensor]:
    """The same statistics from hist[..., v] = number of classes with exactly v positive flips (exact).

    Per pair: the classes and the flips at levels >= v are reversed cumulative sums (int64), sum c ln c one
    float64 product; the top-p% counts follow with integer arithmetic.
    """
    shape, nv = hist.shape[:-1], hist.shape[-1]
    h = hist.reshape(-1, nv).to(torch.int64)
    v = torch.arange(nv, dtype=torch.int64, device=h.device)
    n_ge = h.flip(-1).cumsum(-1).flip(-1)  # classes at levels >= v
    s_ge = (h * v).flip(-1).cumsum(-1).flip(-1)  # flips at levels >= v
    clnc = h.double() @ torch.special.xlogy(v.double(), v.double())  # sum c ln c
    total = s_ge[:, 0]
    t = total.double().clamp_min(1)
    entropy = torch.where(total > 0, torch.log(t) - clnc / t, torch.zeros_like(t))
    out = {"flip_entropy": entropy.view(shape)}
    # v* = the lowest level still needed = #{v >= 1 : 100 * flips at levels >= v >= q * total}; flips at levels
    # >= v fall with v, so it is a search in the reversed (ascending) row
    qs = torch.tensor(top_p, dtype=torch.int64, device=h.device)
    need = total.view(-1, 1) * qs.view(1, -1)  # in hundredths: reach q% <=> 100 * flips >= q * total
    asc = s_ge[:, 1:].flip(-1).mul(100).contiguous()
    level = (nv - 1 - torch.searchsorted(asc, need, right=False)).clamp_min_(1)
    above = torch.clamp(level + 1, max=nv - 1)  # levels > v*: classes and flips there (none past the last level)
    past = level + 1 >= nv
    above_n = torch.where(past, 0, n_ge.gather(-1, above))
    above_s = torch.where(past, 0, s_ge.gather(-1, above))
    extra = torch.div(need - 100 * above_s + 100 * level - 1, 100 * level, rounding_mode="floor")
    counts = torch.where(total.view(-1, 1) > 0, above_n + extra, 0)
    for i, q in enumerate(top_p):
        out[f"top{q}_classes"] = counts[:, i].reshape(shape)
        out[f"top{q}_classes_paper"] = paper_count(out[f"top{q}_classes"])
    return out


def _chunk_rows(m: int, num_classes: int, bins: int, dt: torch.dtype, chunk_bytes: int,
                workers: int) -> tuple[int, int]:
    """(student rows per chunk, rows per histogram) of ``class_concentration``."""
    # per student row: its counts (the histogram indices, histogram and stats are for ``sub`` rows at a time)
    per_row = m * num_classes * torch.empty(0, dtype=dt).element_size()
    rows = max(1, min(m, chunk_bytes // max(1, workers * per_row)))
    # the product runs on up to _CLASS_ROWS rows at once (small batches are slow), the histogram on a few rows
    # at a time so that its bins stay in L2 (both measured: 2.2x and 1.3x)
    sub = max(1, min(rows, _HIST_BYTES // (m * bins * 8)))
    return max(sub, min(rows, _CLASS_ROWS) // sub * sub), sub


def class_concentration(correct: torch.Tensor, labels: torch.Tensor, num_classes: int,
                        chunk_bytes: int = 256 << 20, threads: int | None = None,
                        k: Kernel | str | None = None) -> dict[str, torch.Tensor]:
    """flip_entropy and top-p class counts for all pairs, in chunks of student rows.

    Per chunk: one batched product gives the per-class counts (classes x students x teachers), one copy turns them
    into histogram indices (pair * (g + 1) + count: a pair's increments stay within its own bins, those of a few
    students' pairs in L2) and torch.bincount counts them. bincount is single-threaded, so two chunks run at once in
    two Python threads (torch releases the GIL) when torch has more than one thread.
    """
    kern = kernel(k) if not isinstance(k, Kernel) else k
    dt = _class_dtype(kern)
    m, dev = correct.shape[0], correct.device
    cb, g = _class_blocks(correct, labels, num_classes, dt)
    if int(torch.bincount(labels, minlength=num_classes).min()) == g:  # no padding: the complement is 1 - cb
        wb = 1 - cb
    else:
        wb, _ = _class_blocks(correct, labels, num_classes, dt, complement=True)
    bins = g + 1
    hist_path = num_classes > 64 and bins <= 4096
    workers = threads if threads is not None else (min(2, torch.get_num_threads()) if dev.type == "cpu" else 1)
    rows, sub = _chunk_rows(m, num_classes, bins, dt, chunk_bytes, workers)
    offsets = (torch.arange(sub * m, dtype=torch.int32, device=dev) * bins).view(1, sub, m)
    # float32 counts: the product adds each pair's histogram offset itself (beta = 1; exact below 2**24)
    fused = hist_path and dt == torch.float32 and g <= _EXACT[dt] and sub * m * bins < _EXACT[dt]
    fused_offsets = offsets.repeat(1, rows // sub, 1).to(dt) if fused else None

    def worker(starts) -> list[tuple[int, list[dict[str, torch.Tensor]]]]:
        done, cnt_buf, idx_buf = [], None, None  # buffers reused: no page faults per chunk
        for start in starts:
            out = []
            done.append((start, out))
            r = slice(start, min(m, start + rows))
            shape = (num_classes, r.stop - r.start, m)
            if cnt_buf is None and g <= _EXACT[dt]:
                cnt_buf = torch.empty(num_classes * rows * m, dtype=dt, device=dev)
            buf = cnt_buf[:math.prod(shape)].view(shape) if cnt_buf is not None else None
            if fused:  # classes x R x M histogram indices, as float
                cnt = torch.baddbmm(fused_offsets[:, :shape[1]], wb[:, r], cb.transpose(1, 2), out=buf)
            else:
                cnt = _class_counts(wb[:, r], cb, g, kern, out=buf)  # classes x R x M
            if not hist_path:  # few classes (or huge classes): sort per pair
                out.append(concentration(cnt.permute(1, 2, 0)))
                continue
            if idx_buf is None:
                idx_buf = torch.empty(num_classes * sub * m, dtype=torch.int32, device=dev)
            for a in range(0, cnt.shape[1], sub):
                part = cnt[:, a:a + sub]
                nr = part.shape[1]
                idx = idx_buf[:num_classes * nr * m].view(num_classes, nr, m)
                idx.copy_(part)  # class-major as computed: a transposing copy costs twice a plain one
                if not fused:
                    idx.add_(offsets[:, :nr])
                hist = torch.bincount(idx.view(-1), minlength=nr * m * bins).view(nr, m, bins)
                out.append(concentration_from_hist(hist))
        return done

    return _in_chunks(worker, list(range(0, m, rows)), workers)


def _in_chunks(worker, starts: list[int], workers: int) -> dict[str, torch.Tensor]:
    """``worker(starts)`` over the chunks, on ``workers`` threads, its results joined in the chunks' order."""
    if workers > 1 and len(starts) > 1:
        with ThreadPoolExecutor(workers) as pool:
            done = [d for part in pool.map(worker, [starts[i::workers] for i in range(workers)]) for d in part]
    else:
        done = worker(starts)
    results = [r for _, out in sorted(done, key=lambda d: d[0]) for r in out]
    return {key: torch.cat([r[key] for r in results]) for key in results[0]}
