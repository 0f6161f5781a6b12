"""Transfer runs in MLflow, beside the store ([tracking] backend = "mlflow", or ``launch --tracking URI``; off by
default): one experiment per sweep, one run per finished transfer, control and multi-teacher job, holding the
job's resolved hyper-parameters, its id and every per-epoch metric the store holds for it (docs/launch.md).

The launcher logs, when it records a job's result, rather than the workers as they train:

- a job's result carries all its epochs, those a resumed job read back from its checkpoint included, so each job
  is one run holding exactly what the store holds, however often it was retried or resumed (a worker would
  open a run per attempt, each with part of the epochs);
- only the launcher's machine needs mlflow and a route to the tracking server; GPU nodes often have neither
  (docs/gpus.md, offline nodes), and a worker's Python environment is not always the launcher's;
- the launcher knows what was logged, so what an outage or an earlier launch without tracking left out is
  logged by a later launch from the store (``missing``), and a job is logged once (but for two launchers of
  one sweep, not sharded, that start together: both may log the jobs finished before them).

The cost: a job's metrics appear when the job ends, not epoch by epoch.

A tracker must never hold a job or the launch up, nor end either: every MLflow call (the import, a few seconds,
included) runs on one background thread, a job's result only joins its queue, and a failure is counted, never
raised. The launch says what was not logged in one warning line. MLflow's own log lines from that thread are
dropped (its retries, a local store's table creation), since they would interleave with the launch's.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from zoo_sweep.config.spec import SweepSpec, TrackingSpec, check_tracking_uri
from zoo_sweep.errors import UserError
from zoo_sweep.urls import scrub

INSTALL = "pip install 'zoo-sweep[mlflow]'"
# Set for the launch's process where the user has not set them. MLflow's defaults retry a request 7 times over
# minutes, each waiting up to 120 s: a server that is down would hold every run in the queue for the rest of the
# launch. And it prints two lines (run and experiment URLs) to stdout for every run it ends, between the
# launch's own lines: a sweep's runs are found by its experiment instead (docs/launch.md).
MLFLOW_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                   "MLFLOW_HTTP_REQUEST_TIMEOUT": "15", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}
# The launch waits for the tracker twice at most, never while a job runs: at the transfer stage's start, to say at
# once that it cannot be reached and to queue the runs earlier launches left out; and at the stage's end, for the
# runs still queued (and those runs, when the tracker took longer to answer than the stage)
START_WAIT_S = 10.0
CLOSE_WAIT_S = 60.0
GIVE_UP_AFTER = 3  # failures in a row after which the rest of the launch's runs are not tried (server down)
MAX_PARAMS, MAX_ENTITIES = 100, 1000  # what one MLflow log_batch call takes


def tracking_uri(spec: SweepSpec, home: str | Path) -> str | None:
    """Where a launch of ``spec`` logs its runs (None: nowhere): [tracking] uri, else $MLFLOW_TRACKING_URI (as
    MLflow itself reads it), else a SQLite file in the results folder, beside the default store."""
    return _uri(spec.tracking, home)


def _uri(t: TrackingSpec, home: str | Path) -> str | None:
    if t.backend == "none":
        return None
    if t.uri:
        return t.uri
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return check_tracking_uri(env, "MLFLOW_TRACKING_URI")
    return f"sqlite:///{Path(home).resolve() / 'mlflow.db'}"


def _need_mlflow() -> None:
    """A UserError where mlflow is not installed (looked up, not imported: the import takes seconds, and happens
    on the tracker's thread)."""
    import importlib.util

    if importlib.util.find_spec("mlflow") is None:
        raise UserError(f'[tracking] backend = "mlflow" (or --tracking) needs MLflow, which is not installed here: '
                        f"{INSTALL}")


def check_tracking(spec: SweepSpec, home: str | Path) -> str | None:
    """The URI a launch logs to, checked before anything is written."""
    uri = tracking_uri(spec, home)
    if uri is not None:
        _need_mlflow()
    return uri


def run_name(student: str, teacher: str, method: str, seed: int) -> str:
    return f"{student} <- {teacher} / {method} / {seed}"


@dataclass
class RunRecord:
    """One job as an MLflow run: what is logged, built from the job and the rows the store holds for it."""
    job_id: str
    name: str
    params: dict[str, str]
    tags: dict[str, str]
    metrics: list[tuple[str, float, int]]  # (name, value, epoch)
    seconds: float | None = None


def run_record(job, rows: list[dict], seconds: float | None = None) -> RunRecord:
    """``rows``: the job's per-epoch results as the store has them (``results.record_transfer``), or the store's
    transfer_results rows of the job. A metric the store holds as NULL (a rate with nothing to count) is left
    out: MLflow has no missing value."""
    from zoo_sweep import __version__
    from zoo_sweep.config.params import TransferParams
    from zoo_sweep.pipeline.plan import TRANSFER_HP
    from zoo_sweep.pipeline.results import plain
    from zoo_sweep.transfer.catalog import CATALOG
    from zoo_sweep.transfer.result_metrics import TRANSFER_METRICS

    p = job.payload
    method = p.multi_method if p.multi else p.method  # the loss a multi-teacher mode's stages use
    info = CATALOG.get(method)
    hp = TransferParams.from_dict(p.hp)
    names = TRANSFER_HP + (info.params if info else ())
    params = {n: str(getattr(hp, n)) for n in names}  # every value the job ran with, older options' too
    params.update(seed=str(p.seed), job_id=job.id, zoo_sweep_version=__version__)
    teacher = "+".join(p.teacher_names)  # as the store labels a multi-teacher job
    teachers = p.teachers if p.multi else (p.teacher,)
    control = info is not None and info.control and not p.multi
    tags = {"student": p.student.name, "teacher": teacher, "method": p.method,
            "kind": "multi-teacher" if p.multi else "control" if control else "method",
            "student_family": p.student.family, "teacher_family": "+".join(e.family for e in teachers),
            "eval_set": p.eval, "transfer_set": p.transfer}
    if p.multi:
        tags["multi_method"] = str(p.multi_method)
    metrics = []
    for r in rows:
        for k in TRANSFER_METRICS:
            v = plain(r.get(k))
            if v is not None:
                metrics.append((k, float(v), int(r["epoch"])))
    return RunRecord(job.id, run_name(p.student.name, teacher, p.method, p.seed), params, tags, metrics, seconds)


class _FromThread(logging.Filter):
    """Drops the log records one thread emits."""

    def __init__(self, ident: int):
        super().__init__()
        self.ident = ident

    def filter(self, record: logging.LogRecord) -> bool:
        return record.thread != self.ident


# what a connection failure says, deep in the MLflow, requests and urllib3 messages that wrap it
_NETWORK = ("Connection refused", "timed out", "Name or service not known", "No route to host",
            "Temporary failure in name resolution", "Connection reset", "Network is unreachable")


def _line(e: BaseException, uri: str) -> str:
    """An exception as one short line, the URI's password masked wherever the message quotes it."""
    text = str(e).strip()
    reason = next((r for r in _NETWORK if r.lower() in text.lower()), None)
    if reason:
        line = f"cannot connect: {reason}"
    else:
        first = (text.splitlines() or [""])[0]
        line = f"{type(e).__name__}: {first[:200]}{' ...' if len(first) > 200 else ''}" if first else type(e).__name__
    return scrub(line, uri)


def _mlflow_client(uri: str):
    for k, v in MLFLOW_DEFAULTS.items():
        os.environ.setdefault(k, v)
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


@dataclass
class _Counts:
    queued: int = 0
    logged: int = 0
    not_logged: list[str] = field(default_factory=list)  # run names
    first_error: str | None = None


class Tracker:
    """One sweep's MLflow experiment, written from a background thread. ``client_factory(uri)`` gives an
    ``MlflowClient`` (or anything with its methods: tests pass one that fails)."""

    def __init__(self, uri: str, experiment: str, client_factory: Callable | None = None):
        self.uri, self.experiment = uri, experiment
        self._factory = client_factory or _mlflow_client
        self._queue: queue.Queue = queue.Queue()
        self._connected = threading.Event()
        self.error: str | None = None  # why it could not reach the experiment
        self.logged: set[str] = set()  # job ids with a run in the experiment
        self._queued: set[str] = set()  # job ids queued by this launch (a job is logged once, however it is asked)
        self.counts = _Counts()
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._main, name=f"zoo-sweep tracking {experiment}", daemon=True)

    @property
    def where(self) -> str:
        return scrub(self.uri, self.uri)

    def start(self) -> "Tracker":
        self._thread.start()
        return self

    def ready(self, timeout: float = START_WAIT_S) -> bool:
        """Whether the experiment is reachable, waiting up to ``timeout`` seconds to learn it; False also when
        that is still not known (``error`` is None then)."""
        return self._connected.wait(timeout) and self.error is None

    def missing(self, job_ids) -> list[str]:
        """Those of ``job_ids`` without a run in the experiment (call after ``ready``)."""
        with self._lock:
            return [i for i in job_ids if i not in self.logged]

    def log(self, job, rows: list[dict], seconds: float | None = None) -> None:
        """Queue a finished job's run; returns at once and never raises."""
        with self._lock:
            if self._closed or job.id in self.logged or job.id in self._queued:
                return
            self._queued.add(job.id)
            self.counts.queued += 1
        try:
            rec = run_record(job, rows, seconds)
        except Exception as e:  # noqa: BLE001  (a job we cannot describe to MLflow is still in the store)
            self._failed(f"job {job.id}", _line(e, self.uri))
            return
        self._queue.put(rec)

    def close(self, timeout: float | None = CLOSE_WAIT_S,
              on_progress: Callable[[int, int], None] | None = None) -> str | None:
        """Stop once the queued runs are sent, waiting ``timeout`` seconds at most (None: until they are), calling
        ``on_progress(sent, queued)`` about once a second meanwhile; returns the one warning line about the runs
        not logged, or None."""
        with self._lock:
            if self._closed:
                return None
            self._closed = True
        self._queue.put(None)
        if self.counts.queued:  # else nothing to wait for (the thread may still be importing MLflow)
            end = None if timeout is None else time.monotonic() + timeout
            while self._thread.is_alive():
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    break
                self._thread.join(1.0 if left is None else min(1.0, left))
                if on_progress is not None:
                    with self._lock:
                        sent = self.counts.logged + len(self.counts.not_logged)
                    on_progress(sent, self.counts.queued)
        with self._lock:
            c = self.counts
            missed = c.queued - c.logged
            first = c.not_logged[0] if c.not_logged else None
            why = c.first_error or self.error or "MLflow did not answer in time"
        if not missed:
            return None
        return (f"MLflow at {self.where}: {missed} of {c.queued} run(s) not logged"
                + (f", the first '{first}'" if first and missed > 1 else f": '{first}'" if first else "")
                + f" ({why}); the store has every result, and `zoo-sweep track {self.experiment}` logs them")

    # ------------------------------------------------------------------ the background thread
    def _main(self) -> None:
        quiet = _FromThread(threading.get_ident())
        handlers = []
        try:
            if self._factory is _mlflow_client:  # MLflow sets its log handlers up when imported
                importlib.import_module("mlflow")
            for h in [h for name in ("mlflow", "alembic", "") for h in logging.getLogger(name).handlers] + \
                    [logging.lastResort]:
                if h is not None:
                    h.addFilter(quiet)
                    handlers.append(h)
            self._client = self._factory(self.uri)
            self._experiment_id = self._experiment()
            with self._lock:
                self.logged |= self._logged_ids()
        except Exception as e:  # noqa: BLE001
            self.error = _line(e, self.uri)
        finally:
            self._connected.set()
        failures = 0
        try:
            while (rec := self._queue.get()) is not None:
                if self.error is not None or failures >= GIVE_UP_AFTER:
                    self._failed(rec.name, self.error)
                    continue
                try:
                    self._send(rec)
                    failures = 0
                except Exception as e:  # noqa: BLE001
                    failures += 1
                    self._failed(rec.name, _line(e, self.uri))
        finally:
            for h in handlers:
                h.removeFilter(quiet)

    def _failed(self, name: str, error: str | None) -> None:
        """A run not logged (``name``), and why."""
        with self._lock:
            self.counts.not_logged.append(name)
            if self.counts.first_error is None:
                self.counts.first_error = error

    def _experiment(self) -> str:
        c = self._client
        exp = c.get_experiment_by_name(self.experiment)
        if exp is None:
            try:
                return c.create_experiment(self.experiment)
            except Exception:  # another launcher of the sweep created it meanwhile
                exp = c.get_experiment_by_name(self.experiment)
                if exp is None:
                    raise
        if exp.lifecycle_stage == "deleted":  # the name stays taken by a deleted experiment: bring it back
            c.restore_experiment(exp.experiment_id)
        return exp.experiment_id

    def _logged_ids(self) -> set[str]:
        """The jobs with a finished run in the experiment (a run that failed half-way is logged again)."""
        ids, token = set(), None
        while True:
            page = self._client.search_runs([self._experiment_id], "attributes.status = 'FINISHED'",
                                            max_results=1000, page_token=token)
            ids.update(r.data.params["job_id"] for r in page if "job_id" in r.data.params)
            token = page.token
            if not token:
                return ids

    def _send(self, rec: RunRecord) -> None:
        c = self._client
        end = int(time.time() * 1000)
        start = end - int((rec.seconds or 0) * 1000)
        run = c.create_run(self._experiment_id, start_time=start, tags=rec.tags, run_name=rec.name)
        run_id = run.info.run_id
        try:
            from mlflow.entities import Metric, Param, RunStatus

            params = [Param(k, v) for k, v in rec.params.items()]
            for i in range(0, len(params), MAX_PARAMS):
                c.log_batch(run_id, params=params[i:i + MAX_PARAMS])
            metrics = [Metric(k, v, end, step) for k, v, step in rec.metrics]
            for i in range(0, len(metrics), MAX_ENTITIES):
                c.log_batch(run_id, metrics=metrics[i:i + MAX_ENTITIES])
            c.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED), end_time=end)
        except Exception:
            # a half-written run is not counted as logged (``_logged_ids``): gone, the job's next run is its only one
            with contextlib.suppress(Exception):
                c.delete_run(run_id)
            raise
        with self._lock:
            self.logged.add(rec.job_id)
            self.counts.logged += 1


