"""The GPU check, in one run (bench/gpu_check.sh starts it): predict and transfer throughput.

    (a) predict images/s for three timm architectures against a plain timm evaluation loop over pre-decoded
        tensors at the same batch size and precision (bf16 autocast, channels-last), as ratios; plus
        predict's own automatic batch size; and a 10-model zoo evaluated our way (one forward pass per
        model, all pairs from the records) against a naive per-pair evaluation (both models of every pair),
        the naive side timed on a subset of pairs and extrapolated to all 90;
    (b) transfer steps/s of kl and kl_dp (same student, teacher and data);
    (c) 2 students x 2 teachers kl_dp sweeps with teacher_cache "auto" vs "off" (bench/teacher_cache.py),
        once with teachers larger than the students and once with models of one size; each with the
        estimated floor the ratio can reach (only forward passes are saved). Longer, on request (``--cases``): 4
        students x 4 teachers, and all 12 ordered pairs of 4 models of one size (each model teaches and
        learns, as in a zoo sweep, so its one stream serves 6 jobs).

Random weights (nothing is downloaded) and random uint8 images: these are speed figures only. Every figure
is printed as one line starting with "RESULT". ``--smoke`` runs the same code tiny, on the CPU, in seconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from teacher_cache import compare, forward_ms, sync  # noqa: E402

from zoo_sweep.data.images import ImageSet  # noqa: E402
from zoo_sweep.pipeline.reuse import reuse_floor  # noqa: E402
from zoo_sweep.science.complementary import flip_counts  # noqa: E402
from zoo_sweep.science.records import predict  # noqa: E402
from zoo_sweep.transfer.train import TransferJob, TransferParams, run_transfer  # noqa: E402

T0 = time.perf_counter()
SMOKE_INPUT: int | None = None  # set by --smoke


def say(*parts) -> None:
    print(f"[{time.perf_counter() - T0:6.1f}s]", *parts, flush=True)


def result(name: str, **values) -> None:
    body = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
    print(f"RESULT {name} {body}", flush=True)


def make_model(arch: str, classes: int, device: str):
    import timm

    from zoo_sweep.zoo.models import data_config

    if SMOKE_INPUT is None:
        m = timm.create_model(arch, pretrained=False, num_classes=classes).eval()
        return m.to(device), data_config(m)
    # --smoke: every model at a small input, else the CPU spends minutes on 224 px upsampled test images
    try:
        m = timm.create_model(arch, pretrained=False, num_classes=classes, img_size=SMOKE_INPUT)
    except TypeError:  # convolutional nets take any size and have no img_size argument
        m = timm.create_model(arch, pretrained=False, num_classes=classes)
    cfg = {**data_config(m), "input_size": (3, SMOKE_INPUT, SMOKE_INPUT), "crop_pct": 1.0}
    return m.eval().to(device), cfg


def image_set(n: int, size: int, classes: int, seed: int = 0) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    imgs = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, classes, (n,), generator=g)
    return ImageSet("synthetic", imgs, labels, [str(i) for i in range(classes)], torch.arange(n))


@torch.no_grad()
def plain_loop(model, x_pinned: torch.Tensor, cfg: dict, bs: int, device: str) -> torch.Tensor:
    """timm's validate loop minus its loader: pre-decoded uint8 tensors at the model's input size, copied,
    normalised and evaluated in bf16 channels-last; the argmax kept on the GPU."""
    cuda = device.startswith("cuda")
    model = model.to(device, memory_format=torch.channels_last if cuda else torch.contiguous_format)
    mean = torch.tensor(cfg["mean"], device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(cfg["std"], device=device).view(1, 3, 1, 1) * 255
    preds = []
    for i in range(0, len(x_pinned), bs):
        x = x_pinned[i:i + bs].to(device, non_blocking=True).float().sub_(mean).div_(std)
        if cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            preds.append(model(x).argmax(1))
    return torch.cat(preds)


def timed(fn, device: str, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def resized(images: ImageSet, cfg: dict) -> torch.Tensor:
    """The eval images decoded at exactly the model's input size (what the plain loop reads)."""
    import torch.nn.functional as F

    size = cfg["input_size"][-1]
    x = images.images
    if x.shape[-1] != size:
        x = F.interpolate(x.float(), size=(size, size), mode="bilinear", antialias=True).round().clamp(0, 255)
        x = x.to(torch.uint8)
    return x.pin_memory() if torch.cuda.is_available() else x


