"""Readers never stop the launcher's writes: a SQLite store is in WAL mode, a query has a time limit, and a
write that meets a lock waits for it (saying so once) for a bounded time, then ends in one line with nothing
half-written. Real SQLite stores, with the Store calls the launcher records results through."""

from __future__ import annotations

import json
import sqlite3
import threading
import time

import pytest
from conftest import cli

from zoo_sweep.errors import UserError
from zoo_sweep.storage import readonly
from zoo_sweep.storage import store as store_mod
from zoo_sweep.storage.readonly import QueryTimeout
from zoo_sweep.storage.store import Store, StoreLocked, network_fs

RUNAWAY = "with recursive c(x) as (select 1 union all select x + 1 from c) select count(*) from c"
OWNER = "host:1:abc"


def _store(tmp_path, monkeypatch, wait_s: float | None = None, network: bool = False) -> tuple[Store, str]:
    """A store with one sweep and two transfer jobs, j1 claimed by OWNER (running, as the launcher has it)."""
    if wait_s is not None:
        monkeypatch.setenv(store_mod.LOCK_WAIT_ENV, str(wait_s))
    monkeypatch.setattr(store_mod, "network_fs", lambda path: network)
    monkeypatch.setenv(store_mod.WAL_ENV, "1")  # WAL is asked for (the default keeps the rollback journal)
    db = tmp_path / "zoo.db"
    store = Store(f"sqlite:///{db}")
    store.write_plan({"name": "s", "spec": "{}", "spec_hash": "h", "path": None}, [],
                     [{"id": i, "kind": "transfer", "payload": json.dumps({})} for i in ("j1", "j2")], "s")
    assert store.claim_job("j1", OWNER, time.time() + 60)
    return store, str(db)


def _record(store: Store, job_id: str = "j1") -> bool:
    """What the launcher does with a finished transfer job: its result rows and its state, in one go."""
    row = {"job_id": job_id, "epoch": 1, "final": True, "eval_set": "e", "student": "a", "teacher": "b",
           "method": "kl", "seed": 0, "delta": 1.5}
    return store.finish_job(job_id, "done", results=[row], seconds=1.0, owner=OWNER)


def _state(db: str, job_id: str = "j1") -> str:
    with sqlite3.connect(db) as c:
        return c.execute("select state from jobs where id = ?", (job_id,)).fetchone()[0]


def _hold(db: str, begin: str, seconds: float, held: threading.Event) -> threading.Thread:
    """Another connection holds a transaction (``begin``: a read, or a write lock) for ``seconds``."""

    def run():
        c = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
        c.execute(begin)
        c.execute("select count(*) from jobs").fetchall()  # a read transaction takes its snapshot here
        held.set()
        time.sleep(seconds)
        c.execute("commit")
        c.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    assert held.wait(10)
    return t


def test_a_store_is_in_wal_mode_and_a_long_read_does_not_hold_a_write(tmp_path, monkeypatch):
    store, db = _store(tmp_path, monkeypatch, wait_s=2)  # a write held back by the read would fail in ~2 s
    with sqlite3.connect(db) as c:
        assert c.execute("pragma journal_mode").fetchone() == ("wal",)
    reader = sqlite3.connect(db, isolation_level=None)
    reader.execute("begin")
    assert reader.execute("select state from jobs where id = 'j1'").fetchone() == ("running",)
    t0 = time.monotonic()
    assert _record(store)
    assert time.monotonic() - t0 < 1.5
    assert reader.execute("select state from jobs where id = 'j1'").fetchone() == ("running",)  # its snapshot
    reader.execute("commit")
    assert reader.execute("select state from jobs where id = 'j1'").fetchone() == ("done",)
    assert reader.execute("select delta from transfer_results where job_id = 'j1'").fetchone() == (1.5,)
    store.dispose()


