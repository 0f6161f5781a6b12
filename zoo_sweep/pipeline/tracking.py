"""Transfer runs in MLflow or Weights & Biases, beside the store ([tracking] backend = "mlflow" or "wandb", or
``launch --tracking URI`` for MLflow; off by default): one experiment (MLflow) or group (W&B) per sweep, one run
per finished transfer, control and multi-teacher job, holding the job's resolved hyper-parameters, its id,
every per-epoch metric the store holds for it and its log (pipeline/joblog.py); one per predict job with the
model's accuracy; a failed run per transfer job that diverged or failed for good; and the sweep's own run, its
summary and report page, replaced each time it is logged (docs/launch.md).

The launcher logs, when it records a job's result, rather than the workers as they train:

- a job's result carries all its epochs, those a resumed job read back from its checkpoint included, so each job
  is one run holding exactly what the store holds, however often it was retried or resumed (a worker would
  open a run per attempt, each with part of the epochs);
- only the launcher's machine needs the tracker's library and a route to its server; GPU nodes often have neither
  (docs/gpus.md, offline nodes), and a worker's Python environment is not always the launcher's;
- the launcher knows what was logged, so what an outage or an earlier launch without tracking left out is
  logged by a later launch from the store (``missing``), and a job is logged once (but for two launchers of
  one sweep, not sharded, that start together: both may log the jobs finished before them).

The cost: a job's metrics appear when the job ends, not epoch by epoch.

A tracker must never hold a job or the launch up, nor end either: every call to it (the import, a few seconds,
included) runs on one background thread, a job's result only joins its queue, and a failure is counted, never
raised. The launch says what was not logged in one warning line. The library's own log lines from that thread
are dropped (MLflow's retries, a local store's table creation), since they would interleave with the launch's.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import logging
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from zoo_sweep.config.spec import SweepSpec, TrackingSpec, check_tracking_uri
from zoo_sweep.errors import UserError
from zoo_sweep.paths import Paths
from zoo_sweep.pipeline.joblog import job_log_path
from zoo_sweep.pipeline.results import plain
from zoo_sweep.urls import scrub

INSTALL = "pip install 'zoo-sweep[mlflow]'"
INSTALL_WANDB = "pip install 'zoo-sweep[wandb]'"
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


@dataclass(frozen=True)
class Destination:
    """Where runs go: MLflow at ``uri``, or a W&B ``project`` (``entity``, ``mode``) whose offline run folders
    are kept under ``folder``."""
    backend: str
    uri: str | None = None
    project: str = "zoo-sweep"
    entity: str | None = None
    mode: str = "offline"
    folder: str = "."

    @property
    def name(self) -> str:
        return "MLflow" if self.backend == "mlflow" else "W&B"

    @property
    def where(self) -> str:
        """For messages: the URI with its password masked, or the W&B project."""
        if self.backend == "mlflow":
            return scrub(str(self.uri), str(self.uri))
        path = f"{self.entity}/{self.project}" if self.entity else self.project
        return f"{path} ({self.mode}{', ' + str(Path(self.folder) / 'wandb') if self.mode == 'offline' else ''})"


def tracking_uri(spec: SweepSpec, home: str | Path) -> str | None:
    """Where a launch of ``spec`` logs its runs to MLflow (None: not to MLflow): [tracking] uri, else
    $MLFLOW_TRACKING_URI (as MLflow itself reads it), else a SQLite file in the results folder, beside the
    default store."""
    d = destination(spec.tracking, home)
    return d.uri if d is not None else None


def destination(t: TrackingSpec, home: str | Path) -> Destination | None:
    if t.backend == "none":
        return None
    if t.backend == "wandb":
        return Destination("wandb", project=t.project, entity=t.entity, mode=t.mode, folder=str(Path(home).resolve()))
    if t.uri:
        return Destination("mlflow", t.uri)
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return Destination("mlflow", check_tracking_uri(env, "MLFLOW_TRACKING_URI"))
    return Destination("mlflow", f"sqlite:///{Path(home).resolve() / 'mlflow.db'}")


def _need(backend: str) -> None:
    """A UserError where the backend's library is not installed (looked up, not imported: the import takes
    seconds, and happens on the tracker's thread)."""
    import importlib.util

    module, name, install = ("wandb", "W&B", INSTALL_WANDB) if backend == "wandb" else ("mlflow", "MLflow", INSTALL)
    if importlib.util.find_spec(module) is None:
        how = '[tracking] backend = "wandb"' if backend == "wandb" else '[tracking] backend = "mlflow" (or --tracking)'
        raise UserError(f"{how} needs {name}, which is not installed here: {install}")