def part_a(archs, zoo, n, n_zoo, bs, device, repeat):
    images = image_set(n, 224 if device.startswith("cuda") else 64, 1000)
    for arch in archs:
        model, cfg = make_model(arch, 1000, device)
        x = resized(images, cfg)
        plain_loop(model, x, cfg, bs, device)  # warm-up: cudnn autotuning, allocator
        predict(model, images, cfg, bs, 5, device)
        memo = Path(os.environ.get("TMPDIR", "/tmp")) / "zoo-gpu-check-bs.json"
        # timed() calls each closure at once, in this iteration: the defaults only make the binding explicit
        t_plain = timed(lambda m=model, x=x, cfg=cfg: plain_loop(m, x, cfg, bs, device), device, repeat)
        t_ours = timed(lambda m=model, cfg=cfg: predict(m, images, cfg, bs, 5, device), device, repeat)
        t_auto = timed(lambda m=model, cfg=cfg, memo=memo, arch=arch: predict(m, images, cfg, "auto", 5, device,
                                                                               memo=memo, name=arch),
                       device, repeat)
        # the device pipeline (pinned side-stream copies, resize on the GPU, bf16) against the CPU's float32
        # path on the same images: a race or a wrong transform shows as agreement near chance (0.1 %)
        sub = images.head(256)
        on_device = predict(model, sub, cfg, bs, 5, device)
        on_cpu = predict(model.cpu(), sub, cfg, bs, 5, "cpu")
        model.to(device)
        result("predict", arch=arch, batch=bs, plain_img_s=n / t_plain, predict_img_s=n / t_ours,
               ratio=t_plain / t_ours, auto_img_s=n / t_auto,
               pred_agree_vs_cpu=float((on_device["pred"] == on_cpu["pred"]).mean()),
               max_p_max_diff_vs_cpu=float(abs(on_device["p_max"] - on_cpu["p_max"]).max()))
        del model
        if device.startswith("cuda"):
            torch.cuda.empty_cache()

    # 10-model zoo: one pass per model + all pairs from the records, against evaluating both models per pair
    images = images.head(n_zoo)
    models = [make_model(a, 1000, device) for a in zoo]
    labels = images.labels.numpy()
    for m, c in models:  # warm-up of every model (both sides profit alike)
        predict(m, images, c, bs, 5, device)

    def ours():
        correct = torch.from_numpy(
            __import__("numpy").stack([predict(m, images, c, bs, 5, device)["pred"] == labels for m, c in models]))
        return flip_counts(correct)

    t_ours = timed(ours, device, 1)
    xs = [resized(images, c) for _, c in models]
    pairs = [(i, j) for i in range(len(models)) for j in range(len(models)) if i != j]
    subset = pairs[::9]  # 10 of the 90 ordered pairs

    def naive():
        y = images.labels.to(device)
        for i, j in subset:
            (plain_loop(models[i][0], xs[i], models[i][1], bs, device) == y).sum()
            (plain_loop(models[j][0], xs[j], models[j][1], bs, device) == y).sum()

    t_naive = timed(naive, device, 1) * len(pairs) / len(subset)
    result("zoo_predict", models=len(models), images=n_zoo, ours_s=t_ours, naive_s_extrapolated=t_naive,
           naive_pairs_timed=len(subset), ratio=t_naive / t_ours)


def part_b(student, teacher, n_steps, bs, size, device):
    tr, ev = image_set(n_steps * bs, size, 1000, 1), image_set(256, size, 1000, 2)
    s, s_cfg = make_model(student, 1000, device)
    t, t_cfg = make_model(teacher, 1000, device)
    ok = ev.labels.numpy() >= 0
    hp = TransferParams(epochs=1, batch_size=bs)
    warm = tr.head(3 * bs)
    steps = {}
    for method in ("kl", "kl_dp"):
        run_transfer(TransferJob(s, t, method, hp, 0, warm, ev, s_cfg, t_cfg, ok, ok), device=device)
    for method in ("kl", "kl_dp", "kl", "kl_dp"):  # alternating: drift hits both alike
        # timed() calls the closure at once, in this iteration: the default only makes the binding explicit
        sec = timed(lambda method=method: run_transfer(TransferJob(s, t, method, hp, 0, tr, ev, s_cfg, t_cfg, ok, ok),
                                                       device=device),
                    device, 1)
        steps[method] = max(steps.get(method, 0.0), n_steps / sec)
    result("transfer_steps", student=student, teacher=teacher, batch=bs, kl_steps_s=steps["kl"],
           kl_dp_steps_s=steps["kl_dp"], ratio_kl_dp_over_kl=steps["kl_dp"] / steps["kl"])


