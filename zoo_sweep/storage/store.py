"""The results store: SQLite by default, any SQLAlchemy URL (PostgreSQL for shared use).

Only the driver writes it: workers return results, the launcher records them. Every write that belongs
together (a job's result rows and its state) is one transaction, so a killed launcher never leaves a
half-written result.

A SQLite store on a local disk is in WAL mode, so readers (``query``, ``status``, ``report``) never hold up
the launcher's writes. A write that still meets a lock (another writer, a reader on a network filesystem,
where the store keeps SQLite's rollback journal) is retried for up to ``ZOO_SWEEP_LOCK_WAIT_S`` seconds, and
the transaction is whole or absent each time, so retrying it is safe.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sqlite3
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from zoo_sweep.errors import UserError
from zoo_sweep.paths import refuse_folders, writable_dir, write_atomic
from zoo_sweep.storage import migrate
from zoo_sweep.storage.leases import env_seconds, owner_dead
from zoo_sweep.storage.readonly import readonly_engine, run_query
from zoo_sweep.storage.schema import (  # noqa: F401  (the tables, re-exported for callers of the store)
    JOB_STATES,
    SCHEMA_VERSION,
    VERSION_TABLE,
    job_teachers,
    jobs,
    metadata,
    models,
    pairs,
    sweep_jobs,
    sweeps,
    transfer_results,
)
from zoo_sweep.transfer.result_metrics import TRANSFER_METRICS  # noqa: F401
from zoo_sweep.urls import mask_url, scrub

if TYPE_CHECKING:
    from sqlalchemy.engine.interfaces import DBAPIConnection
    from sqlalchemy.pool import ConnectionPoolEntry

_T = TypeVar("_T")
_F = TypeVar("_F", bound=Callable[..., Any])
_Q = TypeVar("_Q", bound="sa.Select[Any]")

DEFAULT_DB = "sqlite:///results/zoo.db"
# SQLite's own wait for a lock, per statement: short, so that a longer wait is said (Store._retry_locked)
BUSY_TIMEOUT_S = 5.0
LOCK_WAIT_ENV = "ZOO_SWEEP_LOCK_WAIT_S"
DEFAULT_LOCK_WAIT_S = 300.0  # how long a write keeps trying a locked store, in all
# WAL only where asked for: in a full test run, copies taken with SQLite's backup API from a WAL store that other
# processes held open failed with "disk I/O error" and a store then read as malformed, cause not yet found; the
# rollback journal (SQLite's default) with retried writes and time-limited queries is the default until it is
WAL_ENV = "ZOO_SWEEP_SQLITE_WAL"
# file systems where SQLite's WAL mode is unsafe: its shared-memory index does not work across hosts
NETWORK_FS = {"nfs", "nfs4", "cifs", "smb3", "smbfs", "ceph", "glusterfs", "lustre", "gpfs", "beegfs", "9p",
              "afs", "fuse.sshfs", "fuse.glusterfs", "fuse.ceph", "fuse.cephfs", "fuse.s3fs", "fuse.gcsfuse",
              "fuse.juicefs", "fuse.rclone"}


def resolve_url(url: str | None) -> str:
    return url or os.environ.get("ZOO_SWEEP_DB") or DEFAULT_DB


class StoreLocked(UserError):
    """A write that met a locked store for longer than the lock wait; nothing of it was written."""


def lock_wait_seconds() -> float:
    """How long a write retries a locked store: $ZOO_SWEEP_LOCK_WAIT_S, else the default."""
    return env_seconds(LOCK_WAIT_ENV, DEFAULT_LOCK_WAIT_S, zero_ok=True)


def _retried(write: _F) -> _F:
    """A write method retried while the store is locked (Database._retry_locked)."""

    @functools.wraps(write)
    def retried(self: Database, *args: Any, **kwargs: Any) -> Any:
        return self._retry_locked(lambda: write(self, *args, **kwargs))

    # cast: wraps() gives it write's signature; a ParamSpec version trips on set_state's **fields
    return cast(_F, retried)


class Database:
    """The store's database, opened at this code's schema version: its URL, engines and connections, and writes
    that wait out a lock (``Store`` adds what is read and written). ``create``: make a new store where there is
    none (commands that only read pass False). ``check``: refuse a store of another version (``db upgrade``
    opens with False)."""

    def __init__(self, url: str | None = None, create: bool = True, check: bool = True):
        self.url = resolve_url(url)
        try:
            u = make_url(self.url)
        except Exception:
            raise UserError(f"not a database URL: {mask_url(self.url)!r} (e.g. sqlite:///results/zoo.db or "
                            "postgresql://user@host/db)") from None
        self._u = u
        # cast: is_sqlite_file means u.database is a file name, not None
        self.where = cast(str, u.database) if self.is_sqlite_file else mask_url(self.url)
        # resolved once: a later chdir must not move the store
        self._path = Path(cast(str, u.database)).resolve() if self.is_sqlite_file else None
        self._file_id = self._open_sqlite_file(create) if self.is_sqlite_file else None
        self._ro: sa.Engine | None = None
        self.lock_wait_s = lock_wait_seconds()
        # told once when a write first meets a lock (a launcher points this at its console)
        self.on_locked: Callable[[str], None] = lambda line: print(f"warning: {line}", file=sys.stderr)
        self._locked_since: float | None = None  # when the writes began to meet a lock; None while they pass
        self._said_locked = False
        try:
            self.engine = self._make_engine()
            if check:
                self._retry_locked(lambda: migrate.create_or_check(self.engine, self.where, create))
            if create and check and self.is_sqlite_file:  # opened for writing: a known store, at this version
                self._retry_locked(self._set_journal_mode)  # a change of mode waits for readers in the old one
        except ModuleNotFoundError as e:
            raise UserError(f"the driver for {u.drivername} is not installed ({e.name}); pip install it") from None
        except sa.exc.DBAPIError as e:
            raise UserError(self._open_error(e)) from None

    @property
    def is_sqlite_file(self) -> bool:
        return self._u.get_backend_name() == "sqlite" and bool(self._u.database) and self._u.database != ":memory:"

    def _open_sqlite_file(self, create: bool) -> tuple[int, int]:
        """The file's identity; a new empty file when ``create`` and there is none."""
        path = self._path
        assert path is not None  # a SQLite file store
        if not path.exists():
            if not create:
                raise UserError(f"no store at {self.where}; run `zoo-sweep plan SPEC` or `zoo-sweep demo` first")
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                sqlite3_connect(path, "rwc").close()
            except (OSError, sqlite3.Error) as e:
                raise UserError(f"cannot create the store {self.where}: {getattr(e, 'strerror', None) or e}") from None
        if path.is_dir():
            raise UserError(f"not a zoo-sweep store: {self.where} is a folder")
        st = path.stat()
        return st.st_dev, st.st_ino

    def _make_engine(self) -> sa.Engine:
        if self.is_sqlite_file:
            # mode=rw: a store deleted while in use is never silently created again, empty, by a new connection
            path = self._path
            assert path is not None  # a SQLite file store
            engine = sa.create_engine(self._u, creator=lambda: sqlite3_connect(path, "rw"))
            sa.event.listen(engine, "connect", self._sqlite_pragmas)
            return engine
        engine = sa.create_engine(self.url, future=True)
        if self._u.get_backend_name() == "sqlite":
            sa.event.listen(engine, "connect", self._sqlite_pragmas)
        return engine

    def _sqlite_pragmas(self, dbapi_conn: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
        # another writer's commit takes a moment: SQLite waits for it, then _retry_locked, within lock_wait_s
        busy_ms = int(min(BUSY_TIMEOUT_S, self.lock_wait_s) * 1000)
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {busy_ms}")
        cur.close()

    def _set_journal_mode(self) -> None:
        """WAL (with ZOO_SWEEP_SQLITE_WAL=1) on a local disk: readers see the last commit and never block a write,
        nor a write them (in SQLite's default rollback journal a long read holds the launcher's commit until it
        gives up). On a network filesystem WAL is unsafe (its index is shared memory, which hosts do not share):
        the rollback journal stays there. The mode is kept in the file, so this runs once per opening for writing."""
        assert self._path is not None  # a SQLite file store
        if network_fs(self._path):
            mode = "delete"
        elif os.environ.get(WAL_ENV) == "1":
            mode = "wal"
        else:
            return  # the mode the file has: a store once put in WAL stays so (switching back waits for readers)
        with self.engine.connect() as conn:
            conn.exec_driver_sql(f"PRAGMA journal_mode = {mode}")

    def _retry_locked(self, write: Callable[[], _T]) -> _T:
        """Run ``write`` (one whole transaction); while SQLite says the store is locked, again after a pause
        that doubles up to 10 s, for up to ``lock_wait_s`` from the first lock met, saying so once. A store
        that stays locked ends in StoreLocked, one line; later writes then try once each until one passes."""
        pause, started = 0.5, time.monotonic()
        while True:
            try:
                out = write()
            except sa.exc.OperationalError as e:
                if not _is_locked(e):
                    raise
                now = time.monotonic()
                if self._locked_since is None:  # counted from the first try: SQLite waited in it already
                    self._locked_since = started
                    if not self._said_locked:
                        self._said_locked = True
                        self.on_locked(f"the store {self.where} is locked by another connection (a long query, an "
                                       f"open transaction); writes wait for it, for up to {self.lock_wait_s:g} s "
                                       f"({LOCK_WAIT_ENV})")
                left = self._locked_since + self.lock_wait_s - now
                if left <= 0:
                    raise StoreLocked(f"the store {self.where} stayed locked for {self.lock_wait_s:g} s "
                                      f"({LOCK_WAIT_ENV}): another program holds it (a long query, an open sqlite3 "
                                      "shell); what was not yet written is not in the store: end that program and "
                                      "run the command again (a launch resumes its jobs)") from None
                time.sleep(min(pause, left))
                pause = min(pause * 2, 10.0)
                continue
            self._locked_since = None
            return out

    def _open_error(self, e: sa.exc.DBAPIError) -> str:
        msg = str(e.orig).strip().splitlines()[0] if str(e.orig).strip() else type(e.orig).__name__
        if "file is not a database" in msg or "file is encrypted" in msg:
            return f"not a zoo-sweep store: {self.where} is not an SQLite database"
        return f"cannot open the store {mask_url(self.url)}: {scrub(msg, self.url)}"

    # ------------------------------------------------------------------ guarded access
    def _check_file(self) -> None:
        """A SQLite store deleted or replaced while in use: stop with one line instead of writing results into
        an unlinked file (SQLite keeps writing to it) or a new empty one."""
        if self._file_id is None:
            return
        assert self._path is not None  # set with _file_id
        try:
            st = os.stat(self._path)
            same = (st.st_dev, st.st_ino) == self._file_id
        except OSError:
            same = False
        if not same:
            raise UserError(f"the store {self.where} was deleted or replaced while in use; what this command "
                            "had not yet written is lost: restore the store, or launch again on a new one")

    @contextlib.contextmanager
    def begin(self) -> Iterator[sa.Connection]:
        """A write transaction (the store checked first, and again when the database refuses)."""
        self._check_file()
        try:
            with self.engine.begin() as conn:
                yield conn
        except sa.exc.DBAPIError:
            self._check_file()  # SQLite refuses writes to a file unlinked meanwhile: say why in one line
            raise

    @contextlib.contextmanager
    def connect(self) -> Iterator[sa.Connection]:
        self._check_file()
        try:
            with self.engine.connect() as conn:
                yield conn
        except sa.exc.DBAPIError:
            self._check_file()
            raise

    @property
    def readonly(self) -> sa.Engine:
        """An engine that can only read this store (storage/readonly.py)."""
        if self._ro is None:
            # an in-memory SQLite database exists in its one connection only: no second, read-only one
            mem = self._u.get_backend_name() == "sqlite" and not self.is_sqlite_file
            self._ro = self.engine if mem else readonly_engine(self._u)
        return self._ro

    def dispose(self) -> None:
        self.engine.dispose()
        if self._ro is not None and self._ro is not self.engine:
            self._ro.dispose()



class Store(Database):
    """A sweep store: plans, the job ledger and its leases, results, and reads of them (``Database``: opening
    it and its connections)."""

    # ------------------------------------------------------------------ writes (driver only)
    def _upsert(self, conn: sa.Connection, table: sa.Table, rows: list[dict[str, Any]], update: bool = True) -> None:
        """Insert rows; on a key conflict update the given columns (or keep the old row)."""
        if not rows:
            return
        keys = [c.name for c in table.primary_key.columns]
        dialect = self.engine.dialect.name
        if dialect in ("sqlite", "postgresql"):
            mod = __import__(f"sqlalchemy.dialects.{dialect}", fromlist=["insert"])
            stmt = mod.insert(table)
            cols = {c: stmt.excluded[c] for c in rows[0] if c not in keys}
            stmt = (stmt.on_conflict_do_update(index_elements=keys, set_=cols) if update and cols
                    else stmt.on_conflict_do_nothing(index_elements=keys))
            for chunk in _chunks(rows, 50_000):
                conn.execute(stmt, chunk)  # one prepared statement, executemany: no per-chunk SQL compile
            return
        for row in rows:  # other databases: portable, slower
            where = sa.and_(*[table.c[k] == row[k] for k in keys])
            if conn.execute(sa.select(sa.func.count()).select_from(table).where(where)).scalar():
                if update:
                    conn.execute(table.update().where(where).values(**row))
            else:
                conn.execute(table.insert().values(**row))

    def _new_ids(self, conn: sa.Connection, ids: list[str]) -> int:
        existing: set[str] = set()
        for chunk in _chunks(ids, 500):
            existing.update(conn.execute(sa.select(jobs.c.id).where(jobs.c.id.in_(chunk))).scalars())
        return len(set(ids) - existing)

    @_retried
    def write_plan(self, spec_row: dict[str, Any], model_rows: list[dict[str, Any]], job_rows: list[dict[str, Any]],
                   sweep: str) -> int:
        """Record a sweep, its models and its jobs in one transaction; returns the number of new jobs."""
        now = time.time()
        with self.begin() as conn:
            existing = conn.execute(sa.select(sweeps.c.created_at).where(sweeps.c.name == sweep)).scalar()
            self._upsert(conn, sweeps, [{**spec_row, "created_at": existing or now, "updated_at": now}])
            self._upsert(conn, models, model_rows, update=False)
            self._set_idents(conn, model_rows)
            return self._add_jobs(conn, sweep, job_rows, now)

    def _set_idents(self, conn: sa.Connection, rows: list[dict[str, Any]]) -> None:
        """The model each name stands for now (plan rows keep the other columns a row already has)."""
        rows = [{"n": r["name"], "e": r["eval_set"], "i": r["ident"]} for r in rows if r.get("ident")]
        if rows:
            named = (models.c.name == sa.bindparam("n"), models.c.eval_set == sa.bindparam("e"))
            conn.execute(models.update().where(*named).values(ident=sa.bindparam("i")), rows)

    def model_idents(self, eval_set: str, names: list[str]) -> dict[str, str | None]:
        """The stored ident of each of ``names`` the store holds on ``eval_set`` (None: stored before idents)."""
        out: dict[str, str | None] = {}
        with self.connect() as conn:
            for chunk in _chunks(names, 500):
                q = sa.select(models.c.name, models.c.ident).where(models.c.eval_set == eval_set,
                                                                   models.c.name.in_(chunk))
                out.update(conn.execute(q).tuples().all())
        return out

    @_retried
    def add_jobs(self, sweep: str, job_rows: list[dict[str, Any]]) -> int:
        """Link jobs to a sweep (new ones pending; existing ones keep their state); returns how many are new."""
        with self.begin() as conn:
            return self._add_jobs(conn, sweep, job_rows, time.time())

    def _add_jobs(self, conn: sa.Connection, sweep: str, job_rows: list[dict[str, Any]], now: float) -> int:
        new = self._new_ids(conn, [j["id"] for j in job_rows])
        self._upsert(conn, jobs, [{**j, "state": "pending", "attempts": 0, "created_at": now} for j in job_rows],
                     update=False)
        self._upsert(conn, sweep_jobs, [{"sweep": sweep, "job_id": j["id"]} for j in job_rows], update=False)
        return new

    @_retried
    def set_state(self, job_ids: Iterable[str], state: str, **fields: Any) -> None:
        ids = list(job_ids)
        if not ids:
            return
        if state != "running":  # only a claim (claim_job) holds a lease
            fields = {"owner": None, "lease_until": None, **fields}
        with self.begin() as conn:
            for chunk in _chunks(ids, 500):
                conn.execute(jobs.update().where(jobs.c.id.in_(chunk)).values(state=state, **fields))

    @_retried
    def claim_job(self, job_id: str, owner: str, lease_until: float, worker: str | None = None) -> bool:
        """Compare-and-set: the job becomes 'running' under ``owner`` only if it is still pending (or failed,
        awaiting a retry); False when another launcher took it first."""
        with self.begin() as conn:
            n = conn.execute(jobs.update().where(jobs.c.id == job_id, jobs.c.state.in_(("pending", "failed")))
                             .values(state="running", owner=owner, lease_until=lease_until, worker=worker,
                                     started_at=time.time(), attempts=jobs.c.attempts + 1)).rowcount
        return n == 1

    @_retried
    def start_job(self, job_id: str, worker: str) -> None:
        """Mark a job running without a lease (a caller that is the only one running the sweep's jobs)."""
        with self.begin() as conn:
            conn.execute(jobs.update().where(jobs.c.id == job_id).values(
                state="running", worker=worker, started_at=time.time(), attempts=jobs.c.attempts + 1))

    @_retried
    def renew_leases(self, job_ids: list[str], owner: str, lease_until: float) -> int:
        """Push the leases of ``owner``'s running jobs forward; returns how many it still holds."""
        n = 0
        with self.begin() as conn:
            for chunk in _chunks(job_ids, 500):
                n += conn.execute(jobs.update().where(jobs.c.id.in_(chunk), jobs.c.owner == owner,
                                                      jobs.c.state == "running")
                                  .values(lease_until=lease_until)).rowcount
        return n

    @_retried
    def interrupt_jobs(self, owner: str) -> int:
        """Mark 'interrupted' every job that ``owner`` (a launcher that is stopping) runs: the jobs it claimed
        and has not recorded, whatever point it stopped at. Jobs it recorded and other launchers' jobs keep
        their state. Returns how many."""
        with self.begin() as conn:
            return conn.execute(jobs.update().where(jobs.c.owner == owner, jobs.c.state == "running")
                                .values(state="interrupted", owner=None, lease_until=None)).rowcount

    @_retried
    def requeue_stale(self, job_ids: Iterable[str], now: float | None = None) -> list[str]:
        """Of ``job_ids``, put back to pending those whose launcher is gone: 'interrupted' ones, and 'running'
        ones whose lease ran out (or had none, or whose owner died on this host). Compare-and-set per job, so
        a lease renewed meanwhile keeps its job. Returns the ids requeued."""
        now = time.time() if now is None else now
        ids = list(job_ids)
        back = []
        with self.begin() as conn:
            for chunk in _chunks(ids, 500):
                rows = conn.execute(sa.select(jobs.c.id, jobs.c.state, jobs.c.owner, jobs.c.lease_until)
                                    .where(jobs.c.id.in_(chunk), jobs.c.state.in_(("running", "interrupted"))))
                for job_id, state, owner, until in rows.all():
                    expired = until is None or until < now or owner_dead(owner)
                    if state == "interrupted" or expired:
                        cond = (jobs.c.state == "interrupted") if state == "interrupted" else sa.and_(
                            jobs.c.state == "running", _same(jobs.c.owner, owner), _same(jobs.c.lease_until, until))
                        n = conn.execute(jobs.update().where(jobs.c.id == job_id, cond)
                                         .values(state="pending", owner=None, lease_until=None)).rowcount
                        if n:
                            back.append(job_id)
        return back

    @_retried
    def finish_job(self, job_id: str, state: str = "done", error: str | None = None,
                   results: list[dict[str, Any]] | None = None, model_rows: list[dict[str, Any]] | None = None,
                   seconds: float | None = None, owner: str | None = None,
                   teachers: list[str] | None = None) -> bool:
        """A job's outcome and its result rows, atomically. ``seconds``: the worker's own run time (the
        dispatch-to-finish time also counts the wait in the worker's queue). ``owner``: only if that launcher
        still holds the job (else nothing is written and False comes back: its lease ran out and another
        launcher took the job over). ``teachers``: a multi-teacher job's teachers, in order."""
        now = time.time()
        with self.begin() as conn:
            started = conn.execute(sa.select(jobs.c.started_at).where(jobs.c.id == job_id)).scalar()
            where = [jobs.c.id == job_id] + ([jobs.c.owner == owner, jobs.c.state == "running"] if owner else [])
            n = conn.execute(jobs.update().where(*where).values(
                state=state, error=error, finished_at=now, owner=None, lease_until=None,
                seconds=seconds if seconds is not None else (now - started) if started else None)).rowcount
            if owner and n != 1:
                return False
            if results:
                self._upsert(conn, transfer_results, results)
            if teachers:
                self._upsert(conn, job_teachers, [{"job_id": job_id, "position": i, "teacher": t}
                                                  for i, t in enumerate(teachers)])
            if model_rows:
                self._upsert(conn, models, model_rows)
        return True

    @_retried
    def write_pairs(self, job_id: str, rows: list[dict[str, Any]]) -> None:
        """The compare job's pairs and its state, in one transaction."""
        with self.begin() as conn:
            self._upsert(conn, pairs, rows)
            conn.execute(jobs.update().where(jobs.c.id == job_id).values(
                state="done", finished_at=time.time(), owner=None, lease_until=None))

    # ------------------------------------------------------------------ reads
    def sweep_jobs(self, sweep: str, kind: str | None = None) -> list[dict[str, Any]]:
        with self.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(_of_sweep(sa.select(jobs), sweep, kind))]

    def job_states(self, sweep: str, kind: str | None = None, states: Iterable[str] | None = None) -> dict[str, str]:
        """Job id -> state of a sweep's jobs (optionally of one kind, in some states only). Bookkeeping and
        polling need no payload: a zoo-wide sweep's JSON payloads would dominate the read."""
        q = _of_sweep(sa.select(jobs.c.id, jobs.c.state), sweep, kind)
        if states is not None:
            q = q.where(jobs.c.state.in_(list(states)))
        with self.connect() as conn:
            return dict(conn.execute(q).tuples().all())

    def sweep_names(self) -> list[str]:
        with self.connect() as conn:
            return [r[0] for r in conn.execute(sa.select(sweeps.c.name).order_by(sweeps.c.updated_at))]

    def query(self, sql: str, params: dict[str, Any] | None = None, timeout: float | None = None) -> pd.DataFrame:
        """One read-only statement (storage/readonly.py: the store cannot be changed through it), stopped
        after ``timeout`` seconds if given (QueryTimeout)."""
        self._check_file()
        try:
            return run_query(self.readonly, sql, params, timeout)
        except UserError:
            self._check_file()  # a store that went away meanwhile is that, not a failed query
            raise

    def table(self, name: str) -> pd.DataFrame:
        """Every row and column of one table, as the database has it."""
        self._check_file()
        with self.readonly.connect() as conn:
            return pd.read_sql_table(name, conn)

    def export(self, out_dir: str | Path) -> list[Path]:
        """One Parquet file per table, with every column the database has (those of a newer zoo-sweep too)."""
        import pyarrow.parquet as pq

        out = writable_dir(out_dir, "--out")
        with self.readonly.connect() as conn:
            names = [t for t in sa.inspect(conn).get_table_names() if t != VERSION_TABLE]
        names = [t for t in metadata.tables if t in names] + sorted(set(names) - set(metadata.tables))
        refuse_folders(out, [f"{name}.parquet" for name in names], "--out")
        paths = []
        for name in names:
            df = self.table(name)
            # written beside the name, then renamed over it: a link at the name is replaced, never followed
            p = write_atomic(out / f"{name}.parquet", functools.partial(df.to_parquet, index=False), flag="--out")
            written = pq.read_schema(p).names
            if written != list(df.columns):
                raise UserError(f"export of {name} lost columns ({set(df.columns) - set(written)}); nothing is "
                                "dropped silently: report this")
            paths.append(p)
        return paths


