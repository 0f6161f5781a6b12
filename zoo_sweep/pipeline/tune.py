"""Ray Tune search of one transfer method's hyper-parameters on a small calibration subset of pairs.

Tune is the right tool for a few dozen trials, not for executing thousands of pairs, so the
sweep itself keeps its own launcher. Each trial runs the method on the same calibration pairs with one
configuration; every (configuration, pair) is an ordinary content-addressed transfer job, stored like any
other under the sweep ``<spec name>.tune.<method>``, and logged, where the spec's [tracking] is on, as its own
experiment.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from zoo_sweep.config.spec import PairSpec, RunSpec, SweepSpec
from zoo_sweep.errors import UserError
from zoo_sweep.paths import Paths
from zoo_sweep.pipeline.cluster import connect
from zoo_sweep.pipeline.joblog import append as append_log
from zoo_sweep.pipeline.jobs import Job, JobState, Outcome, job_rows
from zoo_sweep.pipeline.launch import LaunchOptions, measure_sweep
from zoo_sweep.pipeline.plan import transfer_jobs
from zoo_sweep.pipeline.results import plain, record_transfer
from zoo_sweep.pipeline.select import select_pairs
from zoo_sweep.pipeline.tracking import check_tracking, track_sweep
from zoo_sweep.storage.store import Store

OBJECTIVES = {"delta": "mean_delta", "success": "success"}


def search_space(method: str) -> dict:
    from ray import tune

    space = {"lr": tune.loguniform(1e-4, 5e-2), "temperature": tune.choice([1.0, 2.0, 4.0])}
    if method.startswith("xekl"):
        space["alpha"] = tune.uniform(0.2, 0.9)
    return space


@dataclass
class TuneResult:
    sweep: str
    best: dict
    trials: pd.DataFrame  # one row per configuration: its values, mean_delta, success
    pairs: list[tuple[str, str]]
    tracking: str | None = None  # what was not logged to the spec's [tracking], in one line


def calibration_pairs(store: Store, spec: SweepSpec, n: int, families: dict[str, str]) -> list[tuple[str, str]]:
    """A stratified handful of measured pairs (accuracy gap x family), so the search sees weaker and
    stronger teachers alike."""
    pairs = store.query("select * from pairs where eval_set = :e", {"e": spec.data.eval})
    return select_pairs(pairs, families, PairSpec(policy="stratified", per_bin=1, max_pairs=n, seed=spec.pairs.seed))


def tune_method(spec: SweepSpec, store: Store, paths: Paths, method: str, samples: int = 8, pairs: int = 4,
                objective: str = "delta", opts: LaunchOptions | None = None) -> TuneResult:
    from ray import tune

    _check_args(method, objective, samples, pairs)
    dest = check_tracking(spec, paths.home)  # a tracker's library missing: said before any trial runs
    opts = opts or LaunchOptions()
    measured = measure_sweep(spec, store, paths, opts)  # records + pairs (reused)
    plan = measured.plan
    calib = calibration_pairs(store, spec, pairs, {m.name: m.family for m in plan.models})
    base = spec.transfer

    def jobs_for(config: dict) -> list[Job]:
        # one method, one seed, the calibration pairs only: the spec's multi-teacher jobs are not part of a trial
        t = dataclasses.replace(base, methods=(method,), seeds=base.seeds[:1], multi_teacher=(), **config)
        return transfer_jobs(dataclasses.replace(plan, spec=dataclasses.replace(spec, transfer=t)), calib)

    # join the sweep's cluster ourselves: Tune would otherwise ray.init() whatever cluster
    # /tmp/ray/ray_current_cluster names (the measure step above starts none when all is cached)
    connect(opts.address, opts.cpus, opts.gpus)
    tuner = tune.Tuner(
        tune.with_resources(_trainable(jobs_for, measured.correct, paths, spec.run), {"cpu": opts.cpus_per_job}),
        param_space=search_space(method),
        tune_config=tune.TuneConfig(metric=OBJECTIVES[objective], mode="max", num_samples=samples),
        run_config=tune.RunConfig(name=f"{spec.name}-{method}", storage_path=str(paths.home / "tune"), verbose=0),
    )
    sweep = f"{spec.name}.tune.{method}"
    rows = _record_trials(tuner.fit(), store, sweep, paths)
    trials = pd.DataFrame(rows).sort_values(OBJECTIVES[objective], ascending=False).reset_index(drop=True)
    best = {k: plain(trials.iloc[0][k]) for k in search_space(method)}
    return TuneResult(sweep, best, trials, calib, _track_trials(store, sweep, dest, paths))


def _track_trials(store: Store, sweep: str, dest, paths: Paths) -> str | None:
    """The trials' jobs as runs where the spec's [tracking] is on, as ``zoo-sweep track`` logs a sweep: the
    trials' sweep is an experiment (group) of its own. Returns the line saying what was not logged, or None."""
    if dest is None:
        return None
    try:
        return track_sweep(store, sweep, dest, paths.home).warning
    except UserError as e:  # not reachable: the trials are in the store all the same
        return f"{e}; the trials are in the store, and `zoo-sweep track {sweep}` logs them"


