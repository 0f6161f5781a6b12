"""Transfer-job throughput: a zoo-sweep transfer job as a worker runs it, against a bare PyTorch loop.

    .venv/bin/python bench/transfer_throughput.py                      # kl_dp, convnext_a <- resnet_a, CPU
    .venv/bin/python bench/transfer_throughput.py --method all         # every method and control of the spec
    .venv/bin/python bench/transfer_throughput.py --zoo timm --student resnet50 --teacher convnext_tiny \\
        --image-size 224 --device cuda                                 # random-weight timm models (GPU)

The job comes from the spec (default jobs/digits-paper.toml: its hyper-parameters, batch size, epochs, first
seed), planned by ``pipeline.plan.make_plan`` as a launch plans it, and runs through ``Worker.run``, the
function a warm Ray actor calls per job: the transfer and eval sets memory-mapped from the image cache,
the models from the worker's weight cache, the seeded augmentation, the per-epoch evaluation and
checkpoint, and the teacher's (and s0's) logits read back from the logit cache wherever the spec's
``teacher_cache`` policy shares them across the sweep (``logit_store.plan_streams`` over all its jobs).
Each timed job is recorded in a SQLite store (``record_transfer``), as the launcher records it; Ray's own
dispatch per job is bench/scheduler.py's figure. An untimed first job loads the weights into the worker's
cache and writes the logit streams, as a sweep's first job does; a later method whose streams are not all
written yet gets one too.

(a) is the job's training images (whole batches x epochs) per second, two ways: per second of the whole
job, and per second inside its training steps (the epochs' batch loops: augmentation, each model's resize
and normalisation, forward, loss, backward, step). Overhead is the job's time outside the steps, as a %
of the job, split into evaluation, set-up (models from the weight cache, s0, optimiser), logit-cache
reads, checkpoints and the store's record.

(b) is a bare loop over the same steps: the same models and starting weights, the same inputs (made by the
product's own augmentation and ``model_input`` before the clock starts), the same cached logits, the loss
of ``transfer/methods.py``, the same SGD settings, precision and number of steps, and the method's state
hooks (MCL's slow weights and their end-of-epoch reset, CRD's heads and bank). Its per-epoch mean losses
are compared with the job's ("losses": "same" when bit-identical), which says that (b) did the job's
arithmetic. (a) and (b) alternate (a b, then b a, ...) over ``--repeat`` rounds; medians are printed.

(c), on CUDA (or with ``--timm-rates``): timm-benchmark-style rates on the same inputs, the student's
training step (forward, cross-entropy, backward, SGD) and the teacher's and s0's inference, each alone;
their harmonic combination (the models that the job runs, one after another per image) is what the job
could reach, and (a) / (c) is printed beside it.

``--compile`` and ``--fused`` run the job with ``[run] compile`` and ``fused_optimizer`` on, and (b) and (c)
with the same compiled forward and fused SGD (timm's ``benchmark.py --torchcompile`` for (c)); the untimed first
job compiles (its compile time, once per process and architecture, is printed at the end).

The CPU model and its vector units come first (bench/pairs_at_scale.py's reader), then the load average.
``--home`` keeps the caches between runs (default: a temporary folder, removed at the end). A GPU host needs
the project's dependencies besides torch and timm (the store's SQLAlchemy: ``make gpu-wheels``).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import functools
import os
import shutil
import statistics
import sys
import tempfile
import time
import tomllib
from collections import defaultdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(ROOT))
from pairs_at_scale import cpu_info  # noqa: E402

from zoo_sweep.config.spec import parse_spec  # noqa: E402
from zoo_sweep.data.images import model_input  # noqa: E402
from zoo_sweep.paths import Paths  # noqa: E402
from zoo_sweep.pipeline import worker as worker_mod  # noqa: E402
from zoo_sweep.pipeline.plan import check_names, make_plan  # noqa: E402
from zoo_sweep.science.records import predict  # noqa: E402
from zoo_sweep.transfer import logit_store  # noqa: E402
from zoo_sweep.transfer import train as train_mod  # noqa: E402
from zoo_sweep.transfer.catalog import CATALOG  # noqa: E402
from zoo_sweep.transfer.methods import METHODS, Extras  # noqa: E402
from zoo_sweep.zoo.models import data_config  # noqa: E402


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# ---------------------------------------------------------------- the spec and its jobs
def bench_spec(a) -> dict:
    """The spec's TOML as a dict, with the command's overrides (a timm zoo of the two models, random weights)."""
    doc = tomllib.loads(Path(a.spec).read_text())
    doc["name"] = "transfer-throughput"
    if a.image_size:
        doc["data"]["image_size"] = a.image_size
    if a.zoo == "timm":  # the models take the cache's images as they are: --image-size is their input size
        side = doc["data"]["image_size"]
        doc["zoo"] = {"source": "timm", "models": sorted({a.student, a.teacher}), "allow_random_weights": True,
                      "defaults": {"data": {"input_size": [3, side, side], "crop_pct": 1.0}}}
        for key in ("multi_teacher", "multi_students", "teachers"):  # the spec's multi-teacher models are not here
            doc["transfer"].pop(key, None)
    if a.batch_size:
        doc["transfer"]["batch_size"] = a.batch_size
    if a.epochs:
        doc["transfer"]["epochs"] = a.epochs
    if a.teacher_cache:
        doc["transfer"]["teacher_cache"] = a.teacher_cache
    return doc


def pick(plan, student: str, teacher: str, method: str):
    """The plan's job for (student, teacher, method) at the spec's first seed; a control's teacher is the student."""
    if plan.transfer_jobs is None or method not in CATALOG:
        raise SystemExit(f"no {method!r} job here: the spec must name its pairs ([pairs] policy \"all\" or "
                         "\"explicit\") and the method must be one of its methods or controls")
    seed = plan.spec.transfer.seeds[0]
    control = CATALOG[method].control
    for j in plan.transfer_jobs:
        p = j.payload
        if p.multi or p.method != method or p.seed != seed or p.student.name != student:
            continue
        if control or p.teacher.name == teacher:
            return j
    raise SystemExit(f"the spec plans no {method} job for {student} <- {teacher} (seed {seed})")


