"""Schema versions on both backends: a new store is stamped at the newest version, the migrations build the
same tables as schema.py, a store of the first layout (a committed fixture written by that release's code:
tests/fixtures/make_store_v1.py) is upgraded in place with every row kept, and a store of another version,
a damaged one or a file that is no store at all is refused with one line and left as it was."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa
from conftest import cli

from zoo_sweep.errors import UserError
from zoo_sweep.storage import migrate
from zoo_sweep.storage.schema import SCHEMA_VERSION, V1_TABLES, VERSION_TABLE, metadata
from zoo_sweep.storage.store import Store

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "store_v1.db"
UPGRADE_LINE = f"store schema is version 1, this zoo-sweep needs {SCHEMA_VERSION}: run `zoo-sweep db upgrade`"


def _schema_diff(url: str) -> list:
    """What Alembic's autogenerate finds between the database and schema.py's tables."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True, "version_table": VERSION_TABLE})
            return compare_metadata(ctx, metadata)
    finally:
        engine.dispose()


def _version(url: str) -> list[str]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        got = conn.execute(sa.text(f"select version_num from {VERSION_TABLE}")).scalars().all()
    engine.dispose()
    return got


def _v1_rows() -> dict[str, pd.DataFrame]:
    with sqlite3.connect(FIXTURE) as c:
        return {t: pd.read_sql(f"select * from {t}", c) for t in V1_TABLES}


def _rows(url: str, table: str, order: list[str]) -> pd.DataFrame:
    return Store(url, create=False).query(f"select * from {table} order by {', '.join(order)}")


def _v1_store(store_url: str, tmp_path: Path) -> str:
    """The fixture as a store at ``store_url``: the file itself on SQLite; on PostgreSQL the first layout
    built by migration 0001 and the fixture's rows copied in."""
    if store_url.startswith("sqlite"):
        shutil.copy(FIXTURE, tmp_path / "zoo.db")
        return store_url
    from alembic import command

    engine = sa.create_engine(store_url)
    with migrate._locked(engine) as conn:
        command.upgrade(migrate.alembic_config(conn), "0001")
        conn.execute(sa.text(f"drop table {VERSION_TABLE}"))  # the first layout had no version table
        meta = sa.MetaData()
        meta.reflect(conn)
        for table, df in _v1_rows().items():
            rows = df.astype(object).where(df.notna(), None).to_dict("records")
            if table == "transfer_results":
                rows = [{**r, "final": bool(r["final"])} for r in rows]
            conn.execute(meta.tables[table].insert(), rows)
    engine.dispose()
    return store_url


def test_the_schema_version_is_the_newest_migration():
    assert migrate.revision(SCHEMA_VERSION) == migrate.head_revision()


def test_a_new_store_is_stamped_at_the_newest_version(store_url):
    Store(store_url).dispose()
    assert _version(store_url) == [migrate.revision(SCHEMA_VERSION)]
    assert _schema_diff(store_url) == []


def test_the_migrations_build_the_tables_schema_py_declares(store_url):
    from alembic import command

    engine = sa.create_engine(store_url)
    with migrate._locked(engine) as conn:
        command.upgrade(migrate.alembic_config(conn), "head")
    engine.dispose()
    assert _schema_diff(store_url) == []
    Store(store_url, create=False).dispose()  # opens as a current store


