"""What every stage of a launch shares: the plan, store, paths, options and console; the lease that holds its
claims; the prediction records, loaded once; the warm workers and the tracker; and running a stage's jobs on
the workers, with retries and the jobs taken over from launchers that died.

Launchers write the store, workers never do; two launchers of one sweep share its jobs, each claiming a job
before it runs it (storage/leases.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress

from zoo_sweep.config.spec import SweepSpec
from zoo_sweep.errors import UserError
from zoo_sweep.paths import Paths
from zoo_sweep.pipeline.cluster import connect
from zoo_sweep.pipeline.joblog import append as append_log
from zoo_sweep.pipeline.joblog import stamp
from zoo_sweep.pipeline.jobs import Job, Outcome
from zoo_sweep.pipeline.options import STAGES, LaunchOptions, in_shard
from zoo_sweep.pipeline.plan import Plan
from zoo_sweep.pipeline.pool import Handlers, Pool, actor_shape
from zoo_sweep.pipeline.stages import signals
from zoo_sweep.pipeline.stages.progress import StageBar, progress
from zoo_sweep.pipeline.tracking import Destination, Tracker
from zoo_sweep.science.records import load_record
from zoo_sweep.storage.leases import Lease
from zoo_sweep.storage.schema import JobState
from zoo_sweep.storage.store import Store, jobs_of

PENDING, DONE, FAILED = JobState.PENDING, JobState.DONE, JobState.FAILED

Inputs = Callable[[Job], dict]  # a job's per-job inputs, sent to its worker with it
OnResult = Callable[[Job, Outcome], None]  # record a finished job
OnFailed = Callable[[Job, str], None]  # a job failed for good (its error text), after it is recorded


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


class Records:
    """The sweep's prediction records by predict job id, each read once per launch, and what later stages
    take from them: each model's eval-set correctness and the eval set's labels."""

    def __init__(self, store: Store, spec: SweepSpec, paths: Paths, plan: Plan):
        self.store, self.spec, self.paths = store, spec, paths
        self.loaded: dict[str, dict] = {}
        # model name -> predict job: the plan's, then (in the predict stage) older ones still linked to the sweep,
        # for transfer jobs of models an earlier version of the spec had
        self.predict_id = {j.payload.model.name: j.id for j in plan.predict_jobs}
        self._correct: dict[str, np.ndarray] = {}
        self._labels: np.ndarray | None = None

    def path(self, job_id: str):
        return self.paths.records / f"{job_id}.npz"

    def load(self, record_ids: list[str]) -> dict[str, str]:
        """Load the records of done predict jobs not loaded yet (run by another shard or launcher); returns
        the predict jobs' states."""
        states = self.store.job_states(self.spec.name, "predict")
        for rid in record_ids:
            if rid not in self.loaded and states.get(rid) == DONE.value:
                rec = load_record(self.path(rid))
                if rec is not None:
                    self.loaded[rid] = rec
        return states

    def wait(self, record_ids: list[str], wait_s: float) -> None:
        """A shard compares once every shard's predict jobs are done (records live on the shared home)."""
        deadline = time.time() + wait_s
        missing = [r for r in record_ids if r not in self.loaded]
        while missing and time.time() < deadline:
            states = self.load(missing)
            missing = [r for r in record_ids if r not in self.loaded]
            if missing and any(states.get(r) in ("failed", "diverged") for r in missing):
                return
            if missing:
                time.sleep(5)

    def not_done(self, record_ids: list[str]) -> str:
        """Which predict jobs a later stage waits for, and in what state they are."""
        states = self.store.job_states(self.spec.name, "predict")
        model = {i: name for name, i in self.predict_id.items()}
        listed = [f"{i} ({model.get(i, '?')}, {states.get(i, 'not planned')})" for i in record_ids[:5]]
        more = f" and {len(record_ids) - 5} more" if len(record_ids) > 5 else ""
        return f"predict job(s) not done: {', '.join(listed)}{more}"

    def correct_of(self, name: str) -> np.ndarray:
        """Which eval samples a model gets right, from its prediction record (built once per launch: every
        transfer job's inputs need its student's and teacher's)."""
        if name not in self._correct:
            rec = self.loaded.get(self.predict_id.get(name))
            if rec is None:
                raise UserError(f"no prediction record for model {name!r} of sweep {self.spec.name!r}: "
                                "run `zoo-sweep measure SPEC`")
            self._correct[name] = rec["pred"] == self.labels()
        return self._correct[name]

    def labels(self) -> np.ndarray:
        """The eval set's labels, read once per launch (compare and every transfer job's inputs need them)."""
        if self._labels is None:
            self._labels = eval_labels(self.spec, self.paths)
        return self._labels


