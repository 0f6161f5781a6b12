"""The store as pandas frames, for a notebook: ``from zoo_sweep import Results``.

Read-only by construction, as ``zoo-sweep query`` is: every read goes through the store's read-only
connection (storage/readonly.py), and opening checks the store through it too, so a notebook can sit beside
a running launch without ever writing, migrating or creating the store. The transfer frames carry the same
Δ over each control that the report computes (``science.controls.delta_over_controls`` on the report's own
queries), so a notebook's numbers and the report's agree.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import sqlalchemy as sa

from zoo_sweep.errors import UserError
from zoo_sweep.report.queries import SQL
from zoo_sweep.science import controls
from zoo_sweep.storage import migrate
from zoo_sweep.storage.readonly import QueryTimeout
from zoo_sweep.storage.schema import VERSION_TABLE, metadata
from zoo_sweep.storage.store import Store, resolve_url
from zoo_sweep.transfer import catalog

DEFAULT_TIMEOUT_S = 60.0  # as `zoo-sweep query`: a runaway statement (a recursive WITH) cannot hang the kernel

# the report's "transfers" query (queries.SQL) without ``and r.final``: every epoch of every run of a sweep
# (tests/unit/test_notebook_results.py holds its final rows to the report's)
CURVES_SQL = """
    select r.*, case when exists (select 1 from job_teachers jt where jt.job_id = r.job_id)
                then 1 else 0 end as multi_teacher
    from transfer_results r join sweep_jobs sj on sj.job_id = r.job_id
    where sj.sweep = :sweep"""

_RUN_ORDER = ["sweep", "method", "student", "teacher", "seed", "epoch", "job_id"]


class Results:
    """A store opened for reading: ``Results("sqlite:///results/zoo.db")``, a ``postgresql://`` URL, or no
    argument for the store the command line uses (``$ZOO_SWEEP_DB``, else ``sqlite:///results/zoo.db``,
    relative to the current folder). Each frame is read when asked for, so a notebook beside a launch sees
    its latest results. ``timeout``: seconds after which the database stops a read (None: no limit)."""

    def __init__(self, url: str | None = None, *, timeout: float | None = DEFAULT_TIMEOUT_S):
        if timeout is not None and not 0 < timeout < float("inf"):
            raise UserError(f"timeout must be a positive number of seconds or None, got {timeout!r}")
        self.timeout = timeout
        self._store = _open_readonly(url)

    def __repr__(self) -> str:
        return f"Results({self._store.where!r})"

    # ------------------------------------------------------------------ tables
    @property
    def models(self) -> pd.DataFrame:
        """The models table: one row per model and eval set (accuracy in %, NULL until predicted)."""
        return self.query("select * from models order by eval_set, name")

    @property
    def pairs(self) -> pd.DataFrame:
        """The pairs table: every measured ordered pair's metrics, on each eval set."""
        return self.query("select * from pairs order by eval_set, student, teacher")

    @property
    def sweeps(self) -> pd.DataFrame:
        """The sweeps table, oldest update first; ``spec`` is the parsed sweep spec as JSON."""
        return self.query("select * from sweeps order by updated_at, name")

    def transfers(self, sweep: str | None = None) -> pd.DataFrame:
        """Final transfer results (one row per run, at its last epoch) of one sweep or of every sweep, with
        ``delta_over_<control>`` for each control the sweep ran, as the report computes it. A job two sweeps
        share appears once per sweep: a control belongs to its sweep's settings."""
        return self._per_sweep(sweep, lambda name: self._read(SQL["transfers"], {"sweep": name}))

    def curves(self, sweep: str | None = None) -> pd.DataFrame:
        """Every epoch's row of the transfer results (per-epoch curves), with Δ over each control at the same
        epoch; ``final`` marks the rows ``transfers`` returns."""
        return self._per_sweep(sweep, lambda name: self._read(CURVES_SQL, {"sweep": name}))

    def query(self, sql: str, **params) -> pd.DataFrame:
        """One read-only SQL statement with ``:name`` parameters, e.g. ``r.query("select * from pairs where
        teacher = :t", t="vit_a")``. Writes are refused by the connection, not by reading the SQL."""
        return self._read(sql, params or None)

    def _read(self, sql: str, params: dict | None = None) -> pd.DataFrame:
        try:
            return self._store.query(sql, params, self.timeout)
        except QueryTimeout:
            raise UserError(f"the query ran longer than {self.timeout:g} s; narrow it down (a WHERE, a LIMIT) or "
                            "open the store with a longer limit: Results(url, timeout=SECONDS)") from None

    def to_duckdb(self):
        """An in-memory DuckDB connection holding a copy of every table as it is now: DuckDB's SQL (PIVOT,
        QUALIFY, fast scans of large tables) without an export, and the store is not read again."""
        try:
            import duckdb
        except ImportError:
            raise UserError("to_duckdb needs DuckDB, which zoo-sweep does not install: pip install duckdb") from None
        con = duckdb.connect()
        for name in self._table_names():
            # typed by the store's schema (an all-NULL metric stays a float column), as `zoo-sweep export` writes it
            con.register("_zoo_sweep_frame", self._store.table(name))
            con.execute(f'create table {_quoted(name)} as select * from _zoo_sweep_frame')
            con.unregister("_zoo_sweep_frame")
        return con

    def close(self) -> None:
        """Close the store's connections (a notebook may keep a SQLite file open otherwise)."""
        self._store.dispose()

    def __enter__(self) -> Results:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ helpers
    def _sweep_names(self) -> list[str]:
        return self.sweeps["name"].tolist()

    def _table_names(self) -> list[str]:
        """The store's tables as ``zoo-sweep export`` writes them: the known ones first, the version table out."""
        with self._store.readonly.connect() as conn:
            names = [t for t in sa.inspect(conn).get_table_names() if t != VERSION_TABLE]
        return [t for t in metadata.tables if t in names] + sorted(set(names) - set(metadata.tables))

    def _per_sweep(self, sweep: str | None, fetch) -> pd.DataFrame:
        """``fetch(name)`` for the sweep asked for (or each stored one), each with its Δ over the controls
        computed within that sweep only: two sweeps may train a student's control differently."""
        known = self._sweep_names()
        if sweep is not None and sweep not in known:
            raise UserError(f"no sweep named {sweep!r} in the store (sweeps: {', '.join(known) or 'none yet'})")
        names = [sweep] if sweep is not None else known
        frames = [_with_over_controls(fetch(name)).assign(sweep=name) for name in names]
        frames = [f for f in frames if len(f)] or frames[:1]
        if not frames:  # no sweeps at all: the columns, no rows
            frames = [_with_over_controls(fetch(None)).assign(sweep=pd.Series(dtype=object))]
        out = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
        out = out[["sweep", *[c for c in out.columns if c != "sweep"]]]
        return out.sort_values(_RUN_ORDER, kind="stable").reset_index(drop=True)