def check_tracking(spec: SweepSpec, home: str | Path) -> Destination | None:
    """Where a launch logs, checked before anything is written."""
    d = destination(spec.tracking, home)
    if d is not None:
        _need(d.backend)
    return d


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
    # files attached to the run (the job's log, the sweep's report), looked for when the run is sent
    artifacts: tuple[Path, ...] = ()
    failed: bool = False  # the run of a job that diverged or failed: marked failed, never counted as logged
    replaces: bool = False  # the sweep's own run: replaces the one an earlier launch or command logged


def run_record(job, rows: list[dict], seconds: float | None = None) -> RunRecord:
    """``rows``: the job's per-epoch results as the store has them (``results.record_transfer``), or the store's
    transfer_results rows of the job. A metric the store holds as NULL (a rate with nothing to count) is left
    out: MLflow has no missing value."""
    from zoo_sweep import __version__
    from zoo_sweep.config.params import TransferParams
    from zoo_sweep.pipeline.plan import TRANSFER_HP
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


def predict_record(job, accuracy: float, seconds: float | None = None) -> RunRecord:
    """A finished predict job as a run: the model and its accuracy on the eval set (step 0)."""
    from zoo_sweep import __version__

    e, ev = job.payload.model, job.payload.eval
    params = {"model": e.name, "arch": e.arch, "family": e.family, "eval_set": ev, "job_id": job.id,
              "zoo_sweep_version": __version__}
    tags = {"kind": "predict", "model": e.name, "family": e.family, "eval_set": ev}
    return RunRecord(job.id, f"{e.name} / predict", params, tags, [("accuracy", float(accuracy), 0)], seconds)


def failed_record(job, state: str, error: str | None, seconds: float | None = None) -> RunRecord:
    """A transfer job that diverged or failed for good, as a failed run: its settings, why, and its log."""
    rec = run_record(job, [], seconds)
    rec.tags.update(state=state)
    if error:
        rec.tags["error"] = _last_line(error)[:500]
    rec.name += f" ({state})"
    rec.failed = True
    return rec


def _last_line(text: str) -> str:
    lines = str(text).strip().splitlines()
    return lines[-1] if lines else ""


SWEEP_RUN = "sweep"  # the job id the sweep's own run carries (no job's id is this short)


