"""The results store: SQLite by default, any SQLAlchemy URL (PostgreSQL for shared use).

Only the driver writes it: workers return results, the launcher records them. Every write that belongs
together (a job's result rows and its state) is one transaction, so a killed launcher never leaves a
half-written result.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Iterable

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from zoo_sweep.errors import UserError
from zoo_sweep.urls import mask_url, scrub

DEFAULT_DB = "sqlite:///results/zoo.db"
JOB_STATES = ("pending", "running", "done", "failed", "diverged", "interrupted", "cancelled")

metadata = sa.MetaData()

sweeps = sa.Table(
    "sweeps", metadata,
    sa.Column("name", sa.String, primary_key=True),
    sa.Column("spec", sa.Text, nullable=False),  # the parsed spec as JSON
    sa.Column("spec_hash", sa.String, nullable=False),
    sa.Column("path", sa.String),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)

models = sa.Table(
    "models", metadata,
    sa.Column("name", sa.String, primary_key=True),
    sa.Column("eval_set", sa.String, primary_key=True),  # a model's accuracy is on one eval set
    sa.Column("arch", sa.String, nullable=False),
    sa.Column("family", sa.String, nullable=False),
    sa.Column("params", sa.BigInteger),
    sa.Column("accuracy", sa.Float),  # percent; NULL until its predict job is done
    sa.Column("record", sa.String),  # prediction record file
)

jobs = sa.Table(
    "jobs", metadata,
    sa.Column("id", sa.String, primary_key=True),  # hash of everything that determines the result
    sa.Column("kind", sa.String, nullable=False),  # predict | compare | transfer
    sa.Column("spec", sa.Text, nullable=False),  # JSON payload
    sa.Column("state", sa.String, nullable=False, default="pending"),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("error", sa.Text),
    sa.Column("worker", sa.String),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("started_at", sa.Float),
    sa.Column("finished_at", sa.Float),
    sa.Column("seconds", sa.Float),
)

sweep_jobs = sa.Table(
    "sweep_jobs", metadata,  # content-addressed jobs are shared: two sweeps may own the same job
    sa.Column("sweep", sa.String, primary_key=True),
    sa.Column("job_id", sa.String, primary_key=True),
)

pairs = sa.Table(
    "pairs", metadata,
    sa.Column("eval_set", sa.String, primary_key=True),
    sa.Column("student", sa.String, primary_key=True),
    sa.Column("teacher", sa.String, primary_key=True),
    *[sa.Column(c, sa.Float) for c in (
        "acc_student", "acc_teacher", "acc_gap", "rho_pos", "rho_neg", "agreement", "oracle_acc",
        "ensemble_acc", "flip_entropy")],
    *[sa.Column(f"top{p}_classes", sa.Integer) for p in (2, 5, 20, 50)],
)

TRANSFER_METRICS = ("student_acc", "s0_acc", "delta", "knowledge_gain", "knowledge_loss", "rho_pos_before",
                    "rho_pos_after", "rho_pos_change", "transfer_rate", "damage_rate", "teacher_share",
                    "train_loss")
transfer_results = sa.Table(
    "transfer_results", metadata,
    sa.Column("job_id", sa.String, primary_key=True),
    sa.Column("epoch", sa.Integer, primary_key=True),
    sa.Column("final", sa.Boolean, nullable=False),
    sa.Column("eval_set", sa.String, nullable=False),
    sa.Column("student", sa.String, nullable=False),
    sa.Column("teacher", sa.String, nullable=False),
    sa.Column("method", sa.String, nullable=False),
    sa.Column("seed", sa.Integer, nullable=False),
    *[sa.Column(c, sa.Float) for c in TRANSFER_METRICS],
)

sa.Index("ix_transfer_final", transfer_results.c.final, transfer_results.c.method)
sa.Index("ix_jobs_state", jobs.c.kind, jobs.c.state)


def resolve_url(url: str | None) -> str:
    return url or os.environ.get("ZOO_SWEEP_DB") or DEFAULT_DB


class Store:
    def __init__(self, url: str | None = None, create: bool = True):
        self.url = resolve_url(url)
        try:
            u = make_url(self.url)
        except Exception:
            raise UserError(f"not a database URL: {mask_url(self.url)!r} (e.g. sqlite:///results/zoo.db or "
                            "postgresql://user@host/db)") from None
        if u.get_backend_name() == "sqlite" and u.database and u.database != ":memory:":
            if not create and not Path(u.database).exists():
                raise UserError(f"no store at {u.database}; run `zoo-sweep plan SPEC` or `zoo-sweep demo` first")
            Path(u.database).parent.mkdir(parents=True, exist_ok=True)
        try:
            self.engine = sa.create_engine(self.url, future=True)
            if u.get_backend_name() == "sqlite":
                sa.event.listen(self.engine, "connect", _sqlite_pragmas)
            metadata.create_all(self.engine)
        except ModuleNotFoundError as e:
            raise UserError(f"the driver for {u.drivername} is not installed ({e.name}); pip install it") from None
        except sa.exc.OperationalError as e:
            raise UserError(f"cannot open the store {mask_url(self.url)}: "
                            f"{scrub(str(e.orig).strip().splitlines()[0], self.url)}") from None

    # ------------------------------------------------------------------ writes (driver only)
    def _upsert(self, conn, table: sa.Table, rows: list[dict], update: bool = True) -> None:
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

    def _new_ids(self, conn, ids: list[str]) -> int:
        existing = set()
        for chunk in _chunks(ids, 500):
            existing.update(conn.execute(sa.select(jobs.c.id).where(jobs.c.id.in_(chunk))).scalars())
        return len(set(ids) - existing)

    def write_plan(self, spec_row: dict, model_rows: list[dict], job_rows: list[dict], sweep: str) -> int:
        """Record a sweep, its models and its jobs in one transaction; returns the number of new jobs."""
        now = time.time()
        with self.engine.begin() as conn:
            existing = conn.execute(sa.select(sweeps.c.created_at).where(sweeps.c.name == sweep)).scalar()
            self._upsert(conn, sweeps, [{**spec_row, "created_at": existing or now, "updated_at": now}])
            self._upsert(conn, models, model_rows, update=False)
            return self._add_jobs(conn, sweep, job_rows, now)

    def add_jobs(self, sweep: str, job_rows: list[dict]) -> int:
        """Link jobs to a sweep (new ones pending; existing ones keep their state); returns how many are new."""
        with self.engine.begin() as conn:
            return self._add_jobs(conn, sweep, job_rows, time.time())

    def _add_jobs(self, conn, sweep: str, job_rows: list[dict], now: float) -> int:
        new = self._new_ids(conn, [j["id"] for j in job_rows])
        self._upsert(conn, jobs, [{**j, "state": "pending", "attempts": 0, "created_at": now} for j in job_rows],
                     update=False)
        self._upsert(conn, sweep_jobs, [{"sweep": sweep, "job_id": j["id"]} for j in job_rows], update=False)
        return new

    def set_state(self, job_ids: Iterable[str], state: str, **fields: Any) -> None:
        ids = list(job_ids)
        if not ids:
            return
        with self.engine.begin() as conn:
            for chunk in _chunks(ids, 500):
                conn.execute(jobs.update().where(jobs.c.id.in_(chunk)).values(state=state, **fields))

    def start_job(self, job_id: str, worker: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(jobs.update().where(jobs.c.id == job_id).values(
                state="running", worker=worker, started_at=time.time(), attempts=jobs.c.attempts + 1))

    def finish_job(self, job_id: str, state: str = "done", error: str | None = None,
                   results: list[dict] | None = None, model_rows: list[dict] | None = None,
                   seconds: float | None = None) -> None:
        """A job's outcome and its result rows, atomically. ``seconds``: the worker's own run time (the
        dispatch-to-finish time also counts the wait in the worker's queue)."""
        now = time.time()
        with self.engine.begin() as conn:
            started = conn.execute(sa.select(jobs.c.started_at).where(jobs.c.id == job_id)).scalar()
            if results:
                self._upsert(conn, transfer_results, results)
            if model_rows:
                self._upsert(conn, models, model_rows)
            conn.execute(jobs.update().where(jobs.c.id == job_id).values(
                state=state, error=error, finished_at=now,
                seconds=seconds if seconds is not None else (now - started) if started else None))

    def write_pairs(self, job_id: str, rows: list[dict]) -> None:
        """The compare job's pairs and its state, in one transaction."""
        with self.engine.begin() as conn:
            self._upsert(conn, pairs, rows)
            conn.execute(jobs.update().where(jobs.c.id == job_id).values(state="done", finished_at=time.time()))

    # ------------------------------------------------------------------ reads
    def sweep_jobs(self, sweep: str, kind: str | None = None) -> list[dict]:
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(_of_sweep(sa.select(jobs), sweep, kind))]

    def job_states(self, sweep: str, kind: str | None = None, states: Iterable[str] | None = None) -> dict[str, str]:
        """Job id -> state of a sweep's jobs (optionally of one kind, in some states only). Bookkeeping and
        polling need no payload: a zoo-wide sweep's JSON specs would dominate the read."""
        q = _of_sweep(sa.select(jobs.c.id, jobs.c.state), sweep, kind)
        if states is not None:
            q = q.where(jobs.c.state.in_(list(states)))
        with self.engine.connect() as conn:
            return dict(conn.execute(q).tuples().all())

    def sweep_names(self) -> list[str]:
        with self.engine.connect() as conn:
            return [r[0] for r in conn.execute(sa.select(sweeps.c.name).order_by(sweeps.c.updated_at))]

    def query(self, sql: str, params: dict | None = None) -> pd.DataFrame:
        """Run a read query; whatever it tries to change is rolled back (only the driver writes)."""
        with self.engine.connect() as conn:
            try:
                result = conn.execute(sa.text(sql), params or {})
                df = pd.DataFrame(result.fetchall(), columns=list(result.keys())) if result.returns_rows \
                    else pd.DataFrame()
            except sa.exc.DBAPIError as e:
                raise UserError(f"query failed: {str(e.orig).strip().splitlines()[0]}") from None
            finally:
                conn.rollback()
        return df

    def table(self, name: str) -> pd.DataFrame:
        with self.engine.connect() as conn:
            return pd.read_sql_table(name, conn)

    def export(self, out_dir: str | Path) -> list[Path]:
        """One Parquet file per table."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = []
        for name in metadata.tables:
            p = out / f"{name}.parquet"
            self.table(name).to_parquet(p, index=False)
            paths.append(p)
        return paths


def jobs_of(store: Store, sweep: str | None = None) -> pd.DataFrame:
    """The jobs of one sweep (or of all), with their sweep."""
    where = "where sj.sweep = :sweep" if sweep else ""
    return store.query(f"""select sj.sweep, j.id, j.kind, j.state, j.attempts, j.error, j.worker, j.seconds
                           from jobs j join sweep_jobs sj on sj.job_id = j.id {where}""",
                       {"sweep": sweep} if sweep else None)


def _of_sweep(q, sweep: str, kind: str | None):
    """``q`` (a select over jobs) narrowed to one sweep's jobs, of one kind if given, oldest first."""
    q = q.join(sweep_jobs, sweep_jobs.c.job_id == jobs.c.id).where(sweep_jobs.c.sweep == sweep)
    if kind:
        q = q.where(jobs.c.kind == kind)
    return q.order_by(jobs.c.created_at, jobs.c.id)