def _with_over_controls(rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` (control and multi-teacher runs kept) with the report's ``delta_over_<control>`` on each
    single-teacher method row; other rows get NaN there."""
    runs = controls.delta_over_controls(rows, catalog.controls())
    over = [c for c in runs.columns if c.startswith("delta_over_")]
    if not over:
        return rows
    return rows.merge(runs[["job_id", "epoch", *over]], on=["job_id", "epoch"], how="left", validate="one_to_one")


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _open_readonly(url: str | None) -> Store:
    """The store at ``url``, checked through its read-only connection: a missing file is never created, an
    older store is never upgraded (the command line says how), nothing else is written."""
    url = resolve_url(url)
    try:
        u = sa.engine.make_url(url)
    except Exception:
        u = None
    if u is not None and u.get_backend_name() == "sqlite" and u.database and u.database != ":memory:":
        path = Path(u.database)
        if not path.exists():
            # a notebook's current folder is seldom the project's: say where a relative path led
            where = str(path) if path.is_absolute() else f"{path} (in the current folder {Path.cwd()})"
            raise UserError(f"no store at {where}: give the store's URL, e.g. Results('sqlite:////path/to/zoo.db'), "
                            "or make one with `zoo-sweep plan SPEC` or `zoo-sweep demo`")
    store = Store(url, create=False, check=False)  # check=False: its checks would use a read-write connection
    try:
        with store.readonly.connect() as conn:
            found = migrate.inspect_store(conn, store.where)
            if found.version is None:
                raise UserError(f"no zoo-sweep store in {store.where} (the database is empty); run `zoo-sweep "
                                "plan SPEC` or `zoo-sweep demo` first")
            migrate.check_current(conn, found, store.where)
    except ModuleNotFoundError as e:
        store.dispose()
        raise UserError(f"the driver for {store.url.split(':', 1)[0]} is not installed ({e.name}); pip install "
                        "it") from None
    except sa.exc.DBAPIError as e:
        store.dispose()
        raise UserError(store._open_error(e)) from None
    except UserError:
        store.dispose()
        raise
    return store