def sweep_record(store, name: str, report: Path | None = None) -> RunRecord:
    """The sweep's own run: what it is (the stored spec's main settings), the compare stage's summary over its
    models' pairs, each method's mean final Δ (and over the labels control where the sweep has it), and its
    report page (``report``) as an artifact."""
    import json

    from zoo_sweep import __version__
    from zoo_sweep.science.controls import LABELS, delta_over_controls, over_column, split_controls
    from zoo_sweep.storage.store import job_summary

    stored = store.query("select spec from sweeps where name = :n", {"n": name})["spec"]
    spec = json.loads(stored.iloc[0]) if len(stored) else {}  # tune's trials are a sweep without a spec
    data, t = spec.get("data") or {}, spec.get("transfer") or {}
    ev = data.get("eval", "")
    params = {"sweep": name, "eval_set": ev, "transfer_set": str(data.get("transfer", "")),
              **{k: ",".join(map(str, t.get(k) or ())) for k in ("methods", "controls", "seeds")},
              "epochs": str(t.get("epochs", "")), "job_id": SWEEP_RUN, "zoo_sweep_version": __version__}
    states = job_summary(store, name)  # the counts `zoo-sweep status` prints
    metrics = [(f"jobs_{r.stage}_{r.state}", float(r.jobs), 0) for r in states.itertuples(index=False)]
    models = store.query("select distinct m.name, m.accuracy from models m join jobs j on j.kind = 'predict' "
                         "join sweep_jobs sj on sj.job_id = j.id and sj.sweep = :s "
                         "where m.eval_set = :e and m.accuracy is not null", {"s": name, "e": ev})
    pairs = store.query("select rho_pos, rho_neg, acc_gap, student, teacher from pairs where eval_set = :e", {"e": ev})
    pairs = pairs[pairs["student"].isin(models["name"]) & pairs["teacher"].isin(models["name"])]
    summary = {"models": len(models), "pairs": len(pairs)}
    if len(models):
        summary.update(model_acc_mean=models["accuracy"].mean(), model_acc_max=models["accuracy"].max())
    if len(pairs):
        rho = pairs["rho_pos"].astype(float)
        summary.update(rho_pos_mean=rho.mean(), rho_pos_median=rho.median(), rho_pos_min=rho.min(),
                       rho_pos_max=rho.max())
    rows = store.query("select r.student, r.teacher, r.method, r.seed, r.delta from transfer_results r "
                       "join sweep_jobs sj on sj.job_id = r.job_id where sj.sweep = :s and r.final", {"s": name})
    if len(rows):
        methods, ctl = split_controls(rows, t.get("controls") or ())
        for m, g in methods.groupby("method"):
            summary[f"delta_mean/{m}"] = g["delta"].astype(float).mean()
        for m, g in ctl.groupby("method"):
            summary[f"delta_mean/{m}"] = g["delta"].astype(float).mean()
        if LABELS in set(ctl["method"]):
            over = delta_over_controls(rows, [LABELS])
            for m, g in over.groupby("method"):
                summary[f"delta_over_labels_mean/{m}"] = g[over_column(LABELS)].astype(float).mean()
    metrics += [(k, float(v), 0) for k, v in summary.items() if plain(v) is not None]
    tags = {"kind": "sweep", "sweep": name, "eval_set": ev}
    return RunRecord(SWEEP_RUN, f"{name} / sweep", params, tags, metrics,
                     artifacts=(report,) if report is not None else (), replaces=True)


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


def artifact_location(uri: str | None, experiment: str) -> str | None:
    """Where a new experiment keeps its runs' files (job logs, the report) when MLflow's store is a local
    database: beside it, in ``mlartifacts/``. MLflow's default is ``mlruns/`` in the current folder, wherever
    the command happened to run. None: the server (or a ``file:`` store) decides."""
    if not uri or not uri.startswith("sqlite:///"):
        return None
    db = Path(uri[len("sqlite:///"):].split("?", 1)[0])
    return (db.absolute().parent / "mlartifacts" / experiment).as_uri()