def job_summary(store: Store, sweep: str | None = None) -> pd.DataFrame:
    """Jobs per sweep, stage and state, with their total run time."""
    where = "where sj.sweep = :sweep" if sweep else ""
    return store.query(f"""select sj.sweep, j.kind as stage, j.state, count(*) as jobs,
                                  round(sum(j.seconds), 1) as seconds
                           from jobs j join sweep_jobs sj on sj.job_id = j.id {where}
                           group by sj.sweep, j.kind, j.state order by sj.sweep, j.kind, j.state""",
                       {"sweep": sweep} if sweep else None)


def reset_jobs(store: Store, sweep: str, from_state: str, to_state: str, kind: str | None = None) -> int:
    """Move a sweep's jobs between states (driver-side bookkeeping: reset, cancel); returns how many."""
    ids = list(store.job_states(sweep, kind, states=[from_state]))
    if to_state == "pending":
        store.set_state(ids, to_state, attempts=0, error=None)
    else:
        store.set_state(ids, to_state)
    return len(ids)


def _sqlite_pragmas(dbapi_conn, _record):
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA busy_timeout = 30000")  # readers (query, status) may overlap the launcher
    cur.close()


def _chunks(seq: list, n: int):
    for i in range(0, len(seq), n):
        yield seq[i:i + n]