def _check_args(method: str, objective: str, samples: int, pairs: int) -> None:
    from zoo_sweep.transfer.catalog import CATALOG as METHODS

    if method not in METHODS:
        raise UserError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
    if objective not in OBJECTIVES:
        raise UserError(f"--objective must be one of {', '.join(OBJECTIVES)}")
    if samples < 1 or pairs < 1:
        raise UserError("--samples and --pairs must be >= 1")


def _trainable(jobs_for, correct: dict[str, np.ndarray], paths: Paths, run: RunSpec):
    """One trial: every calibration job of its configuration on one worker; the jobs and their outcomes go
    back to the driver as JSON (the driver stores them: trials never write the store)."""
    from zoo_sweep.config.methods import plugin_sources

    plugins = plugin_sources()  # the driver's: a trial imports them as a launch's workers do

    def trainable(config: dict):
        from ray import tune

        from zoo_sweep.pipeline.worker import Worker

        worker = Worker(str(paths.home), threads=1, plugins=plugins)
        out = []
        for job in jobs_for(config):
            p = job.payload
            res = worker.run(job, {"s0_correct": correct[p.student.name], "teacher_correct": correct[p.teacher.name],
                                   **run.speed()})
            out.append((job, res))
        final = [res.rows[-1]["delta"] for _, res in out if res.state is JobState.DONE and res.rows]
        jobs = [{"job": job.to_row(paths.home), "res": res.to_dict()} for job, res in out]
        tune.report({"mean_delta": float(np.mean(final)) if final else float("-inf"),
                     "success": float(np.mean([d > 0 for d in final]) * 100) if final else 0.0,
                     "jobs": json.dumps(jobs, default=_jsonable)})
    return trainable


def _record_trials(grid, store: Store, sweep: str, paths: Paths) -> list[dict]:
    """Each finished trial's jobs into the store; one row per configuration (its values and objectives)."""
    rows = []
    for r in grid:
        if r.error or not r.metrics:
            continue
        _store_trial(store, sweep, json.loads(r.metrics["jobs"]), paths)
        rows.append({**r.config, "mean_delta": r.metrics["mean_delta"], "success": r.metrics["success"]})
    if not rows:
        raise UserError(f"every Tune trial failed; see {paths.home / 'tune'}")
    return rows


def _store_trial(store: Store, sweep: str, out: list[dict], paths: Paths) -> None:
    jobs = [Job.from_row(o["job"], paths.home) for o in out]
    store.add_jobs(sweep, job_rows(jobs, paths.home))
    for job, o in zip(jobs, out):
        res = Outcome.from_dict(o["res"])
        append_log(paths, job.id, res.log)
        record_transfer(store, job, res)


def write_back(spec_path: str | Path, values: dict) -> None:
    """Set ``values`` in the spec's [transfer] table, keeping the rest of the file (and its comments)."""
    path = Path(spec_path)
    lines = path.read_text().splitlines()
    try:
        start = next(i for i, ln in enumerate(lines) if ln.strip() == "[transfer]")
    except StopIteration:
        lines += ["", "[transfer]"]
        start = len(lines) - 1
    end = next((i for i in range(start + 1, len(lines)) if lines[i].lstrip().startswith("[")), len(lines))
    for key, val in values.items():
        text = f"{key} = {json.dumps(val)}"
        hit = next((i for i in range(start + 1, end) if re.match(rf"\s*{re.escape(key)}\s*=", lines[i])), None)
        if hit is None:
            lines.insert(end, text)
            end += 1
        else:
            lines[hit] = text + ("  # tuned" if "#" not in lines[hit] else "  #" + lines[hit].split("#", 1)[1])
    path.write_text("\n".join(lines) + "\n")


def _jsonable(v):
    if isinstance(v, np.ndarray):
        return v.tolist()
    return plain(v)
