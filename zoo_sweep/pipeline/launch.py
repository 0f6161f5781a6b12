"""The driver: runs a sweep's pending jobs stage by stage on Ray and records every result.

    zoo       train missing embedded-zoo models (Ray tasks; the digits source only)
    predict   one forward pass per model -> prediction records        (warm actors)
    compare   all pairs from the records, vectorised        (a GPU worker, else the driver; seconds)
    select    pick the pairs to transfer (pair policy)                (driver)
    transfer  one job per (student, teacher, method, seed)            (warm actors)

Resume is the default: done jobs are skipped, jobs left 'running' by a killed launcher run again once its
lease has run out (storage/leases.py), and failed ones are retried up to ``max_retries``. Launchers write
the store, workers never do; two launchers of one sweep share its jobs, each claiming a job before it runs
it. A launch that leaves a failed job or a skipped stage behind says which and why, and is not ok.

Ctrl-C, SIGTERM and SIGHUP stop a launch the same way (``stop_on_signals``): the jobs in flight are marked
'interrupted' and run again on the next launch.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
from rich.console import Console
from rich.markup import escape
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
from zoo_sweep.pipeline.cluster import (
    check_reachable,
    connect,
    local_gpus,
    resolve_address,
)
from zoo_sweep.pipeline.joblog import append as append_log
from zoo_sweep.pipeline.joblog import stamp
from zoo_sweep.pipeline.jobs import Job, job_rows
from zoo_sweep.pipeline.options import (  # noqa: F401  (LaunchOptions, parse_shard: re-exported)
    STAGES,
    LaunchOptions,
    check_local_resources,
    in_shard,
    parse_shard,
)
from zoo_sweep.pipeline.plan import Plan, make_plan, run_order, select_transfers, write_plan
from zoo_sweep.pipeline.pool import Handlers, Pool, actor_shape
from zoo_sweep.pipeline.results import plain, record_transfer  # noqa: F401  (re-exported)
from zoo_sweep.pipeline.tracking import (
    CLOSE_WAIT_S,
    START_WAIT_S,
    Destination,
    Tracker,
    check_tracking,
    log_missing,
    log_missing_predictions,
)
from zoo_sweep.science.records import load_record, save_record
from zoo_sweep.storage.leases import Lease
from zoo_sweep.storage.schema import JobState
from zoo_sweep.storage.store import Store, final_results, jobs_of
from zoo_sweep.transfer.logit_store import StreamPlan, plan_streams
from zoo_sweep.zoo.entry import chance_note

PENDING, DONE, FAILED = JobState.PENDING, JobState.DONE, JobState.FAILED
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)  # what SLURM, `timeout`, container runtimes and a closed terminal send
_replaced: dict[int, object] = {}  # signal -> the handler ours replaced, while stop_on_signals is active
# the stop signal received: Ray turns a KeyboardInterrupt raised inside its calls into a new one, so the
# exception cannot carry it
_received: list[int] = []


def _on_stop_signal(signum, _frame):
    # once stopping, further SIGTERM / SIGHUP are ignored: a second one (a runtime that repeats it before its
    # SIGKILL) would cut short the marking of the jobs in flight as interrupted
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    _received.append(signum)
    raise KeyboardInterrupt(signal.Signals(signum).name)  # Ctrl-C's way out, everywhere


def _install_stop_handlers() -> None:
    for sig in STOP_SIGNALS:
        current = signal.getsignal(sig)
        if current is not _on_stop_signal:
            _replaced[sig] = current
        # set again even where Python names ours already: Ray's core worker installs a native handler beneath
        signal.signal(sig, _on_stop_signal)


def stop_signal() -> int:
    """The signal that stopped the launch: SIGTERM or SIGHUP if one came, else SIGINT (Ctrl-C)."""
    return _received[0] if _received else signal.SIGINT


@contextlib.contextmanager
def stop_on_signals():
    """SIGTERM and SIGHUP raise KeyboardInterrupt in the main thread while the block runs, as Ctrl-C does, so
    a launch stops the same way for all three (``stop_signal`` tells which came). ``ray.init`` puts Ray's
    own SIGTERM handlers in place (with them the driver aborts, printing a native stack dump, and leaves its
    jobs 'running'), so the launch puts this one back after joining Ray (``_Run.cluster``). The handlers
    found are restored at the end. Off the main thread (where Python allows no handlers): nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _received.clear()
    _install_stop_handlers()
    try:
        yield
    finally:
        for sig, handler in _replaced.items():
            signal.signal(sig, handler)
        _replaced.clear()


