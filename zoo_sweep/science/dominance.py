"""Exact dominance counts from per-sample rank orders: no product, so no fast int8 unit needed.

    ge[s, t] = #{x : s right, t wrong, pmax_s(x) >= pmax_t(x)}        gt: the same with >

Per block of samples, every sample's entries are sorted by confidence (one int64 sort per sample row; the
model index rides in the low bits, so no argsort). In that order the wrong entries fall into runs with no
right entry between them, and all wrong entries of one run are dominated by the same right entries: those
after the run. One table row per (sample, wrong run) holds them as a 0/1 vector over the models (a uint8
comparison of each right entry's run count with the row's level), and column t of ge is the sum of the rows
of t's wrong entries (bags.take_sums): ~M adds per wrong entry, instead of a product column of M^2
multiply-adds per (sample, level). A sample has about as many wrong runs as half its right/wrong
alternations in confidence order (~40-80 at 1,000 models), far fewer than its wrong entries.

Ties (a right and a wrong entry with equal pmax) sort wrong-first, so they count in ge; gt = ge - ties, the
ties counted the same way with one row per mixed tie group, only in samples that have one.

In a sample with more wrong entries than right ones the roles flip (rights gather the wrongs below them), so the
gathers are sum over samples of min(#right, #wrong) (~35 % fewer than #wrong on an ImageNet-like zoo). Every step is
a torch op on the input's device (the sort goes through numpy on CPU, where its SIMD sort is several times faster),
so the same code runs on CUDA tensors.
"""

from __future__ import annotations

import numpy as np
import torch

from zoo_sweep.science.bags import Layout, block_span, fill_table, run_blocks, spans, take_sums
from zoo_sweep.science.kernels import BagTable

_IDX_BITS = 30  # sort key: confidence in the top 32 bits, the right/wrong bit, then the model index


def monotone_bits(p: torch.Tensor) -> torch.Tensor:
    """int32 whose order is the float32 order of p (-0.0 ties with +0.0; NaN is not expected)."""
    bits = (p.to(torch.float32) + 0.0).view(torch.int32)  # -0.0 + 0.0 = +0.0
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


def sort_rows(key: torch.Tensor) -> torch.Tensor:
    """Ascending sort of each row of an int64 matrix: numpy's SIMD sort on CPU (it releases the GIL), torch's
    elsewhere."""
    if key.device.type == "cpu":
        return torch.from_numpy(np.sort(key.numpy(), axis=1))
    return torch.sort(key, dim=1).values


def _sorted_block(right_t, mono_t, low, low_right):
    """Sorted keys of a block (sample-major rows), with each position's model index and right flag."""
    key = mono_t.to(torch.int64)
    key <<= 32
    key |= torch.where(right_t, low_right, low)
    key = sort_rows(key)
    return key, key & ((1 << _IDX_BITS) - 1), (key & (1 << _IDX_BITS)) != 0


def _block(right_t, mono_t, low, low_right, table: BagTable, sums):
    """Adds, for one block of samples (sample-major X x M inputs), the dominance and tie counts per taking
    entry's model (rows) and table model (columns) to sums."""
    key, idx, right = _sorted_block(right_t, mono_t, low, low_right)
    start = ~right  # a wrong entry opening a run: the first position, or one after a right entry
    start[:, 1:] &= right[:, :-1]
    runs = torch.cumsum(start, dim=1, dtype=torch.int32)  # wrong runs opened at or before each position
    layout = Layout(runs[:, -1])
    # a right entry dominates the runs before it: code = their number (>= 0); a wrong entry reads the table
    # row of its run: code = -(row + 1)
    first = layout.first.to(torch.int32).view(-1, 1)
    code = torch.empty_like(runs).scatter_(1, idx, torch.where(right, runs, -(runs + first)))
    fill_table(table, layout, code, equal=False)
    sums[0].add(take_sums(table, code.T, ~right_t.T))
    _ties(key, idx, right, table, sums[1])


