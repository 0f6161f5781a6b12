"""The `zoo-sweep` command: a thin layer over plan / launch / report functions.

Errors a user can cause end in one line on stderr and exit code 2; a sweep with failed jobs exits 1.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from . import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Measure complementary knowledge across a model zoo and run knowledge-transfer sweeps on Ray.")
# Not a terminal (CI, pipes): wide enough that tables and one-line errors are not wrapped.
out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)
DEMO_SPEC = "jobs/digits-demo.toml"


class Ctx:
    def __init__(self, db: str | None, home: str | None):
        self.db, self.home = db, home

    def store(self, create: bool = True):
        from .store import Store

        return Store(self.db, create=create)

    def paths(self):
        from .paths import Paths

        return Paths.default(self.home)


@app.callback()
def _root(ctx: typer.Context,
          db: Optional[str] = typer.Option(None, "--db", envvar="ZOO_SWEEP_DB",
                                           help="Store URL (SQLAlchemy). Default: sqlite:///results/zoo.db"),
          home: Optional[str] = typer.Option(None, "--home", envvar="ZOO_SWEEP_HOME",
                                             help="Folder for caches, prediction records and reports. Default: results")):
    ctx.obj = Ctx(db, home)


def _table(df, title: str | None = None) -> Table:
    t = Table(title=title, title_justify="left")
    for c in df.columns:
        t.add_column(str(c), justify="right" if df[c].dtype.kind in "if" else "left")
    for row in df.itertuples(index=False):
        t.add_row(*["" if v is None or (isinstance(v, float) and v != v) else
                    (f"{v:.2f}" if isinstance(v, float) else str(v)) for v in row])
    return t


# ---------------------------------------------------------------------- plan
@app.command()
def plan(ctx: typer.Context, spec: Path = typer.Argument(..., help="Sweep spec (TOML), e.g. jobs/digits-demo.toml"),
         dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan; write nothing.")):
    """Write the sweep and its job ledger to the store and print models, pairs, jobs and an estimate."""
    from .plan import make_plan, write_plan
    from .spec import load_spec

    s = load_spec(spec)
    p = make_plan(s, ctx.obj.paths())
    _print_plan(p)
    if dry_run:
        out.print("dry run: nothing written")
        return
    store = ctx.obj.store()
    new = write_plan(store, p)
    out.print(f"planned {s.name} in {store.url}: {new} new job(s), {len(p.all_jobs) - new} already in the ledger")


def _print_plan(p) -> None:
    import pandas as pd

    from .plan import max_selected

    m = len(p.models)
    models = pd.DataFrame([{"model": e.name, "family": e.family, "params": p.params[e.name]} for e in p.models])
    by_family = models.groupby("family").agg(models=("model", "count"), params=("params", "median")).reset_index()
    out.print(_table(models if m <= 40 else by_family, f"{p.spec.name}: {m} models"))
    n_t = len(p.transfer_jobs) if p.transfer_jobs is not None else None
    t = p.spec.transfer
    per_pair = len(t.methods) * len(t.seeds)
    out.print(f"ordered pairs measured: {m * (m - 1)}")
    if n_t is None:
        out.print(f"transfer pairs: chosen after measurement by policy '{p.spec.pairs.policy}', at most "
                  f"{max_selected(p)} ({per_pair} job(s) each: methods {', '.join(t.methods)} x {len(t.seeds)} seed(s))")
    else:
        out.print(f"transfer pairs: {n_t // max(per_pair, 1)} x methods {', '.join(t.methods)} x "
                  f"{len(t.seeds)} seed(s) = {n_t} job(s), {t.epochs} epoch(s) each")
    out.print(f"jobs: {len(p.predict_jobs)} predict, 1 compare, "
              f"{n_t if n_t is not None else '<= ' + str(max_selected(p) * per_pair)} transfer")
    out.print(_estimate(p, n_t if n_t is not None else max_selected(p) * per_pair))


def _estimate(p, n_transfer: int) -> str:
    """Rough compute from parameter counts (no timings are known before the first run)."""
    from .data import count_images

    n_eval = count_images(p.spec.data.eval, p.spec.data.image_size, p.spec.data.class_map)
    n_tr = count_images(p.spec.data.transfer, p.spec.data.image_size, p.spec.data.class_map)
    mean_params = sum(p.params.values()) / len(p.params)
    sec_per_param_sample = 4e-10  # CPU forward, measured on the digits zoo; GPUs are ~50x faster
    pred = n_eval * sum(p.params.values()) * sec_per_param_sample
    # per transfer epoch: 3 forwards + 1 backward over the transfer set, then one eval pass
    tr = n_transfer * p.spec.transfer.epochs * (5 * n_tr + n_eval) * mean_params * sec_per_param_sample
    return (f"estimate (rough, from parameter counts): predict {_hours(pred)}, transfer {_hours(tr)} "
            f"of CPU time; on GPUs about {_hours((pred + tr) / 50)} GPU time")


def _hours(sec: float) -> str:
    return f"{sec / 3600:.1f} h" if sec >= 3600 else f"{sec / 60:.1f} min"


# ---------------------------------------------------------------------- launch / measure
def _launch(ctx, spec, until, gpus, cpus, address, gpus_per_job, cpus_per_job, max_retries, progress):
    from .launch import LaunchOptions, launch_sweep
    from .spec import load_spec

    s = load_spec(spec)
    opts = LaunchOptions(gpus=gpus, cpus=cpus, address=address, gpus_per_job=gpus_per_job,
                         cpus_per_job=cpus_per_job, max_retries=max_retries, until=until, progress=progress)
    if gpus < 0 or cpus_per_job < 1 or gpus_per_job <= 0:
        raise UserError("--gpus must be >= 0, --cpus-per-job >= 1 and --gpus-per-job > 0")
    t0 = time.time()
    rep = launch_sweep(s, ctx.obj.store(), ctx.obj.paths(), opts, err)
    _print_launch(rep, time.time() - t0)
    return s, rep


def _print_launch(rep, seconds: float) -> None:
    reused = ", ".join(f"{v} {k}" for k, v in rep.reused.items() if v)
    ran = ", ".join(f"{v} {k}" for k, v in rep.ran.items() if v)
    out.print(f"{rep.sweep}: ran {ran or 'nothing (all done)'} in {seconds:.1f} s"
              + (f"; reused {reused}" if reused else ""))
    for job_id, e in rep.failed:
        out.print(f"[red]failed[/] {job_id}: {e}")


_GPUS = typer.Option(0, "--gpus", help="GPUs to use (0: run on CPU).")
_CPUS = typer.Option(None, "--cpus", help="CPUs for a local Ray cluster (default: all cores).")
_ADDR = typer.Option(None, "--address", envvar="RAY_ADDRESS", help="Existing Ray cluster (HOST:PORT or auto).")
_GPJ = typer.Option(1.0, "--gpus-per-job", help="GPU share per job; fractions run several jobs per GPU.")
_CPJ = typer.Option(1, "--cpus-per-job", help="CPU threads per job.")
_RETRY = typer.Option(None, "--max-retries", help="Retries of a failing job (default: the spec's).")
_PROG = typer.Option(True, "--progress/--no-progress", help="Live progress bars.")


@app.command()
def launch(ctx: typer.Context, spec: Path = typer.Argument(..., help="Sweep spec (TOML)."),
           gpus: float = _GPUS, cpus: Optional[int] = _CPUS, address: Optional[str] = _ADDR,
           gpus_per_job: float = _GPJ, cpus_per_job: int = _CPJ, max_retries: Optional[int] = _RETRY,
           progress: bool = _PROG):
    """Run the sweep's pending jobs on Ray (plans first if needed); finished jobs are skipped."""
    _, rep = _launch(ctx, spec, "transfer", gpus, cpus, address, gpus_per_job, cpus_per_job, max_retries, progress)
    raise typer.Exit(0 if rep.ok else 1)