@dataclass
class LaunchReport:
    sweep: str
    ran: dict[str, int] = field(default_factory=dict)  # jobs run now, per kind
    reused: dict[str, int] = field(default_factory=dict)  # cached models / records / finished jobs
    failed: list[tuple[str, str]] = field(default_factory=list)  # (job id, what it is and its last error line)
    skipped: list[str] = field(default_factory=list)  # stages that could not run, and why
    notes: list[str] = field(default_factory=list)  # diverged or cancelled jobs: results, not failures
    new_jobs: int = 0

    @property
    def ok(self) -> bool:
        return not self.failed and not self.skipped


@dataclass
class Measured:
    """A measure run (stages up to compare) with what it loaded, for callers that go on from there (tune)."""
    report: LaunchReport
    plan: Plan
    correct: dict[str, np.ndarray]  # model -> eval-set correctness, for every model whose record exists


@dataclass
class Prepared:
    """A launch checked and planned, nothing written yet."""
    plan: Plan
    opts: LaunchOptions
    address: str | None
    tracking: Destination | None = None  # where the transfer stage logs its runs


def prepare_launch(spec: SweepSpec, paths: Paths, opts: LaunchOptions | None = None) -> Prepared:
    """Every check (options, names, paths, methods, the resources asked for) before anything is written: a
    caller opens the store only after this."""
    opts = (opts or LaunchOptions()).check()
    tracking = check_tracking(spec, paths.home) if opts.until == "transfer" else None  # logged at the transfer stage
    address = resolve_address(opts.address)
    if address:
        check_reachable(address)
    else:
        check_local_resources(opts, local_gpus)
    plan = make_plan(spec, paths)
    if address and opts.gpus > 0:  # a cluster's GPUs are known once joined
        connect(address, opts.cpus, opts.gpus)
    return Prepared(plan, opts, address, tracking)


def launch_sweep(spec: SweepSpec, store: Store, paths: Paths, opts: LaunchOptions | None = None,
                 console: Console | None = None) -> LaunchReport:
    return run_launch(prepare_launch(spec, paths, opts), store, paths, console).report


def measure_sweep(spec: SweepSpec, store: Store, paths: Paths, opts: LaunchOptions | None = None,
                  console: Console | None = None) -> Measured:
    """Stages up to compare, like ``launch --until compare``; the plan and every model's correctness come
    back too, so a caller that goes on plans and reads the records no second time."""
    prep = prepare_launch(spec, paths, replace(opts or LaunchOptions(), until="compare"))
    run = run_launch(prep, store, paths, console)
    correct = {m.name: run.correct_of(m.name) for m in run.plan.models}
    return Measured(run.report, run.plan, correct)


def run_launch(prep: Prepared, store: Store, paths: Paths, console: Console | None = None) -> _Run:
    run = _Run(prep.plan, store, paths, prep.opts, console or Console(stderr=True), prep.address, prep.tracking)
    store.on_locked = lambda line: run.console.print(f"[yellow]warning:[/] {escape(line)}")
    if _replaced:  # prepare_launch may have joined Ray, which replaced our SIGTERM handler
        _install_stop_handlers()
    try:
        run.execute()
        return run
    except BaseException:  # Ctrl-C, SIGTERM / SIGHUP (raised as KeyboardInterrupt), a store that stayed locked
        run.interrupt_jobs()
        raise
    finally:
        run.close()