def job_streams(plan, n_transfer: int) -> dict[str, dict[str, str]]:
    """Job id -> the roles whose logits it reads from (or first writes to) the cache, by the spec's policy over
    every transfer job of the sweep, as the launcher decides."""
    t = plan.spec.transfer
    jobs = [(j.id, j.payload.to_dict()) for j in plan.transfer_jobs if not j.payload.multi]
    return logit_store.plan_streams(jobs, t.teacher_cache, plan.transfer_key, n_transfer, plan.num_classes,
                                    t.teacher_cache_max_gb * 2**30).streams


# ---------------------------------------------------------------- timing the product's job
class Clock:
    """Seconds spent inside chosen product functions (outermost calls only), per name: wall, and this process's
    CPU time under ``NAME_cpu`` (less sensitive to other tenants of a shared host)."""

    def __init__(self, device: str):
        self.device, self.s, self.depth = device, defaultdict(float), defaultdict(int)

    def wrap(self, owner, attr: str, name: str, synced: bool = False) -> None:
        f = getattr(owner, attr)

        @functools.wraps(f)
        def timed(*args, **kw):
            self.depth[name] += 1
            t, c = time.perf_counter(), time.process_time()
            try:
                out = f(*args, **kw)
                if synced:  # queued GPU work belongs to the function that queued it
                    sync(self.device)
                return out
            finally:
                self.depth[name] -= 1
                if self.depth[name] == 0:
                    self.s[name] += time.perf_counter() - t
                    self.s[name + "_cpu"] += time.process_time() - c

        setattr(owner, attr, timed)

    def take(self) -> dict[str, float]:
        out, self.s = dict(self.s), defaultdict(float)
        return out


