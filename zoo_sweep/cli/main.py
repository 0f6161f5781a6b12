"""The `zoo-sweep` command: a thin layer over plan / launch / report functions.

Errors a user can cause end in one line on stderr and exit code 2; a sweep with failed jobs exits 1.
"""

from __future__ import annotations

import contextlib
import errno
import json
import signal
import sys
import time
import warnings
from pathlib import Path
from typing import Optional

import typer
import typer.core
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from zoo_sweep.cli import output
from zoo_sweep.errors import UserError
from zoo_sweep.paths import staged_dir, writable_dir
from zoo_sweep.urls import mask_url

# Not a terminal (CI, pipes): wide enough that tables and one-line errors are not wrapped. Both print through
# cli/output.py, which masks every secret of the command line and environment in every line.
out = Console(file=output.stdout, width=None if sys.stdout.isatty() else 160)
err = Console(file=output.stderr, stderr=True, width=None if sys.stderr.isatty() else 160)


def print_error(e: UserError) -> None:
    """One line on stderr: never markup (``[zoo.checkpoints]`` prints as written), never a password (``err``
    masks every line)."""
    err.print(f"error: {e}", markup=False, highlight=False, soft_wrap=True)


class _Commands(typer.core.TyperGroup):
    """Every command's UserError ends as one line and exit code 2, also when the app is called in-process; every
    line it prints is masked with the secrets of its command line (cli/output.py), usage errors included."""

    def make_context(self, info_name, args, parent=None, **extra):
        output.remember_secrets(args)
        with _masked_usage_errors():
            return super().make_context(info_name, args, parent, **extra)

    def invoke(self, ctx):
        try:
            with _masked_usage_errors(), _model_warnings():
                return super().invoke(ctx)
        except UserError as e:
            print_error(e)
            raise typer.Exit(2) from None
        except Exception as e:
            line = failure_line(e, getattr(ctx.obj, "db", None))
            if line is None:  # a bug: its traceback is what to report
                raise
            print_error(UserError(line))
            raise typer.Exit(2) from None


# Failures of the machine or the database, not of the input, that can strike any command midway: a full disk,
# a read-only file or folder, a damaged, read-only or unreachable store. Each is one line naming the file or
# the store and what to do (exit 2; 1 from a launch that ran jobs), never a traceback. A transaction the
# database refused was rolled back, so the store is as it was before the command (or before the failed write).
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_READ_ONLY = (errno.EROFS, errno.EACCES, errno.EPERM)


def failure_line(e: BaseException, db: str | None) -> str | None:
    """The one line for such a failure, or None for anything else (a bug)."""
    import sqlalchemy as sa

    if isinstance(e, OSError):
        if e.strerror:
            line = f"{e.filename}: {e.strerror}" if e.filename else e.strerror
        else:  # no errno (a URLError, a socket timeout): its own text
            line = (str(e).strip().splitlines() or [type(e).__name__])[0]
        if e.errno in _NO_SPACE:
            return f"{line}; free some space, or give --home / --db a place that has it"
        if e.errno in _READ_ONLY:
            return f"{line}; give --home (or ZOO_SWEEP_HOME), --db or --out a place this user can write"
        return line
    ours = (sa.exc.ProgrammingError, sa.exc.IntegrityError, sa.exc.DataError)  # our SQL's own bugs
    if not isinstance(e, sa.exc.DBAPIError) or isinstance(e, ours):
        return None
    where = _store_where(db)
    msg = (str(e.orig).strip().splitlines() or [type(e.orig).__name__])[0]
    if any(w in msg for w in ("malformed", "not a database", "file is encrypted")):
        return f"the store {where} is damaged ({msg}); restore it from a copy, or start a new store (--db)"
    if "readonly" in msg or "read-only" in msg:
        return (f"cannot write the store {where} ({msg}): its file or folder is read-only; use a store this "
                "user can write (--db)")
    if "full" in msg or "disk I/O" in msg:
        return f"cannot write the store {where} ({msg}); free some space, or use a store elsewhere (--db)"
    return f"cannot use the store {where}: {msg}"


