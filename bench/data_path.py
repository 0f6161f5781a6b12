"""The image-set data path at ImageNet shape: decode throughput and memory, the shared cache, streamed training.

    .venv/bin/python bench/data_path.py                          # everything, on /tmp/zs-imagenet-like
    .venv/bin/python bench/data_path.py --only decoders,decode --repeat 3
    .venv/bin/python bench/data_path.py --folder /data/val --only decode

The folder (default /tmp/zs-imagenet-like, made on first use, never inside the repository) holds ``--images``
synthetic photos-like JPEGs of ImageNet val's shapes (500 x 375, 375 x 500, 500 x 333; quality 90, ~50 KB)
in ``--classes`` class folders. Sections (``--only``):

    decoders     ms per image of each decoder of data/decode.py, one process, at --size and at --size / 2
    decode       the sharded cache built from the whole folder with 1 and with 2 workers, alternating; peak RSS
                 of the decoding process and of its largest worker
    share        two processes map the finished cache at once and read every image: RSS, its anonymous and
                 file-backed parts, PSS, and the node's available memory, before and after
    transfer     one transfer epoch (digits, tiny timm models, CPU, 1 thread) from the memory map and from an
                 in-process copy (the old in-RAM ImageSet), alternating
    extrapolate  ImageNet val + the 10 % train subset on a 64-core node, from the figures above

Every measurement runs in a fresh spawned process (its RSS baseline: after imports, before work). The machine
load (1-minute load average) is printed with each figure; ratios are measured within one run. Decode and
transfer runs also report CPU time (the process and its workers, start-up included): on a machine other
users keep busy, wall-clock scaling over workers cannot show, but images per CPU-second still say whether
a second worker does as much work per core as the first.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHAPES = [((500, 375), 0.7), ((375, 500), 0.15), ((500, 333), 0.15)]  # ImageNet val's common shapes
IMAGENET_VAL, IMAGENET_TRAIN = 50_000, 1_281_167


# ---------------------------------------------------------------- machine and load
def cpu_line() -> str:
    flags, model = set(), platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("", platform.machine()):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    units = [u for u, f in (("AVX2", "avx2"), ("AVX-512", "avx512f"), ("AMX", "amx_tile")) if f in flags]
    return f"{model}, {os.cpu_count()} CPUs, vector units: {', '.join(units) or 'none of AVX2/AVX-512/AMX'}"


def load() -> str:
    return f"load {os.getloadavg()[0]:.1f}"


def status(pid: str = "self") -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon, RssFile of a process, in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
            out[k] = int(v.split()[0]) * 1024
    return out


def pss(pid: str = "self") -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    return 0


def mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def gb(b: float) -> str:
    return f"{b / 2**30:.2f} GiB"


def in_child(fn, *args):
    """``fn(*args)`` in a fresh spawned process; its dict result comes back."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(q, fn, args))
    p.start()
    out = q.get()
    p.join()
    if "error" in out:
        raise RuntimeError(out["error"])
    return out


def _child(q, fn, args):
    try:
        q.put(fn(*args))
    except BaseException as e:  # the parent prints it
        import traceback

        q.put({"error": traceback.format_exc() or repr(e)})


# ---------------------------------------------------------------- the folder
def make_folder(root: Path, n: int, classes: int, workers: int) -> None:
    if root.is_dir() and sum(1 for _ in root.rglob("*.JPEG")) >= n:
        return
    if root.is_dir():
        shutil.rmtree(root)
    print(f"making {n} JPEGs in {root} ...", flush=True)
    t0 = time.time()
    per = -(-n // classes)
    jobs = [(root / f"n{c:08d}", c * per, min(per, n - c * per)) for c in range(classes) if c * per < n]
    with mp.get_context("spawn").Pool(workers) as pool:
        sizes = sum(pool.map(_make_class, jobs), [])
    print(f"  {len(sizes)} files, mean {np.mean(sizes) / 1e3:.0f} KB, {time.time() - t0:.0f} s", flush=True)


def _make_class(job) -> list[int]:
    from PIL import Image

    folder, start, count = job
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(start)
    noise = [rng.normal(0, 6, (500, 500, 3)).astype(np.float32) for _ in range(4)]
    shapes, weights = zip(*SHAPES)
    sizes = []
    for i in range(start, start + count):
        w, h = shapes[rng.choice(len(shapes), p=weights)]
        # a low-frequency colour field, mid-frequency texture and fine noise: the size and decode cost of a photo
        base = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
        mid = Image.fromarray(rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8)).resize((w, h), Image.BILINEAR)
        x = 0.7 * np.asarray(base, np.float32) + 0.3 * np.asarray(mid, np.float32) + noise[i % 4][:h, :w]
        path = folder / f"ILSVRC2012_val_{i:08d}.JPEG"
        Image.fromarray(x.clip(0, 255).astype(np.uint8)).save(path, quality=90)
        sizes.append(path.stat().st_size)
    return sizes