class _Mlflow:
    """One sweep's MLflow experiment. ``client_factory(uri)`` gives an ``MlflowClient`` (or anything with its
    methods: tests pass one that fails)."""
    module = "mlflow"  # imported on the tracker's thread: MLflow sets its log handlers up when imported
    loggers = ("mlflow", "alembic")

    def __init__(self, dest: Destination, experiment: str, client_factory: Callable | None = None):
        self.dest, self.experiment = dest, experiment
        self._factory = client_factory

    def connect(self) -> None:
        if self._factory is None:
            for k, v in MLFLOW_DEFAULTS.items():
                os.environ.setdefault(k, v)
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.dest.uri)
        else:
            self._client = self._factory(self.dest.uri)
        self._experiment_id = self._find_experiment()

    def _find_experiment(self) -> str:
        c = self._client
        exp = c.get_experiment_by_name(self.experiment)
        if exp is None:
            try:
                return c.create_experiment(self.experiment, artifact_location=artifact_location(self.dest.uri,
                                                                                                self.experiment))
            except Exception:  # another launcher of the sweep created it meanwhile
                exp = c.get_experiment_by_name(self.experiment)
                if exp is None:
                    raise
        if exp.lifecycle_stage == "deleted":  # the name stays taken by a deleted experiment: bring it back
            c.restore_experiment(exp.experiment_id)
        return exp.experiment_id

    def logged(self) -> set[str]:
        """The jobs with a finished run in the experiment (a run that failed half-way is logged again)."""
        ids, token = set(), None
        while True:
            page = self._client.search_runs([self._experiment_id], "attributes.status = 'FINISHED'",
                                            max_results=1000, page_token=token)
            ids.update(r.data.params["job_id"] for r in page if "job_id" in r.data.params)
            token = page.token
            if not token:
                return ids

    def send(self, rec: RunRecord) -> None:
        c = self._client
        end = int(time.time() * 1000)
        start = end - int((rec.seconds or 0) * 1000)
        earlier = self._runs_of(rec.job_id) if rec.replaces else []
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
            for a in _existing(rec.artifacts):
                c.log_artifact(run_id, str(a))
            status = RunStatus.FAILED if rec.failed else RunStatus.FINISHED
            c.set_terminated(run_id, RunStatus.to_string(status), end_time=end)
        except Exception:
            # a half-written run is not counted as logged (``logged``): gone, the job's next run is its only one
            with contextlib.suppress(Exception):
                c.delete_run(run_id)
            raise
        for r in earlier:  # the new one is complete: the sweep keeps one run of its own
            with contextlib.suppress(Exception):
                c.delete_run(r)

    def _runs_of(self, job_id: str) -> list[str]:
        page = self._client.search_runs([self._experiment_id], f"params.job_id = '{job_id}'", max_results=100)
        return [r.info.run_id for r in page]


class _Wandb:
    """One sweep as a group of runs in a W&B project. Each run's id is the job's id and a digest of the sweep
    (a job shared by two sweeps is a run in each group); offline, a job counts as logged when its run folder is
    under the results folder's wandb/, online when the project holds its finished run."""
    module = "wandb"
    loggers = ("wandb",)

    def __init__(self, dest: Destination, experiment: str, client_factory: Callable | None = None):
        self.dest, self.group = dest, experiment
        self._factory = client_factory
        self._suffix = "-" + hashlib.sha256(experiment.encode()).hexdigest()[:8]

    def run_id(self, job_id: str) -> str:
        return job_id + self._suffix

    def connect(self) -> None:
        self._wandb = self._factory() if self._factory is not None else importlib.import_module("wandb")
        Path(self.dest.folder).mkdir(parents=True, exist_ok=True)
        if self.dest.mode == "online":
            self._api = self._wandb.Api(timeout=15)
            self._path = f"{self.dest.entity or self._api.default_entity}/{self.dest.project}"

    def logged(self) -> set[str]:
        if self.dest.mode == "online":
            runs = self._api.runs(self._path, filters={"group": self.group, "state": "finished"})
            ids = [r.id for r in runs]
        else:
            ids = [p.name[len("offline-run-") + 16:] for p in self._runs_folder().glob("offline-run-*")]
        return {i[:-len(self._suffix)] for i in ids if i.endswith(self._suffix)}

    def _runs_folder(self) -> Path:
        return Path(self.dest.folder) / "wandb"

    def _id(self, rec: RunRecord) -> str:
        """A job's finished run has its job's id (found again by ``logged``); a failure's run and the sweep's
        own run, logged again by later launches, get a new id each time (a W&B id is never reused)."""
        if not (rec.failed or rec.replaces):
            return self.run_id(rec.job_id)
        return f"{self.run_id(rec.job_id)}-{rec.tags.get('state', 'sweep')}{time.time_ns() // 1000}"

    def send(self, rec: RunRecord) -> None:
        w = self._wandb
        settings = w.Settings(silent=True, console="off", save_code=False, x_disable_stats=True,
                              x_disable_meta=True, x_disable_machine_info=True)
        run_id = self._id(rec)
        run = w.init(project=self.dest.project, entity=self.dest.entity, group=self.group, name=rec.name,
                     id=run_id, job_type=rec.tags["kind"],
                     tags=[rec.tags[k] for k in ("kind", "method") if k in rec.tags],
                     config={**rec.params, **rec.tags}, dir=self.dest.folder, mode=self.dest.mode,
                     reinit="create_new", settings=settings)
        try:
            by_epoch: dict[int, dict[str, float]] = {}
            for k, v, step in rec.metrics:
                by_epoch.setdefault(step, {})[k] = v
            for step in sorted(by_epoch):
                run.log({**by_epoch[step], "epoch": step}, step=step)
            for a in _existing(rec.artifacts):
                run.save(str(a), base_path=str(a.parent), policy="now")
            run.finish(exit_code=1 if rec.failed else 0)
        except Exception:
            with contextlib.suppress(Exception):
                run.finish(exit_code=1)
            if self.dest.mode == "offline":  # a half-written run folder would count as logged, and be synced
                for d in self._runs_folder().glob(f"offline-run-*-{run_id}"):
                    shutil.rmtree(d, ignore_errors=True)
            raise
        if rec.replaces and self.dest.mode == "offline":  # the sweep keeps one run folder of its own
            for d in self._runs_folder().glob(f"offline-run-*-{self.run_id(rec.job_id)}-sweep*"):
                if not d.name.endswith(run_id):
                    shutil.rmtree(d, ignore_errors=True)


