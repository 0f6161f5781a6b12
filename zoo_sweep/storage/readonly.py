"""Read-only access to a store, by construction rather than by looking at the SQL.

Every read of the store (``zoo-sweep query``, status, report, export) runs here:

- SQLite: a connection opened with ``mode=ro`` (the file cannot be written or created), ``PRAGMA
  query_only``, and an authorizer that admits reads only. It refuses ATTACH (which would create a file,
  as ``VACUUM INTO`` does through it), every write, schema change and ANALYZE, and every PRAGMA but those
  that only report.
- PostgreSQL: a session whose transactions are read-only (``default_transaction_read_only`` plus ``SET
  TRANSACTION READ ONLY``), and the statement run as a cursor's query (``DECLARE ... CURSOR FOR``), which
  the server accepts for one SELECT or VALUES statement only, so neither a second statement nor a
  utility command (ANALYZE, COPY, SET) gets through. Functions that the role may call keep their powers:
  give readers of a shared server a role without superuser rights.

A query given a time limit (``zoo-sweep query --timeout``) is stopped by the database when it runs past it:
on SQLite a progress handler aborts the statement, on PostgreSQL the transaction's ``statement_timeout``.
"""

from __future__ import annotations

import decimal
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa

from zoo_sweep.errors import UserError

_READS = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE}
_SCHEMA_TABLES = {"sqlite_master", "sqlite_schema", "sqlite_temp_master", "sqlite_temp_schema"}
# pragmas that only report, with or without an argument (the table or index they describe)
_REPORTING_PRAGMAS = {"table_info", "table_xinfo", "table_list", "index_list", "index_info", "index_xinfo",
                      "foreign_key_list", "foreign_key_check", "integrity_check", "quick_check", "database_list",
                      "collation_list", "function_list", "module_list", "pragma_list", "compile_options"}
# pragmas that report their value when given no argument, and set it with one
_SETTING_PRAGMAS = {"user_version", "schema_version", "application_id", "page_count", "page_size",
                    "freelist_count", "journal_mode", "encoding", "data_version", "auto_vacuum", "query_only",
                    "foreign_keys", "busy_timeout", "cache_size", "max_page_count", "synchronous", "temp_store",
                    "read_uncommitted", "recursive_triggers", "secure_delete", "legacy_alter_table"}


def _authorize(action: int, arg1: str | None, arg2: str | None, _db: str | None, _trigger: str | None) -> int:
    if action in _READS:
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_PRAGMA:
        name = (arg1 or "").lower()
        if name in _REPORTING_PRAGMAS or (name in _SETTING_PRAGMAS and arg2 is None):
            return sqlite3.SQLITE_OK
        return sqlite3.SQLITE_DENY
    if action == sqlite3.SQLITE_UPDATE and arg1 in _SCHEMA_TABLES:
        return sqlite3.SQLITE_OK  # SQLite's own bookkeeping when a table-valued pragma is read
    return sqlite3.SQLITE_DENY


class QueryTimeout(UserError):
    """A query stopped at its time limit."""

    def __init__(self, seconds: float | None):
        # None: no --timeout was given and the server's own statement_timeout stopped it
        limit = f"{seconds:g} s (--timeout)" if seconds is not None else "the server's statement_timeout"
        super().__init__(f"the query ran longer than {limit}; narrow it down (a WHERE, a LIMIT) "
                         "or give it more time with --timeout SECONDS")


def sqlite_readonly_connect(path: str | Path) -> sqlite3.Connection:
    path = Path(path).resolve()
    uri = path.as_uri() + "?mode=ro"
    if _wal_unopenable(path):
        # a reader of a WAL store must create its -shm index beside it; where it cannot (a folder this user
        # may not write) and no writer has the store open (no -wal), the file is read as it stands. A writer
        # that starts meanwhile appends to its -wal and changes the file itself only at a checkpoint.
        uri += "&immutable=1"
    con = sqlite3.connect(uri, uri=True, check_same_thread=False)
    con.execute("PRAGMA busy_timeout = 30000")  # readers may overlap a launcher's writes
    con.execute("PRAGMA query_only = ON")
    con.set_authorizer(_authorize)
    return con


def _wal_unopenable(path: Path) -> bool:
    """A store in WAL mode (header bytes 18-19 are 2) that no connection holds (no -wal file), in a folder
    this user cannot write."""
    try:
        with open(path, "rb") as f:
            header = f.read(20)
    except OSError:
        return False
    return (header[18:20] == b"\x02\x02" and not os.access(path.parent, os.W_OK)
            and not path.with_name(path.name + "-wal").exists())