def cpu_seconds() -> float:
    """User + system CPU time of this process and of its reaped children."""
    import resource

    return sum(resource.getrusage(w).ru_utime + resource.getrusage(w).ru_stime
               for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))


class Helpers:
    """The processes a decode starts below this one, sampled while it runs: their CPU time 4 times a second (the
    last value seen per process: a worker's last quarter second can be missed), their memory every 2 s. Depth 1
    is the fork server (and multiprocessing's resource tracker), depth 2 its workers. The sampling itself is
    kept light: it shares the CPU with an in-process decode."""

    def __init__(self):
        import threading

        self.cpu: dict[str, float] = {}
        self.depth: dict[str, int] = {}
        self.peak = {"worker_rss": 0, "worker_anon": 0, "worker_pss": 0, "server_pss": 0, "pss_total": 0}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.tick = os.sysconf("SC_CLK_TCK")

    def __enter__(self):
        self.scan()
        self.base = dict(self.cpu)  # CPU the processes already there (a warm fork server) had spent before
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self.scan()

    @property
    def cpu_spent(self) -> float:
        return sum(v - self.base.get(pid, 0.0) for pid, v in self.cpu.items())

    def _run(self):
        i = 0
        while not self.stop.wait(0.25):
            i += 1
            if i % 8 == 0:
                self.scan()
                self.memory()
            else:
                for pid in list(self.depth):
                    self._cpu(pid)

    def _cpu(self, pid: str) -> str | None:
        """Its parent, and its CPU time noted; None once it is gone."""
        try:
            f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return None
        self.cpu[pid] = max(self.cpu.get(pid, 0.0), (int(f[11]) + int(f[12])) / self.tick)
        return f[1]

    def scan(self) -> None:
        parent = {}
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                pp = self._cpu(d.name) if d.name in self.depth else self._ppid(d.name)
                if pp is not None:
                    parent[d.name] = pp
        level, depth = {str(os.getpid())}, 0
        while level:
            depth += 1
            level = {p for p, pp in parent.items() if pp in level}
            for p in level:
                if p not in self.depth:
                    self.depth[p] = depth
                    self._cpu(p)

    @staticmethod
    def _ppid(pid: str) -> str | None:
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]
        except (OSError, IndexError):
            return None

    def memory(self) -> None:
        total = 0
        for pid, depth in list(self.depth.items()):
            try:
                st, p = status(pid), pss(pid)
            except (OSError, ValueError, KeyError):
                continue
            total += p
            if depth >= 2:
                for k, v in (("worker_rss", st["VmRSS"]), ("worker_anon", st["RssAnon"]), ("worker_pss", p)):
                    self.peak[k] = max(self.peak[k], v)
            else:
                self.peak["server_pss"] = max(self.peak["server_pss"], p)
        self.peak["pss_total"] = max(self.peak["pss_total"], total)


def new_decode(root: str, size: int, cache: str, workers: int, decoder: str = "auto") -> dict:
    import torch  # noqa: F401  (imported before the baseline, as in every worker of the tool)
    import torchvision.io  # noqa: F401  (a once-per-process ~2 s; worker processes pay it in their fork server)

    from zoo_sweep.data.images import load_image_set

    startup = start_fork_server(workers) if workers > 1 else 0.0
    base = status()["VmRSS"]
    with Helpers() as helpers:
        t0, c0 = time.perf_counter(), cpu_seconds()
        s = load_image_set(f"imagefolder:{root}", size, cache, workers=workers, progress=False, decoder=decoder)
        dt, c1 = time.perf_counter() - t0, cpu_seconds()
    cpu = c1 - c0 + helpers.cpu_spent
    return {"n": len(s), "seconds": dt, "rate": len(s) / dt, "base": base, "peak": status()["VmHWM"],
            "worker_peak": helpers.peak["worker_rss"], "worker_anon": helpers.peak["worker_anon"],
            "worker_pss": helpers.peak["worker_pss"], "server_pss": helpers.peak["server_pss"],
            "helpers_pss": helpers.peak["pss_total"],
            "set_bytes": s.images.nbytes, "cpu_rate": len(s) / cpu, "startup": startup}


