"""The whole launcher on one GPU: `zoo-sweep launch SPEC --gpus 1` (Ray, warm actors, the SQLAlchemy store,
the report), then the same spec with `--gpus 0` in another home, and the two compared.

Everything runs through the command line, as a user runs it, in a temporary folder:

    images   an ImageFolder of synthetic JPEGs, 10 classes (a colour and a grating orientation per class,
             noise and a random phase per image): an eval split and a transfer split
    spec     timm source with random weights (seeded per model, so both runs build the same networks):
             resnet18, vit_tiny_patch16_224 and mixer_s32_224 (three families) at 224 px; every ordered
             pair; kl and kl_dp; 1 epoch
    run      zoo-sweep --home GPU_HOME --db sqlite:///GPU_HOME/zoo.db launch SPEC --gpus 1 --no-progress
             zoo-sweep ... report SPEC; zoo-sweep ... export        (then the same with --gpus 0)

Checks (each failed one is printed as "FAIL ..." and the script exits 1):

    - both launches succeed; every predict and transfer job is done; report.html is written
    - where each job ran: jobs.worker (host:pid:device of the warm actor) ends in ":cuda" for every
      predict and transfer job of the GPU run and in ":cpu" for the CPU run; the compare stage's kernel
      line names the GPU
    - predict: per model, the GPU's predicted class equals the CPU's on >= 99 % of the eval images
    - transfer: per job, the final student accuracy, s0 accuracy, delta, knowledge gain and loss differ by
      at most --tol-points accuracy points (bf16 autocast on the GPU against float32 on the CPU, through
      one epoch of SGD), and the mean training loss by at most --tol-loss (relative)

RESULT lines: ``e2e_stage`` (per run and stage: jobs, wall seconds from the first job's start to the last
one's end in the store's job table, jobs/s, the jobs' own seconds summed), ``e2e_launch`` (wall seconds of
each command), ``e2e_predict`` (per model: agreement; near-ties and the agreement beyond them; the largest difference of
the top class's probability; how many classes it predicts; both accuracies), ``e2e_transfer`` (largest
differences over all jobs) and ``e2e`` (ok or not).

    python3 bench/gpu_e2e.py            # on the GPU machine (bench/gpu_check.sh starts it: ZOO_GPU_E2E=1)
    python3 bench/gpu_e2e.py --smoke    # both runs on the CPU, timm's tiny test models at 160 px, few
                                        # images, two pairs: checks the script (and `plan --dry-run`s the
                                        # GPU spec), not the GPU
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
T0 = time.perf_counter()
CLASSES = 10
POINT_METRICS = ("student_acc", "s0_acc", "delta", "knowledge_gain", "knowledge_loss")  # accuracy points


@dataclass(frozen=True)
class Size:
    models: tuple[str, ...]
    image_px: int  # the JPEGs and the decode-once cache
    n_eval: int
    n_transfer: int
    batch: int
    max_pairs: int | None  # None: every ordered pair


# the CPU run (16 single-threaded jobs on a GPU node's cores) takes most of the time: 320 + 320 images keep the
# whole comparison near 5 minutes
GPU = Size(("resnet18", "vit_tiny_patch16_224", "mixer_s32_224"), 256, 320, 320, 64, None)
SMOKE = Size(("test_vit", "test_convnext", "test_efficientnet"), 160, 60, 64, 32, 2)


def say(*parts) -> None:
    print(f"[e2e {time.perf_counter() - T0:6.1f}s]", *parts, flush=True)


def result(name: str, **values) -> None:
    body = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
    print(f"RESULT {name} {body}", flush=True)


FAILS: list[str] = []


def check(ok: bool, what: str) -> None:
    if not ok:
        FAILS.append(what)
        print(f"FAIL {what}", flush=True)


# ---------------------------------------------------------------------------------------------- inputs
def write_images(root: Path, split: str, n: int, px: int, seed: int) -> None:
    """n JPEGs, classes in turn: a class's colour and grating orientation, a random phase and noise per image."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:px, 0:px].astype(np.float32) / px
    for i in range(n):
        c = i % CLASSES
        angle = np.pi * c / CLASSES
        wave = np.sin(2 * np.pi * 6 * (np.cos(angle) * xx + np.sin(angle) * yy) + rng.uniform(0, 2 * np.pi))
        colour = np.array([np.cos(2 * np.pi * (c / CLASSES + k / 3)) for k in range(3)], np.float32)
        img = 128 + 60 * wave[..., None] * colour + rng.normal(0, 20, (px, px, 3))
        folder = root / split / f"class{c:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(folder / f"{i:05d}.jpg", quality=90)


