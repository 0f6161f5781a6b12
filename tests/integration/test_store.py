"""The store: idempotent planning, atomic results, read-only queries, Parquet export.

The store semantics run against SQLite and against a real PostgreSQL server (skipped, saying why, where
none can be started): the same SQL has to hold on both."""

import json

import pytest
import sqlalchemy as sa

from zoo_sweep.errors import UserError
from zoo_sweep.storage.store import Store, models, reset_jobs


@pytest.fixture
def store(store_url):
    s = Store(store_url)
    yield s
    s.dispose()


def _plan(store, ids):
    return store.write_plan({"name": "s", "spec": "{}", "spec_hash": "h", "path": None},
                            [{"name": "m", "eval_set": "e", "arch": "a", "family": "cnn", "params": 1}],
                            [{"id": i, "kind": "transfer", "payload": json.dumps({"i": i})} for i in ids], "s")


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
    with pytest.raises(sa.exc.IntegrityError):  # NOT NULL on the key column epoch, on SQLite and PostgreSQL alike
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
    assert selects and not any("jobs.payload" in q for q in selects), selects  # ids and states only
    row = store.query("select state, attempts, error from jobs where id = 'a'").iloc[0].tolist()
    assert row == ["pending", 0, None]
    assert reset_jobs(store, "s", "pending", "cancelled") == 2
    assert store.job_states("s") == {"a": "cancelled", "b": "interrupted", "c": "cancelled"}


def _models(store, sweep, idents):
    return store.write_plan({"name": sweep, "spec": "{}", "spec_hash": "h", "path": None},
                            [{"name": n, "eval_set": "e", "arch": "a", "family": "cnn", "params": 1, "ident": i}
                             for n, i in idents.items()],
                            [{"id": f"{sweep}-job", "kind": "transfer", "payload": "{}"}], sweep)


def test_a_model_name_holds_the_latest_plans_model(store):
    """Each plan writes the ident of the model every name stands for (the latest wins; the other columns of a
    stored row stay); rows from before idents read as None until a plan names them."""
    _models(store, "one", {"m1": "A", "m2": "B"})
    assert store.model_idents("e", ["m1", "m2", "m3"]) == {"m1": "A", "m2": "B"}
    with store.begin() as conn:
        conn.execute(models.update().where(models.c.name == "m1").values(ident=None, accuracy=50.0))
    assert store.model_idents("e", ["m1"]) == {"m1": None} and store.model_idents("other", ["m1"]) == {}
    _models(store, "two", {"m1": "C"})
    assert store.model_idents("e", ["m1", "m2"]) == {"m1": "C", "m2": "B"}
    assert store.table("models").set_index("name")["accuracy"]["m1"] == 50.0


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


def _job(store, job_id):
    return store.query("select state, attempts, owner, lease_until from jobs where id = :i", {"i": job_id}).iloc[0]


def test_a_claim_is_compare_and_set(store):
    """Two launchers claim the same job: one gets it, the other is told so; the job starts once."""
    _plan(store, ["a"])
    assert store.claim_job("a", "hostA:1:x", 1e12, "w1")
    assert not store.claim_job("a", "hostB:2:y", 1e12, "w2")
    job = _job(store, "a")
    assert (job.state, job.attempts, job.owner) == ("running", 1, "hostA:1:x")
    # the other launcher's finish writes nothing: the job is not its own
    assert not store.finish_job("a", "done", results=[_row()], owner="hostB:2:y")
    assert store.query("select count(*) from transfer_results").iloc[0, 0] == 0
    assert store.finish_job("a", "done", results=[_row()], owner="hostA:1:x")
    job = _job(store, "a")
    assert (job.state, job.attempts, job.owner, job.lease_until) == ("done", 1, None, None)
    assert not store.claim_job("a", "hostB:2:y", 1e12)  # done stays done


def test_only_jobs_whose_lease_ran_out_are_requeued(store):
    """Another host's live lease keeps its job; an expired lease, a job without one (a store written before
    leases), an interrupted job and one of a dead process on this host go back to pending."""
    import socket
    import subprocess
    import sys

    _plan(store, ["live", "expired", "legacy", "interrupted", "dead", "done"])
    now = 1_000_000.0
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_owner = f"{socket.gethostname()}:{int(dead.stdout)}:0000"  # that process has exited
    store.claim_job("live", "elsewhere:1:a", now + 30)
    store.claim_job("expired", "elsewhere:1:a", now - 1)
    store.claim_job("dead", dead_owner, now + 30)
    store.start_job("legacy", "w")  # running, no lease
    store.set_state(["interrupted"], "interrupted")
    store.finish_job("done", "done")
    back = store.requeue_stale(["live", "expired", "legacy", "interrupted", "dead", "done"], now=now)
    assert sorted(back) == ["dead", "expired", "interrupted", "legacy"]
    assert store.job_states("s") == {"live": "running", "expired": "pending", "legacy": "pending",
                                     "interrupted": "pending", "dead": "pending", "done": "done"}
    assert _job(store, "expired").owner is None
    # the live lease runs out later: then it is taken over too
    assert store.requeue_stale(["live"], now=now + 31) == ["live"]


def test_renewing_moves_only_the_owners_leases(store):
    _plan(store, ["a", "b"])
    store.claim_job("a", "me:1:x", 100.0)
    store.claim_job("b", "other:2:y", 100.0)
    assert store.renew_leases(["a", "b"], "me:1:x", 500.0) == 1
    assert (_job(store, "a").lease_until, _job(store, "b").lease_until) == (500.0, 100.0)


def test_multi_teacher_teachers_land_with_the_results(store):
    """A multi-teacher job's teachers are rows of job_teachers, in order, written in the transaction of its
    results; a name with "+" stays one name."""
    _plan(store, ["multi"])
    store.claim_job("multi", "me:1:x", 1e12)
    rows = [_row(job_id="multi", teacher="vit+b+cnn_a", method="parallel")]
    assert store.finish_job("multi", "done", results=rows, owner="me:1:x", teachers=["vit+b", "cnn_a"])
    got = store.query("select position, teacher from job_teachers where job_id = 'multi' order by position")
    assert got.values.tolist() == [[0, "vit+b"], [1, "cnn_a"]]


def test_lease_length_is_checked(monkeypatch):
    from zoo_sweep.storage.leases import DEFAULT_LEASE_S, lease_seconds

    monkeypatch.delenv("ZOO_SWEEP_LEASE_S", raising=False)
    assert lease_seconds() == DEFAULT_LEASE_S
    monkeypatch.setenv("ZOO_SWEEP_LEASE_S", "2.5")
    assert lease_seconds() == 2.5
    for bad in ("abc", "0", "-1", "inf", "nan"):
        monkeypatch.setenv("ZOO_SWEEP_LEASE_S", bad)
        with pytest.raises(UserError, match="ZOO_SWEEP_LEASE_S|lease"):
            lease_seconds()