def log_missing(tracker: Tracker, store, sweep: str, done: dict) -> int:
    """Queue the runs of ``done`` (job id -> finished transfer job of ``sweep``) that the experiment lacks, each
    with its epochs as the store holds them; call after ``tracker.ready``. Returns how many were queued."""
    missing = set(tracker.missing(done))
    if not missing:
        return 0
    rows = store.query("select r.* from transfer_results r join sweep_jobs sj on sj.job_id = r.job_id "
                       "where sj.sweep = :s order by r.job_id, r.epoch", {"s": sweep})
    n = 0
    for job_id, g in rows[rows["job_id"].isin(missing)].groupby("job_id", sort=False):
        tracker.log(done[job_id], g.to_dict("records"))
        n += 1
    return n


def track_uri(home: str | Path, uri: str | None = None, spec: SweepSpec | None = None) -> str:
    """Where ``zoo-sweep track`` logs: ``uri`` (--tracking), else the spec's [tracking] as a launch of it would
    log, else $MLFLOW_TRACKING_URI, else the results folder's SQLite file (where a launch logs by default)."""
    if uri is not None:
        found = check_tracking_uri(uri, "--tracking")
    else:
        on = spec.tracking if spec is not None and spec.tracking.backend != "none" else TrackingSpec("mlflow")
        found = str(_uri(on, home))
    _need_mlflow()
    return found


