"""Transfer runs in a real MLflow tracking server (`mlflow server` on loopback, SQLite in tmp_path), from micro
launches on the session's Ray cluster: every run read back with MlflowClient holds what the store holds; a
tracker that cannot be reached is one warning and the launch completes; a later launch logs what it left out,
and no launch logs a job twice. tests/unit/test_tracking.py covers the URIs refused and MLflow missing."""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import BIN, micro_spec, run_cli
from real_cluster import free_port
from rich.console import Console

from zoo_sweep import __version__
from zoo_sweep.config.params import TransferParams
from zoo_sweep.config.spec import parse_spec
from zoo_sweep.paths import Paths
from zoo_sweep.pipeline.jobs import Job
from zoo_sweep.pipeline.launch import LaunchOptions, launch_sweep
from zoo_sweep.pipeline.plan import TRANSFER_HP
from zoo_sweep.storage.store import Store
from zoo_sweep.transfer.catalog import CATALOG
from zoo_sweep.transfer.result_metrics import TRANSFER_METRICS

pytest.importorskip("mlflow", reason="MLflow not installed (pip install 'zoo-sweep[mlflow]', or '.[test]')")
SERVER_START_S = 300  # `mlflow server` creates its tables and imports Flask and FastAPI: 30 s on a busy 2-core box
SECRET = "s3cret-pw"
# a transfer job, the labels control of each student, a multi-teacher job: every kind of run, two epochs each
TRACKED = {"pairs": {"policy": "all", "max_pairs": 2},
           "transfer": {"methods": ["kl"], "epochs": 2, "batch_size": 256, "controls": ["labels"],
                        "multi_teacher": ["parallel"], "multi_students": ["cnn_micro"]}}


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real MLflow tracking server on a free loopback port, its runs in a SQLite file of its own."""
    for module in ("flask", "flask_cors"):
        pytest.importorskip(module, reason="`mlflow server` needs flask and flask-cors (pip install '.[test]')")
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    log = open(root / "server.log", "w")
    # MLFLOW_SERVER_ENABLE_JOB_EXECUTION: no background job runner (a consumer process per job kind)
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    server = subprocess.Popen([str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
                               "--default-artifact-root", str(root / "artifacts"), "--host", "127.0.0.1",
                               "--port", str(port), "--workers", "1"],
                              stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + SERVER_START_S
    while not _healthy(url):
        if server.poll() is not None or time.time() > deadline:
            os.killpg(server.pid, signal.SIGKILL)
            pytest.fail(f"mlflow server did not start:\n{(root / 'server.log').read_text()[-3000:]}")
        time.sleep(0.5)
    yield url
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=10)
    log.close()


def _home(micro, root):
    """A results folder of its own holding a copy of the micro zoo (not trained again)."""
    home = root / "home"
    shutil.copytree(micro["paths"].cache / "zoo", home / "cache" / "zoo")
    return home


def _client(url):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=url)


def _runs(url, sweep) -> list:
    c = _client(url)
    exp = c.get_experiment_by_name(sweep)
    return [] if exp is None else list(c.search_runs([exp.experiment_id], max_results=1000))


def assert_runs_hold_the_store(url: str, store: Store, sweep: str, home=None) -> list:
    """One finished run per done transfer job of the sweep, holding what the store holds for it, with its log
    (the results folder ``home``'s, as the launch wrote it) attached; and the sweep's own run."""
    c = _client(url)
    jobs = {r["id"]: Job.from_row(r, "/unused") for r in store.sweep_jobs(sweep, "transfer") if r["state"] == "done"}
    results = store.query("select r.* from transfer_results r join sweep_jobs sj on sj.job_id = r.job_id "
                          "where sj.sweep = :s", {"s": sweep})
    families = store.query("select name, family from models").set_index("name")["family"].to_dict()
    everything = _runs(url, sweep)
    assert_predict_runs_hold_the_store([r for r in everything if r.data.tags["kind"] == "predict"], store, sweep)
    assert_sweep_run([r for r in everything if r.data.tags["kind"] == "sweep"], c, store, sweep)
    runs = [r for r in everything if r.data.tags["kind"] not in ("predict", "sweep")]
    by_job = {}
    for run in runs:
        job_id = run.data.params["job_id"]
        assert job_id not in by_job, f"job {job_id} logged twice"
        by_job[job_id] = run
    assert set(by_job) == set(jobs) and jobs
    for job_id, run in by_job.items():
        p, rows = jobs[job_id].payload, results[results["job_id"] == job_id].sort_values("epoch")
        teacher = rows["teacher"].iloc[0]
        assert run.info.status == "FINISHED"
        assert run.info.run_name == f"{p.student.name} <- {teacher} / {p.method} / {p.seed}"
        # params: the job's resolved hyper-parameters, its id and zoo-sweep's version
        hp = TransferParams.from_dict(p.hp)
        names = TRANSFER_HP + CATALOG[p.multi_method if p.multi else p.method].params
        assert run.data.params == {**{n: str(getattr(hp, n)) for n in names}, "seed": str(p.seed),
                                   "job_id": job_id, "zoo_sweep_version": __version__}
        assert run.data.params["epochs"] == "2" and run.data.params["batch_size"] == "256"
        kind = "multi-teacher" if p.multi else "control" if CATALOG[p.method].control else "method"
        tags = run.data.tags
        assert (tags["student"], tags["teacher"], tags["method"], tags["kind"]) == (p.student.name, teacher,
                                                                                  p.method, kind)
        assert tags["student_family"] == families[p.student.name]
        assert tags["teacher_family"] == "+".join(families[n] for n in p.teacher_names)
        # metrics: every non-NULL value of every epoch, under the store's column names, the epoch as step
        expected = {(k, int(r["epoch"])): float(r[k]) for r in rows.to_dict("records") for k in TRANSFER_METRICS
                    if r[k] is not None and r[k] == r[k]}
        logged = {(k, m.step): m.value for k in run.data.metrics for m in c.get_metric_history(run.info.run_id, k)}
        assert logged == expected
        assert {k for k, _ in expected} >= {"student_acc", "delta", "knowledge_gain", "knowledge_loss", "train_loss"}
        if home is not None:  # the job's log, as the launch wrote it: the worker's lines, one per epoch
            (art,) = c.list_artifacts(run.info.run_id)
            assert art.path == f"{job_id}.log"
            text = Path(c.download_artifacts(run.info.run_id, art.path, str(home / "dl"))).read_text()
            assert text == (home / "logs" / "jobs" / f"{job_id}.log").read_text()
            assert "started on" in text and "epoch 1/2: train loss" in text and "epoch 2/2" in text
            assert "done in" in text
    assert {r.data.tags["kind"] for r in runs} == {"method", "control", "multi-teacher"}
    return runs


def assert_sweep_run(runs: list, c, store: Store, sweep: str) -> None:
    """The sweep's one run: its job counts and the compare stage's summary, as the store has them."""
    (run,) = runs
    assert run.info.status == "FINISHED" and run.info.run_name == f"{sweep} / sweep"
    m = run.data.metrics
    states = store.query("select j.kind, j.state, count(*) as n from jobs j join sweep_jobs sj on sj.job_id = j.id "
                         "where sj.sweep = :s group by j.kind, j.state", {"s": sweep})
    assert {k: v for k, v in m.items() if k.startswith("jobs_")} == {
        f"jobs_{r.kind}_{r.state}": r.n for r in states.itertuples()}
    pairs = store.query("select rho_pos from pairs")["rho_pos"]
    assert m["pairs"] == len(pairs) and m["rho_pos_mean"] == pytest.approx(pairs.mean())
    finals = store.query("select r.method, r.delta from transfer_results r join sweep_jobs sj on sj.job_id = r.job_id "
                         "where sj.sweep = :s and r.final and r.teacher = r.student", {"s": sweep})
    assert m["delta_mean/labels"] == pytest.approx(finals[finals["method"] == "labels"]["delta"].mean())
    assert "delta_mean/kl" in m and "delta_over_labels_mean/kl" in m


def assert_predict_runs_hold_the_store(runs: list, store: Store, sweep: str) -> None:
    """One finished run per done predict job of the sweep, holding its model's accuracy."""
    jobs = {r["id"]: Job.from_row(r, "/unused") for r in store.sweep_jobs(sweep, "predict") if r["state"] == "done"}
    acc = store.query("select name, eval_set, accuracy from models").set_index(["name", "eval_set"])["accuracy"]
    assert sorted(r.data.params["job_id"] for r in runs) == sorted(jobs) and jobs
    for run in runs:
        p = jobs[run.data.params["job_id"]].payload
        assert run.info.status == "FINISHED" and run.info.run_name == f"{p.model.name} / predict"
        assert run.data.metrics == {"accuracy": pytest.approx(acc[(p.model.name, p.eval)])}
        assert run.data.params["arch"] == p.model.arch and run.data.tags["family"] == p.model.family


def test_every_run_of_a_tracked_launch_holds_what_the_store_holds(micro, mlflow_server, tmp_path):
    """[tracking] in the spec; the Python API (launch_sweep), as a notebook runs it."""
    spec = parse_spec({"name": "tracked", "zoo": {"source": "digits", "recipe": "micro"}, **TRACKED,
                       "tracking": {"backend": "mlflow", "uri": mlflow_server}})
    store = Store(f"sqlite:///{tmp_path / 'zoo.db'}")
    out = io.StringIO()
    rep = launch_sweep(spec, store, Paths(_home(micro, tmp_path)),
                       LaunchOptions(address=micro["address"], progress=False), console=Console(file=out, width=200))
    assert rep.ok, rep.failed
    assert "MLflow" not in out.getvalue() and "mlflow" not in out.getvalue(), out.getvalue()
    runs = assert_runs_hold_the_store(mlflow_server, store, "tracked", tmp_path / "home")
    assert rep.ran["transfer"] == len(runs)
    assert len(_runs(mlflow_server, "tracked")) == len(runs) + rep.ran["predict"] + 1  # and the sweep's own run


@pytest.fixture(scope="module")
def launched_while_down(micro, tmp_path_factory):
    """A CLI launch (a real process) told to log to a server that is not there, its password in the URI."""
    root = tmp_path_factory.mktemp("tracking-down")
    spec = root / "outage.toml"
    spec.write_text(micro_spec("outage", **TRACKED))
    db, home = f"sqlite:///{root / 'zoo.db'}", _home(micro, root)
    down = f"http://zoo:{SECRET}@127.0.0.1:{free_port()}"
    r = run_cli("--db", db, "--home", str(home), "launch", str(spec), "--address", micro["address"],
                "--no-progress", "--tracking", down, timeout=900)
    return {"r": r, "spec": spec, "db": db, "home": home, "store": Store(db)}


def test_an_unreachable_tracker_is_one_warning_and_the_launch_completes(launched_while_down):
    r = launched_while_down["r"]
    assert r.returncode == 0, r.stdout + r.stderr
    lines = [ln for ln in (r.stdout + r.stderr).splitlines() if "MLflow" in ln or "mlflow" in ln]
    assert len(lines) == 1 and lines[0].startswith("warning: MLflow at http://zoo:***@127.0.0.1:"), lines
    assert "cannot connect: Connection refused" in lines[0] and "the store has every result" in lines[0]
    assert SECRET not in r.stdout + r.stderr
    store = launched_while_down["store"]
    done = store.job_states("outage", "transfer", states=("done",))
    assert done and len(done) == len(store.job_states("outage", "transfer"))


def test_a_later_launch_logs_what_an_outage_left_out_and_no_job_twice(launched_while_down, mlflow_server, micro):
    w = launched_while_down
    for _ in range(2):  # the first logs every job from the store; the second finds them all there
        r = run_cli("--db", w["db"], "--home", str(w["home"]), "launch", str(w["spec"]), "--address", micro["address"],
                    "--no-progress", "--tracking", mlflow_server, timeout=900)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "ran nothing (all done)" in r.stdout, r.stdout + r.stderr
        noise = [ln for ln in (r.stdout + r.stderr).splitlines() if "mlflow" in ln.lower() or "View run" in ln]
        assert not noise, r.stdout + r.stderr  # neither warnings nor MLflow's own lines (run URLs, retries)
        assert_runs_hold_the_store(mlflow_server, w["store"], "outage")


def test_without_a_uri_runs_go_to_a_sqlite_file_in_the_results_folder(tmp_path, monkeypatch, capfd):
    from zoo_sweep.pipeline.jobs import TransferPayload
    from zoo_sweep.pipeline.tracking import Tracker, tracking_uri
    from zoo_sweep.zoo.entry import ModelEntry

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    spec = parse_spec({"name": "local", "tracking": {"backend": "mlflow"}})
    uri = tracking_uri(spec, tmp_path)
    s, t = ModelEntry("cnn_a", "resnet", "cnn", None), ModelEntry("vit_a", "vit", "transformer", None)
    job = Job.new({"x": 1}, TransferPayload(s, t, "kl", 0, {"epochs": 1}, "digits:eval", "digits:transfer", 32, None))
    tracker = Tracker(uri, "local").start()
    assert tracker.ready(SERVER_START_S), tracker.error
    tracker.log(job, [{"epoch": 1, "student_acc": 93.25, "delta": 0.5}], seconds=2.0)
    assert tracker.close(SERVER_START_S) is None
    assert (tmp_path / "mlflow.db").is_file()
    (run,) = _runs(uri, "local")
    assert run.info.run_name == "cnn_a <- vit_a / kl / 0" and run.data.metrics == {"student_acc": 93.25, "delta": 0.5}
    out = capfd.readouterr()
    assert "mlflow" not in (out.out + out.err).lower(), out  # the local store's table creation says nothing


def test_a_diverged_job_is_a_failed_run_with_its_log_and_a_later_finish_a_run_of_its_own(tmp_path):
    from zoo_sweep.pipeline.joblog import append, job_log_path
    from zoo_sweep.pipeline.jobs import TransferPayload
    from zoo_sweep.pipeline.tracking import Tracker
    from zoo_sweep.zoo.entry import ModelEntry

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    s, t = ModelEntry("cnn_a", "resnet", "cnn", None), ModelEntry("vit_a", "vit", "transformer", None)
    job = Job.new({"x": 2}, TransferPayload(s, t, "kl", 0, {"epochs": 1}, "digits:eval", "digits:transfer", 32, None))
    paths = Paths(tmp_path)
    append(paths, job.id, ["2026-12-07 10:00:00  started on host:1:cpu", "2026-12-07 10:00:09  diverged in 9.0 s"])
    first = Tracker(uri, "diverging", home=tmp_path).start()
    assert first.ready(SERVER_START_S), first.error
    first.log_failed(job, "diverged", "Traceback ...\nDiverged: loss became nan in epoch 1", seconds=9.0)
    assert first.close(SERVER_START_S) is None and first.logged == set()  # a failure never counts as logged
    (run,) = _runs(uri, "diverging")
    assert run.info.status == "FAILED" and run.info.run_name == "cnn_a <- vit_a / kl / 0 (diverged)"
    assert run.data.tags["state"] == "diverged" and run.data.tags["error"] == "Diverged: loss became nan in epoch 1"
    # its files beside the tracking database, not in whatever folder the command ran in (MLflow's default)
    assert run.info.artifact_uri.startswith((tmp_path / "mlartifacts" / "diverging").as_uri() + "/")
    c = _client(uri)
    (art,) = c.list_artifacts(run.info.run_id)
    got = Path(c.download_artifacts(run.info.run_id, art.path, str(tmp_path / "dl")))
    assert got.read_text() == job_log_path(paths, job.id).read_text()
    # run again (a later launch, other settings of the store): the finished run beside the failed one
    second = Tracker(uri, "diverging", home=tmp_path).start()
    assert second.ready(SERVER_START_S) and second.missing([job.id]) == [job.id]
    second.log(job, [{"epoch": 1, "student_acc": 93.0, "delta": 0.25}], seconds=3.0)
    assert second.close(SERVER_START_S) is None
    assert sorted(r.info.status for r in _runs(uri, "diverging")) == ["FAILED", "FINISHED"]


def test_track_logs_a_stored_sweep_afterwards_once_and_refuses_a_tracker_it_cannot_reach(launched_while_down,
                                                                                         tmp_path):
    """`zoo-sweep track SWEEP` (a real process) from the outage's store into an experiment of its own (a SQLite
    tracking store): every finished job once, nothing the second time; a tracker that is not there is one line."""
    w = launched_while_down
    base = ("--db", w["db"], "--home", str(w["home"]), "track", "outage")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    done = sum(len(w["store"].job_states("outage", kind, states=("done",))) for kind in ("predict", "transfer"))
    for already in (0, done):
        r = run_cli(*base, "--tracking", uri, "--no-progress", timeout=600)
        assert r.returncode == 0, r.stdout + r.stderr
        assert r.stdout.strip() == (f"outage: {done} finished job(s); {already} already in MLflow at {uri}, "
                                    f"{done - already} logged now"), r.stdout + r.stderr
        runs = assert_runs_hold_the_store(uri, w["store"], "outage", w["home"])
    seconds = w["store"].query("select id, seconds from jobs").set_index("id")["seconds"]
    for run in runs:  # each run lasts as long as its job did
        assert abs(run.info.end_time - run.info.start_time - seconds[run.data.params["job_id"]] * 1000) <= 1
    down = f"http://zoo:{SECRET}@127.0.0.1:{free_port()}"
    r = run_cli(*base, "--tracking", down, timeout=600)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1, r.stdout + r.stderr
    assert lines[0].startswith("error: MLflow at http://zoo:***@127.0.0.1:") and "nothing was logged" in lines[0]
    assert SECRET not in r.stdout + r.stderr


def test_wandb_offline_run_folders_hold_what_the_store_holds(launched_while_down, tmp_path):
    """[tracking] backend = "wandb" (offline: no network) through `zoo-sweep track SPEC`, a real process: one run
    folder per finished job under the results folder's wandb/, read back from W&B's own transaction log."""
    pytest.importorskip("wandb", reason="W&B not installed (pip install 'zoo-sweep[wandb]', or '.[test]')")
    from wandb_reader import read_run

    w = launched_while_down
    spec = tmp_path / "outage.toml"
    spec.write_text(w["spec"].read_text() + '\n[tracking]\nbackend = "wandb"\nproject = "zoo-tests"\n')
    home = tmp_path / "home"
    base = ("--db", w["db"], "--home", str(home), "track", str(spec), "--no-progress")
    store = w["store"]
    jobs = {r["id"]: Job.from_row(r, "/unused") for r in store.sweep_jobs("outage", "transfer") if r["state"] == "done"}
    predictions = store.job_states("outage", "predict", states=("done",))
    where, done = f"zoo-tests (offline, {home.resolve() / 'wandb'})", len(jobs) + len(predictions)
    for already in (0, done):
        r = run_cli(*base, timeout=600)
        assert r.returncode == 0 and "wandb" not in r.stderr.lower(), r.stdout + r.stderr
        assert r.stdout.strip() == (f"outage: {done} finished job(s); {already} already in W&B at "
                                    f"{where}, {done - already} logged now"), r.stdout + r.stderr
    results = store.query("select r.* from transfer_results r join sweep_jobs sj on sj.job_id = r.job_id "
                          "where sj.sweep = :s", {"s": "outage"})
    everything = [read_run(f) for f in sorted((home / "wandb").glob("offline-run-*"))]
    (sweep_run,) = [run for run in everything if run.job_type == "sweep"]  # the second track replaced the first
    assert sweep_run.name == "outage / sweep" and sweep_run.history[0]["models"] == len(predictions)
    runs = [run for run in everything if run.job_type not in ("predict", "sweep")]
    predicted = [run for run in everything if run.job_type == "predict"]
    assert sorted(run.config["job_id"] for run in runs) == sorted(jobs)  # each job once
    assert sorted(run.config["job_id"] for run in predicted) == sorted(predictions)
    assert all(set(run.history) == {0} and "accuracy" in run.history[0] for run in predicted)
    for run in runs:
        job_id = run.config["job_id"]
        p, rows = jobs[job_id].payload, results[results["job_id"] == job_id].sort_values("epoch")
        teacher = rows["teacher"].iloc[0]
        kind = "multi-teacher" if p.multi else "control" if CATALOG[p.method].control else "method"
        assert (run.name, run.group, run.project, run.job_type, run.exit_code) == (
            f"{p.student.name} <- {teacher} / {p.method} / {p.seed}", "outage", "zoo-tests", kind, 0)
        assert run.run_id.startswith(job_id) and run.tags == [kind, p.method]
        assert run.config["seed"] == str(p.seed) and run.config["zoo_sweep_version"] == __version__
        assert run.config["student"] == p.student.name and run.config["kind"] == kind
        expected = {int(r["epoch"]): {**{k: float(r[k]) for k in TRANSFER_METRICS if r[k] is not None and r[k] == r[k]},
                                      "epoch": int(r["epoch"])} for r in rows.to_dict("records")}
        assert sorted(run.history) == sorted(expected), job_id
        for step, values in expected.items():
            assert run.history[step] == pytest.approx(values), (job_id, step)
    assert {run.job_type for run in runs} == {"method", "control", "multi-teacher"}
    # W&B's own sync finds every run to upload
    sync = subprocess.run([str(BIN / "wandb"), "sync", "--dry-run"], cwd=home, capture_output=True, text=True,
                          timeout=120)
    assert f"Would sync {done + 1} run(s)" in sync.stdout + sync.stderr, sync.stdout + sync.stderr