def jobs_of(store: Store, sweep: str | None = None) -> pd.DataFrame:
    """The jobs of one sweep (or of all), with their sweep."""
    where = "where sj.sweep = :sweep" if sweep else ""
    return store.query(f"""select sj.sweep, j.id, j.kind, j.state, j.attempts, j.error, j.worker, j.seconds
                           from jobs j join sweep_jobs sj on sj.job_id = j.id {where}""",
                       {"sweep": sweep} if sweep else None)


def _of_sweep(q: _Q, sweep: str, kind: str | None) -> _Q:
    """``q`` (a select over jobs) narrowed to one sweep's jobs, of one kind if given, oldest first."""
    q = q.join(sweep_jobs, sweep_jobs.c.job_id == jobs.c.id).where(sweep_jobs.c.sweep == sweep)
    if kind:
        q = q.where(jobs.c.kind == kind)
    return q.order_by(jobs.c.created_at, jobs.c.id)


def job_summary(store: Store, sweep: str | None = None) -> pd.DataFrame:
    """Jobs per sweep, stage and state, with their total run time."""
    where = "where sj.sweep = :sweep" if sweep else ""
    # rounded here, not in SQL: PostgreSQL has no round(double precision, integer)
    df = store.query(f"""select sj.sweep, j.kind as stage, j.state, count(*) as jobs, sum(j.seconds) as seconds
                         from jobs j join sweep_jobs sj on sj.job_id = j.id {where}
                         group by sj.sweep, j.kind, j.state order by sj.sweep, j.kind, j.state""",
                     {"sweep": sweep} if sweep else None)
    df["seconds"] = pd.to_numeric(df["seconds"], errors="coerce").round(1)
    return df


