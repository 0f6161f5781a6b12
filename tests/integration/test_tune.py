"""Ray Tune search on the micro zoo: trials run real transfer jobs, land in the store, and the best
configuration can be written back into the spec."""

import json
import re
import tomllib

from conftest import run_cli

from zoo_sweep.storage.store import Store


def _stored_trials(db: str, sweep: str) -> dict[tuple, float]:
    """(lr, temperature) -> mean final delta over the calibration pairs, from the trials' stored jobs."""
    rows = Store(db).query("select j.payload, r.delta from jobs j join sweep_jobs sj on sj.job_id = j.id "
                           "join transfer_results r on r.job_id = j.id where sj.sweep = :s and r.final", {"s": sweep})
    deltas: dict[tuple, list[float]] = {}
    for payload, delta in rows.itertuples(index=False):
        hp = json.loads(payload)["hp"]
        deltas.setdefault((hp["lr"], hp["temperature"]), []).append(delta)
    return {config: sum(d) / len(d) for config, d in deltas.items()}


def test_tune_stores_trials_and_writes_back(micro, tmp_path):
    spec = tmp_path / "micro.toml"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec.write_text(micro["spec_path"].read_text() + f'\n[tracking]\nbackend = "mlflow"\nuri = "{uri}"\n')
    r = run_cli("--db", micro["db"], "--home", micro["home"], "tune", str(spec), "--method", "kl_dp",
                "--samples", "2", "--pairs", "1", "--address", micro["address"], "--no-progress", "--write",
                timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    r2 = run_cli("--db", micro["db"], "query", "select count(*) as n from sweep_jobs where sweep = 'micro.tune.kl_dp'",
                 "-f", "json")
    assert '"n":2' in r2.stdout.replace(" ", "")  # 2 configurations x 1 calibration pair, each a stored job

    trials = _stored_trials(micro["db"], "micro.tune.kl_dp")
    assert len(trials) == 2
    top = max(trials.values())
    best = {c for c, d in trials.items() if d == top}  # a tie may go either way
    doc = tomllib.loads(spec.read_text())["transfer"]
    assert (doc["lr"], doc["temperature"]) in best, (doc, trials)
    assert doc["methods"] == ["kl", "kl_dp"]  # the rest of [transfer] is kept
    printed = json.loads(re.search(r"^best: (.*)$", r.stdout, re.M).group(1))
    assert printed == {"lr": doc["lr"], "temperature": doc["temperature"]}
    assert "warning" not in r.stderr, r.stderr

    # the spec's [tracking]: each trial's job a run of the trials' experiment, with its log, and the sweep's run
    from mlflow.tracking import MlflowClient

    c = MlflowClient(tracking_uri=uri)
    runs = c.search_runs([c.get_experiment_by_name("micro.tune.kl_dp").experiment_id])
    ids = set(Store(micro["db"]).query("select job_id from sweep_jobs where sweep = 'micro.tune.kl_dp'")["job_id"])
    trial_runs = [run for run in runs if run.data.tags["kind"] == "method"]
    assert {run.data.params["job_id"] for run in trial_runs} == ids and len(runs) == len(ids) + 1
    assert {(float(run.data.params["lr"]), float(run.data.params["temperature"])) for run in trial_runs} == set(trials)
    for run in trial_runs:
        assert [a.path for a in c.list_artifacts(run.info.run_id)] == [f"{run.data.params['job_id']}.log"]


def test_write_back_keeps_comments_and_other_tables(tmp_path):
    from zoo_sweep.pipeline.tune import write_back

    p = tmp_path / "s.toml"
    p.write_text('name = "x"\n[transfer]\nlr = 0.1  # paper\nepochs = 2\n[run]\ntopk = 5\n')
    write_back(p, {"lr": 0.003, "temperature": 2.0})
    doc = tomllib.loads(p.read_text())
    assert doc["transfer"] == {"lr": 0.003, "epochs": 2, "temperature": 2.0} and doc["run"] == {"topk": 5}
    assert "# paper" in p.read_text()