def part_d(student, teacher, n_steps, bs, size, device):
    """(d) The data path on the GPU: a kl_dp epoch with the "paper" augmentation (on the GPU) whose batches are
    copied from a memory-mapped cache file (one pinned, asynchronous copy per batch: what a set too large for
    the GPU gets) against the same epoch with the set pre-loaded on the GPU (what a small set gets)."""
    import unittest.mock
    import warnings

    import numpy as np

    tr, ev = image_set(n_steps * bs, size, 1000, 5), image_set(256, size, 1000, 6)
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"zoo-gpu-check-{os.getpid()}.u8"
    arr = np.memmap(path, dtype=np.uint8, mode="w+", shape=tuple(tr.images.shape))
    arr[:] = tr.images.numpy()
    arr.flush()
    del arr
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a read-only map: torch warns that the tensor is not writable
        mapped = dataclasses.replace(tr, images=torch.from_numpy(
            np.memmap(path, dtype=np.uint8, mode="r", shape=tuple(tr.images.shape))))
    s, s_cfg = make_model(student, 1000, device)
    t, t_cfg = make_model(teacher, 1000, device)
    ok = ev.labels.numpy() >= 0
    hp = TransferParams(epochs=1, batch_size=bs, augment="paper", inputs="student")

    def epoch(streamed: bool) -> float:
        job = TransferJob(s, t, "kl_dp", hp, 0, mapped, ev, s_cfg, t_cfg, ok, ok)
        if not streamed or device == "cpu":
            return timed(lambda: run_transfer(job, device=device), device, 1)
        # no free GPU memory as far as the transfer can tell: it streams the set as it would a large one
        with unittest.mock.patch("torch.cuda.mem_get_info", lambda *a: (0, 1)):
            return timed(lambda: run_transfer(job, device=device), device, 1)

    epoch(True)  # warm-up: cudnn autotuning and the page cache
    epoch(False)
    best = {True: float("inf"), False: float("inf")}
    for streamed in (True, False, False, True):  # alternating: drift hits both alike
        best[streamed] = min(best[streamed], epoch(streamed))
    path.unlink()
    result("data_path_gpu", student=student, teacher=teacher, batch=bs, size=size, steps=n_steps,
           streamed_steps_s=n_steps / best[True], preloaded_steps_s=n_steps / best[False],
           ratio_streamed_over_preloaded=best[False] / best[True])


