"""Arithmetic that gives the same bits on every x86-64 processor, for the embedded zoo's training: the shipped
weights are then what any machine rebuilds from their recipes.

torch picks kernels by processor: vectorised ATen kernels (AVX2, AVX-512), MKL's code paths, oneDNN and NNPACK.
Each rounds differently in the last bit, and training to a plateau turns that into another stopping epoch:
rebuilt with other kernels on one machine, a zoo model's accuracy moved by up to 1.9 points. ATen's kernel
choice and MKL's reproducibility mode are read when torch starts, so the training runs in a new interpreter
started with PORTABLE_ENV (``call``), which also turns oneDNN and NNPACK off and runs one thread. It takes about
twice the time of the processor's own kernels (the default zoo: 49 minutes of CPU time against about 20 on a
2-core AMD EPYC with AVX2), so only the zoo's training uses it; the rest of the tool keeps the fast kernels. (The digits
images themselves are computed with NumPy's elementwise float64 arithmetic, the same everywhere: data/images.py.)
"""

from __future__ import annotations

import contextlib
import importlib
import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path

PORTABLE_ENV = {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE", "OMP_NUM_THREADS": "1"}


def active() -> bool:
    """Whether this process computes portably (it was started by ``call``)."""
    import torch

    return (torch.backends.cpu.get_cpu_capability() == "DEFAULT" and os.environ.get("MKL_CBWR") == "COMPATIBLE"
            and torch.get_num_threads() == 1)


@contextlib.contextmanager
def kernels_chosen_by_no_processor():
    """oneDNN and NNPACK off (they choose kernels by processor); ATen's native kernels and MKL take over."""
    import torch

    with torch.backends.mkldnn.flags(enabled=False), torch.backends.nnpack.flags(enabled=False):
        yield


def call(target: str, *args):
    """``module:function(*args)`` in a new interpreter with the portable arithmetic; its return value comes back
    pickled. The child's error output is passed on; a failure raises with its last line."""
    with tempfile.TemporaryDirectory(prefix="zoo-sweep-portable-") as d:
        Path(d, "args.pkl").write_bytes(pickle.dumps(args))
        proc = subprocess.run([sys.executable, "-m", "zoo_sweep.zoo.portable", target, d],
                              env={**os.environ, **PORTABLE_ENV}, stderr=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            lines = [line for line in proc.stderr.splitlines() if line.strip()]
            raise RuntimeError(f"{target} failed in its portable process: {lines[-1] if lines else proc.returncode}")
        return pickle.loads(Path(d, "out.pkl").read_bytes())


def _main(target: str, folder: str) -> None:
    import torch

    torch.set_num_threads(1)
    module, _, name = target.partition(":")
    fn = getattr(importlib.import_module(module), name)
    args = pickle.loads(Path(folder, "args.pkl").read_bytes())
    with kernels_chosen_by_no_processor():
        out = fn(*args)
    Path(folder, "out.pkl").write_bytes(pickle.dumps(out))


if __name__ == "__main__":
    _main(*sys.argv[1:3])
