"""Pair counts as sums of table rows, block by block of samples: the shared machinery of the agreement and
ensemble counts.

Within one block of samples, a table holds 0/1 rows over the M models (e.g. "the models that predict class k
on sample x", or "the right entries more confident than wrong run v of sample x"), and an entry (t, x) adds one
row to the counts of model t: out[t, :] = sum of its rows. That is an embedding-bag sum (kernels.BagTable),
about M adds per entry, where a product would spend M^2 multiply-adds per (sample, row) whether or not a
model takes part. Blocks run in worker threads, each with its own table and exact accumulators.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch

from zoo_sweep.science.kernels import BagTable

_GROUP = 32  # samples whose table rows are padded to the same level count (sorted by it: little padding)
SPAN = 256  # samples per block on CPU: tables of about a MB at 1,000 models (in cache), the M x M bag output amortised
SPAN_GPU = BagTable.MAX_BAG  # on a GPU: fewer, larger launches


def block_span(device, span: int | None = None, limit: int | None = None) -> int:
    """Samples per block: ``span``, else the device's default; at most ``limit`` and BagTable.MAX_BAG (a bag
    gathers at most one row per sample of its block, and float16 rows sum exactly up to that many)."""
    span = span or (SPAN if torch.device(device).type == "cpu" else SPAN_GPU)
    return max(1, min(int(span), BagTable.MAX_BAG, BagTable.MAX_BAG if limit is None else limit))


class ExactSum:
    """Exact sums of float32 block counts of one ``shape`` (M: M x M), each at most ``per_block``: float32
    while below 2**24, then folded into int64."""

    def __init__(self, shape: int | tuple[int, int], device, per_block: int):
        shape = (shape, shape) if isinstance(shape, int) else tuple(shape)
        self.total = torch.zeros(shape, dtype=torch.int64, device=device)
        self.part = torch.zeros(shape, dtype=torch.float32, device=device)
        self.room = max(1, (1 << 24) // max(1, per_block))
        self.left = self.room

    def add(self, x: torch.Tensor | None):
        if x is None:
            return
        self.part += x
        self.left -= 1
        if self.left == 0:
            self.fold()

    def fold(self):
        self.total += self.part.to(torch.int64)
        self.part.zero_()
        self.left = self.room

    def result(self) -> torch.Tensor:
        self.fold()
        return self.total


def code_dtype(levels: int) -> torch.dtype:
    """The smallest integer type for codes 0..levels (uint8 comparisons are the fast ones)."""
    return torch.uint8 if levels < 255 else torch.int16 if levels < 32767 else torch.int32


class Layout:
    """Where each sample's table rows go: sample x has ``levels[x]`` rows from ``first[x]``. Samples are sorted
    by level count and padded per group of _GROUP, so the table has about sum(levels) rows, not
    X * max(levels)."""

    def __init__(self, levels: torch.Tensor):
        nx = levels.numel()
        lv, order = torch.sort(levels.to(torch.int64))
        self.first = torch.zeros(nx, dtype=torch.int64, device=levels.device)
        self.groups = []  # (first row, sample indices, rows per sample)
        self.rows = 0
        bounds = lv[torch.arange(_GROUP - 1, nx + _GROUP - 1, _GROUP, device=levels.device).clamp(max=nx - 1)]
        for g, width in zip(range(0, nx, _GROUP), bounds.tolist()):
            members = order[g:g + _GROUP]
            if width:
                self.groups.append((self.rows, members, width))
                self.first[members] = self.rows + torch.arange(members.numel(), device=levels.device) * width
                self.rows += members.numel() * width


def fill_table(table: BagTable, layout: Layout, code: torch.Tensor, equal: bool):
    """Row v of sample x: [code[x, s] > v] (a thermometer) or, with ``equal``, [code[x, s] == v + 1].
    Negative codes count as 0."""
    m = code.shape[1]
    rows = table.rows(layout.rows)
    for start, members, width in layout.groups:
        dt = code_dtype(width + 1)
        src = code.index_select(0, members).clamp_(min=0).to(dt).unsqueeze(1)
        lev = torch.arange(1 if equal else 0, width + (1 if equal else 0), device=code.device, dtype=dt)
        out = rows[start:start + members.numel() * width].view(members.numel(), width, m)
        (torch.eq if equal else torch.gt)(src, lev.view(1, width, 1), out=out)


def take_sums(table: BagTable, code_mm: torch.Tensor, take: torch.Tensor) -> torch.Tensor | None:
    """Per model t (a row of the M x X model-major mask ``take``): the sum over its taken entries of the table
    rows -(code_mm[t, x] + 1) (a taking entry's code is -(its row + 1)); float32 M x M."""
    m = take.shape[0]
    offsets = torch.zeros(m + 1, dtype=torch.int64, device=take.device)
    torch.cumsum(take.sum(dim=1), 0, out=offsets[1:])
    if int(offsets[-1]) == 0:
        return None
    return table.sum(code_mm[take].neg_().sub_(1), offsets)


def run_blocks(ranges: list[tuple[int, int]], block: Callable, m: int, device, outputs: int | list = 1,
               workers: int | None = None, tables: list[int] | None = None) -> list[torch.Tensor]:
    """Calls block(x0, x1, table, sums) for each sample range with ExactSum accumulators per worker (``outputs``:
    how many M x M ones, or a list of their shapes); returns the int64 totals. ``table`` is one BagTable of
    width M, or with ``tables`` (a list of widths) a list of them. On CPU the ranges are shared by worker
    threads (one per torch thread, each holding torch to one thread: many small ops parallelise better across
    blocks than inside each), elsewhere they run in order."""
    shapes = [m] * outputs if isinstance(outputs, int) else list(outputs)
    span = max((x1 - x0 for x0, x1 in ranges), default=1)
    if workers is None:
        workers = torch.get_num_threads() if torch.device(device).type == "cpu" else 1
    workers = max(1, min(workers, len(ranges)))

    def run(mine: list[tuple[int, int]]):
        if workers > 1:
            torch.set_num_threads(1)  # OpenMP's thread count is per calling thread: set it in this one
        table = BagTable(m, device) if tables is None else [BagTable(w, device) for w in tables]
        sums = [ExactSum(shape, device, span) for shape in shapes]
        for x0, x1 in mine:
            block(x0, x1, table, sums)
        return [s.result() for s in sums]

    if workers == 1:
        return run(ranges)
    with _THREADS_LOCK:
        before = torch.get_num_threads()
        try:
            with ThreadPoolExecutor(workers) as pool:
                parts = list(pool.map(run, [ranges[i::workers] for i in range(workers)]))
        finally:
            torch.set_num_threads(before)
    return [sum(p[i] for p in parts) for i in range(len(shapes))]


def spans(n: int, span: int, start: int = 0) -> list[tuple[int, int]]:
    """[start, start + n) cut into ranges of ``span``."""
    return [(x0, min(start + n, x0 + span)) for x0 in range(start, start + n, span)]


_THREADS_LOCK = threading.Lock()
