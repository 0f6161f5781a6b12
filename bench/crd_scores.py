"""CRD's bank scores: gathering K+1 bank rows per sample against one product of the whole bank with the batch.

    PYTHONPATH=$PWD .venv/bin/python bench/crd_scores.py [--repeat 5] [--threads 2]

For each shape (the digits transfer set, 5,390 samples, batch 128; the paper's 10 % ImageNet subset, 128,117
samples, batch 256; 4,096 negatives, 128-d embeddings), times the scores, the exp and the backward pass both
ways (best of --repeat), checks that they agree, and prints which one ``zoo_sweep.transfer.methods.bank_scores``
takes. Prints the CPU model and its vector units first.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from pairs_at_scale import cpu_info  # noqa: E402

from zoo_sweep.transfer.methods import bank_scores  # noqa: E402

SHAPES = [("digits transfer set", 5390, 128), ("ImageNet 10 % subset", 128117, 256)]


def gathered(bank, anchor, idx):
    return torch.bmm(bank[idx], anchor.unsqueeze(2)).squeeze(2)


def product(bank, anchor, idx):
    return (anchor @ bank.T).gather(1, idx)


def best_time(f, bank, anchor, idx, repeat):
    best = float("inf")
    for _ in range(repeat):
        anchor.grad = None
        t = time.perf_counter()
        torch.exp(f(bank, anchor, idx) / 0.07).sum().backward()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--negatives", type=int, default=4096)
    ap.add_argument("--dim", type=int, default=128)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    model, units = cpu_info()
    print(f"CPU: {model} ({units}); torch {torch.__version__}, {torch.get_num_threads()} threads")
    g = torch.Generator().manual_seed(0)
    for name, n, b in SHAPES:
        bank = torch.randn(n, a.dim, generator=g)
        anchor = torch.randn(b, a.dim, generator=g, requires_grad=True)
        idx = torch.randint(0, n, (b, a.negatives + 1), generator=g)
        diff = (gathered(bank, anchor, idx) - product(bank, anchor, idx)).abs().max().item()
        tg = best_time(gathered, bank, anchor, idx, a.repeat)
        tp = best_time(product, bank, anchor, idx, a.repeat)
        chosen = "product" if len(bank) <= 32 * idx.shape[1] else "gather"
        assert torch.allclose(bank_scores(bank, anchor, idx), product(bank, anchor, idx))
        print(f"{name}: N {n:,}, B {b}, K+1 {a.negatives + 1}: gather {tg * 1e3:.1f} ms, product {tp * 1e3:.1f} ms "
              f"({tg / tp:.1f}x); largest difference {diff:.1e}; bank_scores takes the {chosen}")


if __name__ == "__main__":
    main()
