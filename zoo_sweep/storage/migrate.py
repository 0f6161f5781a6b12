"""Schema versions: what a database holds, creating a new store, and upgrading an old one in place.

A store records its version in the ``schema_version`` table (Alembic's version table). A store written
before that table existed is version 1 when it has the first layout's tables. Creating and upgrading run
in one transaction under a lock (SQLite: BEGIN IMMEDIATE; PostgreSQL: an advisory lock), so two launchers
that open a new store at once create it once, and a failed upgrade leaves the store as it was.

Opening a store never changes its schema except by creating an empty one: an older store is refused with
the command that upgrades it, a newer one with a line saying so.

Metric columns are not versioned: ``schema.METRIC_COLUMNS`` comes from the metrics the science and transfer
layers declare, and ``upgrade`` adds each one a store lacks (a nullable column: NULL for results written before
it), after the migration scripts. So a new metric needs no migration script, and a store that lacks its column
is refused on open with the same one command, ``zoo-sweep db upgrade``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from zoo_sweep.errors import UserError
from zoo_sweep.storage.schema import METRIC_COLUMNS, SCHEMA_VERSION, V1_TABLES, VERSION_TABLE, metadata

if TYPE_CHECKING:  # alembic is imported where it is used, by the commands that need it
    from alembic.config import Config

MIGRATIONS = Path(__file__).with_name("migrations")
_LOCK_KEY = 0x7A6F6F  # PostgreSQL advisory lock held while a store is created or upgraded
_version_table = sa.Table(VERSION_TABLE, sa.MetaData(), sa.Column("version_num", sa.String(32), primary_key=True))


@dataclass(frozen=True)
class Found:
    """What a database holds: ``version`` None means no tables at all (a new store)."""
    version: int | None
    tables: frozenset[str]


def revision(version: int) -> str:
    return f"{version:04d}"


def inspect_store(conn: sa.Connection, where: str) -> Found:
    """The schema version of the database behind ``conn``; UserError when it is no zoo-sweep store.
    ``where``: how to name the store in messages."""
    tables = frozenset(sa.inspect(conn).get_table_names())
    if not tables:
        return Found(None, tables)
    if VERSION_TABLE in tables:
        found = conn.execute(sa.select(_version_table.c.version_num)).scalars().all()
        if len(found) != 1 or not found[0].isdigit():
            raise UserError(f"not a zoo-sweep store: {where} has an unreadable {VERSION_TABLE} table ({found})")
        return Found(int(found[0]), tables)
    if set(V1_TABLES) <= tables:
        # written before the version table existed: the first layout, whose jobs table still has ``spec``
        # (version 2 renamed it). A later layout without the table lost it outside zoo-sweep: upgrading it from
        # version 1 would replay migrations it already has, so it is refused, naming what is missing.
        jobs = {c["name"] for c in sa.inspect(conn).get_columns("jobs")}
        if "spec" in jobs and "payload" not in jobs:
            return Found(1, tables)
        raise UserError(f"{where} has the tables of a zoo-sweep store after version 1 but no {VERSION_TABLE} table "
                        "(it was dropped or changed outside zoo-sweep), so its version is unknown: restore the "
                        "store from a copy, or start a new one")
    raise UserError(f"not a zoo-sweep store: {where} holds other tables ({', '.join(sorted(tables)[:5])})")


def check_current(conn: sa.Connection, found: Found, where: str) -> None:
    """UserError unless the store is at this code's version with every table and column it expects."""
    v = found.version
    assert v is not None  # callers check for an empty database (no version) first
    if v < SCHEMA_VERSION:
        raise UserError(f"store schema is version {v}, this zoo-sweep needs {SCHEMA_VERSION}: run "
                        f"`zoo-sweep db upgrade` ({where})")
    if v > SCHEMA_VERSION:
        raise UserError(f"store schema is version {v}, newer than this zoo-sweep knows ({SCHEMA_VERSION}): "
                        f"upgrade zoo-sweep to use {where}")
    missing = _missing_columns(conn, found.tables)
    metrics = [m for m in missing if m in _metric_names()]
    if metrics and len(metrics) == len(missing):
        raise UserError(f"store {where} lacks the column(s) of metrics this zoo-sweep records "
                        f"({', '.join(c.split(' ', 1)[1] for c in metrics[:4])}{' ...' if len(metrics) > 4 else ''}): "
                        "run `zoo-sweep db upgrade` (it adds them; earlier results keep NULL there)")
    if missing:
        raise UserError(f"store schema is version {v} but {where} lacks {', '.join(missing[:4])}"
                        f"{' ...' if len(missing) > 4 else ''}: it was changed outside zoo-sweep; "
                        "restore it from a copy or start a new store")