def readonly_engine(url: sa.URL) -> sa.Engine:
    """An engine whose connections can only read the store at ``url``."""
    if url.get_backend_name() == "sqlite":
        assert url.database is not None  # sqlite:// (in memory) gets no read-only engine (Store.readonly)
        path = Path(url.database).resolve()
        return sa.create_engine(url, creator=lambda: sqlite_readonly_connect(path))
    if url.get_backend_name() == "postgresql":
        return sa.create_engine(url, connect_args={"options": "-c default_transaction_read_only=on"},
                                pool_size=2)
    return sa.create_engine(url)  # other databases: rolled back after each read, no more


def run_query(engine: sa.Engine, sql: str, params: dict[str, Any] | None = None,
              timeout: float | None = None) -> pd.DataFrame:
    """One read-only statement; its rows as a frame (SQL NUMERIC comes back as float). ``timeout``: seconds
    after which the database stops it (QueryTimeout); None: no limit."""
    dbapi = engine.dialect.loaded_dbapi
    stopped: list[bool] = []  # SQLite: the progress handler fired
    try:
        with engine.connect() as conn:
            raw: Any = conn.connection.driver_connection  # the driver's own connection: untyped
            try:
                if engine.dialect.name == "postgresql":
                    cols, rows = _pg_cursor_query(conn, sql, params, timeout)
                else:
                    if timeout is not None and engine.dialect.name == "sqlite":
                        raw.set_progress_handler(_deadline(time.monotonic() + timeout, stopped), 10_000)
                    result = conn.execute(sa.text(sql), params or {})
                    cols, rows = (list(result.keys()), result.fetchall()) if result.returns_rows else ([], [])
            finally:
                if engine.dialect.name == "sqlite":
                    raw.set_progress_handler(None, 0)  # the connection goes back to the pool without a limit
                conn.rollback()
    except sa.exc.DBAPIError as e:
        if stopped or _timed_out(e.orig):
            raise QueryTimeout(timeout) from None
        raise UserError(f"query failed: {_first_line(e.orig)}{_hint(e.orig)}") from None
    except dbapi.Error as e:
        if stopped or _timed_out(e):
            raise QueryTimeout(timeout) from None
        raise UserError(f"query failed: {_first_line(e)}{_hint(e)}") from None
    return _numbers_as_floats(pd.DataFrame(rows, columns=cols))


def _deadline(at: float, stopped: list[bool]) -> Callable[[], bool]:
    """A SQLite progress handler, called every few thousand steps of the statement: a true value aborts it.
    Inside the statement, so no other thread is needed and nothing outlives the query."""

    def check() -> bool:
        if time.monotonic() > at:
            stopped.append(True)
            return True
        return False

    return check


def _timed_out(e: BaseException | None) -> bool:
    """PostgreSQL's query_canceled (57014) from statement_timeout."""
    return getattr(e, "sqlstate", None) == "57014" and "statement timeout" in str(e)


def _pg_cursor_query(conn: sa.Connection, sql: str, params: dict[str, Any] | None,
                     timeout: float | None = None) -> tuple[list[str], Sequence[Any]]:
    conn.exec_driver_sql("SET TRANSACTION READ ONLY")
    if timeout is not None:  # this transaction only (it is rolled back after the query)
        conn.exec_driver_sql(f"SET LOCAL statement_timeout = {max(1, round(timeout * 1000))}")
    compiled = sa.text(sql).compile(dialect=conn.dialect)
    raw: Any = conn.connection.driver_connection  # psycopg's connection: untyped here
    with raw.cursor(name="zoo_sweep_query") as cur:  # a server-side cursor: DECLARE ... CURSOR FOR <sql>
        cur.execute(str(compiled), compiled.construct_params(params or {}))
        rows = cur.fetchall()
        cols = [d.name for d in cur.description] if cur.description else []
    return cols, rows


def _first_line(e: BaseException | None) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def _hint(e: BaseException | None) -> str:
    text = str(e).lower()
    if ("not authorized" in text or "authorization denied" in text or "read-only" in text or "readonly" in text
            or "syntax error at or near" in text):
        return " (queries are read-only: one SELECT statement)"
    if "multiple commands" in text or "one statement at a time" in text:
        return " (one statement per query)"
    return ""


def _numbers_as_floats(df: pd.DataFrame) -> pd.DataFrame:
    for c in df.columns:
        if df[c].dtype == object:
            vals = df[c].dropna()
            if len(vals) and all(isinstance(v, decimal.Decimal) for v in vals):
                df[c] = df[c].astype(float)
    return df