def part_c(label, students, teachers, n_steps, bs, size, epochs, device, rounds=2):

    tr, ev = image_set(n_steps * bs, size, 1000, 3), image_set(512, size, 1000, 4)
    built = {a: make_model(a, 1000, device) for a in dict.fromkeys(students + teachers)}
    models, cfgs = {a: m for a, (m, _) in built.items()}, {a: c for a, (_, c) in built.items()}
    cost = {a: forward_ms(models[a], cfgs[a], tr.images[:bs], device) for a in models}
    warm = tr.head(2 * bs)
    hp = TransferParams(epochs=epochs, batch_size=bs)
    # warm-up of every model in every role (cudnn autotuning of a new shape takes seconds: it must not land
    # in either side of the ratio)
    compare(models, cfgs, students, teachers, "kl_dp", dataclasses.replace(hp, epochs=1), warm, ev, device,
            size, tol=100)
    # on the GPU, bf16 kernels may differ between runs: the tolerance is in accuracy points. Two rounds
    # (off, auto, off, auto); the faster of each policy counts
    r = compare(models, cfgs, students, teachers, "kl_dp", hp, tr, ev, device, size,
                tol=0.5 if device.startswith("cuda") else 1e-6, rounds=rounds)
    result("teacher_cache", case=label, students="+".join(students), teachers="+".join(teachers),
           fwd_ms="/".join(f"{cost[a]:.1f}" for a in models), steps_per_job=n_steps * epochs,
           off_s=r["off_s"], auto_s=r["auto_s"], ratio=r["ratio"],
           floor_est=reuse_floor(students, teachers, "kl_dp", cost, n_steps * epochs, r["off_s"]),
           max_metric_diff=r["max_metric_diff"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU: checks the script, not the GPU")
    ap.add_argument("--parts", default="abc", help="a, b, c and d (the data path; not in the default run)")
    ap.add_argument("--cases", default="larger_teachers,same_size",
                    help="teacher_cache cases of part (c): larger_teachers, same_size (2 x 2, two rounds each), "
                         "4x4 and all_pairs (16 and 12 jobs, one round each; gpu_check.sh stops the script "
                         "after ZOO_GPU_CHECK_TIMEOUT seconds, 290 by default)")
    a = ap.parse_args()
    device = "cpu" if a.smoke or not torch.cuda.is_available() else "cuda"
    import timm

    say(f"device {torch.cuda.get_device_name() if device == 'cuda' else 'cpu'}; torch {torch.__version__}, "
        f"timm {timm.__version__}")
    if device == "cuda":
        torch.backends.cudnn.benchmark = True  # as timm's validate.py; both sides of every ratio alike
    if a.smoke:
        global SMOKE_INPUT
        SMOKE_INPUT = 64
        archs, zoo = ["resnet10t", "test_vit", "test_convnext"], ["resnet10t", "test_vit"] * 2 + ["test_convnext"]
        sizes = dict(n=256, n_zoo=64, bs=64, repeat=1)
        b = dict(student="resnet10t", teacher="test_vit", n_steps=3, bs=32, size=64)
        d = dict(student="resnet10t", teacher="test_vit", n_steps=3, bs=32, size=64)
        c = [("smoke", ["resnet10t", "test_convnext"], ["test_vit", "test_byobnet"], 2, 32, 64, 1),
             ("smoke_all_pairs", *[["resnet10t", "test_vit", "test_convnext"]] * 2, 2, 32, 64, 1, 1)]
    else:
        archs = ["resnet50", "vit_base_patch16_224", "convnext_tiny"]
        zoo = ["resnet18", "resnet34", "resnet50", "efficientnet_b0", "mobilenetv3_large_100", "convnext_tiny",
               "vit_small_patch16_224", "deit_tiny_patch16_224", "regnety_016", "densenet121"]
        sizes = dict(n=4096, n_zoo=2048, bs=256, repeat=3)
        b = dict(student="resnet50", teacher="convnext_tiny", n_steps=30, bs=128, size=224)
        d = dict(student="resnet50", teacher="convnext_tiny", n_steps=40, bs=128, size=224)
        c = [("larger_teachers", ["resnet18", "efficientnet_b0"], ["vit_base_patch16_224", "convnext_base"],
              16, 128, 224, 2),
             ("same_size", ["resnet50", "convnext_tiny"], ["vit_small_patch16_224", "regnety_040"], 16, 128, 224, 2),
             ("4x4", ["resnet18", "efficientnet_b0", "resnet50", "convnext_tiny"],
              ["vit_base_patch16_224", "convnext_base", "vit_small_patch16_224", "regnety_040"], 16, 128, 224, 2, 1),
             ("all_pairs", *[["resnet50", "convnext_tiny", "vit_small_patch16_224", "regnety_040"]] * 2,
              16, 128, 224, 2, 1)]
    if "a" in a.parts:
        say("(a) predict throughput")
        part_a(archs, zoo, sizes["n"], sizes["n_zoo"], sizes["bs"], device, sizes["repeat"])
    if "b" in a.parts:
        say("(b) transfer steps/s, kl vs kl_dp")
        part_b(device=device, **b)
    if "d" in a.parts:
        say("(d) data path: batches streamed from a memory-mapped set vs pre-loaded on the GPU")
        part_d(device=device, **d)
    if "c" in a.parts:
        for case in [x for x in c if x[0] in a.cases.split(",") or a.smoke]:
            say(f"(c) teacher_cache auto vs off: {case[0]}")
            part_c(*case[:7], device=device, rounds=case[7] if len(case) > 7 else 2)
    say("done")


if __name__ == "__main__":
    main()