class _Run:
    def __init__(self, plan: Plan, store: Store, paths: Paths, opts: LaunchOptions, console: Console, address,
                 tracking: Destination | None = None):
        self.plan, self.store, self.paths, self.opts, self.console = plan, store, paths, opts, console
        self.address = address
        self.spec = plan.spec
        self.report = LaunchReport(self.spec.name)
        self.max_retries = opts.max_retries if opts.max_retries is not None else self.spec.run.max_retries
        self._pool: Pool | None = None
        self._cluster_info = None
        self.lease = Lease(store, opts.lease_s)
        self.records: dict[str, dict] = {}  # predict job id -> record, loaded once per launch
        self._eval_labels: np.ndarray | None = None
        # model name -> predict job: the plan's, then (in _predict) older ones still linked to the sweep, for
        # transfer jobs of models an earlier version of the spec had
        self._predict_id = {j.payload.model.name: j.id for j in plan.predict_jobs}
        self._correct: dict[str, np.ndarray] = {}
        self._seen: dict[str, Job] = {}  # every job a stage read: outcome lines describe them
        # started now: importing MLflow and reaching its server overlap the stages before transfer
        self.tracker = Tracker(tracking, self.spec.name, home=paths.home).start() if tracking else None

    # ------------------------------------------------------------------ stages
    def execute(self) -> LaunchReport:
        self.report.new_jobs = write_plan(self.store, self.plan,
                                          warn=lambda note: self.console.print(f"[yellow]warning:[/] {escape(note)}"))
        self._requeue_stale()
        self._build_zoo()
        self._predict()
        if self.opts.until != "predict":
            pairs_df = self._compare()
            if self.opts.until == "transfer" and pairs_df is not None:
                self._select(pairs_df)
                self._transfer()
                self._convergence()
        self._check_outcome()
        return self.report

    def _jobs(self, kind: str) -> list[Job]:
        """The sweep's jobs of one kind, oldest first, payloads parsed (once per stage)."""
        jobs = [Job.from_row(r, self.paths.home) for r in self.store.sweep_jobs(self.spec.name, kind)]
        self._seen.update((j.id, j) for j in jobs)
        return jobs

    def _requeue_stale(self, kind: str | None = None) -> list[str]:
        """Jobs whose launcher is gone run again: 'interrupted' ones and 'running' ones whose lease ran out.
        A live launcher's jobs are left alone, as are other shards' (they may be running theirs right now)."""
        running = [i for i in self.store.job_states(self.spec.name, kind, states=("running", "interrupted"))
                   if in_shard(i, self.opts.shard)]
        return self.store.requeue_stale(running)

    def _others_running(self, kind: str) -> list[str]:
        """This shard's jobs of ``kind`` that another launcher is running now."""
        states = self.store.job_states(self.spec.name, kind, states=("running",))
        return [i for i in states if in_shard(i, self.opts.shard) and not self.lease.holds(i)]

    def _await_others(self, kind: str, ids: list[str] | None = None, poll_s: float = 2.0) -> list[str]:
        """Wait while other launchers run this stage's jobs (``ids``, default: all of them that run elsewhere
        now); returns those whose launcher died (lease run out), put back to pending for this one to run."""
        watched = set(self._others_running(kind) if ids is None else ids)
        taken: list[str] = []
        while watched:
            back = set(self.store.requeue_stale(sorted(watched)))
            taken += sorted(back)
            running = set(self.store.job_states(self.spec.name, kind, states=("running",)))
            watched = (watched - back) & running
            if watched:
                time.sleep(poll_s)
        return taken

    def _build_zoo(self):
        if self.spec.zoo.source != "digits":
            return
        from zoo_sweep.zoo.digits import to_build

        d, z = self.spec.data, self.spec.zoo
        todo, embedded = to_build(self.plan.models, z.recipe, self.paths.cache, d.image_size)  # missing or altered
        self.report.reused["zoo models"] = embedded - len(todo)
        if todo:
            self._train_zoo(todo)

    def _train_zoo(self, todo: list) -> None:
        import ray

        from zoo_sweep.pipeline.worker import build_zoo_model
        from zoo_sweep.zoo.digits import save_trained

        size = self.spec.data.image_size
        self.cluster()
        task = ray.remote(num_cpus=1)(build_zoo_model)  # one thread: the portable arithmetic
        with self._progress() as prog:
            bar = prog.add_task("zoo: train embedded models", total=len(todo))
            refs = {task.remote(r, str(self.paths.cache), size): r for r in todo}
            while refs:
                ready, _ = ray.wait(list(refs), num_returns=1)
                r = refs.pop(ready[0])
                state, info = ray.get(ready[0])
                save_trained(r, self.paths.cache, size, state, info)
                prog.advance(bar)
        self.report.ran["zoo"] = len(todo)

    def _predict(self):
        jobs = self._jobs("predict")
        todo = []
        for j in jobs:
            self._predict_id.setdefault(j.payload.model.name, j.id)
            rec = load_record(self._record_path(j.id)) if j.state is DONE else None
            if rec is not None:
                self.records[j.id] = rec
                continue
            if j.state is DONE:  # its record went missing or is unreadable: run it again
                self.store.set_state([j.id], PENDING.value)
                j = j.but(state=PENDING)
            todo.append(j)
        self.report.reused["prediction records"] = len(jobs) - len(todo)

        def on_result(job: Job, res: dict):
            path = self._record_path(job.id)
            save_record(path, res["record"])  # the file first: a 'done' job always has its record
            self.records[job.id] = res["record"]
            self.store.finish_job(job.id, DONE.value, model_rows=[self._model_row(job, res["accuracy"], path)],
                                  seconds=res["seconds"], owner=self.lease.owner)
            note = chance_note(res["accuracy"], self.plan.num_classes, len(res["record"]["pred"]))
            if note:  # a warning, not an error: the sweep goes on
                self.console.print(f"[yellow]warning:[/] {escape(f'{job.payload.model.name}: {note}')}")

        self._run_jobs("predict", self._filter(todo, limit=None),
                       lambda job: {"batch_size": self.spec.run.predict_batch_size}, on_result)

    def _model_row(self, job: Job, accuracy: float, record) -> dict:
        """The models row of a finished predict job; a model of an earlier version of the spec keeps the
        parameter count its own plan stored."""
        e = job.payload.model
        row = {"name": e.name, "eval_set": job.payload.eval, "arch": e.arch, "family": e.family,
               "accuracy": accuracy, "record": str(record)}
        if e.name in self.plan.params:
            row["params"] = self.plan.params[e.name]
        return row

    def _compare(self) -> pd.DataFrame | None:
        """The current plan's compare job (the spec's models now; never an older version's), then any
        older compare job of the sweep on the same eval set whose records exist, so none stays pending."""
        jobs = self._jobs("compare")
        job = next((j for j in jobs if j.id == self.plan.compare_job.id), self.plan.compare_job)
        if self.opts.shard is not None:
            self._wait_for_records(job.payload.records)
        self._load_records(job.payload.records)  # those other launchers made
        missing = [rid for rid in job.payload.records if rid not in self.records]
        if missing:
            self.report.skipped.append(f"compare {job.id} skipped: {self._not_done(missing)}")
            return None
        if job.state is DONE or not self._claim_compare(job.id):
            self.report.reused["compare"] = 1
            df = self._stored_pairs()
        else:
            df = self._run_compare(job)
        for old in jobs:
            p = old.payload
            if old.id != job.id and old.state is not DONE and p.eval_key == self.plan.eval_key \
                    and all(r in self.records for r in p.records) and self._claim_compare(old.id):
                self._run_compare(old)
        return df

    def _claim_compare(self, job_id: str) -> bool:
        """True: this launcher computes the pairs. False: another launcher did (it waits while one does)."""
        while not self.lease.claim(job_id, "launcher"):
            state = self.store.job_states(self.spec.name, "compare").get(job_id)
            if state == DONE.value:
                return False
            if state != "running":  # cancelled by hand: computed all the same, as it always was
                return True
            self._await_others("compare", [job_id])
        return True

    def _stored_pairs(self) -> pd.DataFrame:
        """The pairs of the plan's models (the table also holds those of other sweeps and older specs)."""
        df = self.store.query("select * from pairs where eval_set = :e", {"e": self.spec.data.eval})
        names = [m.name for m in self.plan.models]
        return df[df["student"].isin(names) & df["teacher"].isin(names)].reset_index(drop=True)

    def _run_compare(self, job: Job) -> pd.DataFrame:
        from zoo_sweep.pipeline.worker import compare_pairs

        t0 = time.time()
        p = job.payload
        recs = [self.records[rid] for rid in p.records]
        inputs = {"preds": np.stack([r["pred"] for r in recs]), "pmax": np.stack([r["p_max"] for r in recs]),
                  "labels": self._labels(), "num_classes": self.plan.num_classes}
        res = self._compare_on_gpu(job, inputs) if self.opts.gpus > 0 else None
        res = res or compare_pairs(p.models, inputs, "cpu", self.paths.cache)
        df = res["pairs"]
        df.insert(0, "eval_set", p.eval)
        self.store.write_pairs(job.id, df.to_dict("records"))
        self.lease.release(job.id)
        self.report.ran["compare"] = self.report.ran.get("compare", 0) + 1
        self.console.print(res["kernel"])
        self.console.print(f"compare: {len(df)} ordered pairs from {len(recs)} records in {time.time() - t0:.2f} s")
        return df

    def _compare_on_gpu(self, job: Job, inputs: dict) -> dict | None:
        """The compare job on a GPU worker (the stacked records sent once); None if it failed there: the driver
        then computes it on the CPU (the same code, the same results). The job stays claimed by this launcher."""
        import ray

        try:
            return ray.get(self._workers().actors[0].run.remote(job, inputs))
        except ray.exceptions.RayError as e:
            self.console.print(f"[yellow]compare on the GPU worker failed ({escape(_last_line(str(e)))}): "
                               "computing it here on the CPU[/]")
            return None

    def _not_done(self, record_ids: list[str]) -> str:
        """Which predict jobs a later stage waits for, and in what state they are."""
        states = self.store.job_states(self.spec.name, "predict")
        model = {i: name for name, i in self._predict_id.items()}
        listed = [f"{i} ({model.get(i, '?')}, {states.get(i, 'not planned')})" for i in record_ids[:5]]
        more = f" and {len(record_ids) - 5} more" if len(record_ids) > 5 else ""
        return f"predict job(s) not done: {', '.join(listed)}{more}"

    def _select(self, pairs_df: pd.DataFrame):
        if self.plan.transfer_jobs is None:
            history = None
            if self.spec.pairs.policy == "predicted_gain":
                ev = {"e": self.spec.data.eval}
                method = self.spec.pairs.gain_method or self.spec.transfer.methods[0]
                history = (self.store.query("select * from models where eval_set = :e", ev),
                           final_results(self.store, self.spec.data.eval), method)
            jobs = select_transfers(self.plan, pairs_df, history)
            self.report.new_jobs += self.store.add_jobs(self.spec.name, job_rows(jobs, self.paths.home))

    def _transfer(self):
        self._requeue_stale("transfer")  # select may have just linked jobs another sweep's launcher left behind
        jobs = self._jobs("transfer")
        todo = self._filter(jobs, limit=self.opts.limit)
        self.report.reused["transfer jobs"] = sum(j.state is DONE for j in jobs)
        settled = self._track_earlier(jobs, START_WAIT_S)
        if todo or self._others_running("transfer"):
            self._run_transfers(todo)
        end = time.monotonic() + CLOSE_WAIT_S  # the most the stage's end waits for the tracker, all told
        if not settled:
            self._track_earlier(jobs, CLOSE_WAIT_S)
        if self.tracker is not None and self.opts.shard is None:  # a shard sees part of the sweep's results
            self.tracker.log_sweep(self.store)
        self._close_tracker(max(0.0, end - time.monotonic()))  # a launch stopped before this waits less (close)

    def _run_transfers(self, todo: list[Job]):
        streams = self._plan_streams(todo)
        by_id = {j.id: j for j in todo}
        todo = [by_id[d["id"]] for d in streams.order([{"id": i} for i in by_id])]
        todo.sort(key=run_order)  # stable: the logit streams' order holds within each group

        def inputs(job: Job) -> dict:
            p = job.payload
            out = {"s0_correct": self.correct_of(p.student.name), "teacher_correct": self.correct_of(p.teacher.name),
                   "streams": streams.streams.get(job.id, {})}
            if p.multi:  # every teacher's, so the worker evaluates none of them again
                out["teachers_correct"] = [self.correct_of(n) for n in p.teacher_names]
            return out

        def on_result(job: Job, res: dict):
            record_transfer(self.store, job, res, owner=self.lease.owner)
            if self.tracker is not None:  # queued: never waits for the tracker
                if res["state"] == DONE:
                    self.tracker.log(job, res["rows"], res.get("seconds"))
                else:  # diverged: final, a run marked failed
                    self.tracker.log_failed(job, str(res["state"]), res.get("error"), res.get("seconds"))
            streams.release(job.id, self.paths.logits)
            if res.get("logits_read"):  # epochs of teacher / s0 logits read back instead of recomputed
                r = self.report.reused
                r["cached logit epochs"] = r.get("cached logit epochs", 0) + res["logits_read"]

        self._run_jobs("transfer", todo, inputs, on_result,
                       on_final_error=lambda job: streams.release(job.id, self.paths.logits))

    def _track_earlier(self, jobs: list[Job], wait_s: float) -> bool:
        """Log the finished ``jobs`` of this shard, and its finished predict jobs, that the sweep's experiment lacks
        (done by this launch's predict stage, by a launch without tracking, or while the tracker was down), from
        the store. Waits ``wait_s`` at most to learn whether the tracker answers; False: not known yet. A tracker
        that cannot be reached is one warning, and is not tried again in this launch."""
        t = self.tracker
        if t is None:
            return True
        if not t.ready(wait_s):
            if t.error is None:
                return False
            self.tracker = None
            self._warn(t.close(0) or f"{t.name} at {t.where} is not reachable ({t.error}): this launch logs no runs "
                                     f"there; the store has every result, and `zoo-sweep track {self.spec.name}` "
                                     "logs them")
            return True

        def done(of: list[Job]) -> dict[str, Job]:
            return {j.id: j for j in of if j.state is DONE and in_shard(j.id, self.opts.shard)}

        log_missing_predictions(t, self.store, done(self._jobs("predict")))
        log_missing(t, self.store, self.spec.name, done(jobs))
        return True

    def _close_tracker(self, wait_s: float) -> None:
        if self.tracker is not None:
            line = self.tracker.close(wait_s)
            self.tracker = None
            if line:
                self._warn(line)

    def _warn(self, line: str) -> None:
        self.console.print(f"[yellow]warning:[/] {escape(line)}", highlight=False, soft_wrap=True)

    def _convergence(self) -> None:
        """Name the students whose labels control improved them by more than their seed noise: their gains in
        this sweep are mostly continued training (the report says the same, with intervals)."""
        from zoo_sweep.science.controls import NOT_CONVERGED, convergence

        if "labels" not in self.spec.transfer.controls:
            return
        rows = self.store.query("select r.student, r.teacher, r.method, r.seed, r.delta, r.final "
                                "from transfer_results r join sweep_jobs sj on sj.job_id = r.job_id "
                                "where sj.sweep = :s and r.final", {"s": self.spec.name})
        c = convergence(rows, n_boot=200)
        for r in c.students.itertuples(index=False):
            if r.verdict == NOT_CONVERGED:
                self.report.notes.append(f"not converged: {r.student}: training on the labels alone improves it by "
                                         f"{r.labels_delta:+.2f} points, more than its seed noise "
                                         f"({r.noise_sd:.2f}): its gains are mostly continued training")
        if c.cannot_tell:
            self.report.notes.append(f"convergence: cannot tell for {len(c.cannot_tell)} student(s) with one seed "
                                     "and no repeated seed in the sweep; run more seeds ([transfer] seeds) to tell "
                                     "continued training from transfer")

    def _plan_streams(self, jobs: list[Job]) -> StreamPlan:
        """Which teacher / s0 logits the jobs about to run share, by the spec's teacher_cache policy."""
        from zoo_sweep.data.sets import count_images, set_args

        t, d = self.spec.transfer, self.spec.data
        if t.teacher_cache == "off":  # nothing to plan, and no need to count the transfer set
            return StreamPlan({}, Counter())
        n = count_images(**set_args(d, "transfer"))
        plan = plan_streams([(j.id, j.payload.to_dict()) for j in jobs], t.teacher_cache, self.plan.transfer_key, n,
                            self.plan.num_classes, t.teacher_cache_max_gb * 2**30)
        if plan.skipped_large:
            self.console.print(f"teacher_cache: {plan.skipped_large} shared stream(s) over teacher_cache_max_gb "
                               f"({t.teacher_cache_max_gb:g}) are computed per job")
        return plan

    def _check_outcome(self) -> None:
        """Failed jobs of the stages this launch covers (this shard's), also those an earlier launch left
        failed, join the report; diverged and cancelled ones are noted."""
        states = {i: s for kind in STAGES[:STAGES.index(self.opts.until) + 1]  # a stage's jobs are of its kind
                  for i, s in self.store.job_states(self.spec.name, kind, ("failed", "diverged", "cancelled")).items()
                  if in_shard(i, self.opts.shard)}
        reported = {i for i, _ in self.report.failed}
        earlier = sorted(i for i, s in states.items() if s == FAILED.value and i not in reported)
        if earlier:
            rows = jobs_of(self.store, self.spec.name).drop_duplicates("id").set_index("id").loc[earlier]
            for i, r in rows.iterrows():
                what = describe(self._seen[i]) if i in self._seen else r["kind"]
                self.report.failed.append((i, f"({what}, {r['attempts']} attempt(s), failed in an earlier launch; "
                                              f"`zoo-sweep reset` retries it) {_last_line(r['error'])}"))
        for state in ("diverged", "cancelled"):
            n = sum(s == state for s in states.values())
            if n:
                self.report.notes.append(f"{n} {state} job(s) (see `zoo-sweep status`)")

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

    def _filter(self, jobs: list[Job], limit: int | None) -> list[Job]:
        """The jobs this launch runs: by state, then --only-failed, --shard and --limit."""
        o = self.opts
        if o.only_failed:
            todo = [j for j in jobs if j.state is FAILED]
        else:
            todo = [j for j in jobs if j.state is PENDING or (j.state is FAILED and j.attempts <= self.max_retries)]
        todo = [j for j in todo if in_shard(j.id, o.shard)]
        if limit is not None:
            todo = todo[:limit]
        if o.only_failed and todo:  # a fresh retry budget
            self.store.set_state([j.id for j in todo], PENDING.value, attempts=0)
            todo = [j.but(state=PENDING, attempts=0) for j in todo]
        return todo

    def _wait_for_records(self, record_ids: list[str]) -> None:
        """A shard compares once every shard's predict jobs are done (records live on the shared home)."""
        deadline = time.time() + self.opts.wait_s
        missing = [r for r in record_ids if r not in self.records]
        while missing and time.time() < deadline:
            states = self._load_records(missing)
            missing = [r for r in record_ids if r not in self.records]
            if missing and any(states.get(r) in ("failed", "diverged") for r in missing):
                return
            if missing:
                time.sleep(5)

    def _load_records(self, record_ids: list[str]) -> dict[str, str]:
        """Load the records of done predict jobs not loaded yet (run by another shard or launcher); returns
        the predict jobs' states."""
        states = self.store.job_states(self.spec.name, "predict")
        for rid in record_ids:
            if rid not in self.records and states.get(rid) == DONE.value:
                rec = load_record(self._record_path(rid))
                if rec is not None:
                    self.records[rid] = rec
        return states

    def _record_path(self, job_id: str):
        return self.paths.records / f"{job_id}.npz"

    def cluster(self):
        if self._cluster_info is None:
            self._cluster_info = connect(self.address, self.opts.cpus, self.opts.gpus)
            if _replaced:  # ray.init replaced our SIGTERM handler with its own: ours again
                _install_stop_handlers()
        return self._cluster_info

    def _run_jobs(self, kind: str, todo: list[Job], inputs: Callable, on_result: Callable,
                  on_final_error: Callable | None = None):
        if todo:
            self._run_pool(kind, todo, inputs, on_result, on_final_error)
        if self.opts.limit is None and not self.opts.only_failed:  # a subset run leaves the rest to others
            self._run_taken_over(kind, inputs, on_result, on_final_error)

    def _run_pool(self, kind: str, todo: list[Job], inputs: Callable, on_result: Callable,
                  on_final_error: Callable | None):
        pool = self._workers()
        with self._progress() as prog:
            bar = _StageBar(prog, kind, pool.size, len(todo))

            skipped = 0

            def on_start(job: Job, worker: str) -> bool:
                nonlocal skipped
                if not self.lease.claim(job.id, worker):  # another launcher took it first
                    skipped += 1
                    bar.ended()
                    return False
                bar.started()
                return True

            def on_done(job: Job, res: dict):
                append_log(self.paths, job.id, res.get("log", ()))  # before the tracker is asked to attach it
                on_result(job, res)
                self.lease.release(job.id)
                bar.ended()

            def on_error(job: Job, err: str, final: bool):
                append_log(self.paths, job.id, [stamp(f"attempt failed{'' if final else ', to be retried'}:"),
                                                *str(err).rstrip().splitlines()])
                self.store.finish_job(job.id, FAILED.value if final else PENDING.value, error=err,
                                      owner=self.lease.owner)
                self.lease.release(job.id)
                if final:
                    bar.failed.append((job.id, f"({describe(job)}) {_last_line(err)}"))
                    if self.tracker is not None and kind == "transfer":
                        self.tracker.log_failed(job, FAILED.value, err)
                    if on_final_error is not None:
                        on_final_error(job)
                bar.ended(final)

            pool.run(todo, Handlers(inputs, on_start, on_done, on_error), self.max_retries)
        if len(todo) > skipped:
            self.report.ran[kind] = self.report.ran.get(kind, 0) + len(todo) - skipped
        self.report.failed.extend(bar.failed)

    def _workers(self) -> Pool:
        """The stage's warm actors, started on first use and kept for every later stage of the launch."""
        if self._pool is None:
            o = self.opts
            self._pool = Pool(actor_shape(self.cluster(), o.gpus, o.gpus_per_job, o.cpus_per_job), self.paths)
        return self._pool

    def _run_taken_over(self, kind, inputs, on_result, on_final_error):
        """Wait for the stage's jobs other launchers run; run those whose launcher died."""
        taken = self._await_others(kind)
        if taken:
            jobs = [j for j in self._jobs(kind) if j.id in set(taken)]
            self._run_jobs(kind, [j for j in jobs if j.state is PENDING], inputs, on_result, on_final_error)

    def _progress(self) -> Progress:
        return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TextColumn("eta"), TimeRemainingColumn(), console=self.console,
                        disable=not self.opts.progress, transient=False)

    def interrupt_jobs(self) -> None:
        """The launch stopped: every job it runs (claimed, not recorded: its owner is this launcher) is marked
        'interrupted', for the next launch to run at once; the jobs it recorded keep their results."""
        try:
            self.store.interrupt_jobs(self.lease.owner)
        except Exception:  # noqa: BLE001
            # the store stayed locked or went away: the error that ends the launch says so, and these jobs
            # run again all the same (their launcher is gone: at once on this host, elsewhere after the lease)
            pass

    def close(self):
        self._close_tracker(5.0)  # a launch that stopped early: what the tracker sends in a few seconds
        self.lease.stop()
        if self._pool is not None:
            self._pool.close()


