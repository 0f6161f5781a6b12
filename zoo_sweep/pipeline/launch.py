"""The driver: runs a sweep's pending jobs stage by stage on Ray and records every result.

    zoo       train missing embedded-zoo models (Ray tasks; the digits source only)
    predict   one forward pass per model -> prediction records        (warm actors)
    compare   all pairs from the records, vectorised                  (driver, seconds)
    select    pick the pairs to transfer (pair policy)                (driver)
    transfer  one job per (student, teacher, method, seed)            (warm actors)

Resume is the default: done jobs are skipped, jobs left 'running' by a killed launcher run again, and
failed ones are retried up to ``max_retries``. Only this process writes the store.
"""

from __future__ import annotations

import json
import time
from collections import Counter, deque
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from zoo_sweep.config.spec import SweepSpec
from zoo_sweep.errors import UserError
from zoo_sweep.paths import Paths
from zoo_sweep.pipeline.cluster import check_reachable, connect, resolve_address
from zoo_sweep.pipeline.plan import (
    Plan,
    make_plan,
    model_rows,
    select_transfers,
    write_plan,
)
from zoo_sweep.science.complementary import pairs_frame
from zoo_sweep.science.records import load_record, save_record
from zoo_sweep.storage.store import Store
from zoo_sweep.transfer.logit_store import StreamPlan, plan_streams

STAGES = ("predict", "compare", "transfer")


@dataclass
class LaunchOptions:
    gpus: float = 0
    cpus: int | None = None  # local cluster size; default: all cores
    address: str | None = None  # existing Ray cluster (or $RAY_ADDRESS)
    gpus_per_job: float = 1.0  # fractions put several small jobs on one GPU
    cpus_per_job: int = 1
    max_retries: int | None = None  # default: the spec's [run] max_retries
    until: str = "transfer"  # last stage to run: "compare" measures only
    progress: bool = True
    only_failed: bool = False  # rerun failed jobs only (with a fresh retry budget)
    limit: int | None = None  # at most this many transfer jobs (earlier stages always complete: they feed it)
    shard: tuple[int, int] | None = None  # (i, K): run only the jobs of shard i of K (array jobs)
    wait_s: float = 6 * 3600  # sharded runs: how long to wait for other shards' predict jobs


def parse_shard(text: str) -> tuple[int, int]:
    """'i/K' -> (i, K) with 0 <= i < K."""
    try:
        i, k = (int(x) for x in text.split("/"))
    except ValueError:
        raise UserError(f"--shard must look like i/K (e.g. 0/4), got {text!r}") from None
    if k < 1 or not 0 <= i < k:
        raise UserError(f"--shard {text}: need K >= 1 and 0 <= i < K")
    return i, k


def in_shard(job_id: str, shard: tuple[int, int] | None) -> bool:
    """Job ids are hashes, so taking them modulo K splits every stage evenly and disjointly."""
    return shard is None or int(job_id.split("-", 1)[-1], 16) % shard[1] == shard[0]


@dataclass
class LaunchReport:
    sweep: str
    ran: dict[str, int] = field(default_factory=dict)  # jobs run now, per kind
    reused: dict[str, int] = field(default_factory=dict)  # cached models / records / finished jobs
    failed: list[tuple[str, str]] = field(default_factory=list)  # (job id, last error line)
    new_jobs: int = 0

    @property
    def ok(self) -> bool:
        return not self.failed


@dataclass
class Measured:
    """A measure run (stages up to compare) with what it loaded, for callers that go on from there (tune)."""
    report: LaunchReport
    plan: Plan
    correct: dict[str, np.ndarray]  # model -> eval-set correctness, for every model whose record exists


def launch_sweep(spec: SweepSpec, store: Store, paths: Paths, opts: LaunchOptions | None = None,
                 console: Console | None = None) -> LaunchReport:
    return _execute(spec, store, paths, opts, console).report