@dataclass
class TrackOutcome:
    where: str  # the tracking URI, its password masked
    finished: int  # the sweep's finished transfer jobs
    already: int  # of those, with a run in the experiment before
    logged: int  # logged now
    warning: str | None  # the runs tried and not logged, and why


# How long ``track`` waits to reach the tracker: the MLflow import, and a local store's table creation
TRACK_CONNECT_S = 120.0


def track_sweep(store, sweep: str, uri: str, home: str | Path,
                on_progress: Callable[[int, int], None] | None = None,
                client_factory: Callable | None = None) -> TrackOutcome:
    """Log the finished transfer jobs of a stored ``sweep`` that its MLflow experiment lacks, from the store
    (``zoo-sweep track``): a sweep launched without tracking, or whose tracker was down. Waits until every run is
    sent. A tracker that cannot be reached is a UserError: nothing was logged."""
    from zoo_sweep.pipeline.jobs import Job

    done = {r["id"]: Job.from_row(r, str(home)) for r in store.sweep_jobs(sweep, "transfer") if r["state"] == "done"}
    t = Tracker(uri, sweep, client_factory).start()
    if not t.ready(TRACK_CONNECT_S):
        why = t.error or f"no answer in {TRACK_CONNECT_S:.0f} s"
        t.close(0)
        raise UserError(f"MLflow at {t.where} is not reachable ({why}); nothing was logged: start the tracking "
                        "server, or give the URI it listens on with --tracking")
    queued = log_missing(t, store, sweep, done)
    warning = t.close(None, on_progress)
    return TrackOutcome(t.where, len(done), len(done) - queued, t.counts.logged, warning)