def instrument(clock: Clock) -> None:
    W, R = worker_mod.Worker, train_mod.TransferRun
    clock.wrap(W, "model", "setup")
    clock.wrap(R, "__init__", "setup")
    clock.wrap(R, "train_epoch", "epochs", synced=True)
    # the data path, inside the steps: the one part of them the bare loop is spared
    clock.wrap(R, "batch_images", "data")
    clock.wrap(train_mod, "model_input", "data")
    clock.wrap(R, "cached_or_run", "cache")  # inside train_epoch: its reads are taken out of the steps
    clock.wrap(logit_store.LogitCache, "save", "cache")
    clock.wrap(R, "evaluate", "eval", synced=True)
    clock.wrap(R, "save", "checkpoint")
    clock.wrap(R, "finish", "checkpoint")


def run_job(worker, job, inputs: dict, store, clock: Clock) -> dict:
    """One job as the launcher runs it: the worker's run, then its record in the store."""
    from zoo_sweep.pipeline.results import record_transfer

    clock.take()
    sync(worker.device)
    t0 = time.perf_counter()
    res = worker.run(job, inputs)
    t1 = time.perf_counter()
    store.start_job(job.id, res.worker)
    record_transfer(store, job, res)
    wall = time.perf_counter() - t0
    if res.state != "done":
        raise SystemExit(f"{job.payload.method}: the job ended {res.state}: {res.error}")
    parts = clock.take()
    parts["steps"] = parts.pop("epochs", 0.0) - parts.get("cache", 0.0)
    parts["steps_cpu"] = parts.pop("epochs_cpu", 0.0) - parts.get("cache_cpu", 0.0)
    parts["record"] = wall - (t1 - t0)
    parts["wall"] = wall
    return {"parts": parts, "rows": res.rows}


# ---------------------------------------------------------------- the bare loop
@dataclasses.dataclass
class Step:
    idx: torch.Tensor
    y: torch.Tensor
    x_s: torch.Tensor  # the student's (and s0's) input
    x_t: torch.Tensor | None  # the teacher's input, where the job runs the teacher
    z_t: torch.Tensor | None  # cached teacher logits, where the job reads them
    z_s0: torch.Tensor | None


def fwd(model, inp, features: bool, cuda: bool, compiled: bool):
    """The product's forward pass (TransferRun.forward) without the input transform."""
    with torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext():
        return train_mod.forward_pass(features, compiled)(model, inp)


def prepare(job, device: str, caches: dict) -> list[list[Step]]:
    """Every step's inputs, made by the product's own code (a TransferRun that never trains): the seeded order and
    augmentation, each model's resize and normalisation, and the logits the job reads from the cache."""
    run = train_mod.TransferRun(dataclasses.replace(job, student=copy.deepcopy(job.student)),
                                train_mod.RunOptions(device))
    cuda, fmt = run.cuda, run.fmt
    epochs = []
    for epoch in range(1, run.hp.epochs + 1):
        logits = {role: c.load(epoch, run.rows_per_epoch, device) for role, c in caches.items()}
        if any(z is None for z in logits.values()):
            raise SystemExit("a cached logit stream is missing: the untimed first job should have written it")
        order = torch.randperm(run.n, generator=run.gen)[:run.full]
        steps, at = [], 0
        for b in order.split(run.hp.batch_size)[:run.per_epoch]:
            b_dev = b.to(device)
            x = run.batch_images(b, b_dev)

            def inp(cfg, x=x):
                out = model_input(x, train_mod.input_cfg(run.hp.inputs, cfg, x), device)
                return out.contiguous(memory_format=fmt) if cuda else out  # as TransferRun.forward

            span = slice(at, at + len(b))
            at += len(b)
            z_t = logits["teacher"][span].float() if "teacher" in logits else None
            z_s0 = logits["s0"][span].float() if "s0" in logits else None
            steps.append(Step(b, run.train_labels[b_dev], inp(job.student_cfg),
                              None if z_t is not None else inp(job.teacher_cfg), z_t, z_s0))
        epochs.append(steps)
    return epochs


