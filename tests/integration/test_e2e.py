"""plan -> launch -> query on the micro zoo with the session's real Ray cluster, through the library and the CLI.
Other test modules add sweeps of their own to the session's micro store (tuning trials, other methods), so rows
are counted for the micro sweep's own jobs."""

import json
import math

import pandas as pd
import pytest
from conftest import assert_png, run_cli

from zoo_sweep.storage.store import jobs_of


def _micro_results(store, frame=None):
    """Transfer results of the micro sweep's own jobs (of ``frame``, or of the store's table)."""
    res = store.table("transfer_results") if frame is None else frame
    return res[res["job_id"].isin(set(jobs_of(store, "micro")["id"]))]


def test_launch_fills_every_table(micro):
    store, rep = micro["store"], micro["report"]
    assert rep.ok, rep.failed
    assert rep.ran == {"zoo": 3, "predict": 3, "compare": 1, "transfer": 12}
    models = store.table("models")
    assert sorted(models["family"]) == ["cnn", "mlp", "transformer"]
    # trained, not random: chance is 10 % (the micro models train a few epochs, so 30-65 %)
    assert models["accuracy"].between(25, 100).all() and models["params"].gt(0).all()
    assert len(store.table("pairs")) == 6  # 3 models: every ordered pair once
    jobs = jobs_of(store, "micro")
    assert set(jobs["state"]) == {"done"} and len(jobs) == 3 + 1 + 12


def test_transfer_results_are_consistent(micro):
    res = _micro_results(micro["store"])
    final = res[res["final"]]
    assert len(final) == 12 and set(final["method"]) == {"kl", "kl_dp"}
    # identity of docs/methods.md on real runs: delta = gain - loss
    assert ((final["delta"] - (final["knowledge_gain"] - final["knowledge_loss"])).abs() < 1e-9).all()
    # s0 accuracy in a transfer row is the student's own predict-stage accuracy
    acc = micro["store"].table("models").set_index("name")["accuracy"]
    for row in final.itertuples():
        assert math.isclose(row.s0_acc, acc[row.student], abs_tol=1e-9)
    # kl_dp routes only part of the samples to the teacher; kl routes all
    assert (final[final["method"] == "kl"]["teacher_share"] == 100).all()
    assert final[final["method"] == "kl_dp"]["teacher_share"].between(0, 100, inclusive="neither").all()
    # remaining complementary knowledge before transfer is the pairs table's rho_pos
    pairs = micro["store"].table("pairs").set_index(["student", "teacher"])
    for row in final.itertuples():
        assert math.isclose(row.rho_pos_before, pairs.loc[(row.student, row.teacher), "rho_pos"], abs_tol=1e-9)


def test_cli_query_counts_ordered_pairs(micro):
    r = run_cli("--db", micro["db"], "query", "select count(*) as n from pairs", "--format", "json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == [{"n": 6}]
    r = run_cli("--db", micro["db"], "query", "select student, teacher, rho_pos from pairs", "-f", "csv")
    assert len(pd.read_csv(__import__("io").StringIO(r.stdout))) == 6


def test_query_cannot_change_the_store(micro):
    r = run_cli("--db", micro["db"], "query", "delete from pairs")
    assert r.returncode == 2 and r.stderr.startswith("error: query failed: not authorized"), r.stderr
    assert len(micro["store"].table("pairs")) == 6


def test_relaunch_reuses_everything(micro):
    r = run_cli("--db", micro["db"], "--home", micro["home"], "launch", str(micro["spec_path"]),
                "--address", micro["address"], "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "ran nothing (all done)" in r.stdout
    assert "reused 3 zoo models, 3 prediction records, 1 compare, 12 transfer jobs" in r.stdout


def test_lost_record_is_recomputed(micro, tmp_path):
    """A done predict job whose record file vanished runs again; nothing else does."""
    from zoo_sweep.pipeline.launch import LaunchOptions, launch_sweep

    records = sorted(micro["paths"].records.glob("*.npz"))
    before = records[0].read_bytes()
    records[0].unlink()
    rep = launch_sweep(micro["spec"], micro["store"], micro["paths"],
                       LaunchOptions(address=micro["address"], progress=False))
    assert rep.ran == {"predict": 1}
    assert records[0].read_bytes() == before  # same model, same data: the same record


def test_export_and_report(micro, tmp_path):
    r = run_cli("--db", micro["db"], "export", "--out", str(tmp_path / "pq"))
    assert r.returncode == 0, r.stderr
    assert len(pd.read_parquet(tmp_path / "pq" / "pairs.parquet")) == 6
    exported = pd.read_parquet(tmp_path / "pq" / "transfer_results.parquet")
    assert len(_micro_results(micro["store"], exported)) == 12
    r = run_cli("--db", micro["db"], "report", str(micro["spec_path"]), "--out", str(tmp_path / "rep"))
    assert r.returncode == 0, r.stderr
    for png in ("ck_vs_gap.png", "delta_vs_gap.png", "gain_loss.png"):
        assert_png(tmp_path / "rep" / png)
    methods = pd.read_csv(tmp_path / "rep" / "methods.csv")
    assert set(methods["method"]) == {"kl", "kl_dp"} and (methods["pairs"] == 6).all()


def _snapshot(store):
    return {t: store.table(t).sort_index(axis=1).to_json() for t in
            ("sweeps", "models", "jobs", "sweep_jobs", "pairs", "transfer_results")}


@pytest.mark.parametrize("case", ["unknown_model", "missing_spec", "unknown_method", "bad_address", "bad_toml"])
def test_bad_input_is_one_line_and_leaves_the_store_alone(micro, tmp_path, case):
    spec = micro["spec_path"].read_text()
    path = tmp_path / "bad.toml"
    extra = []
    if case == "unknown_model":
        path.write_text(spec.replace('recipe = "micro"', 'recipe = "micro"\nmodels = ["cnn_mikro"]'))
    elif case == "missing_spec":
        path = tmp_path / "nope.toml"
    elif case == "unknown_method":
        path.write_text(spec.replace('["kl", "kl_dp"]', '["kl", "kl_dpp"]'))
    elif case == "bad_toml":
        path.write_text(spec + "\n[transfer\n")
    else:
        path = micro["spec_path"]
        extra = ["--address", "127.0.0.1:1"]
    before = _snapshot(micro["store"])
    r = run_cli("--db", micro["db"], "--home", micro["home"], "launch", str(path), *extra, "--no-progress")
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.stderr
    expected = {"unknown_model": "did you mean cnn_micro", "missing_spec": "spec file not found",
                "unknown_method": "unknown method 'kl_dpp'", "bad_address": "cannot reach a Ray cluster",
                "bad_toml": "not valid TOML"}[case]
    assert expected in lines[0]
    assert _snapshot(micro["store"]) == before
