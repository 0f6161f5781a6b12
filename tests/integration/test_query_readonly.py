"""`zoo-sweep query` cannot change the store, on either backend: every statement that writes, changes the
schema or a setting, attaches or creates a file, or smuggles a second statement in ends in one error line
with exit code 2, and the store is byte for byte (SQLite) or dump for dump (PostgreSQL) what it was, with
no new file beside it. Reads, including the pragmas that only report, still work."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import _pg_binary, cli

from zoo_sweep.storage.store import Store

# the statements found to persist before `query` was read-only by construction, and more of their kind
BOTH = [
    "with t as (select 1) delete from jobs",
    "drop table pairs",
    "create table evil(x)",
    "analyze",
    "pragma journal_mode=wal",
    "pragma user_version=7",
    "attach database '{tmp}/x.db' as x",
    "vacuum into '{tmp}/copy.db'",
    "delete from sweep_jobs; commit",
    "select 1; delete from jobs",
    "commit; delete from jobs",
    "update jobs set state = 'done'",
    "insert into sweep_jobs values ('x', 'y')",
    "create temp table t(x)",
    "begin",
    "savepoint a",
    "vacuum",
    "reindex",
]
SQLITE = ["pragma query_only=off", "detach database main", "pragma writable_schema=on",
          "select * from jobs; pragma query_only=off"]
POSTGRES = ["copy (select 1) to '{tmp}/out.csv'", "copy jobs from '{tmp}/in.csv'",
            "set default_transaction_read_only = off", "do $$ begin delete from jobs; end $$",
            "explain analyze delete from jobs", "truncate jobs", "lock table jobs", "listen x",
            "create extension if not exists pg_trgm", "checkpoint",
            "set transaction read write; delete from jobs", "prepare p as delete from jobs",
            "select set_config('default_transaction_read_only', 'off', false); delete from jobs"]
# a SELECT whose function the server lets a superuser call even in a read-only transaction: it runs, and the
# rollback after every query leaves nothing (readers of a shared server should not be superusers anyway)
POSTGRES_ROLLED_BACK = ["select lo_import('/etc/hostname')", "select lo_creat(-1)"]


@pytest.fixture
def filled(store_url):
    """A store with a sweep, jobs, models and pairs."""
    store = Store(store_url)
    store.write_plan({"name": "s", "spec": "{}", "spec_hash": "h", "path": None},
                     [{"name": m, "eval_set": "e", "arch": m, "family": "cnn", "params": 1} for m in ("a", "b")],
                     [{"id": i, "kind": "transfer", "payload": json.dumps({"i": i})} for i in ("j1", "j2")], "s")
    store.write_pairs("j1", [{"eval_set": "e", "student": "a", "teacher": "b", "rho_pos": 3.0}])
    store.dispose()
    return store_url


def _snapshot(url: str, folder) -> tuple:
    """SQLite: the file's bytes and its write-ahead log's (a WAL store's reader opens the log and its index
    beside the file, empty); PostgreSQL: pg_dump of the database. With the folder's listing."""
    u = sa.engine.make_url(url)
    files = sorted(p.name for p in folder.iterdir() if not p.name.endswith(("-wal", "-shm")))
    if u.get_backend_name() == "sqlite":
        wal = Path(u.database + "-wal")
        return open(u.database, "rb").read(), wal.read_bytes() if wal.exists() else b"", files
    dump = _pg_binary("pg_dump")
    r = subprocess.run([dump, "-h", u.host, "-p", str(u.port), "-U", u.username, "--no-owner", u.database],
                       capture_output=True, text=True, check=True)
    # \restrict / \unrestrict lines carry a random key per dump
    return [ln for ln in r.stdout.splitlines() if not ln.startswith(("\\restrict", "\\unrestrict"))], files


def _statements(url: str) -> list[str]:
    return BOTH + (SQLITE if url.startswith("sqlite") else POSTGRES)


def test_no_statement_changes_the_store(filled, tmp_path, capsys):
    if not filled.startswith("sqlite") and not _pg_binary("pg_dump"):
        pytest.skip("pg_dump not installed")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    scratch.chmod(0o777)  # so the PostgreSQL server could write there, were a COPY let through
    before = _snapshot(filled, tmp_path)
    refused = []
    for sql in _statements(filled):
        sql = sql.replace("{tmp}", str(scratch))
        rc, out, err = cli(capsys, "--db", filled, "query", sql)
        lines = err.strip().splitlines()
        assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: query failed: "), (sql, rc, out, err)
        assert "Traceback" not in err
        refused.append(sql)
        assert _snapshot(filled, tmp_path) == before, sql
        assert list(scratch.iterdir()) == [], sql
    assert len(refused) == len(_statements(filled))
    for sql in [] if filled.startswith("sqlite") else POSTGRES_ROLLED_BACK:
        cli(capsys, "--db", filled, "query", sql)
        assert _snapshot(filled, tmp_path) == before, sql