@app.command()
def measure(ctx: typer.Context, spec: Path = typer.Argument(..., help="Sweep spec (TOML)."),
            gpus: float = _GPUS, cpus: Optional[int] = _CPUS, address: Optional[str] = _ADDR,
            gpus_per_job: float = _GPJ, cpus_per_job: int = _CPJ, max_retries: Optional[int] = _RETRY,
            progress: bool = _PROG):
    """Stages 1-2 only: predict every model once and compare all pairs (no transfer)."""
    _, rep = _launch(ctx, spec, "compare", gpus, cpus, address, gpus_per_job, cpus_per_job, max_retries, progress)
    raise typer.Exit(0 if rep.ok else 1)


# ---------------------------------------------------------------------- status / query / export / report
@app.command()
def status(ctx: typer.Context, sweep: Optional[str] = typer.Argument(None, help="Sweep name (default: all).")):
    """Job counts per stage and state, and the last error line of failed jobs."""
    store = ctx.obj.store(create=False)
    where = "where sj.sweep = :sweep" if sweep else ""
    df = store.query(f"""select sj.sweep, j.kind, j.state, count(*) as jobs, round(sum(j.seconds), 1) as seconds
                         from jobs j join sweep_jobs sj on sj.job_id = j.id {where}
                         group by sj.sweep, j.kind, j.state order by sj.sweep, j.kind, j.state""",
                     {"sweep": sweep} if sweep else None)
    if df.empty:
        raise UserError(f"no sweep named {sweep!r} in the store" if sweep else "the store has no sweeps yet")
    out.print(_table(df, "jobs"))
    failed = store.query(f"""select j.id, j.kind, j.attempts, j.error from jobs j join sweep_jobs sj
                             on sj.job_id = j.id {where} {'and' if sweep else 'where'} j.state in ('failed', 'diverged')""",
                         {"sweep": sweep} if sweep else None)
    for r in failed.itertuples():
        out.print(f"[red]{r.kind} {r.id}[/] after {r.attempts} attempt(s): {(r.error or '').strip().splitlines()[-1:]}")