def measure_sweep(spec: SweepSpec, store: Store, paths: Paths, opts: LaunchOptions | None = None,
                  console: Console | None = None) -> Measured:
    """Stages up to compare, like ``launch --until compare``; the plan and every model's correctness come
    back too, so a caller that goes on plans and reads the records no second time."""
    run = _execute(spec, store, paths, replace(opts or LaunchOptions(), until="compare"), console)
    correct = {m.name: run.correct_of(m.name) for m in run.plan.models}
    return Measured(run.report, run.plan, correct)


def _execute(spec: SweepSpec, store: Store, paths: Paths, opts: LaunchOptions | None,
             console: Console | None) -> _Run:
    opts = opts or LaunchOptions()
    console = console or Console(stderr=True)
    if opts.until not in STAGES:
        raise UserError(f"--until must be one of {', '.join(STAGES)}")
    plan = make_plan(spec, paths)  # every name, path and method is checked before anything is written
    address = resolve_address(opts.address)
    if address:
        check_reachable(address)
    run = _Run(plan, store, paths, opts, console, address)
    try:
        run.execute()
        return run
    finally:
        run.close()


class _Run:
    def __init__(self, plan: Plan, store: Store, paths: Paths, opts: LaunchOptions, console: Console, address):
        self.plan, self.store, self.paths, self.opts, self.console = plan, store, paths, opts, console
        self.address = address
        self.spec = plan.spec
        self.report = LaunchReport(self.spec.name)
        self.max_retries = opts.max_retries if opts.max_retries is not None else self.spec.run.max_retries
        self._pool: _Pool | None = None
        self.records: dict[str, dict] = {}  # predict job id -> record, loaded once per launch
        self._eval_labels: np.ndarray | None = None
        # model name -> predict job: the plan's, then (in _predict) older ones still linked to the sweep, for
        # transfer jobs of models an earlier version of the spec had
        self._predict_id = {json.loads(j["spec"])["model"]["name"]: j["id"] for j in plan.predict_jobs}
        self._correct: dict[str, np.ndarray] = {}

    # ------------------------------------------------------------------ stages
    def execute(self) -> LaunchReport:
        self.report.new_jobs = write_plan(self.store, self.plan)
        self._requeue_stale()
        self._build_zoo()
        self._predict()
        if self.opts.until == "predict":
            return self.report
        pairs_df = self._compare()
        if self.opts.until == "compare" or pairs_df is None:
            return self.report
        self._select(pairs_df)
        self._transfer()
        return self.report

    def _requeue_stale(self, kind: str | None = None):
        """Jobs a killed launcher left 'running' or 'interrupted' run again (this shard's only: other
        shards may be running theirs right now)."""
        stale = [i for i in self.store.job_states(self.spec.name, kind, states=("running", "interrupted"))
                 if in_shard(i, self.opts.shard)]
        self.store.set_state(stale, "pending")

    def _build_zoo(self):
        if self.spec.zoo.source != "digits":
            return
        from zoo_sweep.pipeline.worker import build_zoo_model
        from zoo_sweep.zoo.digits import missing_recipes, save_trained

        d, z = self.spec.data, self.spec.zoo
        wanted = {m.name for m in self.plan.models}
        todo = [r for r in missing_recipes(z.recipe, self.paths.cache, d.image_size) if r.name in wanted]
        self.report.reused["zoo models"] = len(wanted) - len(todo)
        if not todo:
            return
        import ray

        self._cluster()
        task = ray.remote(num_cpus=self.opts.cpus_per_job)(build_zoo_model)
        with self._progress() as prog:
            bar = prog.add_task("zoo: train embedded models", total=len(todo))
            refs = {task.remote(r, str(self.paths.cache), d.image_size, self.opts.cpus_per_job): r for r in todo}
            while refs:
                ready, _ = ray.wait(list(refs), num_returns=1)
                r = refs.pop(ready[0])
                state, info = ray.get(ready[0])
                save_trained(r, self.paths.cache, d.image_size, state, info)
                prog.advance(bar)
        self.report.ran["zoo"] = len(todo)

    def _predict(self):
        jobs = self.store.sweep_jobs(self.spec.name, "predict")
        todo = []
        for j in jobs:
            self._predict_id.setdefault(json.loads(j["spec"])["model"]["name"], j["id"])
            rec = load_record(self._record_path(j["id"])) if j["state"] == "done" else None
            if rec is not None:
                self.records[j["id"]] = rec
            elif j["state"] == "done":  # its record went missing or is unreadable: run it again
                self.store.set_state([j["id"]], "pending")
                todo.append({**j, "state": "pending"})
            else:
                todo.append(j)
        self.report.reused["prediction records"] = len(jobs) - len(todo)
        todo = self._filter(todo, limit=None)
        rows = {r["name"]: r for r in model_rows(self.plan)}

        def on_result(job, res):
            path = self._record_path(job["id"])
            save_record(path, res["record"])  # the file first: a 'done' job always has its record
            self.records[job["id"]] = res["record"]
            name = json.loads(job["spec"])["model"]["name"]
            self.store.finish_job(job["id"], "done", model_rows=[{**rows[name], "accuracy": res["accuracy"],
                                                                  "record": str(path)}], seconds=res["seconds"])

        self._run_jobs("predict", todo, lambda job: {"batch_size": self.spec.run.predict_batch_size}, on_result)

    def _compare(self):
        job = next(j for j in self.store.sweep_jobs(self.spec.name, "compare"))
        payload = json.loads(job["spec"])
        if self.opts.shard is not None:
            self._wait_for_records(payload["records"])
        if any(rid not in self.records for rid in payload["records"]):
            self.console.print("[yellow]compare skipped: some predict jobs did not finish[/]")
            return None
        if job["state"] == "done":
            self.report.reused["compare"] = 1
            return self.store.query("select * from pairs where eval_set = :e", {"e": self.spec.data.eval})
        t0 = time.time()
        recs = [self.records[rid] for rid in payload["records"]]
        df = pairs_frame(payload["models"], np.stack([r["pred"] for r in recs]), self._labels(),
                         np.stack([r["p_max"] for r in recs]), self.plan.num_classes)
        df.insert(0, "eval_set", self.spec.data.eval)
        self.store.write_pairs(job["id"], df.to_dict("records"))
        self.report.ran["compare"] = 1
        self.console.print(f"compare: {len(df)} ordered pairs from {len(recs)} records in {time.time() - t0:.2f} s")
        return df

    def _select(self, pairs_df):
        if self.plan.transfer_jobs is None:
            history = None
            if self.spec.pairs.policy == "predicted_gain":
                ev = {"e": self.spec.data.eval}
                method = self.spec.pairs.gain_method or self.spec.transfer.methods[0]
                history = (self.store.query("select * from models where eval_set = :e", ev),
                           self.store.query("select * from transfer_results where eval_set = :e and final", ev), method)
            rows = select_transfers(self.plan, pairs_df, history)
            self.report.new_jobs += self.store.add_jobs(self.spec.name, rows)

    def _transfer(self):
        self._requeue_stale("transfer")  # select may have just linked jobs another sweep's launcher left behind
        jobs = self.store.sweep_jobs(self.spec.name, "transfer")
        todo = self._filter(jobs, limit=self.opts.limit)
        self.report.reused["transfer jobs"] = sum(j["state"] == "done" for j in jobs)
        if not todo:
            return
        todo = [{**j, "spec": json.loads(j["spec"])} for j in todo]  # parsed once: planner, inputs, pool, store
        payloads = {j["id"]: j["spec"] for j in todo}
        streams = self._plan_streams(payloads)
        todo = streams.order(todo)

        def inputs(job):
            p = job["spec"]
            out = {"s0_correct": self.correct_of(p["student"]["name"]),
                   "teacher_correct": self.correct_of(p["teacher"]["name"]),
                   "streams": streams.streams.get(job["id"], {})}
            if "teachers" in p:  # multi-teacher: every teacher's, so the worker evaluates none of them again
                out["teachers_correct"] = [self.correct_of(e["name"]) for e in p["teachers"]]
            return out

        def on_result(job, res):
            record_transfer(self.store, job, res)
            streams.release(job["id"], self.paths.logits)
            if res.get("logits_read"):  # epochs of teacher / s0 logits read back instead of recomputed
                r = self.report.reused
                r["cached logit epochs"] = r.get("cached logit epochs", 0) + res["logits_read"]

        self._run_jobs("transfer", todo, inputs, on_result,
                       on_final_error=lambda job: streams.release(job["id"], self.paths.logits))

    def _plan_streams(self, payloads: dict[str, dict]) -> StreamPlan:
        """Which teacher / s0 logits the jobs about to run share, by the spec's teacher_cache policy."""
        from zoo_sweep.data.sets import count_images

        t, d = self.spec.transfer, self.spec.data
        if t.teacher_cache == "off":  # nothing to plan, and no need to count the transfer set
            return StreamPlan({}, Counter())
        n = count_images(d.transfer, d.image_size, d.class_map)
        plan = plan_streams(list(payloads.items()), t.teacher_cache, self.plan.transfer_key, n,
                            self.plan.num_classes, t.teacher_cache_max_gb * 2**30)
        if plan.skipped_large:
            self.console.print(f"teacher_cache: {plan.skipped_large} shared stream(s) over teacher_cache_max_gb "
                               f"({t.teacher_cache_max_gb:g}) are computed per job")
        return plan

    # ------------------------------------------------------------------ machinery
    def correct_of(self, name: str) -> np.ndarray:
        """Which eval samples a model gets right, from its prediction record (built once per launch: every
        transfer job's inputs need its student's and teacher's)."""
        if name not in self._correct:
            rec = self.records.get(self._predict_id.get(name))
            if rec is None:
                raise UserError(f"no prediction record for model {name!r} of sweep {self.spec.name!r}: "
                                "run `zoo-sweep measure SPEC`")
            self._correct[name] = rec["pred"] == self._labels()
        return self._correct[name]

    def _labels(self) -> np.ndarray:
        """The eval set's labels, read once per launch (compare and every transfer job's inputs need them)."""
        if self._eval_labels is None:
            self._eval_labels = eval_labels(self.spec, self.paths)
        return self._eval_labels

    def _filter(self, jobs: list[dict], limit: int | None) -> list[dict]:
        """The jobs this launch runs: by state, then --only-failed, --shard and --limit."""
        o = self.opts
        if o.only_failed:
            todo = [j for j in jobs if j["state"] == "failed"]
        else:
            todo = [j for j in jobs if j["state"] == "pending"
                    or (j["state"] == "failed" and j["attempts"] <= self.max_retries)]
        todo = [j for j in todo if in_shard(j["id"], o.shard)]
        if limit is not None:
            todo = todo[:limit]
        if o.only_failed and todo:  # a fresh retry budget
            self.store.set_state([j["id"] for j in todo], "pending", attempts=0)
            todo = [{**j, "state": "pending", "attempts": 0} for j in todo]
        return todo

    def _wait_for_records(self, record_ids: list[str]) -> None:
        """A shard compares once every shard's predict jobs are done (records live on the shared home)."""
        deadline = time.time() + self.opts.wait_s
        missing = [r for r in record_ids if r not in self.records]
        while missing and time.time() < deadline:
            states = self.store.job_states(self.spec.name, "predict")
            for rid in missing:
                if states.get(rid) == "done":
                    rec = load_record(self._record_path(rid))
                    if rec is not None:
                        self.records[rid] = rec
            missing = [r for r in record_ids if r not in self.records]
            if missing and any(states.get(r) in ("failed", "diverged") for r in missing):
                return
            if missing:
                time.sleep(5)

    def _record_path(self, job_id: str):
        return self.paths.records / f"{job_id}.npz"

    def _cluster(self):
        return connect(self.address, self.opts.cpus, int(self.opts.gpus) if self.opts.gpus >= 1 else 0)

    def _run_jobs(self, kind: str, todo: list[dict], inputs: Callable, on_result: Callable,
                  on_final_error: Callable | None = None):
        if not todo:
            return
        if self._pool is None:
            self._pool = _Pool(self._cluster(), self.opts, self.paths)
        failed = []
        running = 0

        def describe():
            return (f"{kind}: {self._pool.size} worker(s), {running} running"
                    + (f", [red]{len(failed)} failed[/]" if failed else ""))

        with self._progress() as prog:
            bar = prog.add_task(describe(), total=len(todo))

            def on_start(job_id, worker):
                nonlocal running
                self.store.start_job(job_id, worker)
                running += 1
                prog.update(bar, description=describe())

            def on_done(job, res):
                nonlocal running
                on_result(job, res)
                running -= 1
                prog.update(bar, advance=1, description=describe())

            def on_error(job, err: str, final: bool):
                nonlocal running
                self.store.finish_job(job["id"], "failed" if final else "pending", error=err)
                running -= 1
                if final:
                    failed.append((job["id"], err.strip().splitlines()[-1] if err.strip() else err))
                    if on_final_error is not None:
                        on_final_error(job)
                prog.update(bar, advance=1 if final else 0, description=describe())

            self._pool.run(todo, inputs, on_start, on_done, on_error, self.max_retries, self.store)
        self.report.ran[kind] = len(todo)
        self.report.failed.extend(failed)

    def _progress(self) -> Progress:
        return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TextColumn("eta"), TimeRemainingColumn(), console=self.console,
                        disable=not self.opts.progress, transient=False)

    def close(self):
        if self._pool is not None:
            self._pool.close()