def _missing_columns(conn: sa.Connection, tables: frozenset[str]) -> list[str]:
    insp = sa.inspect(conn)
    out = []
    for name, table in metadata.tables.items():
        if name not in tables:
            out.append(f"table {name}")
            continue
        have = {c["name"] for c in insp.get_columns(name)}
        out += [f"column {name}.{c.name}" for c in table.columns if c.name not in have]
    return out


def _metric_names() -> set[str]:
    return {f"column {table}.{c}" for table, cols in METRIC_COLUMNS.items() for c in cols}


def add_metric_columns(conn: sa.Connection) -> list[str]:
    """Add the declared metric columns the store's tables lack (``table.column`` of each, returned)."""
    insp = sa.inspect(conn)
    added = []
    for name, cols in METRIC_COLUMNS.items():
        have = {c["name"] for c in insp.get_columns(name)}
        for col in (metadata.tables[name].c[c] for c in cols if c not in have):
            kind = col.type.compile(dialect=conn.dialect)
            quote = conn.dialect.identifier_preparer.quote
            conn.execute(sa.text(f"ALTER TABLE {quote(name)} ADD COLUMN {quote(col.name)} {kind}"))
            added.append(f"{name}.{col.name}")
    return added


@dataclass(frozen=True)
class Upgraded:
    before: int
    after: int
    added: tuple[str, ...] = ()  # metric columns added (``table.column``)


def create_or_check(engine: sa.Engine, where: str, create: bool) -> None:
    """Open check of a store: create it when empty (and ``create``), else require the current schema."""
    with engine.connect() as conn:
        found = inspect_store(conn, where)
        if found.version is not None:
            check_current(conn, found, where)
            return
    if not create:
        raise UserError(f"no zoo-sweep store in {where} (the database is empty); run `zoo-sweep plan SPEC` "
                        "or `zoo-sweep demo` first")
    with _locked(engine) as conn:
        found = inspect_store(conn, where)  # another process may have created it meanwhile
        if found.version is None:
            metadata.create_all(conn)
            _version_table.create(conn)
            conn.execute(_version_table.insert().values(version_num=revision(SCHEMA_VERSION)))
            return
    with engine.connect() as conn:
        check_current(conn, inspect_store(conn, where), where)


def upgrade(engine: sa.Engine, where: str) -> Upgraded:
    """Upgrade the store in place to this code's version and metric columns."""
    from alembic import command

    with _locked(engine) as conn:
        found = inspect_store(conn, where)
        if found.version is None:
            raise UserError(f"no zoo-sweep store in {where} (the database is empty); nothing to upgrade")
        if found.version > SCHEMA_VERSION:
            check_current(conn, found, where)  # raises: newer than this code
        if found.version < SCHEMA_VERSION:
            cfg = alembic_config(conn)
            try:
                if VERSION_TABLE not in found.tables:
                    command.stamp(cfg, revision(found.version))
                command.upgrade(cfg, revision(SCHEMA_VERSION))
            except sa.exc.DBAPIError as e:  # rolled back with the whole transaction (_locked)
                msg = (str(e.orig).strip().splitlines() or [type(e.orig).__name__])[0]
                raise UserError(f"cannot upgrade {where} from schema version {found.version}: {msg}; the store "
                                "is as it was (the upgrade is one transaction)") from None
        added = tuple(add_metric_columns(conn))
        check_current(conn, inspect_store(conn, where), where)
        return Upgraded(found.version, SCHEMA_VERSION, added)


def alembic_config(conn: sa.Connection | None) -> Config:
    """An Alembic configuration without alembic.ini: the package's migrations, run on ``conn``."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = conn
    return cfg


def head_revision() -> str:
    """The newest migration script (tests hold SCHEMA_VERSION to it)."""
    from alembic.script import ScriptDirectory

    cfg = alembic_config(None)  # no connection: the scripts are only read
    head = ScriptDirectory.from_config(cfg).get_current_head()
    assert head is not None  # None only without migration scripts, and the package ships them
    return head


@contextlib.contextmanager
def _locked(engine: sa.Engine) -> Iterator[sa.Connection]:
    """A connection in a transaction that no other creator or upgrader runs beside, committed at the end.
    SQLite: the driver's own transaction handling is switched off, so DDL is part of the transaction too."""
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            _driver(conn).isolation_level = None  # we say when transactions begin
            try:
                conn.exec_driver_sql("BEGIN IMMEDIATE")
                try:
                    yield conn
                except BaseException:
                    conn.exec_driver_sql("ROLLBACK")
                    raise
                conn.exec_driver_sql("COMMIT")
            finally:
                _driver(conn).isolation_level = ""  # back to the driver's default
            return
        with conn.begin():
            if engine.dialect.name == "postgresql":
                conn.execute(sa.text("select pg_advisory_xact_lock(:k)"), {"k": _LOCK_KEY})
            yield conn


def _driver(conn: sa.Connection) -> Any:
    """The driver's own connection (sqlite3's), whose settings SQLAlchemy does not type."""
    return conn.connection.driver_connection