def bare_loop(job, epochs: list[list[Step]], device: str, speed: dict[str, bool]) -> tuple[tuple[float, float],
                                                                                          list[float]]:
    """(Wall, CPU) seconds of the training steps alone, and each epoch's mean loss; ``speed``: the job's compile
    and fused options (a compiled graph is the job's own, already made: the untimed first job compiled it)."""
    m, hp, cuda = METHODS[job.method], job.hp, device.startswith("cuda")
    fmt = torch.channels_last if cuda else torch.contiguous_format
    torch.manual_seed(job.seed)  # as TransferRun: the method's state (CRD's heads) draws from it
    student = copy.deepcopy(job.student)
    s0 = copy.deepcopy(student).eval() if m.needs_s0 else None
    teacher = copy.deepcopy(job.teacher)
    student.to(device, memory_format=fmt)
    for mod in [teacher] + ([s0] if s0 is not None else []):
        mod.to(device, memory_format=fmt).eval().requires_grad_(False)
    if m.needs_features and hp.teacher_bn == "train":
        teacher.train()
    info = {"n_train": len(job.transfer_set), "device": device, "seed": job.seed, "labels": job.transfer_set.labels}
    state = m.make_state(student, teacher, hp, info) if m.make_state else None
    params = list(student.parameters()) + (state.parameters() if state else [])
    opt = torch.optim.SGD(params, lr=hp.lr_of(m.lr_param), momentum=hp.momentum, weight_decay=hp.weight_decay,
                          fused=speed["fused"] or None)
    gen = torch.Generator().manual_seed(job.seed + 1)
    c = speed["compile"]
    feats, step, means = m.needs_features, 0, []
    sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    for steps in epochs:
        student.train()
        if state is not None:
            state.train(True)
        losses = []
        for i, st in enumerate(steps):
            with torch.no_grad():
                z_t, f_t = (st.z_t, None) if st.z_t is not None else fwd(teacher, st.x_t, feats, cuda, c)
                z_s0 = st.z_s0 if st.z_s0 is not None else fwd(s0, st.x_s, False, cuda, c)[0] if s0 is not None \
                    else None
            z_s, f_s = fwd(student, st.x_s, feats, cuda, c)
            loss, _ = m.loss(z_s, z_t, z_s0, st.y, hp, Extras(f_s=f_s, f_t=f_t, idx=st.idx, state=state, gen=gen))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if state is not None:
                state.after_step(student, step, i)
            losses.append(loss.detach())
        means.append(torch.stack(losses).mean())
        if state is not None:
            state.after_eval(student)  # MCL's end-of-epoch reset: the job runs it after its evaluation
    sync(device)
    return (time.perf_counter() - t0, time.process_time() - c0), [float(x) for x in means]