def spec_text(name: str, size: Size, images: Path) -> str:
    pairs = f"max_pairs = {size.max_pairs}\n" if size.max_pairs else ""
    models = ", ".join(f'"{m}"' for m in size.models)
    return f"""name = "{name}"
description = "the launcher end to end: random weights, synthetic images, one epoch"

[zoo]
source = "timm"
models = [{models}]
allow_random_weights = true

[data]
eval = "imagefolder:{images}/eval"
transfer = "imagefolder:{images}/transfer"
image_size = {size.image_px}

[pairs]
policy = "all"
{pairs}
[transfer]
methods = ["kl", "kl_dp"]
epochs = 1
batch_size = {size.batch}

[run]
max_retries = 0
"""


# ---------------------------------------------------------------------------------------------- runs
def cli(home: Path, *args: str, log: Path) -> tuple[int, float]:
    """One zoo-sweep command on ``home``'s own SQLite store; output to ``log``. (exit code, wall seconds)"""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    cmd = [sys.executable, "-m", "zoo_sweep", "--home", str(home), "--db", f"sqlite:///{home}/zoo.db", *args]
    t0 = time.perf_counter()
    with log.open("a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        rc = subprocess.run(cmd, check=False, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT).returncode
    return rc, time.perf_counter() - t0


def tail(log: Path, n: int = 25) -> None:
    for line in log.read_text().splitlines()[-n:]:
        print(f"    | {line}", flush=True)


@dataclass
class Run:
    label: str
    home: Path
    tables: dict[str, pd.DataFrame]
    log: str


def run_sweep(label: str, home: Path, spec: Path, gpus: str) -> Run | None:
    home.mkdir(parents=True)
    log = home / "commands.log"
    say(f"{label}: launch --gpus {gpus}")
    rc, sec = cli(home, "launch", str(spec), "--gpus", gpus, "--no-progress", log=log)
    result("e2e_launch", run=label, command="launch", gpus=gpus, rc=rc, wall_s=sec)
    check(rc == 0, f"{label}: launch exited {rc}")
    if rc != 0:
        tail(log)
        return None
    rc, sec = cli(home, "report", str(spec), "--out", str(home / "report"), log=log)
    result("e2e_launch", run=label, command="report", rc=rc, wall_s=sec)
    check(rc == 0 and (home / "report" / "report.html").is_file(),
          f"{label}: report exited {rc} or wrote no report.html")
    rc, _ = cli(home, "export", "--out", str(home / "export"), log=log)
    check(rc == 0, f"{label}: export exited {rc}")
    if rc != 0:
        tail(log)
        return None
    tables = {p.stem: pd.read_parquet(p) for p in (home / "export").glob("*.parquet")}
    return Run(label, home, tables, log.read_text())


# ---------------------------------------------------------------------------------------------- checks
def stage_figures(run: Run) -> None:
    jobs = run.tables["jobs"]
    for kind in ("predict", "compare", "transfer"):
        j = jobs[jobs["kind"] == kind]
        if j.empty:
            continue
        wall = float(j["finished_at"].max() - j["started_at"].min())
        result("e2e_stage", run=run.label, stage=kind, jobs=len(j), done=int((j["state"] == "done").sum()),
               wall_s=wall, jobs_per_s=len(j) / wall if wall > 0 else float("nan"),
               job_s_sum=float(j["seconds"].sum()), job_s_max=float(j["seconds"].max()))


def check_jobs(run: Run, device: str, gpu_name: str | None) -> None:
    jobs = run.tables["jobs"]
    undone = jobs[jobs["state"] != "done"]
    check(undone.empty, f"{run.label}: jobs not done: {undone[['id', 'kind', 'state']].to_dict('records')}")
    actor_jobs = jobs[jobs["kind"].isin(["predict", "transfer"])]
    elsewhere = actor_jobs[~actor_jobs["worker"].fillna("").str.endswith(f":{device}")]
    check(elsewhere.empty, f"{run.label}: {len(elsewhere)} job(s) not on a {device} worker: "
                           f"{sorted(set(elsewhere['worker'].fillna('?')))}")
    workers = sorted(set(actor_jobs["worker"].fillna("?")))
    result("e2e_workers", run=run.label, device=device, workers=len(workers), example=workers[0])
    kernel = [line for line in run.log.splitlines() if line.startswith("compare: ") and "kernel" in line]
    check(bool(kernel), f"{run.label}: no compare kernel line in the launch output")
    if gpu_name and kernel:
        check(gpu_name in kernel[-1], f"{run.label}: compare did not run on the GPU ({kernel[-1]!r})")


def records(run: Run) -> dict[str, dict[str, np.ndarray]]:
    models = run.tables["models"]
    return {r["name"]: dict(np.load(r["record"])) for _, r in models.iterrows()}


def compare_predictions(name: str, g: dict, c: dict, acc: dict, min_agree: float, tie: float) -> None:
    """Random weights give small logits and some near-ties, where bf16 may pick the other class: besides the
    agreement (at least ``min_agree``), how many samples are near-ties (CPU run's top-2 margin under ``tie`` times
    its median margin) and the agreement on the others; the largest difference of the top class's
    probability; how many classes the model predicts at all (one class for every image would make agreement
    say little)."""
    same = g["pred"] == c["pred"]
    margin = c["topk_logits"][:, 0] - c["topk_logits"][:, 1]
    clear = margin >= tie * np.median(margin)
    result("e2e_predict", model=name, samples=len(same), agree=float(same.mean()),
           near_ties=int((~clear).sum()), agree_beyond_ties=float(same[clear].mean()) if clear.any() else float("nan"),
           max_p_max_diff=float(np.abs(g["p_max"] - c["p_max"]).max()), classes_predicted=len(np.unique(c["pred"])),
           acc_gpu_run=acc["gpu"], acc_cpu_run=acc["cpu"])
    check(float(same.mean()) >= min_agree, f"{name}: predictions agree on {same.mean():.4f} of the samples "
                                           f"(< {min_agree})")


def compare_runs(gpu: Run, cpu: Run, min_agree: float, tie: float, tol_points: float, tol_loss: float) -> None:
    rg, rc = records(gpu), records(cpu)
    check(set(rg) == set(rc) and bool(rg), f"models differ: {sorted(rg)} vs {sorted(rc)}")
    acc = {run.label: run.tables["models"].set_index("name")["accuracy"] for run in (gpu, cpu)}
    for name in sorted(set(rg) & set(rc)):
        compare_predictions(name, rg[name], rc[name],
                            {"gpu": float(acc[gpu.label][name]), "cpu": float(acc[cpu.label][name])}, min_agree, tie)

    key = ["student", "teacher", "method", "seed"]
    fin = [r.tables["transfer_results"].query("final") for r in (gpu, cpu)]
    both = fin[0].merge(fin[1], on=key, suffixes=("_g", "_c"))
    check(len(both) == len(fin[0]) == len(fin[1]) > 0,
          f"transfer jobs differ: {len(fin[0])} final rows vs {len(fin[1])}, {len(both)} in common")
    if both.empty:
        return
    diffs = {m: float((both[f"{m}_g"] - both[f"{m}_c"]).abs().max()) for m in POINT_METRICS}
    rel = ((both["train_loss_g"] - both["train_loss_c"]).abs() / both["train_loss_c"].abs().clip(lower=1e-12))
    result("e2e_transfer", jobs=len(both), **{f"max_diff_{m}": v for m, v in diffs.items()},
           max_rel_diff_train_loss=float(rel.max()))
    for m, v in diffs.items():
        check(v <= tol_points, f"transfer {m}: the runs differ by up to {v:.3g} points (> {tol_points})")
    check(float(rel.max()) <= tol_loss, f"transfer train_loss: relative difference {float(rel.max()):.3g} > {tol_loss}")
    worst = both.assign(d=(both["student_acc_g"] - both["student_acc_c"]).abs()).nlargest(3, "d")
    for _, r in worst.iterrows():
        say(f"  {r['method']:6s} {r['teacher']} -> {r['student']}: student_acc {r['student_acc_g']:.2f} "
            f"(gpu run) vs {r['student_acc_c']:.2f} (cpu run)")


# ---------------------------------------------------------------------------------------------- main
def dry_run_gpu_spec(work: Path, images: Path) -> None:
    """--smoke: the GPU run's spec must plan (registry names, 224 px configs) without running it here."""
    spec = work / "gpu-spec.toml"
    spec.write_text(spec_text("gpu-e2e", GPU, images))
    home = work / "dry"
    home.mkdir()
    rc, _ = cli(home, "plan", str(spec), "--dry-run", log=home / "commands.log")
    check(rc == 0, f"plan --dry-run of the GPU spec exited {rc}")
    if rc != 0:
        tail(home / "commands.log")
    else:
        say("the GPU spec plans (plan --dry-run)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="both runs on the CPU, tiny: checks the script")
    ap.add_argument("--workdir", help="keep everything here (default: a temporary folder, removed at the end)")
    ap.add_argument("--min-agree", type=float, default=0.99, help="predict: least share of equal predictions")
    ap.add_argument("--tie", type=float, default=0.1, help="predict: a near-tie's top-2 margin, as a share of the "
                                                           "median margin (reported, not a check)")
    ap.add_argument("--tol-points", type=float, default=2.0, help="transfer metrics: largest difference, points")
    ap.add_argument("--tol-loss", type=float, default=0.05, help="mean training loss: largest relative difference")
    a = ap.parse_args()
    size = SMOKE if a.smoke else GPU
    gpu_name = None
    if not a.smoke:
        import torch  # only for the GPU's name; the runs themselves are separate processes

        if not torch.cuda.is_available():
            print("error: no CUDA GPU visible; use --smoke to check the script on the CPU")
            return 2
        gpu_name = torch.cuda.get_device_name()
    from importlib.metadata import version

    versions = ", ".join(f"{p} {version(p)}" for p in ("torch", "timm", "ray", "sqlalchemy"))
    say(f"python {sys.version.split()[0]}; {versions}; {gpu_name or 'CPU only (--smoke)'}")
    work = Path(a.workdir or tempfile.mkdtemp(prefix="zoo-gpu-e2e-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        images = work / "images"
        write_images(images, "eval", size.n_eval, size.image_px, 0)
        write_images(images, "transfer", size.n_transfer, size.image_px, 1)
        spec = work / "spec.toml"
        spec.write_text(spec_text("gpu-e2e-smoke" if a.smoke else "gpu-e2e", size, images))
        say(f"{len(size.models)} models ({', '.join(size.models)}), {size.n_eval} eval + {size.n_transfer} transfer "
            f"images at {size.image_px} px in {work}")
        if a.smoke:
            dry_run_gpu_spec(work, images)
        # --smoke: both runs on the CPU (the first stands in for the GPU run)
        first = run_sweep("gpu" if not a.smoke else "cpu-a", work / "home-gpu", spec, "0" if a.smoke else "1")
        second = run_sweep("cpu" if not a.smoke else "cpu-b", work / "home-cpu", spec, "0")
        for run, device in ((first, "cpu" if a.smoke else "cuda"), (second, "cpu")):
            if run is not None:
                stage_figures(run)
                check_jobs(run, device, gpu_name if run is first else None)
        if first is not None and second is not None:
            compare_runs(first, second, a.min_agree, a.tie, a.tol_points, a.tol_loss)
    finally:
        if not a.workdir:
            shutil.rmtree(work, ignore_errors=True)
    result("e2e", ok=not FAILS, fails=len(FAILS), wall_s=time.perf_counter() - T0)
    return 1 if FAILS else 0


if __name__ == "__main__":
    sys.exit(main())