def _ties(key, idx, right, table: BagTable, out):
    """Right x wrong pairs of equal pmax. In a tie group wrongs sort first, so a group is mixed where a right
    entry follows a wrong one of the same confidence: only those wrong-to-right steps are compared, and only
    samples with a mixed group are looked at further."""
    step = torch.nonzero(right[:, 1:] & ~right[:, :-1])
    if step.numel() == 0:
        return
    flat = key.view(-1)
    at = step[:, 0] * key.shape[1] + step[:, 1]
    tied = (flat.index_select(0, at) >> 32) == (flat.index_select(0, at + 1) >> 32)
    if not bool(tied.any()):
        return
    xs = torch.unique(step[:, 0][tied])
    m = key.shape[1]
    key, right, idx = key[xs], right[xs], idx[xs]
    conf = key >> 32
    same = conf[:, 1:] == conf[:, :-1]
    mixed_at = same & right[:, 1:] & ~right[:, :-1]
    group = torch.zeros(xs.numel(), m, dtype=torch.int64, device=key.device)  # tie group of each position
    group[:, 1:] = torch.cumsum(~same, dim=1)
    mixed = torch.zeros(xs.numel(), m + 1, dtype=torch.int32, device=key.device)
    mixed.scatter_add_(1, group[:, 1:], mixed_at.to(torch.int32))
    mixed.clamp_(max=1)  # per tie group: mixed or not
    gid = torch.cumsum(mixed, dim=1, dtype=torch.int32).gather(1, group)  # numbered among mixed ones, from 1
    gid *= mixed.gather(1, group)  # 0 outside mixed groups
    layout = Layout(mixed.sum(dim=1))
    first = layout.first.to(torch.int32).view(-1, 1)
    # rights of a mixed group: code = its number; wrongs of one: -(row + 1); others 0
    code = torch.empty_like(gid).scatter_(1, idx, torch.where(right, gid, torch.where(gid > 0, -(gid + first), 0)))
    fill_table(table, layout, code, equal=True)
    code_mm = code.T
    out.add(take_sums(table, code_mm, code_mm < 0))


def column_counts(mask: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """int32 count of the True entries of each column of an M x N bool matrix. A bool sum converts its input
    first: in chunks of columns, that copy stays small."""
    n = mask.shape[1]
    return torch.cat([mask[:, c0:c0 + chunk].sum(dim=0, dtype=torch.int32) for c0 in range(0, max(n, 1), chunk)])


def dominance_counts(correct: torch.Tensor, pmax: torch.Tensor, span: int | None = None,
                     workers: int | None = None):
    """(ge, gt) as int64 M x M: ge[s, t] = #{x : s right, t wrong, pmax_s >= pmax_t}, gt the same with >.

    pmax is compared as float32; work and results stay on the device of ``correct``."""
    m, n = correct.shape
    if m >= 1 << _IDX_BITS:
        raise ValueError(f"at most {1 << _IDX_BITS} models")
    correct = correct.to(torch.bool)
    pmax = pmax.to(device=correct.device)
    # per sample, the rarer kind of entry gathers: samples with more wrong than right entries go to the end,
    # where rights and wrongs swap roles and the confidence order reverses (~mono reverses it exactly, ties
    # kept): the swapped count of W_t R_s [p_t <= p_s] is ge itself, not its transpose
    rights = column_counts(correct)
    order = torch.argsort((2 * rights < m).to(torch.int8), stable=True)
    n_plain = int((2 * rights >= m).sum())
    span = block_span(correct.device, span, n)
    low = torch.arange(m, device=correct.device, dtype=torch.int64)
    low_right = low | (1 << _IDX_BITS)

    def block(x0, x1, table, sums):
        swap = x0 >= n_plain
        if n_plain == n:  # no sample swaps roles: blocks are slices
            c, p = correct[:, x0:x1], pmax[:, x0:x1]
        else:  # a block of samples in the order plain, then swapped
            idx = order[x0:x1]
            c, p = correct.index_select(1, idx), pmax.index_select(1, idx)
        # sample-major copies of the block only (sorting is per sample): copies of the whole records cost
        # several N x M arrays of fresh pages per call
        c, key = c.T.contiguous(), monotone_bits(p.T.contiguous())
        _block(~c if swap else c, ~key if swap else key, low, low_right, table, sums[2 * swap:2 * swap + 2])

    ranges = spans(n_plain, span) + spans(n - n_plain, span, n_plain)
    ge_t, ties_t, ge, ties = run_blocks(ranges, block, m, correct.device, outputs=4, workers=workers)
    ge += ge_t.T  # rows of the plain blocks are the wrong entries' models
    ties += ties_t.T
    return ge, ge - ties
