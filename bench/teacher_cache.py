"""Teacher-output reuse: an S students x T teachers transfer sweep, teacher_cache "auto" vs "off".

The jobs are what the launcher runs for S x T pairs: the same payloads, the same policy
(``logit_cache.plan_streams``) and the same job order (``StreamPlan.order``), run one after another on one
device with the real training loop and ``LogitCache`` folders, as one worker per GPU runs them. Ray and the
store are left out (scheduling costs milliseconds per job: bench/scheduler.py); the launcher test in
tests/test_logit_cache.py covers the same path through Ray. Both policies must give the same metrics; the
script checks that before it prints the ratio.

    .venv/bin/python bench/teacher_cache.py                 # CPU: digits-zoo architectures, digits data
    .venv/bin/python bench/teacher_cache.py --epochs 2 --method kl
    .venv/bin/python bench/teacher_cache.py --models densenet_a,convnext_a,vit_a   # all ordered pairs of three

A model that is both a student and a teacher (``--models``, or overlapping lists) shares one stream across its
two roles, as in the launcher's all-pairs sweeps; a model never learns from itself.

Reuse only removes teacher and s0 forward passes; every student still trains in every job. So besides the
ratio the script prints an estimate of its floor (``zoo_sweep.pipeline.reuse.reuse_floor``): the ratio if the
saved forward passes (timed separately, ``forward_ms``) were the only difference. A ratio near the estimate
means the cache costs nothing of its own; one below it means the forward passes cost more inside the sweep than
timed alone (noise, on a shared machine).

On a GPU, bench/gpu_check.py calls ``sweep`` with ImageNet-sized timm architectures.
"""

from __future__ import annotations

import argparse
import copy
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from zoo_sweep.pipeline.reuse import pairs, reuse_floor  # noqa: E402
from zoo_sweep.science.records import predict  # noqa: E402
from zoo_sweep.transfer.logit_store import LogitCache, device_kind, plan_streams  # noqa: E402
from zoo_sweep.transfer.train import (  # noqa: E402
    TransferJob,
    TransferParams,
    run_transfer,
    used_rows,
)


def sync(device: str) -> None:
    """Wait for the GPU's queued work (timings on CUDA end when the work does); nothing on the CPU."""
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def sweep(models: dict[str, torch.nn.Module], cfgs: dict[str, dict], students: list[str], teachers: list[str],
          method: str, hp: TransferParams, tr, ev, device: str, policy: str, image_size: int) -> tuple[float, list]:
    """Wall seconds of all S x T jobs under ``policy``, and each job's final metrics row (in job order)."""
    labels = ev.labels.numpy()
    correct = {n: predict(m, ev, cfgs[n], topk=1, device=device)["pred"] == labels for n, m in models.items()}
    hpd = {"batch_size": hp.batch_size, "augment": hp.augment, "epochs": hp.epochs}
    jobs = [(f"{s}<-{t}", {"student": {"name": s}, "teacher": {"name": t}, "method": method, "seed": 0, "hp": hpd,
                           "image_size": image_size}) for s, t in pairs(students, teachers)]
    plan = plan_streams(jobs, policy, "bench", len(tr), ev.num_classes, max_bytes=float("inf"))
    order = [j["id"] for j in plan.order([{"id": jid} for jid, _ in jobs])]
    root = Path(tempfile.mkdtemp(prefix="zoo-logits-"))
    rows = {}
    try:
        sync(device)
        t0 = time.perf_counter()
        for jid in order:
            s, t = jid.split("<-")
            caches = {role: LogitCache(root / key / device_kind(device))
                      for role, key in plan.streams.get(jid, {}).items()}
            student = copy.deepcopy(models[s]).requires_grad_(True)  # a model that taught earlier is frozen
            job = TransferJob(student, models[t], method, hp, 0, tr, ev, cfgs[s], cfgs[t], correct[s], correct[t])
            rows[jid] = run_transfer(job, device=device, teacher_cache=caches.get("teacher"),
                                     s0_cache=caches.get("s0"))[-1]
            plan.release(jid, root)
        sync(device)
        return time.perf_counter() - t0, [rows[j] for j, _ in jobs]
    finally:
        shutil.rmtree(root, ignore_errors=True)