def test_a_first_layout_store_is_upgraded_in_place_keeping_every_row(store_url, tmp_path, capsys):
    url = _v1_store(store_url, tmp_path)
    rc, out, err = cli(capsys, "--db", url, "status")
    assert rc == 2 and err.strip().splitlines() == [f"error: {UPGRADE_LINE} ({_where(url)})"]
    rc, out, err = cli(capsys, "--db", url, "db", "version")
    assert rc == 0 and f"store schema version 1; this zoo-sweep needs {SCHEMA_VERSION}" in out

    rc, out, err = cli(capsys, "--db", url, "db", "upgrade")
    assert rc == 0, err
    assert f"upgraded the store from schema version 1 to {SCHEMA_VERSION}" in out
    assert _version(url) == [migrate.revision(SCHEMA_VERSION)] and _schema_diff(url) == []

    before = _v1_rows()
    keys = {"sweeps": ["name"], "models": ["name", "eval_set"], "jobs": ["id"], "sweep_jobs": ["sweep", "job_id"],
            "pairs": ["eval_set", "student", "teacher"], "transfer_results": ["job_id", "epoch"]}
    for table, order in keys.items():
        after = _rows(url, table, order)
        want = before[table].sort_values(order, ignore_index=True)
        if table == "jobs":
            assert after["owner"].isna().all() and after["lease_until"].isna().all()
            after = after.drop(columns=["owner", "lease_until"]).rename(columns={"payload": "spec"})
        if table == "transfer_results":
            after["final"] = after["final"].astype(int)
            after = after.rename(columns={"transfer_rate_sample": "transfer_rate"})  # version 5's name
        pd.testing.assert_frame_equal(after[list(want.columns)], want, check_dtype=False)
    # the multi-teacher job's teachers come from its payload: "cnn_a+vit+b" is two teachers, not three
    teachers = _rows(url, "job_teachers", ["job_id", "position"])
    assert teachers.values.tolist() == [["t-00000000000000ff", 0, "cnn_a"], ["t-00000000000000ff", 1, "vit+b"]]

    rc, out, err = cli(capsys, "--db", url, "query", "select count(*) as n from transfer_results", "-f", "json")
    assert (rc, out.strip()) == (0, '[{"n":14}]')
    rc, out, err = cli(capsys, "--db", url, "status")
    assert rc == 0 and "failed transfer t-00000000000000dd after 1 attempt(s): ValueError: boom" in out
    rc, out, err = cli(capsys, "--db", url, "db", "upgrade")
    assert rc == 0 and f"store schema is version {SCHEMA_VERSION} already" in out


def test_an_upgraded_first_layout_store_reports_a_name_with_plus_as_one_teacher(tmp_path):
    from zoo_sweep.report.build import make_report

    url = _v1_store(f"sqlite:///{tmp_path / 'zoo.db'}", tmp_path)
    migrate.upgrade(Store(url, check=False).engine, "fixture")
    rep = make_report(Store(url, create=False), "legacy", "digits:eval", tmp_path / "rep", num_classes=10, n_boot=50)
    tables = {t.key: t.data for t in rep.tables}
    mt = tables["multi_teacher"]
    assert mt[["student", "teachers", "n_teachers"]].values.tolist() == [["mlp_c", "cnn_a+vit+b", 2]]
    assert mt["singles_run"].iloc[0] == 2  # mlp_c <- cnn_a by kl and by kl_dp
    methods = tables["methods"].set_index("method")
    assert methods.loc["kl", "pairs"] == 3 and methods.loc["kl_dp", "pairs"] == 3  # vit+b's pairs are pairs


def test_a_store_newer_than_the_code_is_refused(store_url, capsys):
    Store(store_url).dispose()
    engine = sa.create_engine(store_url)
    with engine.begin() as conn:
        conn.execute(sa.text(f"update {VERSION_TABLE} set version_num = '0099'"))
    engine.dispose()
    for argv in (["status"], ["query", "select 1"], ["export", "--out", "/nonexistent/x"], ["db", "upgrade"]):
        rc, out, err = cli(capsys, "--db", store_url, *argv)
        assert rc == 2 and len(err.strip().splitlines()) == 1, (argv, err)
        assert f"store schema is version 99, newer than this zoo-sweep knows ({SCHEMA_VERSION}): upgrade " \
               "zoo-sweep" in err
    assert _version(store_url) == ["0099"]


def _where(url: str) -> str:
    u = sa.engine.make_url(url)
    return u.database if u.get_backend_name() == "sqlite" else u.render_as_string(hide_password=True)