def _existing(paths) -> list[Path]:
    """The artifacts there are when a run is sent (a job's log may not have been written: a full disk)."""
    return [Path(a) for a in paths if Path(a).is_file()]


# what runs are logged to, by [tracking] backend
BACKENDS = {"mlflow": _Mlflow, "wandb": _Wandb}


@dataclass
class _Counts:
    queued: int = 0
    logged: int = 0
    not_logged: list[str] = field(default_factory=list)  # run names
    first_error: str | None = None


class Tracker:
    """One sweep's runs in a tracker (``dest``; a string is an MLflow tracking URI), written from a background
    thread. ``client_factory`` stands in for the backend's client (tests). ``home``: the results folder, whose
    job logs are attached to the jobs' runs."""

    def __init__(self, dest: Destination | str, experiment: str, client_factory: Callable | None = None,
                 home: str | Path | None = None):
        self.dest = Destination("mlflow", dest) if isinstance(dest, str) else dest
        self.experiment = experiment
        self._paths = Paths(Path(home)) if home is not None else None
        self.sent_sweep = False  # the sweep's own run was sent (it is not a job's: outcomes count jobs)
        self._backend = BACKENDS[self.dest.backend](self.dest, experiment, client_factory)
        self._import = client_factory is None
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
        return self.dest.where

    @property
    def name(self) -> str:
        return self.dest.name

    def start(self) -> Tracker:
        self._thread.start()
        return self

    def ready(self, timeout: float | None = START_WAIT_S) -> bool:
        """Whether the experiment is reachable, waiting up to ``timeout`` seconds to learn it; False also when
        that is still not known (``error`` is None then)."""
        return self._connected.wait(timeout) and self.error is None

    def missing(self, job_ids) -> list[str]:
        """Those of ``job_ids`` without a run in the experiment (call after ``ready``)."""
        with self._lock:
            return [i for i in job_ids if i not in self.logged]

    def log(self, job, rows: list[dict], seconds: float | None = None) -> None:
        """Queue a finished transfer job's run (``rows``: its epochs); returns at once and never raises."""
        self._enqueue(job.id, lambda: self._with_log(run_record(job, rows, seconds)))

    def log_failed(self, job, state: str, error: str | None, seconds: float | None = None) -> None:
        """Queue the failed run of a transfer job that diverged or failed for good (each failure is a run: a
        later launch that finishes the job logs its finished run beside them)."""
        self._enqueue(f"{job.id}:{state}", lambda: self._with_log(failed_record(job, state, error, seconds)),
                      once=False)

    def log_prediction(self, job, accuracy: float, seconds: float | None = None) -> None:
        """Queue a finished predict job's run; returns at once and never raises."""
        self._enqueue(job.id, lambda: self._with_log(predict_record(job, accuracy, seconds)))

    def log_sweep(self, store) -> None:
        """Queue the sweep's own run (``sweep_record``), replacing the one logged before, with the sweep's report
        page where ``zoo-sweep report`` has written one in the results folder."""
        page = self._paths.report(self.experiment) / "report.html" if self._paths is not None else None
        self._enqueue(SWEEP_RUN, lambda: sweep_record(store, self.experiment, page), once=False)

    def _with_log(self, rec: RunRecord) -> RunRecord:
        if self._paths is not None:
            rec.artifacts += (job_log_path(self._paths, rec.job_id),)
        return rec

    def _enqueue(self, key: str, record: Callable[[], RunRecord], once: bool = True) -> None:
        """``once``: not when the experiment already has the run (a job's finished run); a key is queued once
        per launch either way."""
        with self._lock:
            if self._closed or (once and key in self.logged) or key in self._queued:
                return
            self._queued.add(key)
            self.counts.queued += 1
        try:
            rec = record()
        except Exception as e:  # noqa: BLE001  (a job we cannot describe to the tracker is still in the store)
            self._failed(f"job {key}", self._line(e))
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
        if self.counts.queued:  # else nothing to wait for (the thread may still be importing the library)
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
            why = c.first_error or self.error or f"{self.name} did not answer in time"
        if not missed:
            return None
        return (f"{self.name} at {self.where}: {missed} of {c.queued} run(s) not logged"
                + (f", the first '{first}'" if first and missed > 1 else f": '{first}'" if first else "")
                + f" ({why}); the store has every result, and `zoo-sweep track {self.experiment}` logs them")

    def _line(self, e: BaseException) -> str:
        return _line(e, str(self.dest.uri or ""))

    # ------------------------------------------------------------------ the background thread
    def _main(self) -> None:
        quiet = _FromThread(threading.get_ident())
        handlers = []
        b = self._backend
        try:
            if self._import:
                importlib.import_module(b.module)
            for h in [h for name in (*b.loggers, "") for h in logging.getLogger(name).handlers] + \
                    [logging.lastResort]:
                if h is not None:
                    h.addFilter(quiet)
                    handlers.append(h)
            b.connect()
            with self._lock:
                self.logged |= b.logged()
        except Exception as e:  # noqa: BLE001
            self.error = self._line(e)
        finally:
            self._connected.set()
        failures = 0
        try:
            while (rec := self._queue.get()) is not None:
                if self.error is not None or failures >= GIVE_UP_AFTER:
                    self._failed(rec.name, self.error)
                    continue
                try:
                    b.send(rec)
                    failures = 0
                except Exception as e:  # noqa: BLE001
                    failures += 1
                    self._failed(rec.name, self._line(e))
                    continue
                with self._lock:
                    if not (rec.failed or rec.replaces):
                        self.logged.add(rec.job_id)
                    self.sent_sweep |= rec.replaces
                    self.counts.logged += 1
        finally:
            for h in handlers:
                h.removeFilter(quiet)

    def _failed(self, name: str, error: str | None) -> None:
        """A run not logged (``name``), and why."""
        with self._lock:
            self.counts.not_logged.append(name)
            if self.counts.first_error is None:
                self.counts.first_error = error