def compare(models, cfgs, students, teachers, method, hp, tr, ev, device, image_size, tol, rounds=1) -> dict:
    """Both policies, alternating ("off" first) for ``rounds`` rounds; the fastest time of each (a busy
    moment of a shared machine must not decide the ratio), the ratio of those and the largest metric
    difference between the policies."""
    keys = ("student_acc", "knowledge_gain", "knowledge_loss", "delta")
    t_off, t_on, diff, each = float("inf"), float("inf"), 0.0, []
    for _ in range(rounds):
        s_off, rows_off = sweep(models, cfgs, students, teachers, method, hp, tr, ev, device, "off", image_size)
        s_on, rows_on = sweep(models, cfgs, students, teachers, method, hp, tr, ev, device, "auto", image_size)
        t_off, t_on = min(t_off, s_off), min(t_on, s_on)
        each.append(f"{s_off:.1f}/{s_on:.1f}")
        diff = max(diff, max(abs(a[k] - b[k]) for a, b in zip(rows_off, rows_on) for k in keys))
    if diff > tol:
        raise SystemExit(f"teacher_cache changed the results by {diff:.4f} points (tolerance {tol})")
    return {"off_s": t_off, "auto_s": t_on, "ratio": t_on / t_off, "max_metric_diff": diff, "rounds": " ".join(each)}


def forward_ms(model, cfg, images, device, reps=10) -> float:
    """Median of ``reps`` timed eval forward passes over one batch, run as the training loop runs a frozen
    model: the model's own resize and normalisation of the uint8 batch, and on CUDA bf16 autocast with
    channels-last (to say how costly each model is)."""
    from zoo_sweep.data.images import model_input

    cuda = device.startswith("cuda")
    fmt = torch.channels_last if cuda else torch.contiguous_format
    images = images.to(device)
    model.to(device, memory_format=fmt)
    times = []
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
        for _ in range(reps + 2):
            sync(device)
            t0 = time.perf_counter()
            model(model_input(images, cfg, device).contiguous(memory_format=fmt))
            sync(device)
            times.append(time.perf_counter() - t0)
    return float(np.median(times[2:])) * 1000  # the first two calls pay one-off set-up (kernel choice, allocations)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--students", default="resnet_a,vit_a")
    ap.add_argument("--teachers", default="convnext_a,densenet_a")
    ap.add_argument("--models", default=None, help="all ordered pairs of these (overrides --students/--teachers)")
    ap.add_argument("--method", default="kl_dp")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--transfer", type=int, default=2560, help="transfer samples used (digits:transfer has 5,390)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=3, help="off/auto rounds; the fastest of each counts")
    ap.add_argument("--home", default="results")
    a = ap.parse_args()
    import os

    from zoo_sweep.data.images import load_image_set
    from zoo_sweep.zoo.digits import digits_entries
    from zoo_sweep.zoo.models import create, data_config

    if a.threads:
        torch.set_num_threads(a.threads)
    cache = Path(a.home) / "cache"
    students, teachers = (a.models.split(","),) * 2 if a.models else (a.students.split(","), a.teachers.split(","))
    entries = {e.name: e for e in digits_entries("default", cache, 32) if e.name in students + teachers}
    trained = all(Path(e.weights).exists() for e in entries.values())
    models = {n: create(e, pretrained=trained) for n, e in entries.items()}
    cfgs = {n: data_config(m) for n, m in models.items()}
    tr = load_image_set("digits:transfer", 32, cache)
    ev = load_image_set("digits:eval", 32, cache)
    tr = tr.head(a.transfer)
    hp = TransferParams(epochs=a.epochs, batch_size=a.batch_size)
    print(f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"load avg {os.getloadavg()[0]:.1f}; "
          f"weights: {'trained digits zoo' if trained else 'random (zoo not built)'}")
    cost = {n: forward_ms(models[n], cfgs[n], tr.images[:a.batch_size], "cpu") for n in models}
    for n, ms in cost.items():
        print(f"#   {n:12s} forward {ms:7.1f} ms/batch")
    r = compare(models, cfgs, students, teachers, a.method, hp, tr, ev, "cpu", 32, tol=1e-6, rounds=a.rounds)
    steps = -(-used_rows(len(tr), hp.batch_size) // hp.batch_size) * hp.epochs
    floor = reuse_floor(students, teachers, a.method, cost, steps, r["off_s"])
    print(f"{len(pairs(students, teachers))} jobs ({len(students)} students x {len(teachers)} teachers) {a.method}, "
          f"{a.epochs} epoch(s), {len(tr)} transfer samples, best of {a.rounds}: "
          f"off {r['off_s']:.1f} s, auto {r['auto_s']:.1f} s, "
          f"ratio auto/off {r['ratio']:.2f}, estimated floor {floor:.2f} "
          f"(largest metric difference {r['max_metric_diff']:.2g}; "
          f"off/auto s by round: {r['rounds']})")


if __name__ == "__main__":
    main()
