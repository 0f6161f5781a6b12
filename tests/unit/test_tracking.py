"""[tracking] and `launch --tracking` without an MLflow server: the URIs refused (one line, exit 2, nothing written,
never a password), MLflow missing, job ids and the stored spec untouched by tracking, what a run holds, and a
tracker that fails (never an exception, one warning line). tests/integration/test_tracking_launch.py logs to a real
MLflow server."""

import json
import sys

import pytest
import torch  # noqa: F401  (imported at collection: its first import runs ldconfig, which the unit tier refuses)
from cli_helpers import dump, invoke, one_error_line, plan_store
from conftest import micro_spec

from zoo_sweep.config.spec import parse_spec
from zoo_sweep.errors import UserError
from zoo_sweep.paths import Paths
from zoo_sweep.pipeline.jobs import Job, TransferPayload
from zoo_sweep.pipeline.plan import TRANSFER_HP, is_control, load_sweep, make_plan
from zoo_sweep.pipeline.tracking import INSTALL, Tracker, check_tracking, run_record, tracking_uri
from zoo_sweep.transfer.result_metrics import TRANSFER_METRICS
from zoo_sweep.zoo.entry import ModelEntry

MICRO = micro_spec(transfer={"methods": ["kl"]})
SECRET = "s3cret-pw"

BAD_URIS = {
    "localhost:5000": "it has no scheme MLflow logs to",
    "/tmp/mlruns": "it has no scheme MLflow logs to",
    "htp://127.0.0.1:5000": "it has no scheme MLflow logs to",
    "http://": "it names no host",
    "http://127.0.0.1:port": "its port is not a number from 1 to 65535",
    "http://127.0.0.1:70000": "its port is not a number from 1 to 65535",
    "http://127.0.0.1 :5000": "it holds a space",
    "sqlite://": "it names no database file",
    "sqlite:///:memory:": "it names no database file",
    "file:": "it names no folder",
    "file://otherhost/mlruns": "a file: URI names a folder on this machine",
    "": "it is empty",
}
GOOD_URIS = ["http://127.0.0.1:5000", "https://mlflow.example.com/prefix", "file:/tmp/mlruns", "file:///tmp/mlruns",
             "sqlite:///mlflow.db", "sqlite:////tmp/mlflow.db", "postgresql+psycopg://zoo@db.example.com/mlflow"]


def spec_with(tracking: dict):
    return parse_spec({"name": "t", "zoo": {"source": "digits", "recipe": "micro"}, "tracking": tracking})


def tracked(text: str, uri: str) -> str:
    return text + f'[tracking]\nbackend = "mlflow"\nuri = {json.dumps(uri)}\n'


@pytest.mark.parametrize("uri", list(BAD_URIS))
def test_a_malformed_uri_in_the_spec_names_key_and_problem(uri):
    with pytest.raises(UserError) as e:
        spec_with({"backend": "mlflow", "uri": uri})
    assert str(e.value).startswith(f"[tracking] uri {uri!r} is not an MLflow tracking URI: {BAD_URIS[uri]}")


@pytest.mark.parametrize("uri", GOOD_URIS)
def test_the_uris_mlflow_logs_to_are_taken(uri):
    assert spec_with({"backend": "mlflow", "uri": uri}).tracking.uri == uri


def test_backend_is_none_mlflow_or_wandb():
    assert spec_with({}).tracking.backend == "none"
    assert spec_with({"backend": "wandb"}).tracking.mode == "offline"  # W&B never reaches the network unasked
    with pytest.raises(UserError, match=r"\[tracking\] backend must be one of 'none', 'mlflow', 'wandb', got 'tb'"):
        spec_with({"backend": "tb"})
    with pytest.raises(UserError, match=r"unknown key\(s\) url in \[tracking\]"):
        spec_with({"url": "http://h:1"})


def test_a_password_in_a_refused_uri_is_never_shown():
    for where in ("spec", "flag"):
        with pytest.raises(UserError) as e:
            uri = f"http://zoo:{SECRET}@127.0.0.1:port"
            spec_with({"backend": "mlflow", "uri": uri}) if where == "spec" else spec_with({}).with_tracking(uri)
        assert SECRET not in str(e.value) and "zoo:***@127.0.0.1" in str(e.value)