class _Pool:
    """Warm Ray actors fed with a ``ray.wait`` loop; two jobs in flight per actor so none idles."""

    def __init__(self, cluster, opts: LaunchOptions, paths: Paths):
        import ray

        from zoo_sweep.pipeline.worker import Worker

        if opts.gpus > 0:
            per = dict(num_gpus=opts.gpus_per_job, num_cpus=opts.cpus_per_job)
            size = max(1, int(opts.gpus / opts.gpus_per_job))
        else:
            per = dict(num_gpus=0, num_cpus=opts.cpus_per_job)
            size = max(1, int(cluster.cpus // opts.cpus_per_job))
        self.size = size
        self._actor_cls = ray.remote(Worker).options(**per, max_concurrency=1)
        self._args = (str(paths.home), opts.cpus_per_job)
        self.actors = [self._actor_cls.remote(*self._args) for _ in range(size)]
        self.names = ray.get([a.info.remote() for a in self.actors])  # host:pid:device, kept in jobs.worker

    def run(self, jobs: list[dict], inputs: Callable, on_start: Callable, on_done: Callable, on_error: Callable,
            max_retries: int, store: Store):
        import ray

        queue = deque(jobs)
        attempts = {j["id"]: j["attempts"] for j in jobs}
        inflight: dict = {}  # object ref -> (job, actor index, actor)
        # started and not yet recorded: wider than inflight, so a Ctrl-C while a job is being sent or its
        # result written leaves no job 'running'
        unrecorded: set[str] = set()
        load = [0] * len(self.actors)
        starting: dict = {}  # info ref of a replacement worker -> its index; it takes jobs once it answers
        try:
            while queue or inflight:
                # least-loaded actor first, so the queue's first jobs start at once on different actors
                # (the transfer order puts the jobs that compute shared teacher logits first)
                while queue and (free := [i for i, n in enumerate(self.names) if n is not None and load[i] < 2]):
                    i = min(free, key=load.__getitem__)
                    job = queue.popleft()
                    unrecorded.add(job["id"])
                    on_start(job["id"], self.names[i])
                    attempts[job["id"]] += 1
                    ref = self.actors[i].run.remote({**job, "spec": payload_of(job), "inputs": inputs(job)})
                    inflight[ref] = (job, i, self.actors[i])
                    load[i] += 1
                if queue and not inflight and not starting:
                    raise UserError("every Ray worker of this launch died and none could be restarted; "
                                    "see the Ray logs, then launch again to resume")
                ready, _ = ray.wait([*inflight, *starting], num_returns=1, timeout=1.0)
                for ref in ready:
                    if ref in starting:
                        self._started(starting.pop(ref), ref)
                        continue
                    job, i, actor = inflight.pop(ref)
                    load[i] -= 1
                    try:
                        on_done(job, ray.get(ref))
                    except ray.exceptions.RayActorError as e:  # the worker process (or its node) died
                        if self.actors[i] is actor:  # not yet replaced (it may have had two jobs in flight)
                            self._replace(i, starting)
                        self._retry(job, f"worker died: {e}", attempts, max_retries, queue, on_error)
                    except ray.exceptions.RayTaskError as e:
                        self._retry(job, _task_error(e), attempts, max_retries, queue, on_error)
                    unrecorded.discard(job["id"])
        except KeyboardInterrupt:
            store.set_state(sorted(unrecorded), "interrupted")
            raise

    def _replace(self, i: int, starting: dict) -> None:
        """A new worker in place of a dead one, without waiting for it: when its node died with it, the
        replacement may find no room until the cluster gains a node, and the other workers carry on
        meanwhile (a lost node's jobs are retried on the nodes left)."""
        import ray

        ray.kill(self.actors[i], no_restart=True)  # an actor that is only unreachable must not hold its slot
        self.actors[i], self.names[i] = self._actor_cls.remote(*self._args), None
        starting[self.actors[i].info.remote()] = i

    def _started(self, i: int, ref) -> None:
        import ray

        try:
            self.names[i] = ray.get(ref)
        except ray.exceptions.RayError:  # it failed while starting: the slot stays empty
            self.actors[i] = None

    @staticmethod
    def _retry(job, err, attempts, max_retries, queue, on_error):
        final = attempts[job["id"]] > max_retries
        on_error(job, err, final)
        if not final:
            queue.append(job)

    def close(self):
        import ray

        for a in self.actors:
            if a is not None:
                ray.kill(a)


def _task_error(e) -> str:
    cause = getattr(e, "cause", None)
    if cause is not None:
        return f"{type(cause).__name__}: {cause}"
    return str(e).strip().splitlines()[-1]


def eval_labels(spec: SweepSpec, paths: Paths) -> np.ndarray:
    from zoo_sweep.data.images import load_image_set

    return load_image_set(spec.data.eval, spec.data.image_size, paths.cache, spec.data.class_map).labels.numpy()


def payload_of(job: dict) -> dict:
    """A job's payload. The store keeps it as JSON text; a stage that reads it itself passes it on parsed."""
    return job["spec"] if isinstance(job["spec"], dict) else json.loads(job["spec"])


def record_transfer(store: Store, job: dict, res: dict) -> None:
    """A transfer job's outcome in the store: its per-epoch rows and its state, in one transaction.
    The launcher and Tune trials both record through here."""
    if res["state"] != "done":
        store.finish_job(job["id"], res["state"], error=res.get("error"), seconds=res.get("seconds"))
        return
    p = payload_of(job)
    key = {"job_id": job["id"], "eval_set": p["eval"], "student": p["student"]["name"],
           "teacher": p["teacher"]["name"], "method": p["method"], "seed": p["seed"]}
    last = len(res["rows"])
    # a row may name its own teacher: multi-teacher jobs report "a+b+c"
    rows = [{**key, **{k: plain(v) for k, v in r.items()}, "teacher": r.get("teacher", key["teacher"]),
             "final": r["epoch"] == last} for r in res["rows"]]
    store.finish_job(job["id"], "done", results=rows, seconds=res.get("seconds"))


def plain(v):
    """A numpy scalar as a Python one; NaN (e.g. a transfer rate with no positive flips) as None (NULL)."""
    if isinstance(v, (np.floating, np.integer)):
        v = v.item()
    if isinstance(v, float) and v != v:
        return None
    return v