def test_a_query_under_its_time_limit_runs_beside_the_writes(tmp_path, monkeypatch):
    store, db = _store(tmp_path, monkeypatch, wait_s=2)
    ended = []

    def query():
        try:
            store.query(RUNAWAY, timeout=3)
        except QueryTimeout as e:
            ended.append(str(e))

    t = threading.Thread(target=query)
    t.start()
    time.sleep(0.5)  # the query is running
    t0 = time.monotonic()
    assert _record(store) and store.set_state(["j2"], "interrupted") is None
    assert time.monotonic() - t0 < 1.5 and t.is_alive()
    t.join(15)
    assert ended == ["the query ran longer than 3 s (--timeout); narrow it down (a WHERE, a LIMIT) or give it more "
                     "time with --timeout SECONDS"]
    assert _state(db) == "done" and _state(db, "j2") == "interrupted"
    assert store.query("select count(*) as n from jobs")["n"].tolist() == [2]  # no limit left on the connection
    store.dispose()


def test_the_query_command_stops_a_runaway_query(tmp_path, monkeypatch, capsys):
    store, db = _store(tmp_path, monkeypatch)
    store.dispose()
    t0 = time.monotonic()
    rc, out, err = cli(capsys, "--db", f"sqlite:///{db}", "query", RUNAWAY, "--timeout", "1")
    assert time.monotonic() - t0 < 15
    assert rc == 2 and out == ""
    assert err.strip().splitlines() == ["error: the query ran longer than 1 s (--timeout); narrow it down (a WHERE, "
                                        "a LIMIT) or give it more time with --timeout SECONDS"]
    rc, out, err = cli(capsys, "--db", f"sqlite:///{db}", "query", "select count(*) as n from jobs", "-f", "csv")
    assert rc == 0 and out.split() == ["n", "2"]


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf"])
def test_a_timeout_that_is_not_a_positive_number_is_one_line(tmp_path, monkeypatch, capsys, value):
    store, db = _store(tmp_path, monkeypatch)
    store.dispose()
    rc, out, err = cli(capsys, "--db", f"sqlite:///{db}", "query", "select 1", "--timeout", value)
    assert rc == 2 and err.strip().splitlines() == [
        f"error: --timeout must be a positive number of seconds, got {float(value):g}"]


def test_a_write_that_meets_a_lock_for_a_few_seconds_lands_when_it_clears(tmp_path, monkeypatch):
    monkeypatch.setattr(store_mod, "BUSY_TIMEOUT_S", 0.3)  # SQLite's own wait gives up first: the retries carry on
    store, db = _store(tmp_path, monkeypatch, wait_s=30)
    said = []
    store.on_locked = said.append
    holder = _hold(db, "begin immediate", 3.0, threading.Event())  # another writer holds the write lock
    t0 = time.monotonic()
    assert _record(store)
    assert 2.5 < time.monotonic() - t0 < 15
    holder.join()
    assert _state(db) == "done"
    with sqlite3.connect(db) as c:
        assert c.execute("select count(*) from transfer_results where job_id = 'j1'").fetchone() == (1,)
    assert len(said) == 1 and said[0].startswith(f"the store {db} is locked by another connection")
    assert "for up to 30 s (ZOO_SWEEP_LOCK_WAIT_S)" in said[0]
    store.dispose()


def test_on_a_network_filesystem_the_rollback_journal_stays_and_a_long_read_is_waited_for(tmp_path, monkeypatch):
    """Where WAL is unsafe the store keeps SQLite's rollback journal, in which a reader does hold a commit:
    the write waits (retrying) until the read ends, and nothing is lost."""
    monkeypatch.setattr(store_mod, "BUSY_TIMEOUT_S", 0.3)
    store, db = _store(tmp_path, monkeypatch, wait_s=30, network=True)
    with sqlite3.connect(db) as c:
        assert c.execute("pragma journal_mode").fetchone() == ("delete",)
    said = []
    store.on_locked = said.append
    reader = _hold(db, "begin", 2.0, threading.Event())
    assert _record(store)
    reader.join()
    assert _state(db) == "done" and len(said) == 1
    store.dispose()