class Launch:
    """One launch in progress, as its stages see it (pipeline/launch.py runs them in order)."""

    def __init__(self, plan: Plan, store: Store, paths: Paths, opts: LaunchOptions, console: Console, address,
                 tracking: Destination | None = None):
        self.plan, self.store, self.paths, self.opts, self.console = plan, store, paths, opts, console
        self.address = address
        self.spec = plan.spec
        self.report = LaunchReport(self.spec.name)
        self.max_retries = opts.max_retries if opts.max_retries is not None else self.spec.run.max_retries
        self.lease = Lease(store, opts.lease_s)
        self.records = Records(store, self.spec, paths, plan)
        self.seen: dict[str, Job] = {}  # every job a stage read: outcome lines describe them
        self._pool: Pool | None = None
        # a number, or "auto" until the transfer stage has measured (stages/transfer.py); earlier stages use 1
        self.share = opts.gpus_per_job if opts.gpus_per_job is not None else self.spec.run.gpus_per_job
        self._cluster_info = None
        # started now: importing MLflow and reaching its server overlap the stages before transfer
        self.tracker = Tracker(tracking, self.spec.name, home=paths.home).start() if tracking else None

    # ------------------------------------------------------------------ the store's jobs
    def jobs(self, kind: str) -> list[Job]:
        """The sweep's jobs of one kind, oldest first, payloads parsed (once per stage)."""
        jobs = [Job.from_row(r, self.paths.home) for r in self.store.sweep_jobs(self.spec.name, kind)]
        self.seen.update((j.id, j) for j in jobs)
        return jobs

    def requeue_stale(self, kind: str | None = None) -> list[str]:
        """Jobs whose launcher is gone run again: 'interrupted' ones and 'running' ones whose lease ran out.
        A live launcher's jobs are left alone, as are other shards' (they may be running theirs right now)."""
        running = [i for i in self.store.job_states(self.spec.name, kind, states=("running", "interrupted"))
                   if in_shard(i, self.opts.shard)]
        return self.store.requeue_stale(running)

    def others_running(self, kind: str) -> list[str]:
        """This shard's jobs of ``kind`` that another launcher is running now."""
        states = self.store.job_states(self.spec.name, kind, states=("running",))
        return [i for i in states if in_shard(i, self.opts.shard) and not self.lease.holds(i)]

    def await_others(self, kind: str, ids: list[str] | None = None, poll_s: float = 2.0) -> list[str]:
        """Wait while other launchers run this stage's jobs (``ids``, default: all of them that run elsewhere
        now); returns those whose launcher died (lease run out), put back to pending for this one to run."""
        watched = set(self.others_running(kind) if ids is None else ids)
        taken: list[str] = []
        while watched:
            back = set(self.store.requeue_stale(sorted(watched)))
            taken += sorted(back)
            running = set(self.store.job_states(self.spec.name, kind, states=("running",)))
            watched = (watched - back) & running
            if watched:
                time.sleep(poll_s)
        return taken

    def filter(self, jobs: list[Job], limit: int | None) -> list[Job]:
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

    # ------------------------------------------------------------------ the console
    def say(self, line: str) -> None:
        """One line as it is: unwrapped (scripts read it) and without markup."""
        self.console.print(escape(line), highlight=False, soft_wrap=True)

    def warn(self, line: str) -> None:
        self.console.print(f"[yellow]warning:[/] {escape(line)}", highlight=False, soft_wrap=True)

    def progress(self) -> Progress:
        return progress(self.console, self.opts.progress)

    # ------------------------------------------------------------------ Ray and the warm workers
    def cluster(self):
        if self._cluster_info is None:
            self._cluster_info = connect(self.address, self.opts.cpus, self.opts.gpus)
            signals.reinstall()  # ray.init replaced our SIGTERM handler with its own: ours again
        return self._cluster_info

    def workers(self) -> Pool:
        """The stage's warm actors, started on first use and kept for every later stage of the launch."""
        if self._pool is None:
            o = self.opts
            per = 1.0 if self.share == "auto" else float(self.share)
            shape = actor_shape(self.cluster(), o.gpus, per, o.cpus_per_job)
            self._pool = Pool(shape, self.paths)
            if shape.num_gpus:  # how the GPUs are shared, whether chosen, measured or remembered
                self.say(f"workers: {self._pool.size} of {shape.num_gpus:g} GPU and {shape.num_cpus} CPU(s) each")
        return self._pool

    def close_workers(self) -> None:
        """Stop the warm actors (the next stage starts its own): a new GPU share, or a measurement that needs the
        GPUs they hold."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def run_jobs(self, kind: str, todo: list[Job], inputs: Inputs, on_result: OnResult,
                 on_failed: OnFailed | None = None) -> None:
        """Run ``todo`` on the workers, each claimed first, recording each outcome with ``on_result``; then,
        unless this launch runs a subset, the stage's jobs that other launchers hold, taking over those whose
        launcher died."""
        if todo:
            self._run_pool(kind, todo, inputs, on_result, on_failed)
        if self.opts.limit is None and not self.opts.only_failed:  # a subset run leaves the rest to others
            self._run_taken_over(kind, inputs, on_result, on_failed)

    def _run_pool(self, kind: str, todo: list[Job], inputs: Inputs, on_result: OnResult,
                  on_failed: OnFailed | None) -> None:
        pool = self.workers()
        with self.progress() as prog:
            bar = StageBar(prog, kind, pool.size, len(todo))
            skipped = 0

            def on_start(job: Job, worker: str) -> bool:
                nonlocal skipped
                if not self.lease.claim(job.id, worker):  # another launcher took it first
                    skipped += 1
                    bar.ended()
                    return False
                bar.started()
                return True

            def on_done(job: Job, out: Outcome) -> None:
                append_log(self.paths, job.id, out.log)  # before the tracker is asked to attach it
                on_result(job, out)
                self.lease.release(job.id)
                bar.ended()

            def on_error(job: Job, err: str, final: bool) -> None:
                append_log(self.paths, job.id, [stamp(f"attempt failed{'' if final else ', to be retried'}:"),
                                                *str(err).rstrip().splitlines()])
                self.store.finish_job(job.id, FAILED.value if final else PENDING.value, error=err,
                                      owner=self.lease.owner)
                self.lease.release(job.id)
                if final:
                    bar.failed.append((job.id, f"({describe(job)}) {last_line(err)}"))
                    if on_failed is not None:
                        on_failed(job, err)
                bar.ended(final)

            pool.run(todo, Handlers(inputs, on_start, on_done, on_error), self.max_retries)
        if len(todo) > skipped:
            self.report.ran[kind] = self.report.ran.get(kind, 0) + len(todo) - skipped
        self.report.failed.extend(bar.failed)

    def _run_taken_over(self, kind: str, inputs: Inputs, on_result: OnResult, on_failed: OnFailed | None) -> None:
        """Wait for the stage's jobs other launchers run; run those whose launcher died."""
        taken = self.await_others(kind)
        if taken:
            jobs = [j for j in self.jobs(kind) if j.id in set(taken)]
            self.run_jobs(kind, [j for j in jobs if j.state is PENDING], inputs, on_result, on_failed)

    # ------------------------------------------------------------------ the end of a launch
    def close_tracker(self, wait_s: float) -> None:
        if self.tracker is not None:
            line = self.tracker.close(wait_s)
            self.tracker = None
            if line:
                self.warn(line)

    def interrupt_jobs(self) -> None:
        """The launch stopped: every job it runs (claimed, not recorded: its owner is this launcher) is marked
        'interrupted', for the next launch to run at once; the jobs it recorded keep their results."""
        try:
            self.store.interrupt_jobs(self.lease.owner)
        except Exception:  # noqa: BLE001
            # the store stayed locked or went away: the error that ends the launch says so, and these jobs
            # run again all the same (their launcher is gone: at once on this host, elsewhere after the lease)
            pass

    def close(self) -> None:
        self.close_tracker(5.0)  # a launch that stopped early: what the tracker sends in a few seconds
        self.lease.stop()
        if self._pool is not None:
            self._pool.close()