@pytest.mark.parametrize("case", ["not_sqlite", "foreign_tables", "empty_file", "lacks_a_column", "folder"])
def test_a_broken_store_is_one_line_and_left_alone(case, tmp_path, capsys):
    db = tmp_path / "zoo.db"
    expect = {"not_sqlite": f"not a zoo-sweep store: {db} is not an SQLite database",
              "foreign_tables": f"not a zoo-sweep store: {db} holds other tables (notes)",
              "empty_file": f"no zoo-sweep store in {db} (the database is empty)",
              "lacks_a_column": f"store schema is version {SCHEMA_VERSION} but {db} lacks column "
                                "transfer_results.seed",
              "folder": f"not a zoo-sweep store: {db} is a folder"}[case]
    if case == "not_sqlite":
        db.write_bytes(b"model,accuracy\ncnn,71.2\n" * 50)
    elif case == "foreign_tables":
        with sqlite3.connect(db) as c:
            c.execute("create table notes(x)")
    elif case == "empty_file":
        db.touch()
    elif case == "lacks_a_column":
        Store(f"sqlite:///{db}").dispose()
        with sqlite3.connect(db) as c:
            # not a metric column: those are added by `db upgrade` (tests/unit/test_metric_columns.py)
            c.execute("alter table transfer_results drop column seed")
    else:
        db.mkdir()
    before = db.read_bytes() if db.is_file() else None
    for argv in (["status"], ["query", "select 1"], ["export", "--out", str(tmp_path / "pq")],
                 ["report", "--out", str(tmp_path / "rep")]):
        rc, out, err = cli(capsys, "--db", f"sqlite:///{db}", *argv)
        lines = err.strip().splitlines()
        assert rc == 2 and len(lines) == 1 and expect in lines[0], (argv, err)
    if case != "empty_file":  # an empty database is where a new store is made; nothing else is written over
        with pytest.raises(UserError, match=expect.split(":")[0]):
            Store(f"sqlite:///{db}")
    assert (db.read_bytes() if db.is_file() else None) == before
    assert not (tmp_path / "pq").exists() and not (tmp_path / "rep").exists()


def test_a_store_deleted_while_in_use_is_one_line(tmp_path):
    """SQLite keeps writing into a deleted file's open handle: the store notices and stops instead of
    losing results silently, and never creates an empty store in its place."""
    db = tmp_path / "zoo.db"
    store = Store(f"sqlite:///{db}")
    store.write_plan({"name": "s", "spec": "{}", "spec_hash": "h", "path": None}, [],
                     [{"id": "a", "kind": "transfer", "payload": "{}"}], "s")
    db.unlink()
    for write in (lambda: store.finish_job("a", "done"), lambda: store.claim_job("a", "me:1:x", 1e12),
                  lambda: store.query("select 1"), lambda: store.job_states("s")):
        with pytest.raises(UserError, match="was deleted or replaced while in use"):
            write()
    assert not db.exists()


def test_export_writes_every_column_of_every_table(store_url, tmp_path, capsys):
    """Parquet files hold every column the database has: all-NULL ones, and one this code does not know."""
    import pyarrow.parquet as pq

    store = Store(store_url)
    store.write_plan({"name": "s", "spec": "{}", "spec_hash": "h", "path": None},
                     [{"name": "m", "eval_set": "e", "arch": "a", "family": "cnn", "params": 1}],
                     [{"id": "a", "kind": "transfer", "payload": "{}"}], "s")
    with store.engine.begin() as conn:
        conn.execute(sa.text("alter table models add column note varchar"))  # e.g. added by a newer zoo-sweep
    rc, out, err = cli(capsys, "--db", store_url, "export", "--out", str(tmp_path / "pq"))
    assert rc == 0, err
    insp = sa.inspect(store.engine)
    for table in metadata.tables:
        cols = [c["name"] for c in insp.get_columns(table)]
        assert pq.read_schema(tmp_path / "pq" / f"{table}.parquet").names == cols, table
    assert "note" in pq.read_schema(tmp_path / "pq" / "models.parquet").names
    assert not (tmp_path / "pq" / f"{VERSION_TABLE}.parquet").exists()
    (tmp_path / "afile").write_text("x")
    rc, out, err = cli(capsys, "--db", store_url, "export", "--out", str(tmp_path / "afile"))
    assert rc == 2 and "is a file" in err and len(err.strip().splitlines()) == 1
    store.dispose()


def test_report_out_at_a_file_is_one_line(tmp_path):
    from zoo_sweep.report.build import make_report

    store = Store(f"sqlite:///{tmp_path / 'zoo.db'}")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(UserError, match="is a file; give a folder"):
        make_report(store, "s", "e", tmp_path / "afile", n_boot=10)
    with pytest.raises(UserError, match="cannot write the report to"):
        make_report(store, "s", "e", "/proc/no/such/place", n_boot=10)
