"""The same store code against a real PostgreSQL server (started by the test session)."""

import json

import pytest

from conftest import run_cli
from zoo_sweep.store import Store


def _plan(store, ids):
    return store.write_plan({"name": "s", "spec": "{}", "spec_hash": "h", "path": None},
                            [{"name": "m", "eval_set": "e", "arch": "a", "family": "cnn", "params": 1}],
                            [{"id": i, "kind": "transfer", "spec": json.dumps({"i": i})} for i in ids], "s")


def test_store_semantics_on_postgres(postgres_url):
    store = Store(postgres_url)
    assert _plan(store, ["a", "b"]) == 2
    store.finish_job("a", "done")
    assert _plan(store, ["a", "b", "c"]) == 1
    row = {"job_id": "b", "epoch": 1, "final": True, "eval_set": "e", "student": "m", "teacher": "t",
           "method": "kl", "seed": 0, "delta": 1.0}
    with pytest.raises(Exception):
        store.finish_job("b", "done", results=[row, {**row, "epoch": None}])
    assert store.query("select state from jobs where id = 'b'").iloc[0, 0] == "pending"
    store.finish_job("b", "done", results=[row, {**row, "delta": 2.0}])  # same key twice: the last wins
    assert store.query("select delta from transfer_results").iloc[0, 0] == 2.0


def test_a_sweep_runs_against_postgres(micro, postgres_url):
    r = run_cli("--db", postgres_url, "--home", micro["home"], "launch", str(micro["spec_path"]),
                "--address", micro["address"], "--no-progress", "--limit", "2")
    assert r.returncode == 0, r.stdout + r.stderr
    r = run_cli("--db", postgres_url, "query", "select count(*) as n from pairs", "-f", "json")
    assert json.loads(r.stdout) == [{"n": 6}]
    r = run_cli("--db", postgres_url, "query", "select count(*) as n from transfer_results r join sweep_jobs sj "
                "on sj.job_id = r.job_id where sj.sweep = 'micro' and r.final", "-f", "json")
    assert json.loads(r.stdout) == [{"n": 2}]  # --limit 2: two transfer jobs this time, the rest pending
