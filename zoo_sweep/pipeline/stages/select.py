"""Stage 3: the pairs that get transfer jobs, by the spec's pair policy (pipeline/select.py), where the policy
needs the measured pairs (a plan that lists its transfer jobs has nothing to select)."""

from __future__ import annotations

import pandas as pd

from zoo_sweep.pipeline.jobs import job_rows
from zoo_sweep.pipeline.plan import select_transfers
from zoo_sweep.pipeline.stages.core import Launch
from zoo_sweep.storage.store import final_results


def select(run: Launch, pairs_df: pd.DataFrame) -> None:
    if run.plan.transfer_jobs is not None:
        return
    spec = run.spec
    history = None
    if spec.pairs.policy == "predicted_gain":
        ev = {"e": spec.data.eval}
        method = spec.pairs.gain_method or spec.transfer.methods[0]
        history = (run.store.query("select * from models where eval_set = :e", ev),
                   final_results(run.store, spec.data.eval), method)
    jobs = select_transfers(run.plan, pairs_df, history)
    run.report.new_jobs += run.store.add_jobs(spec.name, job_rows(jobs, run.paths.home))