def start_fork_server(workers: int) -> float:
    """Seconds to start the decoders' fork server (importing torch and torchvision once), a once-per-process
    cost that is kept out of the decode timings, as the in-process decoder's torchvision import is."""
    from concurrent.futures import ProcessPoolExecutor

    from zoo_sweep.data import cache
    from zoo_sweep.data.decode import init_worker

    t0 = time.perf_counter()
    with ProcessPoolExecutor(workers, mp_context=cache._worker_context(), initializer=init_worker,
                             initargs=(os.getpid(),)) as pool:
        list(pool.map(abs, range(workers)))
    return time.perf_counter() - t0


# ---------------------------------------------------------------- sections
def bench_decoders(root: Path, size: int, n: int, repeat: int) -> dict:
    from zoo_sweep.data.sets import folder_items

    _, files, _ = folder_items(root, None)
    step = max(1, len(files) // n)
    sample = [str(f) for f in files[::step][:n]]
    out = {}
    for s in (size, size // 2, size // 4):
        r = in_child(_time_decoders, sample, s, repeat)
        r = dict(sorted(r.items()))
        out[s] = r
        print(f"decoders at {s} px ({len(sample)} files, best of {repeat}, one process, {load()}): "
              + ", ".join(f"{k} {v:.2f} ms" for k, v in r.items())
              + f"; pil / torchvision = {r['pil'] / r['torchvision']:.2f}", flush=True)
    return out


def _time_decoders(files: list[str], size: int, repeat: int) -> dict:
    import torch

    from zoo_sweep.data.decode import DECODERS

    torch.set_num_threads(1)
    blobs = [Path(f).read_bytes() for f in files]  # decode only: the files are read once, outside the timing
    for fn in DECODERS.values():
        fn(blobs[0], size)  # imports
    best = {name: float("inf") for name in DECODERS}
    for _ in range(repeat):  # interleaved, so load changes hit every decoder alike
        for name, fn in DECODERS.items():
            t0 = time.perf_counter()
            for b in blobs:
                fn(b, size)
            best[name] = min(best[name], (time.perf_counter() - t0) / len(blobs))
    return {k: v * 1e3 for k, v in best.items()}


def bench_decode(root: Path, size: int, repeat: int, workdir: Path) -> dict:
    res: dict[str, list] = {"new1": [], "new2": []}

    def run(name, fn, folder, *extra):
        cache = workdir / name
        shutil.rmtree(cache, ignore_errors=True)
        before = load()
        r = in_child(fn, str(folder), size, str(cache), *extra)
        r["load"] = f"{before} -> {load()}"
        res[name].append(r)
        shutil.rmtree(cache, ignore_errors=True)
        extra = (f"; fork server started beforehand in {r['startup']:.1f} s"
                 f"; each worker at most RSS {gb(r['worker_peak'])} (anonymous {gb(r['worker_anon'])}), PSS "
                 f"{gb(r['worker_pss'])}; fork server {gb(r['server_pss'])} PSS; all together "
                 f"{gb(r['helpers_pss'])} PSS"
                 if r.get("worker_peak") else "")
        print(f"  {name:9s} {r['n']:6d} images {r['seconds']:7.1f} s {r['rate']:7.1f} img/s "
              f"({r['cpu_rate']:.0f} per CPU-second); peak RSS "
              f"{gb(r['peak'] - r['base'])} above baseline {gb(r['base'])}{extra} ({r['load']})", flush=True)

    print(f"decode, all {sum(1 for _ in root.rglob('*.JPEG'))} files: 1 worker vs 2 workers")
    for _ in range(repeat):
        run("new1", new_decode, root, 1)
        run("new2", new_decode, root, 2)
    med = {k: statistics.median(r["rate"] for r in v) for k, v in res.items()}
    cpu = {k: statistics.median(r["cpu_rate"] for r in v) for k, v in res.items()}
    print(f"  median img/s: whole folder 1 worker {med['new1']:.0f}, 2 workers {med['new2']:.0f} "
          f"-> {med['new2'] / med['new1']:.2f}x", flush=True)
    print(f"  median img per CPU-second (what a busy machine leaves intact): 1 worker {cpu['new1']:.0f}, "
          f"2 workers {cpu['new2']:.0f} (2 workers at this efficiency on 2 free cores: "
          f"{2 * cpu['new2'] / cpu['new1']:.2f}x one)", flush=True)
    med.update({f"cpu_{k}": v for k, v in cpu.items()})
    return {"runs": res, "median": med}


def bench_share(root: Path, size: int, workdir: Path) -> dict:
    cache = workdir / "shared"
    in_child(new_decode, str(root), size, str(cache), max(1, min(2, os.cpu_count() or 1)))  # built once
    ctx = mp.get_context("spawn")
    barrier, q = ctx.Barrier(3), ctx.Queue()
    avail0 = mem_available()
    procs = [ctx.Process(target=_hold, args=(str(root), size, str(cache), barrier, q)) for _ in range(2)]
    for p in procs:
        p.start()
    barrier.wait()  # both have read every image and still hold the set
    avail1 = mem_available()
    barrier.wait()
    outs = [q.get() for _ in procs]
    for p in procs:
        p.join()
    set_bytes = outs[0]["set_bytes"]
    print(f"two processes holding the same cached set ({gb(set_bytes)}, {outs[0]['n']} images, {load()}):")
    for i, o in enumerate(outs):
        print(f"  process {i}: RSS +{gb(o['after_load']['VmRSS'] - o['base']['VmRSS'])} after load; after reading "
              f"every image: RSS +{gb(o['after_pass']['VmRSS'] - o['base']['VmRSS'])} "
              f"(anonymous +{gb(o['after_pass']['RssAnon'] - o['base']['RssAnon'])} = "
              f"{(o['after_pass']['RssAnon'] - o['base']['RssAnon']) / set_bytes:.1%} of the set; file-backed, "
              f"shared: +{gb(o['after_pass']['RssFile'] - o['base']['RssFile'])}), PSS +{gb(o['pss'] - o['pss0'])}"
              f"; pass {o['pass_s']:.1f} s", flush=True)
    print(f"  node available memory while both hold it: {gb(avail0)} -> {gb(avail1)} "
          f"(change {gb(avail0 - avail1)}; the page cache already held the set)", flush=True)
    shutil.rmtree(cache, ignore_errors=True)
    return {"procs": outs, "avail": [avail0, avail1]}


def _hold(root: str, size: int, cache: str, barrier, q) -> None:
    import torch

    from zoo_sweep.data.images import load_image_set

    torch.set_num_threads(1)
    base, pss0 = status(), pss()
    s = load_image_set(f"imagefolder:{root}", size, cache, progress=False)
    after_load = status()
    t0 = time.perf_counter()
    total = 0
    for i in range(0, len(s), 256):  # what predict does: a uint8 batch, then its float copy
        total += int(s.images[i:i + 256].float().mean() > 0)
    pass_s = time.perf_counter() - t0
    out = {"base": base, "after_load": after_load, "after_pass": status(), "pss0": pss0, "pss": pss(),
           "set_bytes": s.images.nbytes, "n": len(s), "pass_s": pass_s, "check": total}
    barrier.wait()
    barrier.wait()
    q.put(out)


def bench_transfer(repeat: int, workdir: Path) -> dict:
    times: dict[str, list[float]] = {"map": [], "ram": [], "map_cpu": [], "ram_cpu": []}
    for i in range(repeat):
        for mode in (("map", "ram") if i % 2 == 0 else ("ram", "map")):
            r = in_child(_transfer_epoch, str(workdir / "digits"), mode)
            times[mode].append(r["seconds"])
            times[f"{mode}_cpu"].append(r["cpu"])
            print(f"  transfer epoch from {'the memory map' if mode == 'map' else 'process memory'}: "
                  f"{r['seconds']:.2f} s, {r['cpu']:.2f} CPU-s ({r['n']} transfer + {r['n_eval']} eval images, "
                  f"{load()})", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"  median: map {med['map']:.2f} s, in-RAM {med['ram']:.2f} s -> map / RAM {med['map'] / med['ram']:.3f}; "
          f"CPU time {med['map_cpu']:.2f} / {med['ram_cpu']:.2f} -> {med['map_cpu'] / med['ram_cpu']:.3f}", flush=True)
    return {"times": times, "median": med}


def _transfer_epoch(cache: str, mode: str) -> dict:
    import timm
    import torch

    from zoo_sweep.data.images import load_image_set
    from zoo_sweep.transfer.train import TransferJob, TransferParams, run_transfer

    torch.set_num_threads(1)
    tr, ev = load_image_set("digits:transfer", 32, cache), load_image_set("digits:eval", 32, cache)
    if mode == "ram":
        tr, ev = tr.in_memory(), ev.in_memory()
    cfg = dict(input_size=(3, 32, 32), mean=(0.5,) * 3, std=(0.5,) * 3, crop_pct=1.0, interpolation="bilinear")

    def model(seed):
        torch.manual_seed(seed)
        return timm.create_model("resnet10t", num_classes=10, channels=(8, 16, 24, 32), stem_width=8).eval()

    correct = np.zeros(len(ev), dtype=bool)
    hp = TransferParams(epochs=1, batch_size=256, lr=1e-3)
    student, teacher = model(1), model(2)
    t0, c0 = time.perf_counter(), time.process_time()
    run_transfer(TransferJob(student, teacher, "kl", hp, 0, tr, ev, cfg, cfg, correct, correct))
    return {"seconds": time.perf_counter() - t0, "cpu": time.process_time() - c0, "n": len(tr), "n_eval": len(ev)}


def extrapolate(decode: dict, size: int, cores: int = 64) -> None:
    from zoo_sweep.data.sets import subset_size

    n = IMAGENET_VAL + subset_size(IMAGENET_TRAIN, 0.1)
    row = 3 * size * size
    med = decode["median"]
    # per core: images per CPU-second with 2 workers (start-up included), so other tenants' load drops out
    per_core = med["cpu_new2"]
    rate = cores * per_core
    wall_eff = med["new2"] / (2 * med["new1"])
    runs = decode["runs"]
    main_peak = max(r["peak"] - r["base"] for r in runs["new2"])
    server = max(r["server_pss"] for r in runs["new2"])
    worker = max(r["worker_pss"] for r in runs["new2"])
    print(f"extrapolated, ImageNet val + the 10 % train subset ({n:,} images at {size} px, {gb(n * row)} decoded), "
          f"{cores}-core node, files like these:")
    cpu_s, write_s = n / rate, n * row / 1e9
    print(f"  decode: CPU-bound {cpu_s:.0f} s at {rate:,.0f} img/s ({cores} workers x {per_core:.0f} images per "
          f"CPU-second, measured with 2 workers; assumes every core free); it reads {n * 55e3 / 1e9:.0f} GB of "
          f"~55 KB JPEGs and writes {n * row / 1e9:.0f} GB: {write_s:.0f} s at 1 GB/s, so the disk or a network "
          f"file system, not the CPUs, sets the time there; plus the fork server's start "
          f"(~{max(r['startup'] for r in runs['new2']):.0f} s here) and listing the folders. At the wall-clock "
          f"efficiency this run saw at 2 workers ({wall_eff:.2f}) the CPU part is {cpu_s / wall_eff:.0f} s")
    print(f"  RAM while decoding: the decoding process +{gb(main_peak)}; fork server {gb(server)} PSS; each worker "
          f"{gb(worker)} PSS (at most, here), so {cores} workers ~{gb(cores * worker + server + main_peak)}, "
          f"whatever the set size; an in-process decode that stacks and saves the whole set (the old path, "
          f"estimated): ~4 x the set = {gb(4 * n * row)} in one process")
    print(f"  RAM holding it: {gb(n * row)} of page cache per node, shared by every actor on it (each adds only "
          f"its batches); an in-RAM copy per actor (the old path): {gb(n * row)} per actor, {gb(8 * n * row)} "
          f"for 8 GPU actors")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--folder", default="/tmp/zs-imagenet-like")
    ap.add_argument("--images", type=int, default=20_000)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--decoder-images", type=int, default=400)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--workdir", default="/tmp/zs-data-path-bench")
    ap.add_argument("--only", default="decoders,decode,share,transfer,extrapolate")
    a = ap.parse_args()
    only = set(a.only.split(","))
    root, work = Path(a.folder), Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    print(f"machine: {cpu_line()}; {gb(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES'))} RAM; "
          f"python {platform.python_version()}; {time.strftime('%Y-%m-%d %H:%M')}; {load()}", flush=True)
    make_folder(root, a.images, a.classes, max(1, min(2, os.cpu_count() or 1)))
    results = {}
    if "decoders" in only:
        results["decoders"] = bench_decoders(root, a.size, a.decoder_images, 3)
    if "decode" in only or "extrapolate" in only:
        results["decode"] = bench_decode(root, a.size, a.repeat, work)
    if "share" in only:
        results["share"] = bench_share(root, a.size, work)
    if "transfer" in only:
        results["transfer"] = bench_transfer(max(2 * a.repeat, 6), work)
    if "extrapolate" in only:
        extrapolate(results["decode"], a.size)
    (work / "results.json").write_text(json.dumps(results, default=str, indent=1))
    print(f"({load()} at the end; raw figures in {work / 'results.json'})")


if __name__ == "__main__":
    main()