def reset_jobs(store: Store, sweep: str, from_state: str, to_state: str, kind: str | None = None) -> int:
    """Move a sweep's jobs between states (driver-side bookkeeping: reset, cancel); returns how many."""
    ids = list(store.job_states(sweep, kind, states=[from_state]))
    if to_state == "pending":
        store.set_state(ids, to_state, attempts=0, error=None)
    else:
        store.set_state(ids, to_state)
    return len(ids)


def final_results(store: Store, eval_set: str) -> pd.DataFrame:
    """The final-epoch transfer rows on an eval set, each with ``multi_teacher`` (1: a multi-teacher job, whose
    teachers are in job_teachers; 0: the row's teacher is its one teacher)."""
    return store.query("""select r.*, case when exists (select 1 from job_teachers jt where jt.job_id = r.job_id)
                                      then 1 else 0 end as multi_teacher
                          from transfer_results r where r.eval_set = :e and r.final""", {"e": eval_set})


def sqlite3_connect(path: str | Path, mode: str) -> sqlite3.Connection:
    """A SQLite connection by URI: ``mode`` rw (the file must exist) or rwc (created when missing)."""
    return sqlite3.connect(Path(path).resolve().as_uri() + f"?mode={mode}", uri=True, check_same_thread=False)


def _same(col: sa.ColumnElement[Any], value: Any) -> sa.ColumnElement[bool]:
    return col.is_(None) if value is None else col == value


def _is_locked(e: sa.exc.OperationalError) -> bool:
    """SQLite's 'database is locked' (or 'database table is locked'): a lock another connection holds."""
    return isinstance(e.orig, sqlite3.OperationalError) and "is locked" in str(e.orig)


def network_fs(path: str | Path, mountinfo: str | None = None) -> bool:
    """Whether ``path`` lies on a network filesystem, by the type of the mount that holds it (Linux's
    /proc/self/mountinfo; elsewhere, or when it cannot be read, a local disk is assumed)."""
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text()
        except OSError:
            return False
    path = os.path.abspath(path)
    best, fstype = "", ""
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if not sep or len(fields) < 5 or not right.split():
            continue
        point = fields[4].replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\")
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):  # the innermost mount; a later one over the same point wins
            best, fstype = point, right.split()[0]
    return fstype in NETWORK_FS


def _chunks(seq: list[_T], n: int) -> Iterator[list[_T]]:
    for i in range(0, len(seq), n):
        yield seq[i:i + n]
