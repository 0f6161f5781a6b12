"""Stage 2: every ordered pair's metrics from the prediction records, vectorised, on a GPU worker when the
launch has GPUs, else in the driver (the same code, the same results). One launcher computes a compare job;
another that finds it claimed waits for it and reads the pairs from the store."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
from rich.markup import escape

from zoo_sweep.pipeline.jobs import Job, Outcome
from zoo_sweep.pipeline.stages.core import DONE, Launch, last_line


def compare(run: Launch) -> pd.DataFrame | None:
    """The current plan's compare job (the spec's models now; never an older version's), then any
    older compare job of the sweep on the same eval set whose records exist, so none stays pending."""
    jobs = run.jobs("compare")
    recs = run.records
    job = next((j for j in jobs if j.id == run.plan.compare_job.id), run.plan.compare_job)
    if run.opts.shard is not None:
        recs.wait(job.payload.records, run.opts.wait_s)
    recs.load(job.payload.records)  # those other launchers made
    missing = [rid for rid in job.payload.records if rid not in recs.loaded]
    if missing:
        run.report.skipped.append(f"compare {job.id} skipped: {recs.not_done(missing)}")
        return None
    if job.state is DONE or not _claim(run, job.id):
        run.report.reused["compare"] = 1
        df = _stored_pairs(run)
    else:
        df = _run_compare(run, job)
    for old in jobs:
        p = old.payload
        if old.id != job.id and old.state is not DONE and p.eval_key == run.plan.eval_key \
                and all(r in recs.loaded for r in p.records) and _claim(run, old.id):
            _run_compare(run, old)
    return df


def _claim(run: Launch, job_id: str) -> bool:
    """True: this launcher computes the pairs. False: another launcher did (it waits while one does)."""
    while not run.lease.claim(job_id, "launcher"):
        state = run.store.job_states(run.spec.name, "compare").get(job_id)
        if state == DONE.value:
            return False
        if state != "running":  # cancelled by hand: computed all the same, as it always was
            return True
        run.await_others("compare", [job_id])
    return True


def _stored_pairs(run: Launch) -> pd.DataFrame:
    """The pairs of the plan's models (the table also holds those of other sweeps and older specs)."""
    df = run.store.query("select * from pairs where eval_set = :e", {"e": run.spec.data.eval})
    names = [m.name for m in run.plan.models]
    return df[df["student"].isin(names) & df["teacher"].isin(names)].reset_index(drop=True)


def _run_compare(run: Launch, job: Job) -> pd.DataFrame:
    from zoo_sweep.pipeline.worker import compare_pairs

    t0 = time.time()
    p = job.payload
    recs = [run.records.loaded[rid] for rid in p.records]
    inputs = {"preds": np.stack([r["pred"] for r in recs]), "pmax": np.stack([r["p_max"] for r in recs]),
              "labels": run.records.labels(), "num_classes": run.plan.num_classes}
    out = _on_gpu(run, job, inputs) if run.opts.gpus > 0 else None
    out = out or compare_pairs(p.models, inputs, "cpu", run.paths.cache)
    df = out.pairs
    df.insert(0, "eval_set", p.eval)
    run.store.write_pairs(job.id, df.to_dict("records"))
    run.lease.release(job.id)
    run.report.ran["compare"] = run.report.ran.get("compare", 0) + 1
    run.console.print(out.kernel)
    run.console.print(f"compare: {len(df)} ordered pairs from {len(recs)} records in {time.time() - t0:.2f} s")
    return df


def _on_gpu(run: Launch, job: Job, inputs: dict) -> Outcome | None:
    """The compare job on a GPU worker (the stacked records sent once); None if it failed there: the driver
    then computes it on the CPU (the same code, the same results). The job stays claimed by this launcher."""
    import ray

    try:
        return ray.get(run.workers().actors[0].run.remote(job, inputs))
    except ray.exceptions.RayError as e:
        run.console.print(f"[yellow]compare on the GPU worker failed ({escape(last_line(str(e)))}): "
                          "computing it here on the CPU[/]")
        return None
