"""Cost of one KL-Dist + DP training step against one KL-Dist step, and of DP's target selection.

    .venv/bin/python bench/transfer_step.py                 # CPU, batch 256, 1,000 classes, resnet10t at 32 px
    .venv/bin/python bench/transfer_step.py --repeat 20 --size 48

Both steps run the same three forward passes (teacher, frozen student s0, student), so the ratio isolates
what DP adds: two softmaxes, a gather and a ``torch.where`` over B x C. The steps alternate (kl, kl_dp, kl,
...) so machine load hits both alike; the medians are compared. The selection is also timed alone against a
per-sample Python loop (what a straightforward implementation does), after checking both agree.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from zoo_sweep.transfer.methods import METHODS, dp_target  # noqa: E402
from zoo_sweep.transfer.train import TransferParams  # noqa: E402


def loop_dp_target(z_t, z_s0, labels, T):
    """The reference: one sample at a time."""
    rows, mask = [], []
    for i in range(len(labels)):
        p_t, p_s = F.softmax(z_t[i], 0), F.softmax(z_s0[i], 0)
        use_t = bool(p_t[labels[i]] > p_s[labels[i]])
        mask.append(use_t)
        rows.append(F.softmax((z_t[i] if use_t else z_s0[i]) / T, 0))
    return torch.stack(rows), torch.tensor(mask)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--arch", default="resnet10t")
    ap.add_argument("--repeat", type=int, default=6)
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    import timm

    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    student = timm.create_model(a.arch, num_classes=a.classes).train()
    s0 = timm.create_model(a.arch, num_classes=a.classes).eval()
    teacher = timm.create_model(a.arch, num_classes=a.classes).eval()
    opt = torch.optim.SGD(student.parameters(), lr=1e-4, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(a.batch, 3, a.size, a.size)
    y = torch.randint(0, a.classes, (a.batch,))
    p = TransferParams()

    def step(method: str) -> float:
        t0 = time.perf_counter()
        with torch.no_grad():
            z_t, z_s0 = teacher(x), s0(x)  # the same three forward passes for both methods
        z_s = student(x)
        loss, _ = METHODS[method].loss(z_s, z_t, z_s0, y, p)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return time.perf_counter() - t0

    step("kl"), step("kl_dp")  # warm-up
    times = {"kl": [], "kl_dp": []}
    for _ in range(a.repeat):
        for m in times:
            times[m].append(step(m))
    kl, dp = statistics.median(times["kl"]), statistics.median(times["kl_dp"])

    z_t, z_s0 = torch.randn(a.batch, a.classes) * 3, torch.randn(a.batch, a.classes) * 3
    ref_t, ref_m = loop_dp_target(z_t, z_s0, y, 1.0)
    fast_t, fast_m = dp_target(z_t, z_s0, y, 1.0)
    assert torch.equal(ref_m, fast_m) and torch.allclose(ref_t, fast_t, atol=1e-6)

    def best(fn, n):
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
        return statistics.median(out)

    vec = best(lambda: dp_target(z_t, z_s0, y, 1.0), 50)
    loop = best(lambda: loop_dp_target(z_t, z_s0, y, 1.0), 5)

    print(f"machine: {platform.machine()} {platform.processor() or ''}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s); {a.arch} at {a.size} px, batch {a.batch}, {a.classes} classes, "
          f"median of {a.repeat} alternating steps")
    print(f"kl step     {kl * 1000:8.1f} ms")
    print(f"kl_dp step  {dp * 1000:8.1f} ms   ratio kl_dp / kl = {dp / kl:.3f}  (target <= 1.10)")
    print(f"DP target selection: vectorised {vec * 1000:.3f} ms, per-sample loop {loop * 1000:.1f} ms, "
          f"loop / vectorised = {loop / vec:.0f}x")


if __name__ == "__main__":
    main()
