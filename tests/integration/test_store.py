"""The store: idempotent planning, atomic results, read-only queries, Parquet export.

The store semantics run against SQLite and against a real PostgreSQL server (skipped, saying why, where
none can be started): the same SQL has to hold on both."""

import json
import uuid

import pytest
import sqlalchemy as sa

from zoo_sweep.errors import UserError
from zoo_sweep.storage.store import Store, reset_jobs


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    if request.param == "sqlite":
        s = Store(f"sqlite:///{tmp_path / 'z.db'}")
    else:
        # one database per test on the session's server: tests must not see each other's rows
        server = sa.engine.make_url(request.getfixturevalue("postgres_url"))
        name = f"t_{uuid.uuid4().hex[:12]}"
        admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text(f'create database "{name}"'))
        admin.dispose()
        s = Store(server.set(database=name).render_as_string(hide_password=False))
    yield s
    s.engine.dispose()


def _plan(store, ids):
    return store.write_plan({"name": "s", "spec": "{}", "spec_hash": "h", "path": None},
                            [{"name": "m", "eval_set": "e", "arch": "a", "family": "cnn", "params": 1}],
                            [{"id": i, "kind": "transfer", "spec": json.dumps({"i": i})} for i in ids], "s")


def _row(**kw):
    return {"job_id": "a", "epoch": 1, "final": True, "eval_set": "e", "student": "m", "teacher": "t",
            "method": "kl", "seed": 0, "delta": 1.0, **kw}


def test_replanning_adds_only_new_jobs(store):
    assert _plan(store, ["a", "b"]) == 2
    store.finish_job("a", "done")
    assert _plan(store, ["a", "b", "c"]) == 1
    states = dict(store.query("select id, state from jobs").values.tolist())
    assert states == {"a": "done", "b": "pending", "c": "pending"}  # re-planning never resets a result


def test_results_and_state_land_together(store):
    _plan(store, ["a"])
    with pytest.raises(Exception):
        store.finish_job("a", "done", results=[_row(), _row(epoch=None)])  # second row is invalid
    assert store.query("select state from jobs").iloc[0, 0] == "pending"
    assert store.query("select count(*) from transfer_results").iloc[0, 0] == 0
    store.finish_job("a", "done", results=[_row()])
    assert store.query("select state from jobs").iloc[0, 0] == "done"


def test_a_rerun_result_replaces_the_old_rows(store):
    _plan(store, ["a"])
    store.finish_job("a", "done", results=[_row(), _row(delta=2.0)])  # same key twice: the last wins
    assert store.query("select delta from transfer_results").values.tolist() == [[2.0]]


def test_job_states_and_reset_read_no_payload(store):
    _plan(store, ["a", "b", "c"])
    store.finish_job("a", "failed", error="boom")
    store.set_state(["b"], "interrupted")
    assert store.job_states("s") == {"a": "failed", "b": "interrupted", "c": "pending"}
    assert store.job_states("s", "transfer", states=["interrupted", "failed"]) == {"a": "failed", "b": "interrupted"}
    assert store.job_states("s", "predict") == {} and store.job_states("other") == {}

    selects = []

    @sa.event.listens_for(store.engine, "before_cursor_execute")
    def seen(conn, cursor, sql, *args):
        if sql.lstrip().lower().startswith("select"):
            selects.append(sql)

    assert reset_jobs(store, "s", "failed", "pending") == 1
    assert selects and not any("jobs.spec" in q for q in selects), selects  # ids and states only
    row = store.query("select state, attempts, error from jobs where id = 'a'").iloc[0].tolist()
    assert row == ["pending", 0, None]
    assert reset_jobs(store, "s", "pending", "cancelled") == 2
    assert store.job_states("s") == {"a": "cancelled", "b": "interrupted", "c": "cancelled"}


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
