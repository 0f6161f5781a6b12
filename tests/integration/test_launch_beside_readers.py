"""A real launcher beside other connections to its SQLite store: a read held for the whole launch does not
stop it (the store is in WAL mode), a write lock held for a while delays its writes without losing any
result, and a lock that outlasts ZOO_SWEEP_LOCK_WAIT_S ends the launch in one line with every job left to
run again. The query time limit on PostgreSQL is here too (its server is a process)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import threading
import time

import pytest
from conftest import BIN, ROOT, new_pg_database, run_cli, sqlite_rows, sqlite_rows_so_far
from test_reliability import spec_and_path

from zoo_sweep.storage.readonly import QueryTimeout
from zoo_sweep.storage.store import Store

RUNAWAY = "with recursive c(x) as (select 1 union all select x + 1 from c) select count(*) from c"


def _launcher(micro, db, spec, **env):
    return subprocess.Popen([str(BIN / "zoo-sweep"), "--db", f"sqlite:///{db}", "--home", micro["home"], "launch",
                             str(spec), "--address", micro["address"], "--no-progress"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "ZOO_SWEEP_SQLITE_WAL": "1", **env})


def _until_a_transfer_runs(proc, db) -> None:
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
        if sqlite_rows_so_far(db, "select id from jobs where kind = 'transfer' and state = 'running'"):
            return
    raise AssertionError(f"no transfer job was seen running: {proc.communicate()[0]}")


def _all_done_once(db) -> None:
    assert sqlite_rows(db, "select count(*) from jobs where kind = 'transfer' and state = 'done'") == [(8,)]
    assert sqlite_rows(db, "select count(*), count(distinct job_id) from transfer_results where final") == [(8, 8)]


def test_a_launch_runs_to_the_end_while_a_read_is_held_throughout(micro, tmp_path):
    spec, db = spec_and_path(tmp_path, "beside-a-read", 2), tmp_path / "r.db"  # 8 transfer jobs
    proc = _launcher(micro, db, spec)
    _until_a_transfer_runs(proc, db)
    reader = sqlite3.connect(db, isolation_level=None)
    assert reader.execute("pragma journal_mode").fetchone() == ("wal",)
    reader.execute("begin")
    reader.execute("select count(*) from transfer_results").fetchall()  # a read snapshot, held
    out, _ = proc.communicate(timeout=600)
    reader.execute("commit")
    reader.close()
    assert proc.returncode == 0, out
    assert "locked" not in out, out
    _all_done_once(db)


def test_a_write_lock_held_for_a_while_delays_the_launch_and_loses_nothing(micro, tmp_path):
    spec, db = spec_and_path(tmp_path, "lock-clears", 2), tmp_path / "c.db"
    proc = _launcher(micro, db, spec)
    _until_a_transfer_runs(proc, db)
    holder = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    holder.execute("begin immediate")  # another writer's lock: SQLite's own wait (5 s) runs out under it
    threading.Timer(15.0, lambda: holder.execute("commit")).start()
    out, _ = proc.communicate(timeout=600)
    holder.close()
    assert proc.returncode == 0, out
    said = [ln for ln in out.splitlines() if "is locked by another connection" in ln]
    assert len(said) == 1 and said[0].startswith(f"warning: the store {db} is locked"), out
    _all_done_once(db)


def test_a_lock_that_outlasts_the_wait_ends_the_launch_in_one_line_and_loses_no_job(micro, tmp_path):
    spec, db = spec_and_path(tmp_path, "lock-stays", 2), tmp_path / "l.db"
    proc = _launcher(micro, db, spec, ZOO_SWEEP_LOCK_WAIT_S="8")
    _until_a_transfer_runs(proc, db)
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("begin immediate")
    try:
        out, _ = proc.communicate(timeout=300)
    finally:
        holder.execute("commit")
        holder.close()
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert proc.returncode == 2, out
    assert lines[-1].startswith(f"error: the store {db} stayed locked for 8 s (ZOO_SWEEP_LOCK_WAIT_S): "), out
    assert "Traceback" not in out
    # the jobs it had in flight could not be marked either: they are still its own, and it is gone
    left = sqlite_rows(db, "select owner from jobs where kind = 'transfer' and state = 'running'")
    assert all(owner and owner.split(":")[1] == str(proc.pid) for owner, in left), left
    r = run_cli("--db", f"sqlite:///{db}", "--home", micro["home"], "launch", str(spec), "--address",
                micro["address"], "--no-progress")
    assert r.returncode == 0, r.stdout + r.stderr
    _all_done_once(db)


def test_a_query_stops_at_its_time_limit_on_postgresql(postgres_url, capsys):
    from conftest import cli

    url = new_pg_database(postgres_url)
    store = Store(url)
    t0 = time.monotonic()
    with pytest.raises(QueryTimeout, match=r"^the query ran longer than 1 s \(--timeout\); "):
        store.query(RUNAWAY, timeout=1)
    assert time.monotonic() - t0 < 20
    assert store.query("select 1 as n")["n"].tolist() == [1]  # the limit went with the query's transaction
    rc, out, err = cli(capsys, "--db", url, "query", RUNAWAY, "--timeout", "1")
    assert rc == 2 and err.strip().splitlines() == [
        "error: the query ran longer than 1 s (--timeout); narrow it down (a WHERE, a LIMIT) or give it more time "
        "with --timeout SECONDS"]
    store.dispose()
