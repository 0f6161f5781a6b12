"""Images/s of 1, 2, 4 and 8 concurrent copies of one transfer job on one device, and the jobs per GPU that
``gpus_per_job = "auto"`` picks from them (zoo_sweep/pipeline/share.py, the same rule).

    python bench/gpu_share.py --device cuda                      # the embedded zoo's convnext_a <- resnet_a
    python bench/gpu_share.py --device cuda --zoo timm --student resnet18 --teacher resnet50 --image-size 224
    python bench/gpu_share.py --device cpu --max-jobs 2          # the script itself, on a CPU

The job is planned from the spec as a launch plans it (bench/transfer_throughput.py's spec handling). Each copy
is a process with a ``Worker`` (the launcher's warm worker, as a Ray actor holding 1/k of the GPU would be) that
sets the job up and runs its warm-up steps (``Worker.measure_start``); once every copy is ready, all are timed
together for ``--seconds`` (``Worker.measure_rate``). Ray is not needed: its part in a launch (the placement
group that keeps the k workers on one GPU) adds nothing to the arithmetic measured here. Prints the GPU (or
CPU) first, then one line per k and a ``RESULT`` line.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(ROOT))


def copy_rate(home: str, gpu: bool, job, inputs: dict, warmup: int, seconds: float, barrier, out) -> None:
    from zoo_sweep.pipeline.worker import Worker

    try:
        w = Worker(home, threads=1 if not gpu else None, gpu=gpu)
        w.measure_start(job, inputs, warmup)
        barrier.wait()
        out.put(w.measure_rate(seconds))
    except Exception as e:  # noqa: BLE001  (out of memory: that k failed)
        barrier.abort()
        out.put(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")


def run_k(k: int, home: str, gpu: bool, job, inputs: dict, warmup: int, seconds: float) -> float | None:
    ctx = mp.get_context("spawn")  # CUDA cannot be forked
    barrier, out = ctx.Barrier(k), ctx.Queue()
    procs = [ctx.Process(target=copy_rate, args=(home, gpu, job, inputs, warmup, seconds, barrier, out))
             for _ in range(k)]
    for p in procs:
        p.start()
    got = [out.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    failed = [g for g in got if isinstance(g, str)]
    if failed:
        print(f"#   {k} job(s): failed: {failed[0]}", flush=True)
        return None
    return float(sum(got))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--spec", default=str(ROOT / "jobs" / "digits-paper.toml"))
    ap.add_argument("--zoo", choices=("spec", "timm"), default="spec")
    ap.add_argument("--student", default="convnext_a")
    ap.add_argument("--teacher", default="resnet_a")
    ap.add_argument("--method", default="kl_dp")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--image-size", type=int, default=None)
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--max-jobs", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--fused", action="store_true")
    a = ap.parse_args()
    a.epochs = a.teacher_cache = None
    home = tempfile.mkdtemp(prefix="zoo-share-")
    try:
        run(a, home)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def run(a, home: str) -> None:
    import numpy as np
    import torch
    from pairs_at_scale import cpu_info
    from transfer_throughput import bench_spec, pick

    from zoo_sweep.config.spec import parse_spec
    from zoo_sweep.data.sets import count_images, set_args
    from zoo_sweep.paths import Paths
    from zoo_sweep.pipeline.plan import check_names, make_plan
    from zoo_sweep.pipeline.share import CONCURRENCY, choose

    gpu = a.device == "cuda"
    if gpu and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no GPU here")
    spec = check_names(parse_spec(bench_spec(a), a.spec))
    paths = Paths(Path(home))
    plan = make_plan(spec, paths)
    if spec.zoo.source == "digits":
        from zoo_sweep.zoo.digits import to_build

        if to_build(plan.models, spec.zoo.recipe, paths.cache, spec.data.image_size)[0]:
            raise SystemExit(f"no shipped weights at {spec.data.image_size} px: use --zoo timm for other sizes")
    job = pick(plan, a.student, a.teacher, a.method)
    n_eval = count_images(**set_args(spec.data, "eval"))
    # correctness feeds the per-epoch evaluation only, which a measurement never runs
    inputs = {"s0_correct": np.zeros(n_eval, bool), "teacher_correct": np.zeros(n_eval, bool),
              "compile": a.compile, "fused": a.fused}
    where = torch.cuda.get_device_name() if gpu else "; ".join(cpu_info())
    print(f"# {where}; torch {torch.__version__}")
    print(f"# {a.method} {a.student} <- {a.teacher}, batch {spec.transfer.batch_size}, {spec.data.image_size} px; "
          f"{a.warmup} warm-up steps, {a.seconds:g} s timed, all copies together"
          + "".join(f"; {k}" for k in ("compile", "fused") if getattr(a, k)), flush=True)
    rates: dict[int, float | None] = {}
    for k in [k for k in CONCURRENCY if k <= a.max_jobs]:
        rates[k] = run_k(k, home, gpu, job, inputs, a.warmup, a.seconds)
        if rates[k] is not None:
            print(f"#   {k} job(s): {rates[k]:,.0f} images/s summed ({rates[k] / rates[min(rates)]:.2f}x one job)"
                  if rates[min(rates)] else f"#   {k} job(s): {rates[k]:,.0f} images/s", flush=True)
    cells = " ".join(f"k{k}={'failed' if r is None else f'{r:.0f}'}" for k, r in rates.items())
    print(f"RESULT gpu_share device={where.split(';')[0].replace(' ', '_')} {cells} chosen={choose(rates)}")


if __name__ == "__main__":
    main()
