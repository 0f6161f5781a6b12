"""The store: idempotent planning, atomic results, read-only queries, Parquet export."""

import json

import pytest

from zoo_sweep import UserError
from zoo_sweep.store import Store


def _plan(store, ids):
    return store.write_plan({"name": "s", "spec": "{}", "spec_hash": "h", "path": None},
                            [{"name": "m", "eval_set": "e", "arch": "a", "family": "cnn", "params": 1}],
                            [{"id": i, "kind": "transfer", "spec": json.dumps({"i": i})} for i in ids], "s")


def test_replanning_adds_only_new_jobs(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'z.db'}")
    assert _plan(store, ["a", "b"]) == 2
    store.finish_job("a", "done")
    assert _plan(store, ["a", "b", "c"]) == 1
    states = dict(store.query("select id, state from jobs").values.tolist())
    assert states == {"a": "done", "b": "pending", "c": "pending"}  # re-planning never resets a result


def test_results_and_state_land_together(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'z.db'}")
    _plan(store, ["a"])
    row = {"job_id": "a", "epoch": 1, "final": True, "eval_set": "e", "student": "m", "teacher": "t",
           "method": "kl", "seed": 0, "delta": 1.0}
    with pytest.raises(Exception):
        store.finish_job("a", "done", results=[row, {**row, "epoch": None}])  # second row is invalid
    assert store.query("select state from jobs").iloc[0, 0] == "pending"
    assert store.query("select count(*) from transfer_results").iloc[0, 0] == 0
    store.finish_job("a", "done", results=[row])
    assert store.query("select state from jobs").iloc[0, 0] == "done"


def test_bad_url_and_missing_store_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="not a database URL"):
        Store("nonsense")
    with pytest.raises(UserError, match="no store at"):
        Store(f"sqlite:///{tmp_path / 'missing.db'}", create=False)
    with pytest.raises(UserError, match="query failed"):
        Store(f"sqlite:///{tmp_path / 'z.db'}").query("select * from no_such_table")


def test_env_variable_chooses_the_store(tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_SWEEP_DB", f"sqlite:///{tmp_path / 'env.db'}")
    Store()
    assert (tmp_path / "env.db").exists()
