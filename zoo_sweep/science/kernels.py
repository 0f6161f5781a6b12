"""Exact products of 0/1 matrices (counts), and which kernel computes them on this machine.

Every count product of the compare stage (a @ b for 0/1 matrices, batched or not) goes through
:func:`mm01` / :func:`bmm01` / :func:`gram01` with one :class:`Kernel`. All kernels give identical integers:

    int8   torch._int_mm (int8 in, int32 out). oneDNN's AMX/VNNI kernels make it the fastest where those exist;
           without them it falls to a reference loop (~100x slower than float32 on AVX2).
    fp32   float32 GEMM (MKL/oneDNN/OpenBLAS: fast on every x86 and ARM CPU). Sums of 0/1 products are exact
           below 2**24, so the inner dimension is cut into chunks of 2**24 at most.
    bf16   bfloat16 GEMM: its output is exact only up to 256, so the inner dimension is cut into chunks of 256
           summed in int32 (fast only with AMX or AVX512-BF16).
    cuda   float32 GEMM on the GPU (0/1 inputs are exact in TF32 too; accumulation is float32).

The CPU choice comes from a calibration of about a tenth of a second (:func:`calibrate`), cached per host and
torch version under ``CACHE/matmul/``; ``ZOO_SWEEP_MATMUL=int8|fp32|bf16|cuda`` or an explicit name forces one.
The choice is made once per process (:func:`kernel`).
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from zoo_sweep.errors import UserError
from zoo_sweep.paths import write_atomic

ENV = "ZOO_SWEEP_MATMUL"
_FP32_EXACT = 1 << 24  # float32 represents every integer up to 2**24
_BF16_EXACT = 256  # bfloat16 represents every integer up to 256


def _as01(a: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if a.dtype == torch.bool and dtype == torch.int8:
        return a.view(torch.int8)  # same bytes, no copy
    return a.to(dtype)


def _chunked(product: Callable, a: torch.Tensor, b: torch.Tensor, dtype, step: int) -> torch.Tensor:
    """sum over inner chunks of ``step`` of product(a_chunk, b_chunk) (each exact), as int32."""
    k = a.shape[-1]
    out = None
    for c0 in range(0, max(k, 1), step):
        part = product(_as01(a[..., c0:c0 + step], dtype), _as01(b[..., c0:c0 + step, :], dtype))
        part = part.to(torch.int32)  # float sums of 0/1 products are whole numbers while below the chunk bound
        out = part if out is None else out.add_(part)
    return out


def _int8_mm(a, b):
    return _chunked(torch._int_mm, a, b, torch.int8, 1 << 30)


def _fp32_mm(a, b):
    return _chunked(torch.mm, a, b, torch.float32, _FP32_EXACT)


def _fp32_bmm(a, b):
    return _chunked(torch.bmm, a, b, torch.float32, _FP32_EXACT)


def _bf16_mm(a, b):
    return _chunked(torch.mm, a, b, torch.bfloat16, _BF16_EXACT)


def _bf16_bmm(a, b):
    return _chunked(torch.bmm, a, b, torch.bfloat16, _BF16_EXACT)


def _cuda_mm(a, b):
    return _chunked(torch.mm, a.cuda(), b.cuda(), torch.float32, _FP32_EXACT)


def _cuda_bmm(a, b):
    return _chunked(torch.bmm, a.cuda(), b.cuda(), torch.float32, _FP32_EXACT)


def _int8_ok() -> bool:
    try:
        a = torch.ones(32, 64, dtype=torch.int8)
        return int(torch._int_mm(a, a.T.contiguous())[0, 0]) == 64
    except (RuntimeError, NotImplementedError, AttributeError):
        return False


@dataclass(frozen=True)
class Kernel:
    name: str
    label: str  # what `zoo-sweep measure` prints
    device: str
    dtype: torch.dtype  # operand type: gram01 converts once
    mm: Callable  # (a: m x k, b: k x n) 0/1 -> int32 m x n, exact
    bmm: Callable  # (a: B x m x k, b: B x k x n) 0/1 -> int32 B x m x n, exact
    available: Callable[[], bool]

    def describe(self) -> str:
        if self.device == "cuda":
            return f"compare: {self.label} kernel, {torch.cuda.get_device_name()}"
        return f"compare: {self.label} kernel, {torch.get_num_threads()} threads"


KERNELS: dict[str, Kernel] = {
    # batched int8 products have no kernel (_int_mm is 2-D): bf16, which the same AMX units run
    "int8": Kernel("int8", "int8 GEMM (torch._int_mm)", "cpu", torch.int8, _int8_mm, _bf16_bmm, _int8_ok),
    "fp32": Kernel("fp32", "fp32 GEMM", "cpu", torch.float32, _fp32_mm, _fp32_bmm, lambda: True),
    "bf16": Kernel("bf16", "bf16 GEMM (exact chunks of 256)", "cpu", torch.bfloat16, _bf16_mm, _bf16_bmm,
                   lambda: True),
    "cuda": Kernel("cuda", "CUDA fp32 GEMM", "cuda", torch.float32, _cuda_mm, _cuda_bmm,
                   lambda: torch.cuda.is_available()),
}
CPU_KERNELS = ("fp32", "int8", "bf16")  # calibration order; a tie keeps the earlier one


def mm01(a: torch.Tensor, b: torch.Tensor, k: Kernel | str | None = None) -> torch.Tensor:
    """a @ b for 0/1 matrices (bool or small ints), exact int32."""
    return _get(k).mm(a, b)


def bmm01(a: torch.Tensor, b: torch.Tensor, k: Kernel | str | None = None) -> torch.Tensor:
    """Batched a @ b for 0/1 tensors, exact int32."""
    return _get(k).bmm(a, b)


def gram01(a: torch.Tensor, k: Kernel | str | None = None, blocks: int = 4) -> torch.Tensor:
    """a @ a.T for a 0/1 matrix, exact int64: the upper block triangle only (``blocks`` row blocks: 10 of 16
    products for 4), mirrored."""
    kern = _get(k)
    device, m = a.device, a.shape[0]
    a = _as01(a.cuda() if kern.device == "cuda" else a, kern.dtype)  # converted once, not per block
    if m < 256 or blocks <= 1:
        return kern.mm(a, a.T).to(device=device, dtype=torch.int64)
    out = torch.empty(m, m, dtype=torch.int64, device=device)
    edges = [m * i // blocks for i in range(blocks + 1)]
    for i in range(blocks):
        ri = slice(edges[i], edges[i + 1])
        # one product per block row: the diagonal block and everything right of it
        part = kern.mm(a[ri], a[edges[i]:].T).to(device=device, dtype=torch.int64)
        out[ri, edges[i]:] = part
        out[edges[i]:, ri] = part.T
    return out


# ---------------------------------------------------------------------------------------------- the choice
_CHOSEN: dict[str, Kernel] = {}  # once per process


def _get(k: Kernel | str | None) -> Kernel:
    if isinstance(k, Kernel):
        return k
    return kernel(k)


def kernel(name: str | None = None, cache_dir: str | Path | None = None) -> Kernel:
    """The product kernel: ``name``, else $ZOO_SWEEP_MATMUL, else the calibrated fastest CPU kernel (measured
    once per process, or read from the cache of this host and torch version)."""
    name = name or os.environ.get(ENV) or None
    if name is not None:
        if name not in KERNELS:
            raise UserError(f"unknown matmul kernel {name!r} ({ENV} or --kernel): choose one of "
                            f"{', '.join(KERNELS)}")
        kern = KERNELS[name]
        if not kern.available():
            raise UserError(f"matmul kernel {name!r} is not available here"
                            + (" (no CUDA device)" if name == "cuda" else "") + f"; choose another ({ENV})")
        return kern
    if "auto" not in _CHOSEN:
        _CHOSEN["auto"] = KERNELS[_cached_choice(cache_dir)]
    return _CHOSEN["auto"]


def cache_file(cache_dir: str | Path | None = None) -> Path:
    if cache_dir is None:
        home = os.environ.get("ZOO_SWEEP_HOME")
        cache_dir = Path(home) / "cache" if home else Path.home() / ".cache" / "zoo-sweep"
    host = socket.gethostname().replace("/", "_")
    return Path(cache_dir) / "matmul" / f"{host}-torch{torch.__version__.replace('+', '_')}.json"


def _cached_choice(cache_dir) -> str:
    path = cache_file(cache_dir)
    try:
        saved = json.loads(path.read_text())
        if saved.get("kernel") in CPU_KERNELS and KERNELS[saved["kernel"]].available():
            return saved["kernel"]
    except (OSError, ValueError):
        pass
    times = calibrate()
    best = min(times, key=times.get)
    record = {"kernel": best, "seconds": times, "threads": torch.get_num_threads(), "torch": torch.__version__,
              "host": socket.gethostname(), "measured": time.strftime("%Y-%m-%d %H:%M:%S")}
    try:
        write_atomic(path, lambda p: p.write_text(json.dumps(record, indent=1)))
    except OSError:  # a read-only home: the choice is made again next time, that is all
        pass
    return best


def calibrate(kernels=CPU_KERNELS, screen=(64, 1024, 64), size=(256, 4096, 256)) -> dict[str, float]:
    """CPU seconds per 0/1 product of ``size`` (m, k, n) for each available CPU kernel, best of 3 (a few
    milliseconds in all). Kernels over 3x slower than the best on a first, smaller product are dropped before
    the larger one (a reference int8 loop would take a second there). Measured on one torch thread in thread
    CPU time: on a shared machine wall time mostly measures the neighbours, and a thread team waiting for a
    descheduled member even more so; the kernels' ranking is the same on more threads."""
    gen = torch.Generator().manual_seed(0)

    def best_of(kern, m, k, n, reps=3):
        a, b = torch.rand(m, k, generator=gen) < 0.7, torch.rand(k, n, generator=gen) < 0.3
        kern.mm(a, b)  # warm: first-call setup (packing buffers, dispatch)
        best = float("inf")
        for _ in range(reps):
            t0 = time.thread_time()
            kern.mm(a, b)
            best = min(best, time.thread_time() - t0)
        return max(best, 1e-7)

    cands = [KERNELS[k] for k in kernels if KERNELS[k].device == "cpu" and KERNELS[k].available()]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        first = {k.name: best_of(k, *screen) for k in cands}
        fastest = min(first.values())
        return {name: best_of(KERNELS[name], *size) for name, s in first.items() if s <= 3 * fastest}
    finally:
        torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------- row sums
