"""All-pairs complementary-knowledge metrics at zoo scale on synthetic prediction records.

    .venv/bin/python bench/pairs_at_scale.py                       # 1,000 models x 50,000 samples x 1,000 classes
    .venv/bin/python bench/pairs_at_scale.py --models 200 --samples 10000 --repeat 1
    .venv/bin/python bench/pairs_at_scale.py --kernel fp32         # one product kernel (int8, fp32, bf16, cuda)

Prints the CPU model and its vector units (AVX2 / AVX-512 / AMX, from /proc/cpuinfo), the product kernel the
compare stage chose here (kernels.calibrate: its per-kernel times too), then the fast path.

Synthetic records look like an ImageNet zoo: 50 samples per class, model accuracies 55-88 %, per-sample
difficulty (models fail on the same hard samples), wrong guesses concentrated on three confusable classes per
sample, and a max probability that is higher when the model is right (with overlap). Prints the seconds per
metric group of ``pair_matrices`` (best of --repeat runs), the peak memory, and the ratio against the
reference method: a per-pair, per-sample Python loop (what the paper's code did, without its forward passes),
timed on a subset of pairs and samples and extrapolated per (ordered pair x sample). The fast results on the
subset are checked against that loop first.

    .venv/bin/python bench/pairs_at_scale.py --baseline HEAD       # + the committed implementation, same run

``--baseline REV`` loads zoo_sweep/science/complementary.py (or, for older revisions, zoo_sweep/complementary.py)
as of git revision REV, times it on the same records right after the current one, and checks that every
matrix is identical (entropy to 1e-12) at full scale. Revisions whose module imports sibling modules of the
package cannot be loaded this way.
``--omp-wait-policy`` sets OMP_WAIT_POLICY before torch starts (default: left as it is); see BENCHMARKS.md
for why PASSIVE matters on a shared machine.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __name__ == "__main__":  # OpenMP reads this once, when torch starts its thread pool
    for i, arg in enumerate(sys.argv):
        if arg.startswith("--omp-wait-policy"):
            value = arg.split("=", 1)[1] if "=" in arg else sys.argv[i + 1]
            os.environ["OMP_WAIT_POLICY"] = value

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from zoo_sweep.science import kernels  # noqa: E402
from zoo_sweep.science.complementary import (  # noqa: E402
    METRIC_GROUPS,
    TOP_P,
    compare_kernel,
    pair_matrices,
)


def cpu_info() -> tuple[str, str]:
    """CPU model name and its vector units, from /proc/cpuinfo (Linux; elsewhere: unknown)."""
    model, flags = "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model == "unknown CPU":
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        return model, "unknown vector units"
    units = [("AVX2", "avx2"), ("AVX-512", "avx512f"), ("AVX512-VNNI", "avx512_vnni"),
             ("AVX512-BF16", "avx512_bf16"), ("AMX-INT8", "amx_int8"), ("AMX-BF16", "amx_bf16")]
    have = [name for name, flag in units if flag in flags]
    missing = [name for name, flag in units if flag not in flags and name in ("AVX-512", "AMX-INT8")]
    return model, ", ".join(have or ["no AVX2"]) + ("; no " + ", no ".join(missing) if missing else "")


def synthetic_records(m: int, n: int, k: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(k), math.ceil(n / k))[:n]
    rng.shuffle(labels)
    acc = rng.uniform(0.55, 0.88, m).astype(np.float32)
    skill = np.log(acc / (1 - acc))
    hardness = rng.logistic(0, 1.3, n).astype(np.float32)  # shared by all models: errors correlate
    p_right = 1 / (1 + np.exp(-(skill[:, None] - hardness[None, :] + 0.9)))
    right = rng.random((m, n), dtype=np.float32) < p_right
    confusers = rng.integers(0, k, (n, 3))
    which = rng.choice(3, size=(m, n), p=[0.6, 0.25, 0.15])
    guess = confusers[np.arange(n)[None, :], which]
    anywhere = rng.random((m, n), dtype=np.float32) < 0.15
    guess = np.where(anywhere, rng.integers(0, k, (m, n)), guess)
    guess = np.where(guess == labels[None, :], (guess + 1) % k, guess)  # a wrong guess is wrong
    preds = np.where(right, labels[None, :], guess).astype(np.int32)
    z = np.where(right, rng.normal(1.8, 1.2, (m, n)), rng.normal(-0.2, 1.2, (m, n)))
    pmax = (1 / (1 + np.exp(-z))).astype(np.float32)
    return preds, labels.astype(np.int64), pmax


def reference_loop(preds, labels, pmax, k):
    """The reference method: every ordered pair, every sample, in Python (docs/methods.md definitions)."""
    m, n = preds.shape
    out = {}
    p, y, c = preds.tolist(), labels.tolist(), pmax.tolist()
    for s in range(m):
        for t in range(m):
            if s == t:
                continue
            pos = neg = agree = oracle = ens = 0
            per_class = [0] * k
            ps, pt, cs, ct = p[s], p[t], c[s], c[t]
            for x in range(n):
                sr, tr = ps[x] == y[x], pt[x] == y[x]
                if tr and not sr:
                    pos += 1
                    per_class[y[x]] += 1
                if sr and not tr:
                    neg += 1
                agree += ps[x] == pt[x]
                oracle += sr or tr
                ens += sr if cs[x] >= ct[x] else tr
            total = sum(per_class)
            ent = -sum(v / total * math.log(v / total) for v in per_class if v) if total else 0.0
            tops = {}
            srt = sorted(per_class, reverse=True)
            for q in TOP_P:
                cum, cnt = 0, 0
                for v in srt:
                    if total == 0:
                        break
                    cum += v
                    cnt += 1
                    if 100 * cum >= q * total:
                        break
                tops[q] = cnt
            out[s, t] = {"rho_pos": 100 * pos / n, "rho_neg": 100 * neg / n, "agreement": 100 * agree / n,
                         "oracle_acc": 100 * oracle / n, "ensemble_acc": 100 * ens / n, "flip_entropy": ent,
                         **{f"top{q}_classes": v for q, v in tops.items()}}
    return out


def load_revision(rev: str):
    """The compare module as of git revision ``rev``, imported as a stand-alone module."""
    root = Path(__file__).resolve().parents[1]
    for path in ("zoo_sweep/science/complementary.py", "zoo_sweep/complementary.py"):
        got = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=root, capture_output=True, text=True)
        if got.returncode == 0:
            src = got.stdout
            break
    else:
        raise SystemExit(f"no compare module at revision {rev}")
    path = Path(tempfile.mkdtemp()) / "complementary_baseline.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("complementary_baseline", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def machine_speed(kern, m: int, n: int = 8192, repeat: int = 3) -> float:
    """Best time of one m x n x m 0/1 product with the chosen kernel: how fast the machine is right now (a
    busy host does not show in a VM's load average)."""
    gen = torch.Generator().manual_seed(0)
    a = torch.rand(m, n, generator=gen) < 0.7
    b = torch.rand(m, n, generator=gen) < 0.3
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        kern.mm(a, b.T)
        if kern.device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def reset_peak_rss() -> bool:
    """Start a new resident-memory peak (Linux: writing 5 to /proc/self/clear_refs resets VmHWM)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def current_rss_gib() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("nan")


def peak_rss_gib() -> float:
    """The process's resident-memory peak (VmHWM; getrusage where /proc is missing), GiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def time_fast_path(fn, args, k, metrics, repeat, **kw):
    """Best total of ``repeat`` runs, its per-group wall and CPU times, every run's total, and the result."""
    best, best_t, best_c, out, totals = None, {}, {}, None, []
    for _ in range(repeat):
        timings: dict[str, float] = {}
        cpu: dict[str, float] = {}
        t0 = time.perf_counter()
        if "cpu_timings" in inspect.signature(fn).parameters:  # older revisions (--baseline) lack it
            kw["cpu_timings"] = cpu
        out = fn(*args, k, metrics=metrics, timings=timings, **kw)
        total = time.perf_counter() - t0
        totals.append(total)
        if best is None or total < best:
            best, best_t, best_c = total, timings, cpu
    return best, best_t, best_c, out, totals


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=1000)
    ap.add_argument("--samples", type=int, default=50000)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=2, help="runs of the fast path; the best is reported")
    ap.add_argument("--metrics", default=",".join(METRIC_GROUPS), help="metric groups (comma separated)")
    ap.add_argument("--ref-models", type=int, default=6, help="subset for the reference loop")
    ap.add_argument("--ref-samples", type=int, default=5000)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--baseline", default=None, metavar="REV",
                    help="also time zoo_sweep/complementary.py as of this git revision and compare the results")
    ap.add_argument("--omp-wait-policy", default=None, choices=("PASSIVE", "ACTIVE"),
                    help="OMP_WAIT_POLICY for this run (set before torch starts; default: the environment's)")
    ap.add_argument("--kernel", default=None, choices=tuple(kernels.KERNELS),
                    help="time this product kernel (default: the calibrated choice, or $ZOO_SWEEP_MATMUL)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    metrics = tuple(x for x in args.metrics.split(",") if x)
    m, n, k = args.models, args.samples, args.classes
    model, units = cpu_info()
    print(f"CPU: {model} ({units}); {os.cpu_count()} CPU(s), torch {torch.__version__} threads "
          f"{torch.get_num_threads()}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}, "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if torch.cuda.is_available():
        print(f"GPU: {torch.cuda.get_device_name()}")
    t0 = time.perf_counter()
    seconds = kernels.calibrate()
    print(f"calibration ({(time.perf_counter() - t0) * 1e3:.0f} ms wall): one 256 x 4096 x 256 0/1 product on one "
          "thread in " + ", ".join(f"{name} {s * 1e3:.2f} ms CPU" for name, s in seconds.items())
          + " (kernels over 3x slower on a smaller product first: dropped); fastest here: "
          + min(seconds, key=seconds.get))
    kern = compare_kernel(args.kernel)
    print(kern.describe() + ("" if args.kernel else f" (chosen; cached in {kernels.cache_file()})"))
    print(f"machine speed now: one {m} x 8192 x {m} 0/1 product with it in {machine_speed(kern, m) * 1e3:.1f} ms")
    t0 = time.perf_counter()
    preds, labels, pmax = synthetic_records(m, n, k)
    acc = (preds == labels).mean(1) * 100
    print(f"records: {m} models x {n} samples x {k} classes (synthetic, accuracy {acc.min():.1f}-{acc.max():.1f} %), "
          f"made in {time.perf_counter() - t0:.1f} s")

    # correctness on a subset first: the fast path against the loop
    rm, rn = min(args.ref_models, m), min(args.ref_samples, n)
    sub = (preds[:rm, :rn], labels[:rn], pmax[:rm, :rn])
    t0, c0 = time.perf_counter(), time.process_time()
    ref = reference_loop(*sub, k)
    ref_s, ref_cpu = time.perf_counter() - t0, time.process_time() - c0
    per_pair_sample = ref_s / (rm * (rm - 1) * rn)
    fast_sub = pair_matrices(torch.as_tensor(sub[0]), torch.as_tensor(sub[1]), torch.as_tensor(sub[2]), k,
                             kernel=kern)
    worst = 0.0
    for (s, t), r in ref.items():
        for key, val in r.items():
            worst = max(worst, abs(float(fast_sub[key][s, t]) - val))
    print(f"reference loop: {rm * (rm - 1)} ordered pairs x {rn} samples in {ref_s:.2f} s "
          f"({per_pair_sample * 1e9:.0f} ns per pair-sample); largest difference to the fast path: {worst:.2e}")
    if worst > 1e-9:
        print("MISMATCH between the fast path and the reference loop")
        return 1

    data = (torch.as_tensor(preds), torch.as_tensor(labels), torch.as_tensor(pmax))
    before_gb = current_rss_gib()
    fresh = reset_peak_rss()
    best, best_t, best_c, fast, totals = time_fast_path(pair_matrices, data, k, metrics, args.repeat, kernel=kern)
    peak_gb = peak_rss_gib()
    ref_total = per_pair_sample * m * (m - 1) * n
    print(f"fast path ({kern.name}), all {m * (m - 1):,} ordered pairs (best of {args.repeat}): {best:.2f} s total; "
          + ", ".join(f"{g} {s:.2f} s" for g, s in best_t.items())
          + f"; every run: {', '.join(f'{t:.2f}' for t in totals)} s (load average {os.getloadavg()[0]:.2f})")
    print(f"  CPU seconds of that run (all threads): {sum(best_c.values()):.2f} total; "
          + ", ".join(f"{g} {s:.2f}" for g, s in best_c.items()))
    print(f"peak resident memory: {peak_gb:.2f} GiB "
          + (f"while the fast path ran (records already in memory: {before_gb:.2f} GiB before it)" if fresh
             else "(process peak: records and reference loop included)"))
    if args.baseline:
        base = load_revision(args.baseline)
        b_best, b_t, _, b_out, _ = time_fast_path(base.pair_matrices, data, k, metrics, args.repeat)
        print(f"baseline {args.baseline} (best of {args.repeat}): {b_best:.2f} s total; "
              + ", ".join(f"{g} {s:.2f} s" for g, s in b_t.items())
              + f" (load average {os.getloadavg()[0]:.2f}); speed-up {b_best / best:.1f}x")
        worst = {key: float((fast[key].double() - b_out[key].double()).abs().nan_to_num(0.0).max())
                 for key in fast}
        bad = {key: d for key, d in worst.items() if d > (1e-12 if key == "flip_entropy" else 0.0)}
        print("full-scale comparison with the baseline: "
              + ("every matrix identical" if not bad else f"DIFFERENT: {bad}")
              + f" (largest entropy difference {worst.get('flip_entropy', 0.0):.1e})")
        if bad:
            return 1
    ref_total_cpu = ref_cpu / (rm * (rm - 1) * rn) * m * (m - 1) * n
    print(f"reference loop extrapolated: {ref_total:,.0f} s ({ref_total / 3600:.1f} h); ratio {ref_total / best:,.0f}x "
          f"(measured in this run); in CPU seconds (the loop's single thread against all of ours): "
          f"{ref_total_cpu:,.0f} s / {sum(best_c.values()):.2f} s = {ref_total_cpu / sum(best_c.values()):,.0f}x")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