def test_reads_still_work(filled, capsys):
    rc, out, err = cli(capsys, "--db", filled, "query", "select student, teacher, rho_pos from pairs", "-f", "json")
    assert rc == 0 and json.loads(out) == [{"student": "a", "teacher": "b", "rho_pos": 3.0}]
    rc, out, err = cli(capsys, "--db", filled, "query", "select count(*) as n from jobs where payload like '%i%'",
                       "-f", "csv")
    assert rc == 0 and out.split() == ["n", "2"]
    if filled.startswith("sqlite"):
        for sql in ("pragma table_info(jobs)", "select name from pragma_table_info('jobs')", "pragma user_version"):
            rc, out, err = cli(capsys, "--db", filled, "query", sql, "-f", "json")
            assert rc == 0, (sql, err)
    else:
        rc, out, err = cli(capsys, "--db", filled, "query", "values (1, 'a')", "-f", "json")
        assert rc == 0, err


def test_query_on_a_missing_store_creates_nothing(tmp_path, capsys):
    rc, out, err = cli(capsys, "--db", f"sqlite:///{tmp_path / 'nope.db'}", "query", "select 1")
    assert rc == 2 and "no store at" in err
    assert list(tmp_path.iterdir()) == []


def test_status_report_query_export_on_both_backends(store_url, tmp_path, capsys):
    """The commands that read a store, on a finished synthetic sweep: the same tables from both backends
    (PostgreSQL has no round(double precision, integer): neither status nor the report may use it)."""
    import pandas as pd
    from test_report import synth_store

    from zoo_sweep.report.build import make_report

    store = synth_store(store_url, n_models=5)
    with store.engine.begin() as conn:  # seconds, so that status sums and rounds them
        conn.execute(sa.text("update jobs set seconds = 1.25"))
    rc, out, err = cli(capsys, "--db", store_url, "status")
    assert rc == 0, err
    assert "jobs per stage and state" in out and "slowest 5 finished jobs" in out
    rc, out, err = cli(capsys, "--db", store_url, "query", "select count(*) as n from pairs", "-f", "json")
    assert (rc, json.loads(out)) == (0, [{"n": 20}])
    rc, out, err = cli(capsys, "--db", store_url, "export", "--out", str(tmp_path / "pq"))
    assert rc == 0 and len(pd.read_parquet(tmp_path / "pq" / "pairs.parquet")) == 20
    rep = make_report(store, "synth", "e", tmp_path / "rep", num_classes=10, n_boot=200)
    models = pd.read_csv(tmp_path / "rep" / "models_view.csv")
    assert models["accuracy"].round(2).equals(models["accuracy"]) and len(models) == 5
    # the same synthetic store on SQLite gives the same report tables
    ref = synth_store(tmp_path / "ref.db", n_models=5)
    make_report(ref, "synth", "e", tmp_path / "ref", num_classes=10, n_boot=200)
    for t in rep.tables:
        got, want = (pd.read_csv(d / f"{t.key}.csv") for d in (tmp_path / "rep", tmp_path / "ref"))
        pd.testing.assert_frame_equal(got, want, check_exact=False, rtol=1e-9, obj=t.key)
    store.dispose()
    shutil.rmtree(tmp_path / "pq")


def test_reading_commands_never_import_torch(tmp_path):
    """query, status, export and db run where a store is read (a login node, a laptop with a copy of the
    store): none imports torch, timm or Ray. A fresh interpreter each: this session has torch loaded."""
    import os
    import sys
    from pathlib import Path

    db = f"sqlite:///{tmp_path / 'zoo.db'}"
    store = Store(db)
    store.write_plan({"name": "s", "spec": "{}", "spec_hash": "h", "path": None}, [],
                     [{"id": "a", "kind": "transfer", "payload": "{}"}], "s")
    store.dispose()
    root = Path(__file__).resolve().parents[2]
    for argv in (["query", "select count(*) from jobs"], ["status"], ["export", "--out", str(tmp_path / "pq")],
                 ["db", "version"]):
        code = ("import sys\nfrom zoo_sweep.cli import main\n"
                f"try:\n    rc = main({['--db', db, *argv]!r})\nexcept SystemExit as e:\n    rc = e.code or 0\n"
                "bad = sorted(m for m in ('torch', 'timm', 'torchvision', 'ray') if m in sys.modules)\n"
                "print('IMPORTED', bad)\nsys.exit(rc)")
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=120,
                           env={**os.environ})
        assert r.returncode == 0, (argv, r.stdout + r.stderr)
        assert "IMPORTED []" in r.stdout, (argv, r.stdout[-2000:])