def _byte_bag_ok() -> bool:
    try:
        t = torch.zeros(2, 8 + 8, dtype=torch.uint8)
        t[:, 8:12] = torch.tensor([1.0]).view(torch.uint8)
        t[1, :8] = 1
        i = torch.tensor([1, 1], dtype=torch.int32)
        out = torch.ops.quantized.embedding_bag_byte_rowwise_offsets(
            t, i, torch.tensor([0, 2], dtype=torch.int32), False, 0, False, None, None, True)
        return bool((out == 2).all())
    except (RuntimeError, AttributeError, NotImplementedError):
        return False


class BagTable:
    """A reusable table of 0/1 rows of width ``m``, and exact sums of gathered rows per bag (an embedding-bag
    sum: the sparse-times-dense product where each sparse row picks a few table rows).

    On CPU the rows are uint8 with FBGEMM's byte-rowwise bag (each row carries a float32 scale 1 and bias 0, so
    the float32 sums are exact); a uint8 comparison writes them several times faster than a float16 one.
    Elsewhere (CUDA, or a torch without that operator) rows are float16 summed by embedding_bag, exact while
    a bag sums at most 2048 rows (``MAX_BAG``)."""

    MAX_BAG = 2048

    def __init__(self, m: int, device: torch.device | str = "cpu"):
        self.m, self.device = m, torch.device(device)
        self.byte = self.device.type == "cpu" and _BYTE_BAG()
        self.dtype = torch.uint8 if self.byte else torch.float16
        self._buf = torch.empty(0, self.m + 8 if self.byte else self.m, dtype=self.dtype, device=self.device)
        self.rows_used = 0

    def rows(self, n: int) -> torch.Tensor:
        """A writable n x m view of the table (its contents are undefined until written)."""
        width = self.m + 8 if self.byte else self.m
        if self._buf.shape[0] < max(n, 1):
            self._buf = torch.empty(max(n, 1, self._buf.shape[0] * 5 // 4), width, dtype=self.dtype, device=self.device)
            if self.byte:  # per-row float32 scale 1.0 and bias 0.0 after the m bytes
                self._buf[:, self.m:self.m + 4] = torch.tensor([1.0]).view(torch.uint8).to(self.device)
                self._buf[:, self.m + 4:] = 0
        self.rows_used = n
        return self._buf[:n, :self.m]

    def set_members(self, n: int, row: torch.Tensor, col: torch.Tensor):
        """Makes the table n rows of zeros with a 1 at each (row[i], col[i])."""
        self.rows(n).zero_()
        width = self._buf.shape[1]
        self._buf.view(-1).index_fill_(0, row.to(torch.int64) * width + col, 1)

    def sum(self, idx: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """float32 (bags x m): bag b sums the rows idx[offsets[b]:offsets[b + 1]] (offsets has bags + 1)."""
        if self.byte:
            return torch.ops.quantized.embedding_bag_byte_rowwise_offsets(
                self._buf[:max(1, self.rows_used)], idx.to(torch.int32), offsets.to(torch.int32),
                False, 0, False, None, None, True)
        out = torch.nn.functional.embedding_bag(idx.to(torch.int64), self._buf[:max(1, self.rows_used)],
                                                offsets[:-1].to(torch.int64), mode="sum")
        return out.to(torch.float32)


_BYTE_OK: list[bool] = []


def _BYTE_BAG() -> bool:
    if not _BYTE_OK:
        _BYTE_OK.append(_byte_bag_ok())
    return _BYTE_OK[0]