def _store_where(db: str | None) -> str:
    """The store as Store names it in messages: a SQLite file by its path, a server by its masked URL."""
    from sqlalchemy.engine import make_url

    from zoo_sweep.storage.store import resolve_url

    url = resolve_url(db)
    try:
        u = make_url(url)
    except Exception:
        return mask_url(url)
    return u.database if u.get_backend_name() == "sqlite" and u.database else mask_url(url)


@contextlib.contextmanager
def _model_warnings():
    """Warnings about a model (zoo.entry.ModelWarning: weights holding NaN, a std that multiplies the pixels by
    hundreds), raised while the zoo is resolved, as one ``warning:`` line each, every time they are raised."""
    from zoo_sweep.zoo.entry import ModelWarning

    with warnings.catch_warnings():
        warnings.simplefilter("always", ModelWarning)
        default = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if issubclass(category, ModelWarning):
                err.print(f"[yellow]warning:[/] {escape(str(message))}", highlight=False, soft_wrap=True)
            else:
                default(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        yield


@contextlib.contextmanager
def _masked_usage_errors():
    """click prints its own usage errors, which may quote an option's value (``'u:p@h' is not a valid float``)."""
    try:
        yield
    except typer.TyperException as e:  # typer's own click raises these: usage errors carry a message
        if isinstance(getattr(e, "message", None), str):
            e.message = output.masked(e.message)
        raise


app = typer.Typer(cls=_Commands, add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  pretty_exceptions_enable=False,
                  help="Measure complementary knowledge across a model zoo and run knowledge-transfer sweeps on Ray.")
DEMO_SPEC = "jobs/digits-demo.toml"


class Ctx:
    def __init__(self, db: str | None, home: str | None):
        self.db, self.home = db, home

    def store(self, create: bool = True, check: bool = True):
        """The store of --db (or ZOO_SWEEP_DB, or the default): every command opens it here."""
        from zoo_sweep.storage.store import Store, resolve_url

        refuse_in_memory(resolve_url(self.db))
        return Store(self.db, create=create, check=check)

    def paths(self):
        from zoo_sweep.paths import Paths

        return Paths.default(self.home)


def refuse_in_memory(url: str) -> None:
    """An in-memory SQLite store (``sqlite://``, ``sqlite:///:memory:``) lives as long as one connection: a plan
    written there is gone when the command ends, and a launch's workers could never see it."""
    from sqlalchemy.engine import make_url

    try:
        u = make_url(url)
    except Exception:
        return  # Store says what is wrong with the URL
    if u.get_backend_name() == "sqlite" and (not u.database or ":memory:" in u.database
                                             or u.query.get("mode") == "memory"):
        raise UserError(f"the store {url} (--db or ZOO_SWEEP_DB) is an in-memory database: nothing written there "
                        "would outlast this command; give a file (sqlite:///results/zoo.db) or a server URL")


@app.callback()
def _root(ctx: typer.Context,
          db: Optional[str] = typer.Option(None, "--db", envvar="ZOO_SWEEP_DB",
                                           help="Store URL (SQLAlchemy). Default: sqlite:///results/zoo.db"),
          home: Optional[str] = typer.Option(None, "--home", envvar="ZOO_SWEEP_HOME",
                                             help="Folder for caches, prediction records and reports. "
                                                  "Default: results")):
    ctx.obj = Ctx(db, home)


def _table(df, title: str | None = None) -> Table:
    t = Table(title=escape(title) if title else None, title_justify="left")
    for c in df.columns:
        t.add_column(escape(str(c)), justify="right" if df[c].dtype.kind in "if" else "left")
    for row in df.itertuples(index=False):  # cells are data, never markup: a name like "a[b]" stays whole
        t.add_row(*["" if v is None or (isinstance(v, float) and v != v) else
                    (f"{v:.2f}" if isinstance(v, float) else escape(str(v))) for v in row])
    return t


def say(text: str) -> None:
    """A line of plain text on stdout (no markup: brackets in names and errors print as they are)."""
    out.print(text, markup=False, highlight=False, soft_wrap=True)


# ---------------------------------------------------------------------- plan
@app.command()
def plan(ctx: typer.Context, spec: Path = typer.Argument(..., help="Sweep spec (TOML), e.g. jobs/digits-demo.toml"),
         dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan; write nothing.")):
    """Write the sweep and its job ledger to the store and print models, pairs, jobs and an estimate."""
    from zoo_sweep.pipeline.estimate import estimate_gpu_hours
    from zoo_sweep.pipeline.plan import load_sweep, make_plan, write_plan

    s = load_sweep(spec)
    p = make_plan(s, ctx.obj.paths(), dry_run=dry_run)
    n_eval, n_transfer = _image_counts(p)  # counted once (a folder walk on ImageNet), read by both estimates
    _print_plan(p, n_eval, n_transfer)
    say(estimate_gpu_hours(p, n_transfer=n_transfer, n_eval=n_eval).line())
    if dry_run:
        say("dry run: nothing written")
        return
    store = ctx.obj.store()
    new = write_plan(store, p, warn=lambda note: err.print(f"[yellow]warning:[/] {escape(note)}"))
    say(f"planned {s.name} in {mask_url(store.url)}: {new} new job(s), {len(p.all_jobs) - new} already in the ledger")


def _image_counts(p) -> tuple[int, int]:
    """Images of the spec's eval and transfer sets (0: not reachable from here)."""
    from zoo_sweep.data.sets import count_images, set_args

    return count_images(**set_args(p.spec.data, "eval")), count_images(**set_args(p.spec.data, "transfer"))


def _print_plan(p, n_eval: int, n_transfer: int) -> None:
    import pandas as pd

    from zoo_sweep.pipeline.plan import is_control, max_selected

    m = len(p.models)
    models = pd.DataFrame([{"model": e.name, "family": e.family, "params": p.params[e.name]} for e in p.models])
    if m <= 40:
        out.print(_table(models, f"{p.spec.name}: {m} models"))
    else:  # a zoo-scale plan: one line per family, not per model
        by_family = models.groupby("family").agg(
            models=("model", "count"), params_median_M=("params", "median"), params_min_M=("params", "min"),
            params_max_M=("params", "max"), params_total_M=("params", "sum")).reset_index()
        for c in by_family.columns[2:]:
            by_family[c] = by_family[c] / 1e6
        out.print(_table(by_family, f"{p.spec.name}: {m} models by family (parameters in millions)"))
        n_f = models["family"].value_counts()
        say("ordered pairs by family (student -> teacher): " + ", ".join(
            f"{a}->{b} {n_f[a] * (n_f[b] - (a == b)):,}" for a in n_f.index for b in n_f.index))
    hub = [e for e in p.models if e.weights == "hub"]
    if hub:  # a dry run needs no weights; say which ones a launch on this machine would still have to fetch
        from zoo_sweep.zoo.models import hub_cached_file

        missing = [e.name for e in hub if not hub_cached_file(e.arch)]
        if missing:
            out.print(f"weights not found on this machine for {len(missing)} of {m} models (launch fetches them "
                      f"from the Hugging Face hub, or fails offline): {', '.join(missing)}")
    t = p.spec.transfer
    per_pair = len(t.methods) * len(t.seeds)
    per_student = len(t.controls) * len(t.seeds)
    say(f"ordered pairs measured: {m * (m - 1):,}")
    if not t.methods and not getattr(t, "multi_teacher", ()):
        say("transfer: none (measure-only spec: [transfer] methods = [])")
        n_t = 0
    elif p.transfer_jobs is None:
        say(f"transfer pairs: chosen after measurement by policy '{p.spec.pairs.policy}', at most "
            f"{max_selected(p)} ({per_pair} job(s) each: methods {', '.join(t.methods)} x {len(t.seeds)} seed(s))")
        if per_student:
            say(f"controls: {', '.join(t.controls)} x {len(t.seeds)} seed(s) for each chosen student, at most "
                f"{m * per_student} job(s)")
        n_t = max_selected(p) * per_pair + m * per_student
    else:
        n_t = len(p.transfer_jobs)
        n_c = sum(map(is_control, p.transfer_jobs))
        n_pairs = len({(j.payload.student.name, j.payload.teacher.name) for j in p.transfer_jobs
                       if not (is_control(j) or j.payload.multi)})
        say(f"transfer pairs: {n_pairs} x methods {', '.join(t.methods)} x {len(t.seeds)} seed(s) = "
            f"{n_pairs * per_pair} job(s), {t.epochs} epoch(s) each")
        if n_c:
            say(f"controls: {n_c // per_student} student(s) x {', '.join(t.controls)} x {len(t.seeds)} seed(s) = "
                f"{n_c} job(s), once per student (not per pair)")
    say(f"jobs: {len(p.predict_jobs)} predict, 1 compare, "
        f"{n_t if p.transfer_jobs is not None else '<= ' + str(n_t)} transfer (controls included)")
    say(_estimate(p, n_t, n_eval, n_transfer))


def _estimate(p, n_transfer: int, n_eval: int, n_tr: int) -> str:
    """Rough compute from parameter counts (no timings are known before the first run): ``n_transfer`` transfer
    jobs, ``n_eval`` and ``n_tr`` images in the eval and transfer sets."""
    if n_eval == 0:  # a dry run away from the data: nothing to count the images of
        return (f"estimate: the eval set {p.spec.data.eval} is not reachable from here, so no compute estimate; "
                f"{sum(p.params.values()) / 1e6:,.0f} M parameters in all, one forward pass each per eval image")
    mean_params = sum(p.params.values()) / len(p.params)
    sec_per_param_sample = 4e-10  # CPU forward, measured on the digits zoo (the GPU estimate is the next line's)
    pred = n_eval * sum(p.params.values()) * sec_per_param_sample
    # per transfer epoch: 3 forwards + 1 backward over the transfer set, then one eval pass
    tr = n_transfer * p.spec.transfer.epochs * (5 * n_tr + n_eval) * mean_params * sec_per_param_sample
    return f"estimate (rough, from parameter counts): predict {_hours(pred)}, transfer {_hours(tr)} of CPU time"


def _hours(sec: float) -> str:
    return f"{sec / 3600:.1f} h" if sec >= 3600 else f"{sec / 60:.1f} min"


# ---------------------------------------------------------------------- launch / measure
def _launch(ctx, spec, until, gpus, cpus, address, gpus_per_job, cpus_per_job, max_retries, progress,
            only_failed=False, limit=None, shard=None, tracking=None):
    from zoo_sweep.pipeline.launch import (
        LaunchOptions,
        parse_shard,
        prepare_launch,
        run_launch,
        stop_on_signals,
        stop_signal,
    )
    from zoo_sweep.pipeline.plan import load_sweep

    s = load_sweep(spec)
    if tracking is not None:
        s = s.with_tracking(tracking)
    opts = LaunchOptions(gpus=gpus, cpus=cpus, address=address, gpus_per_job=gpus_per_job,
                         cpus_per_job=cpus_per_job, max_retries=max_retries, until=until, progress=progress,
                         only_failed=only_failed, limit=limit, shard=parse_shard(shard) if shard else None)
    t0 = time.time()
    try:
        with stop_on_signals():  # SIGTERM and SIGHUP stop a launch as Ctrl-C does
            prep = prepare_launch(s, ctx.obj.paths(), opts)  # every check first: the store is opened after them
            with _launch_failures(ctx):
                rep = run_launch(prep, ctx.obj.store(), ctx.obj.paths(), err).report
    except KeyboardInterrupt:
        sig = stop_signal()
        how = "interrupted" if sig == signal.SIGINT else f"stopped by {signal.Signals(sig).name}"
        err.print(f"{how}: jobs in flight are marked 'interrupted' and run again on the next launch", markup=False)
        raise typer.Exit(128 + sig) from None  # the shell's code for a process ended by that signal: 130, 143, 129
    _print_launch(rep, time.time() - t0)
    return s, rep


@contextlib.contextmanager
def _launch_failures(ctx):
    """The disk or the store failing once a launch runs (failure_line): one line and exit 1, as a launch that
    leaves failed jobs; every job that finished is in the store, and the next launch goes on from there."""
    try:
        yield
    except Exception as e:
        line = failure_line(e, ctx.obj.db)
        if line is None:
            raise
        print_error(UserError(f"{line}; the jobs that finished are kept: launch again to go on"))
        raise typer.Exit(1) from None


def _print_launch(rep, seconds: float) -> None:
    reused = ", ".join(f"{v} {k}" for k, v in rep.reused.items() if v)
    ran = ", ".join(f"{v} {k}" for k, v in rep.ran.items() if v)
    say(f"{rep.sweep}: ran {ran or ('nothing (all done)' if rep.ok else 'nothing')} in {seconds:.1f} s"
        + (f"; reused {reused}" if reused else ""))
    for job_id, e in rep.failed:
        out.print(f"[red]failed[/] {escape(job_id)} {escape(e)}", highlight=False, soft_wrap=True)
    for line in rep.skipped:
        out.print(f"[red]skipped[/] {escape(line)}", highlight=False, soft_wrap=True)
    for line in rep.notes:
        say(line)
    if not rep.ok:
        say(f"{rep.sweep} is not complete: {len(rep.failed)} failed job(s), {len(rep.skipped)} skipped stage(s); "
            "see `zoo-sweep status`")


_GPUS = typer.Option(0, "--gpus", help="GPUs to use (0: run on CPU).")
_CPUS = typer.Option(None, "--cpus", help="CPUs for a local Ray cluster (default: all cores).")
_ADDR = typer.Option(None, "--address", envvar="RAY_ADDRESS", help="Existing Ray cluster (HOST:PORT or auto).")
_GPJ = typer.Option(None, "--gpus-per-job", help='GPU share per transfer job: fractions run several jobs per GPU; '
                    '"auto" measures how many pay (default: the spec\'s [run] gpus_per_job, 1).')
_CPJ = typer.Option(1, "--cpus-per-job", help="CPU threads per job.")
_RETRY = typer.Option(None, "--max-retries", help="Retries of a failing job (default: the spec's).")
_PROG = typer.Option(True, "--progress/--no-progress", help="Live progress bars.")
_FAILED = typer.Option(False, "--only-failed", help="Rerun only failed jobs, each with a fresh retry budget.")
_LIMIT = typer.Option(None, "--limit",
                      help="Run at most this many transfer jobs (predict and compare always complete).")
_SHARD = typer.Option(None, "--shard", help="i/K: run only shard i of K (array jobs on a shared store).")
_TRACK = typer.Option(None, "--tracking", help="Log every transfer and predict run to MLflow at this tracking URI "
                                              "(http://HOST:PORT, file:/PATH, sqlite:///PATH), whatever the spec's "
                                              "[tracking] says; needs pip install 'zoo-sweep[mlflow]'.")


@app.command()
def launch(ctx: typer.Context, spec: Path = typer.Argument(..., help="Sweep spec (TOML)."),
           gpus: float = _GPUS, cpus: Optional[int] = _CPUS, address: Optional[str] = _ADDR,
           gpus_per_job: Optional[str] = _GPJ, cpus_per_job: int = _CPJ, max_retries: Optional[int] = _RETRY,
           progress: bool = _PROG, only_failed: bool = _FAILED, limit: Optional[int] = _LIMIT,
           shard: Optional[str] = _SHARD, tracking: Optional[str] = _TRACK):
    """Run the sweep's pending jobs on Ray (plans first if needed); finished jobs are skipped."""
    _, rep = _launch(ctx, spec, "transfer", gpus, cpus, address, gpus_per_job, cpus_per_job, max_retries, progress,
                     only_failed, limit, shard, tracking)
    raise typer.Exit(0 if rep.ok else 1)


@app.command()
def measure(ctx: typer.Context, spec: Path = typer.Argument(..., help="Sweep spec (TOML)."),
            gpus: float = _GPUS, cpus: Optional[int] = _CPUS, address: Optional[str] = _ADDR,
            gpus_per_job: Optional[str] = _GPJ, cpus_per_job: int = _CPJ, max_retries: Optional[int] = _RETRY,
            progress: bool = _PROG, only_failed: bool = _FAILED, limit: Optional[int] = _LIMIT,
            shard: Optional[str] = _SHARD):
    """Stages 1-2 only: predict every model once and compare all pairs (no transfer)."""
    _, rep = _launch(ctx, spec, "compare", gpus, cpus, address, gpus_per_job, cpus_per_job, max_retries, progress,
                     only_failed, limit, shard)
    raise typer.Exit(0 if rep.ok else 1)


# ---------------------------------------------------------------------- status / query / export / report
def _sweep_name(store, sweep: str | None) -> str | None:
    """A sweep name from a name or a spec path; None means every sweep."""
    if sweep is None:
        return None
    if sweep.endswith(".toml"):
        from zoo_sweep.pipeline.plan import load_sweep

        sweep = load_sweep(sweep).name
    if sweep not in store.sweep_names():
        known = ", ".join(store.sweep_names()) or "none yet"
        raise UserError(f"no sweep named {sweep!r} in the store (sweeps: {known})")
    return sweep


@app.command()
def status(ctx: typer.Context, sweep: Optional[str] = typer.Argument(None, help="Sweep name or spec (default: all)."),
           slowest: int = typer.Option(5, "--slowest", help="How many of the slowest finished jobs to list.")):
    """Jobs per stage and state, the slowest jobs, and the last error line of failed ones."""
    import pandas as pd

    from zoo_sweep.pipeline.estimate import finished_vs_estimated
    from zoo_sweep.storage.store import job_summary, jobs_of

    store = ctx.obj.store(create=False)
    name = _sweep_name(store, sweep)
    df = job_summary(store, name)
    if df.empty:
        raise UserError("the store has no sweeps yet; run `zoo-sweep plan SPEC` or `zoo-sweep demo`")
    out.print(_table(df, "jobs per stage and state"))
    jobs = jobs_of(store, name)
    jobs["seconds"] = pd.to_numeric(jobs["seconds"], errors="coerce")  # all-NULL columns come back as objects
    jobs = jobs.drop_duplicates("id")  # a job shared by two sweeps is listed once
    done = jobs[jobs["state"] == "done"].dropna(subset=["seconds"]).nlargest(slowest, "seconds")
    if not done.empty:
        out.print(_table(done[["id", "kind", "seconds", "worker"]], f"slowest {len(done)} finished jobs"))
    for f in finished_vs_estimated(store, name, ctx.obj.paths().home):
        say(f.line())
    for r in jobs[jobs["state"].isin(["failed", "diverged"])].itertuples():
        last = (r.error or "").strip().splitlines()[-1:] or [""]
        out.print(f"[red]{r.state}[/] {escape(f'{r.kind} {r.id} after {r.attempts} attempt(s): {last[0]}')}",
                  highlight=False, soft_wrap=True)


@app.command()
def reset(ctx: typer.Context, sweep: str = typer.Argument(..., help="Sweep name or spec."),
          state: str = typer.Option("failed", "--state", help="Which jobs go back to pending: failed, diverged, "
                                                               "cancelled or interrupted.")):
    """Put a sweep's failed (or other) jobs back to pending with a fresh retry budget."""
    from zoo_sweep.storage.store import reset_jobs

    if state not in ("failed", "diverged", "cancelled", "interrupted"):
        raise UserError("--state must be failed, diverged, cancelled or interrupted")
    store = ctx.obj.store(create=False)
    n = reset_jobs(store, _sweep_name(store, sweep), state, "pending")
    say(f"{n} {state} job(s) are pending again; run `zoo-sweep launch SPEC`")


@app.command()
def cancel(ctx: typer.Context, sweep: str = typer.Argument(..., help="Sweep name or spec."),
           kind: Optional[str] = typer.Option(None, "--kind", help="Only this stage: predict or transfer.")):
    """Mark a sweep's pending (and failed) jobs cancelled: launch skips them until `reset --state cancelled`."""
    from zoo_sweep.storage.store import reset_jobs

    store = ctx.obj.store(create=False)
    name = _sweep_name(store, sweep)
    n = sum(reset_jobs(store, name, st, "cancelled", kind) for st in ("pending", "failed"))
    say(f"{n} job(s) cancelled")


@app.command()
def track(ctx: typer.Context, sweep: str = typer.Argument(..., help="Sweep name or spec."),
          tracking: Optional[str] = typer.Option(
              None, "--tracking", help="MLflow tracking URI (default: the spec's [tracking] uri, else "
                                       "$MLFLOW_TRACKING_URI, else mlflow.db in the results folder)."),
          progress: bool = _PROG):
    """Log to MLflow (or the spec's [tracking]) the finished transfer and predict jobs of a stored sweep that its
    experiment lacks (launched without tracking, or while the tracker was down); runs already there stay as they
    are."""
    from zoo_sweep.pipeline.plan import load_sweep
    from zoo_sweep.pipeline.tracking import track_destination, track_sweep

    spec = load_sweep(sweep) if sweep.endswith(".toml") else None
    dest = track_destination(ctx.obj.paths().home, tracking, spec)
    store = ctx.obj.store(create=False)
    name = _sweep_name(store, sweep)
    shown = [time.monotonic()]

    def on_progress(sent: int, queued: int) -> None:
        if progress and time.monotonic() - shown[0] >= 5:
            shown[0] = time.monotonic()
            err.print(f"{name}: {sent} of {queued} run(s) sent", highlight=False)

    res = track_sweep(store, name, dest, ctx.obj.paths().home, on_progress)
    say(f"{name}: {res.finished} finished job(s); {res.already} already in {dest.name} at {res.where}, "
        f"{res.logged} logged now")
    if res.warning:
        err.print(f"[yellow]warning:[/] {escape(res.warning)}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)


@app.command()
def tune(ctx: typer.Context, spec: Path = typer.Argument(..., help="Sweep spec (TOML)."),
         method: str = typer.Option(..., "--method", help="Transfer method to tune, e.g. kl_dp."),
         samples: int = typer.Option(8, "--samples", help="Configurations to try."),
         pairs: int = typer.Option(4, "--pairs", help="Calibration pairs (stratified by accuracy gap x family)."),
         objective: str = typer.Option("delta", "--objective", help="delta (mean transfer delta) or success."),
         write: bool = typer.Option(False, "--write", help="Write the best configuration into the spec's [transfer]."),
         cpus: Optional[int] = _CPUS, address: Optional[str] = _ADDR, progress: bool = _PROG):
    """Ray Tune search of one method's hyper-parameters on a calibration subset of pairs."""
    from zoo_sweep.pipeline.launch import LaunchOptions
    from zoo_sweep.pipeline.plan import load_sweep
    from zoo_sweep.pipeline.tune import tune_method, write_back

    s = load_sweep(spec)
    res = tune_method(s, ctx.obj.store(), ctx.obj.paths(), method, samples, pairs, objective,
                      LaunchOptions(cpus=cpus, address=address, progress=progress))
    out.print(_table(res.trials, f"{method}: {len(res.trials)} configuration(s) on {len(res.pairs)} pair(s), "
                                 f"stored as sweep {res.sweep}"))
    say(f"best: {json.dumps(res.best)}")
    if res.tracking:
        err.print(f"[yellow]warning:[/] {escape(res.tracking)}", highlight=False, soft_wrap=True)
    if write:
        write_back(spec, res.best)
        say(f"written into [transfer] of {spec}")


@app.command()
def query(ctx: typer.Context, sql: str = typer.Argument(..., help='SQL, e.g. "select count(*) from pairs"'),
          fmt: str = typer.Option("table", "--format", "-f", help="table, csv or json"),
          timeout: float = typer.Option(60.0, "--timeout", help="Stop the query after this many seconds.")):
    """Run a read-only SQL query against the store."""
    if fmt not in ("table", "csv", "json"):
        raise UserError("--format must be table, csv or json")
    if not 0 < timeout < float("inf"):  # always a limit: a runaway query (a recursive CTE) never ends by itself
        raise UserError(f"--timeout must be a positive number of seconds, got {timeout:g}")
    df = ctx.obj.store(create=False).query(sql, timeout=timeout)
    if fmt == "csv":
        sys.stdout.write(df.to_csv(index=False))
    elif fmt == "json":
        sys.stdout.write(df.to_json(orient="records") + "\n")
    else:
        out.print(_table(df))


@app.command()
def export(ctx: typer.Context,
           out_dir: Optional[str] = typer.Option(None, "--out", help="Default: results/export/all")):
    """Write every table of the store as Parquet, one file per table."""
    store = ctx.obj.store(create=False)  # a broken store fails before any folder is made
    # the folder is checked before anything is written ('' is refused there, not taken for the current folder)
    paths = store.export(ctx.obj.paths().export() if out_dir is None else out_dir)
    for p in paths:
        say(str(p))


@app.command()
def report(ctx: typer.Context,
           spec: Optional[str] = typer.Argument(None, help="Sweep spec, or the name of a sweep in the store "
                                                           "(default: the demo)."),
           out_dir: Optional[str] = typer.Option(None, "--out", help="Default: results/reports/SWEEP")):
    """Tables in the terminal and a report folder: report.html (self-contained), PNG plots, CSV, Markdown."""
    from zoo_sweep.pipeline.plan import load_sweep

    arg = spec or DEMO_SPEC
    if arg.endswith(".toml") or "/" in arg or Path(arg).is_file():
        _report(ctx, load_sweep(arg), out_dir)  # a spec: an empty report where its sweep has no results yet
    else:  # a name: the sweep the store holds, as status and reset take it
        _report(ctx, _stored_sweep(ctx.obj.store(create=False), arg), out_dir)


def _stored_sweep(store, name: str):
    """What the report needs of a stored sweep (its name, eval set and class map), from the spec the store
    keeps for it; a name the store does not hold is one line naming those it does."""
    from types import SimpleNamespace

    _sweep_name(store, name)
    stored = store.query("select spec from sweeps where name = :n", {"n": name})["spec"].iloc[0]
    data = json.loads(stored).get("data") or {}
    return SimpleNamespace(name=name, data=SimpleNamespace(eval=data.get("eval", "digits:eval"),
                                                           class_map=data.get("class_map")))


def _report(ctx, s, out_dir=None):
    from zoo_sweep.data.sets import num_classes_of
    from zoo_sweep.report.build import make_report

    store = ctx.obj.store(create=False)  # a broken store fails before any folder is made
    target = writable_dir(ctx.obj.paths().report(s.name) if out_dir is None else out_dir, "--out")
    try:
        k = num_classes_of(s.data.eval, s.data.class_map)
    except UserError:  # the eval images are not reachable from here: the report says K is unknown
        k = None
    # written into a private folder, then each file renamed over its name in the target (paths.staged_dir): a
    # link the target folder holds is replaced, never written through
    with staged_dir(target, "--out") as stage:
        rep = make_report(store, s.name, s.data.eval, stage, num_classes=k)
    for p in rep.panels:  # a panel without data this time: its plot from an earlier report goes
        if p.path is None:
            (target / f"{p.key}.png").unlink(missing_ok=True)
    rep.html, rep.files = target / Path(rep.html).name, [target / Path(f).name for f in rep.files]
    for heading, items in rep.sections:
        out.rule(escape(heading))
        for it in items:
            if isinstance(it, str):
                say(it)
            elif hasattr(it, "view"):
                if len(it.view):
                    out.print(_table(it.view, it.title))
                else:
                    say(f"{it.title}: (none yet)")
            elif it.path is None:
                say(f"{it.title}: {it.caption}")
    out.rule("findings")
    for line in rep.findings:
        say(f"- {line}")
    say(f"report: {rep.html} ({len(rep.files)} files; SQL behind every table in the page)")
    return next(t.data for t in rep.tables if t.key == "methods")


@app.command()
def demo(ctx: typer.Context, spec: Path = typer.Option(Path(DEMO_SPEC), "--spec", help="Sweep spec to run."),
         cpus: Optional[int] = _CPUS, gpus: float = _GPUS, progress: bool = _PROG):
    """The whole pipeline on the embedded digits zoo: plan, launch, report."""
    t0 = time.time()
    s, rep = _launch(ctx, spec, "transfer", gpus, cpus, None, 1.0, 1, None, progress)
    _report(ctx, s)
    say(f"demo finished in {time.time() - t0:.1f} s"
        + ("" if rep.ok else f" with {len(rep.failed)} failed job(s) and {len(rep.skipped)} skipped stage(s); "
                             "see `zoo-sweep status`"))
    raise typer.Exit(0 if rep.ok else 1)


from zoo_sweep.cli.db import db_app  # noqa: E402  (zoo-sweep db version|upgrade)
from zoo_sweep.cli.submit import submit_app  # noqa: E402  (zoo-sweep submit slurm|ray)

app.add_typer(submit_app, name="submit")
app.add_typer(db_app, name="db")


def main(argv: list[str] | None = None) -> int:
    """Console entry point. Click/typer handle usage errors and exit codes (SystemExit); a UserError
    becomes one line on stderr and exit code 2; anything else prints its traceback, masked, and exits 1."""
    output.remember_secrets(sys.argv[1:] if argv is None else argv)
    try:
        app(args=argv, prog_name="zoo-sweep")
    except UserError as e:  # raised outside a command (the app's own handler covers commands)
        print_error(e)
        return 2
    except Exception:  # a bug: the traceback is what to report, but it may quote a URL with its password
        import traceback

        output.stderr.write(traceback.format_exc())
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