def test_a_lock_that_never_clears_ends_in_one_line_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(store_mod, "BUSY_TIMEOUT_S", 0.3)
    store, db = _store(tmp_path, monkeypatch, wait_s=1.5)
    store.on_locked = lambda line: None
    holder = _hold(db, "begin immediate", 5.0, threading.Event())
    t0 = time.monotonic()
    with pytest.raises(StoreLocked) as e:
        _record(store)
    assert 1.4 < time.monotonic() - t0 < 4
    assert str(e.value).startswith(f"the store {db} stayed locked for 1.5 s (ZOO_SWEEP_LOCK_WAIT_S): ")
    assert "\n" not in str(e.value)
    t0 = time.monotonic()
    with pytest.raises(StoreLocked):  # the wait is spent: the next write tries once (the launcher's last mark)
        store.set_state(["j1"], "interrupted")
    assert time.monotonic() - t0 < 1.4
    holder.join()
    assert _state(db) == "running"  # nothing half-written; the job is still its launcher's, to run again
    with sqlite3.connect(db) as c:
        assert c.execute("select count(*) from transfer_results").fetchone() == (0,)
    store.set_state(["j1"], "interrupted")  # the lock cleared: writes pass again
    assert _state(db) == "interrupted"
    store.dispose()


def test_the_lock_wait_is_checked(monkeypatch, tmp_path):
    for bad in ("soon", "-5", "inf"):
        monkeypatch.setenv(store_mod.LOCK_WAIT_ENV, bad)
        with pytest.raises(UserError, match="ZOO_SWEEP_LOCK_WAIT_S must be a number of seconds"):
            Store(f"sqlite:///{tmp_path / 'zoo.db'}")


MOUNTS = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
40 22 0:35 / /shared rw,relatime shared:20 - nfs4 server:/export rw,vers=4.2
41 40 8:2 / /shared/scratch rw,relatime shared:21 - xfs /dev/sdb1 rw
42 22 0:36 / /mnt/my\\040drive rw,relatime shared:22 - cifs //nas/share rw
"""


def test_network_filesystems_are_told_by_their_mount():
    assert not network_fs("/home/me/results/zoo.db", MOUNTS)
    assert network_fs("/shared/results/zoo.db", MOUNTS)
    assert network_fs("/shared", MOUNTS)
    assert not network_fs("/shared/scratch/zoo.db", MOUNTS)  # a local disk mounted inside it
    assert not network_fs("/sharedx/zoo.db", MOUNTS)
    assert network_fs("/mnt/my drive/zoo.db", MOUNTS)


def test_a_wal_store_in_a_folder_the_reader_cannot_write_is_still_read(tmp_path, monkeypatch):
    """A reader of a WAL store must create its index file beside it; where it may not, and no writer has the
    store open, the store is read as it stands."""
    store, db = _store(tmp_path, monkeypatch)
    store.dispose()  # the last connection folds the WAL into the file and removes it
    assert not (tmp_path / "zoo.db-wal").exists()
    monkeypatch.setattr(readonly.os, "access", lambda path, mode: False)
    assert readonly._wal_unopenable(tmp_path / "zoo.db")
    reader = Store(f"sqlite:///{db}", create=False)
    assert reader.query("select count(*) as n from jobs")["n"].tolist() == [2]
    reader.dispose()


def test_a_stopping_launcher_marks_exactly_the_jobs_it_runs(tmp_path, monkeypatch):
    """Whatever point a launch stops at (a claim just made, a result just recorded), the jobs still running
    under its name are marked interrupted, and no other job is touched."""
    store, db = _store(tmp_path, monkeypatch)
    store.add_jobs("s", [{"id": i, "kind": "transfer", "payload": "{}"} for i in ("j3", "j4")])
    assert store.claim_job("j2", OWNER, time.time() + 60) and store.claim_job("j3", "other:2:x", time.time() + 60)
    assert _record(store)  # j1: recorded just before the stop
    assert store.interrupt_jobs(OWNER) == 1
    with sqlite3.connect(db) as c:
        got = dict(c.execute("select id, state from jobs").fetchall())
        assert c.execute("select owner, lease_until from jobs where id = 'j2'").fetchone() == (None, None)
    assert got == {"j1": "done", "j2": "interrupted", "j3": "running", "j4": "pending"}
    store.dispose()


def test_a_query_stopped_by_the_servers_own_statement_timeout_is_one_line_too():
    from zoo_sweep.storage.readonly import QueryTimeout

    assert str(QueryTimeout(None)).startswith("the query ran longer than the server's statement_timeout; narrow it")