# ---------------------------------------------------------------- (c): timm-style rates, each model alone
def timm_rates(job, epochs: list[list[Step]], device: str, compiled: bool, n: int = 20) -> dict[str, float]:
    """Images/s of the student's training step (forward, cross-entropy, backward, SGD) and of each frozen model's
    inference, on the job's inputs, as timm's benchmark measures them (warm-up, then ``n`` batches, synced);
    ``compiled``: through the job's compiled forward, as timm's benchmark.py --torchcompile, so a compiled job is
    compared with compiled rates."""
    cuda = device.startswith("cuda")
    steps = [s for e in epochs for s in e]
    steps = (steps * (-(-(n + 3) // len(steps))))[:n + 3]
    bs = len(steps[0].y)

    def clock(fn) -> float:
        for s in steps[:3]:
            fn(s)
        sync(device)
        t0 = time.perf_counter()
        for s in steps[3:]:
            fn(s)
        sync(device)
        return n * bs / (time.perf_counter() - t0)

    fmt = torch.channels_last if cuda else torch.contiguous_format
    student = copy.deepcopy(job.student).to(device, memory_format=fmt).train()
    opt = torch.optim.SGD(student.parameters(), lr=job.hp.lr, momentum=job.hp.momentum)

    def train_step(s):
        loss = torch.nn.functional.cross_entropy(fwd(student, s.x_s, False, cuda, compiled)[0], s.y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    out = {"student_train": clock(train_step)}
    m = METHODS[job.method]
    frozen = {"teacher": (job.teacher, "x_t", "z_t"), "s0": (job.student, "x_s", "z_s0")}
    for role, (model, x, cached) in frozen.items():
        if role == "s0" and not m.needs_s0:
            continue
        if getattr(steps[0], cached) is not None:
            continue  # read from the cache in the job: no forward pass to count
        if getattr(steps[0], x) is None:
            continue
        frozen_model = copy.deepcopy(model).to(device, memory_format=fmt).eval()
        with torch.no_grad():
            out[f"{role}_infer"] = clock(lambda s, fm=frozen_model, x=x: fwd(fm, getattr(s, x), False, cuda, compiled))
    out["combined"] = 1 / sum(1 / v for v in out.values())
    return out


# ---------------------------------------------------------------- the command
def machine_line(device: str) -> str:
    model, units = cpu_info()
    line = f"{model} ({units}), {os.cpu_count()} CPUs; torch {torch.__version__}, {torch.get_num_threads()} thread(s)"
    if device.startswith("cuda"):
        line += f"; {torch.cuda.get_device_name(device)}"
    return line


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--spec", default=str(ROOT / "jobs" / "digits-paper.toml"))
    ap.add_argument("--zoo", choices=("spec", "timm"), default="spec",
                    help="timm: the two named timm architectures with random weights, on the spec's data")
    ap.add_argument("--student", default="convnext_a")
    ap.add_argument("--teacher", default="resnet_a")
    ap.add_argument("--method", default="kl_dp", help="a method or control of the spec, or 'all' (methods, then "
                                                      "controls)")
    ap.add_argument("--batch-size", type=int, default=None, help="default: the spec's")
    ap.add_argument("--image-size", type=int, default=None,
                    help="the cache's resolution (with --zoo timm also the models' input size); default: the spec's")
    ap.add_argument("--epochs", type=int, default=None, help="default: the spec's")
    ap.add_argument("--teacher-cache", choices=("auto", "off"), default=None, help="default: the spec's")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: a CPU launch runs one 1-thread worker per core)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--timm-rates", action="store_true", help="(c) also on the CPU (always on CUDA)")
    ap.add_argument("--compile", action="store_true", help="[run] compile = true, in (a) and (b)")
    ap.add_argument("--fused", action="store_true", help="[run] fused_optimizer = true, in (a) and (b)")
    ap.add_argument("--home", default=None, help="results folder for the caches (default: a temporary one)")
    a = ap.parse_args()
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no GPU here")

    home = Path(a.home) if a.home else Path(tempfile.mkdtemp(prefix="zoo-throughput-"))
    try:
        run(a, home)
    finally:
        if not a.home:
            shutil.rmtree(home, ignore_errors=True)


def run(a, home: Path) -> None:
    from zoo_sweep.data.sets import count_images, set_args
    from zoo_sweep.pipeline.jobs import job_rows
    from zoo_sweep.storage.store import Store
    from zoo_sweep.zoo.digits import to_build

    paths = Paths(home)
    spec = check_names(parse_spec(bench_spec(a), a.spec))
    plan = make_plan(spec, paths)
    if spec.zoo.source == "digits":
        todo, _ = to_build(plan.models, spec.zoo.recipe, paths.cache, spec.data.image_size)
        if todo:  # the package ships the 32-px zoo only; other resolutions would be trained (27 minutes)
            raise SystemExit(f"no weights for {', '.join(r.name for r in todo)} at {spec.data.image_size} px: "
                             "the embedded zoo ships 32-px weights (its models take 24-32 px); for other sizes "
                             "use --zoo timm")
    t = spec.transfer
    methods = list(t.methods) + list(t.controls) if a.method == "all" else [a.method]
    jobs = {m: pick(plan, a.student, a.teacher, m) for m in methods}
    n_tr = count_images(**set_args(spec.data, "transfer"))
    streams = job_streams(plan, n_tr)

    gpu = a.device.startswith("cuda")
    speed = {"compile": a.compile, "fused": a.fused}
    worker = worker_mod.Worker(str(home), threads=a.threads if not gpu else None, gpu=gpu)
    if worker.device != ("cuda" if gpu else "cpu"):
        raise SystemExit(f"the worker chose {worker.device}, not {a.device}")
    store = Store(f"sqlite:///{home / 'bench.db'}")
    store.add_jobs("bench", job_rows(list(jobs.values()), home))
    clock = Clock(worker.device)
    instrument(clock)

    first = next(iter(jobs.values())).payload
    ev = worker.image_set(first, "eval")
    labels = ev.labels.numpy()
    correct = {}
    for e in (first.student, first.teacher):
        model = worker.model(e)
        correct[e.name] = predict(model, ev, data_config(model), topk=1, device=worker.device)["pred"] == labels
    print(f"# {machine_line(worker.device)}")
    print(f"# load avg {os.getloadavg()[0]:.1f}; spec {Path(a.spec).name}, {spec.zoo.source} zoo; "
          f"{a.student} <- {a.teacher}, batch {t.batch_size}, {spec.data.image_size} px cache, {t.epochs} epoch(s), "
          f"seed {t.seeds[0]}, teacher_cache {t.teacher_cache}; {n_tr} transfer, {len(ev)} eval images; "
          f"{a.device}; medians of {a.repeat} alternating rounds"
          + "".join(f"; {k}" for k, v in speed.items() if v))

    def inputs(job) -> dict:
        p = job.payload
        return {"s0_correct": correct[p.student.name], "teacher_correct": correct[p.teacher.name],
                "streams": streams.get(job.id, {}), **speed}

    table = Table(streams, cuda=gpu or a.timm_rates)
    for m, job in jobs.items():  # one method at a time: its inputs (GBs at 224 px) are dropped after it
        # untimed, where a stream it uses is not yet written: writes them as a sweep's first job does (the first
        # one also fills the worker's weight cache and warms the allocator)
        caches = worker.logit_caches(streams.get(job.id, {}))
        written = all((c.folder / f"e{e}.pt").is_file() for c in caches.values() for e in range(1, t.epochs + 1))
        if m == next(iter(jobs)) or not written:
            run_job(worker, job, inputs(job), store, clock)
        p = job.payload
        student, teacher = worker.model(p.student), worker.model(p.teacher)
        tj = train_mod.TransferJob(student, teacher, m, train_mod.TransferParams.from_dict(p.hp), p.seed,
                                   worker.image_set(p, "transfer"), ev, data_config(student), data_config(teacher),
                                   correct[p.student.name], correct[p.teacher.name])
        steps = prepare(tj, worker.device, caches)
        res = {"a": [], "b": [], "rows": None, "losses": None,
               "c": timm_rates(tj, steps, worker.device, a.compile) if gpu or a.timm_rates else None,
               "images": sum(len(s.y) for e in steps for s in e), "steps": sum(len(e) for e in steps)}
        for rnd in range(a.repeat):
            for kind in ("a", "b") if rnd % 2 == 0 else ("b", "a"):
                if kind == "a":
                    r = run_job(worker, job, inputs(job), store, clock)
                    res["a"].append(r["parts"])
                    res["rows"] = r["rows"]
                else:
                    sec, res["losses"] = bare_loop(tj, steps, worker.device, speed)
                    res["b"].append(sec)
        del steps
        table.row(m, job, res)
    print(f"# load avg {os.getloadavg()[0]:.1f} at the end"
          + (f"; torch.compile: {train_mod.compiled_graphs()} graph(s), the steps that compiled them took "
             f"{train_mod.COMPILE_SECONDS[0]:.1f} s in all (untimed first jobs: once per process and architecture)"
             if a.compile else ""))
    print("\n".join(table.detail))


class Table:
    """One Markdown row per method as it finishes, the seconds behind each row at the end."""

    def __init__(self, streams: dict, cuda: bool):
        self.streams, self.cuda, self.detail = streams, cuda, []
        head = ["method", "frozen models", "steps", "(a) job img/s", "(a) steps img/s", "(b) img/s", "(a)/(b) steps",
                "same, CPU s", "(a)/(b) job", "data path % of steps", "overhead % of job", "eval %", "other %",
                "losses"]
        if cuda:
            head += ["(c) img/s", "(a) steps / (c)"]
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head), flush=True)

    def row(self, m: str, job, r: dict) -> None:
        images = r["images"]
        med = {k: statistics.median(p.get(k, 0.0) for p in r["a"]) for k in set().union(*r["a"])}
        wall, steps = med["wall"], med["steps"]
        b, b_cpu = statistics.median(x[0] for x in r["b"]), statistics.median(x[1] for x in r["b"])
        # shares of each job's own time, then their medians: parts taken from different jobs need not add up
        over = statistics.median(1 - p["steps"] / p["wall"] for p in r["a"])
        ev = statistics.median(p.get("eval", 0.0) / p["wall"] for p in r["a"])
        other = statistics.median(1 - (p["steps"] + p.get("eval", 0.0)) / p["wall"] for p in r["a"])
        roles = self.streams.get(job.id, {})
        frozen = ", ".join([f"teacher {'cached' if 'teacher' in roles else 'run'}"]
                           + ([f"s0 {'cached' if 's0' in roles else 'run'}"] if METHODS[m].needs_s0 else []))
        diff = max(abs(x - y) for x, y in zip([row["train_loss"] for row in r["rows"]], r["losses"]))
        cells = [m, frozen, str(r["steps"]), f"{images / wall:,.0f}", f"{images / steps:,.0f}", f"{images / b:,.0f}",
                 f"**{b / steps:.2f}**", f"{b_cpu / med['steps_cpu']:.2f}", f"{b / wall:.2f}",
                 f"{100 * med.get('data', 0.0) / steps:.1f}", f"{100 * over:.1f}", f"{100 * ev:.1f}",
                 f"{100 * other:.1f}", "same" if diff == 0 else f"differ by {diff:.2g}"]
        if self.cuda:
            cells += [f"{r['c']['combined']:,.0f}", f"{images / steps / r['c']['combined']:.2f}"]
        print("| " + " | ".join(cells) + " |", flush=True)
        named = ("setup", "cache", "eval", "checkpoint", "record")
        rest = wall - steps - sum(med.get(k, 0.0) for k in named)
        spread = "/".join(f"{p['steps']:.2f}" for p in r["a"]) + " vs " + "/".join(f"{x[0]:.2f}" for x in r["b"])
        self.detail.append(
            f"#   {m}: job {wall:.2f} s = steps {steps:.2f} (data path {med.get('data', 0.0):.2f}) + "
            + ", ".join(f"{k} {med.get(k, 0.0):.2f}" for k in named) + f" + rest {rest:.2f}; "
            f"(a) steps / (b) s by round: {spread}"
            + (f"; (c) {', '.join(f'{k} {v:,.0f}' for k, v in r['c'].items())} img/s" if r["c"] else ""))


if __name__ == "__main__":
    main()