def test_tracking_changes_no_job_id_and_nothing_stored(tmp_path):
    """Job ids, the spec's hash and the spec the store keeps are those of the spec without [tracking]."""
    paths = Paths(tmp_path / "home")
    plain, on = tmp_path / "plain.toml", tmp_path / "on.toml"
    plain.write_text(MICRO)
    on.write_text(tracked(MICRO, f"http://zoo:{SECRET}@127.0.0.1:5000"))
    a, b = load_sweep(plain), load_sweep(on)
    assert b.tracking.backend == "mlflow"
    assert a.digest == b.digest and a.to_dict() == b.to_dict() and SECRET not in json.dumps(b.to_dict())
    assert a.with_tracking("http://127.0.0.1:5000").digest == a.digest
    ids = [[j.id for j in make_plan(s, paths).all_jobs] for s in (a, b)]
    assert ids[0] == ids[1]


def test_the_uri_a_launch_logs_to(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri(spec_with({}), tmp_path) is None
    assert tracking_uri(spec_with({"uri": "http://h:1"}), tmp_path) is None  # backend "none": off, whatever uri says
    assert tracking_uri(spec_with({"backend": "mlflow"}), tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env-host:5000")
    assert tracking_uri(spec_with({"backend": "mlflow"}), tmp_path) == "http://env-host:5000"
    assert tracking_uri(spec_with({"backend": "mlflow", "uri": "file:/x"}), tmp_path) == "file:/x"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "localhost:5000")
    with pytest.raises(UserError, match="MLFLOW_TRACKING_URI 'localhost:5000' is not an MLflow tracking URI"):
        tracking_uri(spec_with({"backend": "mlflow"}), tmp_path)


def test_mlflow_missing_is_one_line_naming_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if not installed: importing it fails
    with pytest.raises(UserError) as e:
        check_tracking(spec_with({"backend": "mlflow", "uri": "http://127.0.0.1:5000"}), tmp_path)
    assert INSTALL in str(e.value) and INSTALL == "pip install 'zoo-sweep[mlflow]'"
    assert check_tracking(spec_with({}), tmp_path) is None  # off: mlflow is never needed


# ---------------------------------------------------------------------- the command line


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    return plan_store(tmp_path_factory.mktemp("tracking-cli"), MICRO)


@pytest.mark.parametrize("uri", ["localhost:5000", "http://127.0.0.1:port", "sqlite://"])
def test_launch_tracking_flag_with_a_malformed_uri(planned, uri):
    before = dump(planned["db"])
    line = one_error_line(invoke(*planned["base"], "launch", planned["spec"], "--tracking", uri, "--no-progress"))
    assert line == (f"error: --tracking {uri!r} is not an MLflow tracking URI: {BAD_URIS[uri]}; give "
                    "http://HOST:PORT, https://HOST, file:/PATH or sqlite:///PATH")
    assert dump(planned["db"]) == before


@pytest.mark.parametrize("command", ["plan", "launch"])
def test_a_malformed_uri_in_the_spec_is_one_line_and_writes_nothing(planned, command):
    bad = planned["root"] / "bad-tracking.toml"
    bad.write_text(tracked(MICRO, f"http://zoo:{SECRET}@127.0.0.1:port"))
    before = dump(planned["db"])
    r = invoke(*planned["base"], command, str(bad))
    assert "[tracking] uri 'http://zoo:***@127.0.0.1:port' is not an MLflow tracking URI" in one_error_line(r)
    assert SECRET not in r.stdout + r.stderr
    assert dump(planned["db"]) == before


@pytest.mark.parametrize("how", ["flag", "spec"])
def test_launch_without_mlflow_installed_names_the_extra(planned, monkeypatch, how):
    monkeypatch.setitem(sys.modules, "mlflow", None)
    spec = planned["spec"]
    flag = ["--tracking", f"http://zoo:{SECRET}@127.0.0.1:5000"] if how == "flag" else []
    if how == "spec":
        spec = str(planned["root"] / "tracked.toml")
        (planned["root"] / "tracked.toml").write_text(tracked(MICRO, "http://127.0.0.1:5000"))
    before = dump(planned["db"])
    r = invoke(*planned["base"], "launch", spec, *flag, "--no-progress")
    assert one_error_line(r) == ('error: [tracking] backend = "mlflow" (or --tracking) needs MLflow, which is not '
                                 "installed here: pip install 'zoo-sweep[mlflow]'")
    assert SECRET not in r.stdout + r.stderr
    assert dump(planned["db"]) == before


# ---------------------------------------------------------------------- what a run holds; a failing tracker


def _job(method="kl", multi=False, hp=None):
    s = ModelEntry("cnn_a", "resnet", "cnn", None)
    t = ModelEntry("vit_a", "vit", "transformer", None)
    m = ModelEntry("mlp_a", "mixer", "mlp", None)
    payload = TransferPayload(s, t if method != "labels" else s, method, 3, hp or {"epochs": 2, "lr": 0.05},
                              "digits:eval", "digits:transfer", 32, None,
                              teachers=(t, m) if multi else None, multi_method="kl_dp" if multi else None)
    return Job.new({"method": method, "multi": multi}, payload)


ROWS = [{"epoch": 1, "student_acc": 90.0, "delta": -0.5, "transfer_rate_sample": float("nan"), "train_loss": 1.25},
        {"epoch": 2, "student_acc": 91.5, "delta": 1.0, "transfer_rate_sample": None, "train_loss": 0.75,
         "teacher": "ignored", "final": True}]


def test_a_run_holds_the_resolved_hyper_parameters_the_id_and_every_metric():
    from zoo_sweep import __version__

    job = _job()
    rec = run_record(job, ROWS, seconds=4.0)
    assert rec.name == "cnn_a <- vit_a / kl / 3" and rec.job_id == job.id
    assert set(rec.params) == set(TRANSFER_HP) | {"top_k", "seed", "job_id", "zoo_sweep_version"}
    assert rec.params["lr"] == "0.05" and rec.params["epochs"] == "2" and rec.params["seed"] == "3"
    assert rec.params["inputs"] == "own" and rec.params["augment"] == "shift"  # defaults the payload leaves out
    assert rec.params["job_id"] == job.id and rec.params["zoo_sweep_version"] == __version__
    assert rec.tags["kind"] == "method" and rec.tags["student_family"] == "cnn"
    assert rec.tags["teacher_family"] == "transformer"
    # a NULL (NaN) metric is left out; names are the store's columns; the step is the epoch
    assert sorted(rec.metrics) == sorted([("student_acc", 90.0, 1), ("delta", -0.5, 1), ("train_loss", 1.25, 1),
                                          ("student_acc", 91.5, 2), ("delta", 1.0, 2), ("train_loss", 0.75, 2)])
    assert all(k in TRANSFER_METRICS for k, _, _ in rec.metrics)


def test_a_predict_run_holds_the_model_and_its_accuracy():
    from zoo_sweep import __version__
    from zoo_sweep.pipeline.jobs import PredictPayload
    from zoo_sweep.pipeline.tracking import predict_record

    job = Job.new({"m": 1}, PredictPayload(ModelEntry("vit_a", "vit", "transformer", None), "digits:eval", 32, None, 5))
    rec = predict_record(job, 89.71, seconds=3.0)
    assert (rec.name, rec.job_id, rec.seconds) == ("vit_a / predict", job.id, 3.0)
    assert rec.metrics == [("accuracy", 89.71, 0)]
    assert rec.params == {"model": "vit_a", "arch": "vit", "family": "transformer", "eval_set": "digits:eval",
                          "job_id": job.id, "zoo_sweep_version": __version__}
    assert rec.tags == {"kind": "predict", "model": "vit_a", "family": "transformer", "eval_set": "digits:eval"}


def test_control_and_multi_teacher_runs_are_named_as_the_store_names_them():
    control = run_record(_job("labels"), ROWS)
    assert control.name == "cnn_a <- cnn_a / labels / 3" and control.tags["kind"] == "control"
    assert is_control(_job("labels"))
    multi = run_record(_job("parallel", multi=True), ROWS)
    assert multi.name == "cnn_a <- vit_a+mlp_a / parallel / 3" and multi.tags["kind"] == "multi-teacher"
    assert multi.tags["teacher_family"] == "transformer+mlp" and multi.tags["multi_method"] == "kl_dp"
    assert "flip_avg_neutral" not in multi.params and "top_k" in multi.params  # kl_dp's parameters


class _Down:
    """An MLflow client whose server answers the first calls, then fails every one."""

    def __init__(self, fail_from: str):
        self.fail_from = fail_from

    def __getattr__(self, name):
        def call(*args, **kwargs):
            if name == self.fail_from or self.fail_from == "*":
                raise ConnectionError(f"HTTPConnectionPool(host='zoo:{SECRET}@h'): Connection refused")
            if name == "search_runs":
                return _Page()
            if name == "get_experiment_by_name":
                return None
            return "1"
        return call


class _Page(list):
    token = None


@pytest.mark.parametrize("fail_from", ["*", "create_run"])
def test_a_tracker_that_fails_never_raises_and_says_so_in_one_line(fail_from):
    uri = f"http://zoo:{SECRET}@127.0.0.1:5000"
    t = Tracker(uri, "sweep", client_factory=lambda _uri: _Down(fail_from)).start()
    assert not t.ready(30) if fail_from == "*" else t.ready(30)
    jobs = [_job(), _job("labels"), _job("parallel", multi=True)]
    for j in jobs:
        t.log(j, ROWS)
    t.log(jobs[0], ROWS)  # asked twice: one run
    line = t.close(30)
    assert line.startswith("MLflow at http://zoo:***@127.0.0.1:5000: 3 of 3 run(s) not logged, the first "
                           "'cnn_a <- vit_a / kl / 3' (cannot connect: Connection refused); the store has every "
                           "result, and `zoo-sweep track sweep` logs them"), line
    assert SECRET not in line and "\n" not in line
    assert t.close() is None and t.log(jobs[0], ROWS) is None  # closed: nothing more, never an exception


def test_a_job_whose_result_cannot_be_described_is_counted_not_raised():
    t = Tracker("http://127.0.0.1:5000", "sweep", client_factory=lambda _uri: _Down("never")).start()
    assert t.ready(30)
    t.log(_job(), [{"student_acc": 1.0}])  # no epoch
    assert t.close(30).startswith(f"MLflow at http://127.0.0.1:5000: 1 of 1 run(s) not logged: 'job {_job().id}' "
                                  "(KeyError: 'epoch')")


def test_track_logs_where_the_flag_then_the_spec_then_the_environment_then_the_results_folder_say(tmp_path,
                                                                                                monkeypatch):
    from zoo_sweep.pipeline.tracking import Destination, track_destination

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    spec = spec_with({"backend": "mlflow", "uri": "http://127.0.0.1:5000"})
    off = spec_with({})
    assert track_destination(tmp_path, "file:/tmp/mlruns", spec) == Destination("mlflow", "file:/tmp/mlruns")
    assert track_destination(tmp_path, None, spec).uri == "http://127.0.0.1:5000"
    default = f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    assert track_destination(tmp_path, None, off).uri == track_destination(tmp_path).uri == default  # still logs
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://10.0.0.1:5000")
    assert track_destination(tmp_path, None, off).uri == "http://10.0.0.1:5000"
    wandb = track_destination(tmp_path, None, spec_with({"backend": "wandb", "project": "digits"}))
    assert wandb == Destination("wandb", None, "digits", None, "offline", str(tmp_path.resolve()))
    with pytest.raises(UserError, match="^--tracking 'localhost:5000' is not an MLflow tracking URI"):
        track_destination(tmp_path, "localhost:5000")


@pytest.mark.parametrize(("backend", "module", "extra"), [("mlflow", "mlflow", "mlflow"), ("wandb", "wandb", "wandb")])
def test_a_tracker_not_installed_is_one_line_naming_its_extra(tmp_path, monkeypatch, backend, module, extra):
    from zoo_sweep.pipeline.tracking import track_destination

    monkeypatch.setitem(sys.modules, module, None)  # as if not installed: importing it fails
    with pytest.raises(UserError) as e:
        track_destination(tmp_path, None, spec_with({"backend": backend}))
    assert str(e.value).endswith(f"which is not installed here: pip install 'zoo-sweep[{extra}]'")
    with pytest.raises(UserError) as e:
        check_tracking(spec_with({"backend": backend}), tmp_path)
    assert str(e.value).endswith(f"which is not installed here: pip install 'zoo-sweep[{extra}]'")


BAD_WANDB = {(("backend", "wandb"), ("uri", "http://127.0.0.1:5000")):
             "[tracking] uri is where MLflow logs; W&B takes project, entity and mode instead",
             (("backend", "wandb"), ("mode", "dryrun")):
             "[tracking] mode must be one of 'offline', 'online', got 'dryrun'",
             (("backend", "wandb"), ("project", "a/b")): "[tracking] project 'a/b' is not a W&B name",
             (("backend", "wandb"), ("entity", "")): "[tracking] entity '' is not a W&B name"}


@pytest.mark.parametrize("keys", list(BAD_WANDB))
def test_bad_wandb_settings_are_one_line(keys):
    with pytest.raises(UserError) as e:
        spec_with(dict(keys))
    assert str(e.value).startswith(BAD_WANDB[keys])