def log_missing(tracker: Tracker, store, sweep: str, done: dict) -> int:
    """Queue the runs of ``done`` (job id -> finished transfer job of ``sweep``) that the experiment lacks, each
    with its epochs as the store holds them; call after ``tracker.ready``. Returns how many were queued."""
    missing = set(tracker.missing(done))
    if not missing:
        return 0
    rows = store.query("select r.*, j.seconds as job_seconds from transfer_results r "
                       "join sweep_jobs sj on sj.job_id = r.job_id join jobs j on j.id = r.job_id "
                       "where sj.sweep = :s order by r.job_id, r.epoch", {"s": sweep})
    n = 0
    for job_id, g in rows[rows["job_id"].isin(missing)].groupby("job_id", sort=False):
        tracker.log(done[job_id], g.to_dict("records"), plain(g["job_seconds"].iloc[0]))
        n += 1
    return n


def log_missing_predictions(tracker: Tracker, store, done: dict) -> int:
    """Queue the runs of ``done`` (job id -> finished predict job) that the experiment lacks, each with its
    model's accuracy as the store holds it. Returns how many were queued."""
    missing = tracker.missing(done)
    if not missing:
        return 0
    acc = store.query("select name, eval_set, accuracy from models").set_index(["name", "eval_set"])["accuracy"]
    seconds = store.query("select id, seconds from jobs where kind = 'predict'").set_index("id")["seconds"]
    n = 0
    for job_id in missing:
        p = done[job_id].payload
        a = plain(acc.get((p.model.name, p.eval)))
        if a is not None:  # a done job's model has its accuracy; NULL only if the store was edited
            tracker.log_prediction(done[job_id], a, plain(seconds.get(job_id)))
            n += 1
    return n