class _StageBar:
    """One stage's progress bar: workers, jobs running, jobs failed for good."""

    def __init__(self, prog: Progress, kind: str, workers: int, total: int):
        self.prog, self.kind, self.workers = prog, kind, workers
        self.running = 0
        self.failed: list[tuple[str, str]] = []
        self.task = prog.add_task(self._text(), total=total)

    def _text(self) -> str:
        return (f"{self.kind}: {self.workers} worker(s), {self.running} running"
                + (f", [red]{len(self.failed)} failed[/]" if self.failed else ""))

    def started(self) -> None:
        self.running += 1
        self.prog.update(self.task, description=self._text())

    def ended(self, counts: bool = True) -> None:
        """A job left the worker: done or failed for good (``counts``), or back in the queue for a retry."""
        self.running -= 1
        self.prog.update(self.task, advance=1 if counts else 0, description=self._text())


def describe(job: Job) -> str:
    """A job in a few words, for error lines: its kind and the models it is about."""
    p = job.payload
    if job.kind == "predict":
        return f"predict {p.model.name}"
    if job.kind == "transfer":
        return f"transfer {'+'.join(p.teacher_names)} -> {p.student.name}, {p.method}, seed {p.seed}"
    return job.kind


def _last_line(err) -> str:
    lines = str(err or "").strip().splitlines()
    return lines[-1] if lines else ""


def eval_labels(spec: SweepSpec, paths: Paths) -> np.ndarray:
    from zoo_sweep.data.images import load_image_set
    from zoo_sweep.data.sets import set_args

    return load_image_set(**set_args(spec.data, "eval"), cache_dir=paths.cache).labels.numpy()

