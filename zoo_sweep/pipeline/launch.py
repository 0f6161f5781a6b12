"""The driver: runs a sweep's pending jobs stage by stage on Ray and records every result.

    zoo       train missing embedded-zoo models (Ray tasks; the digits source only)
    predict   one forward pass per model -> prediction records        (warm actors)
    compare   all pairs from the records, vectorised        (a GPU worker, else the driver; seconds)
    select    pick the pairs to transfer (pair policy)                (driver)
    transfer  one job per (student, teacher, method, seed)            (warm actors)

Each stage is a module of pipeline/stages/ on the launch's shared context (stages/core.py); this module checks
and plans a launch, then runs the stages in order.

Resume is the default: done jobs are skipped, jobs left 'running' by a killed launcher run again once its
lease has run out (storage/leases.py), and failed ones are retried up to ``max_retries``. Launchers write
the store, workers never do; two launchers of one sweep share its jobs, each claiming a job before it runs
it. A launch that leaves a failed job or a skipped stage behind says which and why, and is not ok.

Ctrl-C, SIGTERM and SIGHUP stop a launch the same way (``stop_on_signals``): the jobs in flight are marked
'interrupted' and run again on the next launch.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from rich.console import Console
from rich.markup import escape

from zoo_sweep.config.spec import SweepSpec
from zoo_sweep.paths import Paths
from zoo_sweep.pipeline.cluster import check_reachable, connect, local_gpus, resolve_address
from zoo_sweep.pipeline.options import (  # noqa: F401  (LaunchOptions, parse_shard, in_shard: re-exported)
    STAGES,
    LaunchOptions,
    check_local_resources,
    in_shard,
    parse_shard,
)
from zoo_sweep.pipeline.plan import Plan, make_plan, write_plan
from zoo_sweep.pipeline.results import plain, record_transfer  # noqa: F401  (re-exported)
from zoo_sweep.pipeline.stages import signals
from zoo_sweep.pipeline.stages.compare import compare
from zoo_sweep.pipeline.stages.core import (  # noqa: F401  (LaunchReport, describe, eval_labels: re-exported)
    Launch,
    LaunchReport,
    check_outcome,
    describe,
    eval_labels,
)
from zoo_sweep.pipeline.stages.predict import predict
from zoo_sweep.pipeline.stages.select import select
from zoo_sweep.pipeline.stages.signals import STOP_SIGNALS, stop_on_signals, stop_signal  # noqa: F401  (re-exported)
from zoo_sweep.pipeline.stages.transfer import note_unconverged, transfer
from zoo_sweep.pipeline.stages.zoo import build_zoo
from zoo_sweep.pipeline.tracking import Destination, check_tracking
from zoo_sweep.storage.store import Store


@dataclass
class Measured:
    """A measure run (stages up to compare) with what it loaded, for callers that go on from there (tune)."""
    report: LaunchReport
    plan: Plan
    correct: dict[str, np.ndarray]  # model -> eval-set correctness, for every model whose record exists


@dataclass
class Prepared:
    """A launch checked and planned, nothing written yet."""
    plan: Plan
    opts: LaunchOptions
    address: str | None
    tracking: Destination | None = None  # where the transfer stage logs its runs


def prepare_launch(spec: SweepSpec, paths: Paths, opts: LaunchOptions | None = None) -> Prepared:
    """Every check (options, names, paths, methods, the resources asked for) before anything is written: a
    caller opens the store only after this."""
    opts = (opts or LaunchOptions()).check()
    tracking = check_tracking(spec, paths.home) if opts.until == "transfer" else None  # logged at the transfer stage
    address = resolve_address(opts.address)
    if address:
        check_reachable(address)
    else:
        check_local_resources(opts, local_gpus)
    plan = make_plan(spec, paths)
    if address and opts.gpus > 0:  # a cluster's GPUs are known once joined
        connect(address, opts.cpus, opts.gpus)
    return Prepared(plan, opts, address, tracking)


def launch_sweep(spec: SweepSpec, store: Store, paths: Paths, opts: LaunchOptions | None = None,
                 console: Console | None = None) -> LaunchReport:
    return run_launch(prepare_launch(spec, paths, opts), store, paths, console).report


def measure_sweep(spec: SweepSpec, store: Store, paths: Paths, opts: LaunchOptions | None = None,
                  console: Console | None = None) -> Measured:
    """Stages up to compare, like ``launch --until compare``; the plan and every model's correctness come
    back too, so a caller that goes on plans and reads the records no second time."""
    prep = prepare_launch(spec, paths, replace(opts or LaunchOptions(), until="compare"))
    run = run_launch(prep, store, paths, console)
    correct = {m.name: run.records.correct_of(m.name) for m in run.plan.models}
    return Measured(run.report, run.plan, correct)


def run_launch(prep: Prepared, store: Store, paths: Paths, console: Console | None = None) -> Launch:
    run = Launch(prep.plan, store, paths, prep.opts, console or Console(stderr=True), prep.address, prep.tracking)
    store.on_locked = lambda line: run.console.print(f"[yellow]warning:[/] {escape(line)}")
    signals.reinstall()  # prepare_launch may have joined Ray, which replaced our SIGTERM handler
    try:
        _execute(run)
        return run
    except BaseException:  # Ctrl-C, SIGTERM / SIGHUP (raised as KeyboardInterrupt), a store that stayed locked
        run.interrupt_jobs()
        raise
    finally:
        run.close()


def _execute(run: Launch) -> None:
    run.report.new_jobs = write_plan(run.store, run.plan,
                                     warn=lambda note: run.console.print(f"[yellow]warning:[/] {escape(note)}"))
    run.requeue_stale()
    build_zoo(run)
    predict(run)
    if run.opts.until != "predict":
        pairs_df = compare(run)
        if run.opts.until == "transfer" and pairs_df is not None:
            select(run, pairs_df)
            transfer(run)
            note_unconverged(run)
    check_outcome(run)