def track_destination(home: str | Path, uri: str | None = None, spec: SweepSpec | None = None) -> Destination:
    """Where ``zoo-sweep track`` logs: MLflow at ``uri`` (--tracking), else the spec's [tracking] as a launch of it
    would log, else MLflow at $MLFLOW_TRACKING_URI, else the results folder's SQLite file (where a launch logs by
    default)."""
    if uri is not None:
        d: Destination | None = Destination("mlflow", check_tracking_uri(uri, "--tracking"))
    else:
        on = spec.tracking if spec is not None and spec.tracking.backend != "none" else TrackingSpec("mlflow")
        d = destination(on, home)
    assert d is not None
    _need(d.backend)
    return d


@dataclass
class TrackOutcome:
    where: str  # the tracker, its password masked
    finished: int  # the sweep's finished transfer and predict jobs
    already: int  # of those, with a run in the experiment before
    logged: int  # logged now
    warning: str | None  # the runs tried and not logged, and why


# How long ``track`` waits to reach the tracker: the library's import, and a local store's table creation
TRACK_CONNECT_S = 120.0


def track_sweep(store, sweep: str, dest: Destination | str, home: str | Path,
                on_progress: Callable[[int, int], None] | None = None,
                client_factory: Callable | None = None) -> TrackOutcome:
    """Log the finished transfer and predict jobs of a stored ``sweep`` that its experiment lacks, from the store
    (``zoo-sweep track``): a sweep launched without tracking, or whose tracker was down; then the sweep's own run
    afresh, with its report page where one was written. Waits until every run is sent. A tracker that cannot be
    reached is a UserError: nothing was logged."""
    from zoo_sweep.pipeline.jobs import Job

    def done(kind: str) -> dict:
        return {r["id"]: Job.from_row(r, str(home)) for r in store.sweep_jobs(sweep, kind) if r["state"] == "done"}

    transfers, predictions = done("transfer"), done("predict")
    t = Tracker(dest, sweep, client_factory, home).start()
    if not t.ready(TRACK_CONNECT_S):
        why = t.error or f"no answer in {TRACK_CONNECT_S:.0f} s"
        t.close(0)
        raise UserError(f"{t.name} at {t.where} is not reachable ({why}); nothing was logged: start the tracking "
                        "server, or give the URI it listens on with --tracking")
    queued = log_missing_predictions(t, store, predictions) + log_missing(t, store, sweep, transfers)
    t.log_sweep(store)  # last: the sweep's summary and report, as they are now
    warning = t.close(None, on_progress)
    finished = len(transfers) + len(predictions)
    return TrackOutcome(t.where, finished, finished - queued, t.counts.logged - t.sent_sweep, warning)