@app.command()
def query(ctx: typer.Context, sql: str = typer.Argument(..., help='SQL, e.g. "select count(*) from pairs"'),
          fmt: str = typer.Option("table", "--format", "-f", help="table, csv or json")):
    """Run a read-only SQL query against the store."""
    if fmt not in ("table", "csv", "json"):
        raise UserError("--format must be table, csv or json")
    df = ctx.obj.store(create=False).query(sql)
    if fmt == "csv":
        sys.stdout.write(df.to_csv(index=False))
    elif fmt == "json":
        sys.stdout.write(df.to_json(orient="records") + "\n")
    else:
        out.print(_table(df))


@app.command()
def export(ctx: typer.Context, out_dir: Optional[Path] = typer.Option(None, "--out", help="Default: results/export/all")):
    """Write every table of the store as Parquet, one file per table."""
    paths = ctx.obj.store(create=False).export(out_dir or ctx.obj.paths().export())
    for p in paths:
        out.print(str(p))


@app.command()
def report(ctx: typer.Context, spec: Optional[Path] = typer.Argument(None, help="Sweep spec (default: the demo)."),
           out_dir: Optional[Path] = typer.Option(None, "--out", help="Default: results/reports/SWEEP")):
    """Summary tables in the terminal and a report folder (CSV, Markdown, PNG plots)."""
    from .spec import load_spec

    s = load_spec(spec or DEMO_SPEC)
    _report(ctx, s, out_dir)


def _report(ctx, s, out_dir=None):
    from .report import final_transfers, method_summary, models_table, write_report

    store = ctx.obj.store(create=False)
    target = out_dir or ctx.obj.paths().report(s.name)
    files = write_report(store, s.name, s.data.eval, target)
    out.print(_table(models_table(store, s.data.eval), f"models on {s.data.eval} (accuracy %)"))
    summary = method_summary(final_transfers(store, s.name))
    out.print(_table(summary, "transfer per method (percent; success = share of pairs with delta > 0, "
                              "student_success = median over students)"))
    out.print(f"report: {target} ({len(files)} files)")
    return summary


@app.command()
def demo(ctx: typer.Context, spec: Path = typer.Option(Path(DEMO_SPEC), "--spec", help="Sweep spec to run."),
         cpus: Optional[int] = _CPUS, gpus: float = _GPUS, progress: bool = _PROG):
    """The whole pipeline on the embedded digits zoo: plan, launch, report."""
    t0 = time.time()
    s, rep = _launch(ctx, spec, "transfer", gpus, cpus, None, 1.0, 1, None, progress)
    _report(ctx, s)
    out.print(f"demo finished in {time.time() - t0:.1f} s"
              + ("" if rep.ok else f" with {len(rep.failed)} failed job(s); see `zoo-sweep status`"))
    raise typer.Exit(0 if rep.ok else 1)


def main(argv: list[str] | None = None) -> int:
    import click

    cmd = typer.main.get_command(app)
    try:
        cmd.main(args=argv, prog_name="zoo-sweep", standalone_mode=False)
    except UserError as e:
        err.print(f"error: {e}", markup=False, highlight=False, soft_wrap=True)
        return 2
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except (click.exceptions.Abort, KeyboardInterrupt):
        err.print("interrupted: in-flight jobs are marked 'interrupted' and run again on the next launch")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