def check_outcome(run: Launch) -> None:
    """Failed jobs of the stages this launch covers (this shard's), also those an earlier launch left
    failed, join the report; diverged and cancelled ones are noted."""
    spec, opts, report = run.spec, run.opts, run.report
    states = {i: s for kind in STAGES[:STAGES.index(opts.until) + 1]  # a stage's jobs are of its kind
              for i, s in run.store.job_states(spec.name, kind, ("failed", "diverged", "cancelled")).items()
              if in_shard(i, opts.shard)}
    reported = {i for i, _ in report.failed}
    earlier = sorted(i for i, s in states.items() if s == FAILED.value and i not in reported)
    if earlier:
        rows = jobs_of(run.store, spec.name).drop_duplicates("id").set_index("id").loc[earlier]
        for i, r in rows.iterrows():
            what = describe(run.seen[i]) if i in run.seen else r["kind"]
            report.failed.append((i, f"({what}, {r['attempts']} attempt(s), failed in an earlier launch; "
                                     f"`zoo-sweep reset` retries it) {last_line(r['error'])}"))
    for state in ("diverged", "cancelled"):
        n = sum(s == state for s in states.values())
        if n:
            report.notes.append(f"{n} {state} job(s) (see `zoo-sweep status`)")


def describe(job: Job) -> str:
    """A job in a few words, for error lines: its kind and the models it is about."""
    p = job.payload
    if job.kind == "predict":
        return f"predict {p.model.name}"
    if job.kind == "transfer":
        return f"transfer {'+'.join(p.teacher_names)} -> {p.student.name}, {p.method}, seed {p.seed}"
    return job.kind


def last_line(err) -> str:
    lines = str(err or "").strip().splitlines()
    return lines[-1] if lines else ""


def eval_labels(spec: SweepSpec, paths: Paths) -> np.ndarray:
    from zoo_sweep.data.images import load_image_set
    from zoo_sweep.data.sets import set_args

    return load_image_set(**set_args(spec.data, "eval"), cache_dir=paths.cache).labels.numpy()
