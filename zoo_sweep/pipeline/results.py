"""A transfer job's outcome in the store; the launcher and Tune trials both record through here."""

from __future__ import annotations

import numpy as np

from zoo_sweep.pipeline.jobs import Job, JobState
from zoo_sweep.storage.store import Store


def record_transfer(store: Store, job: Job, res: dict) -> None:
    """Its per-epoch rows and its state, in one transaction."""
    if res["state"] != JobState.DONE:
        store.finish_job(job.id, str(res["state"]), error=res.get("error"), seconds=res.get("seconds"))
        return
    p = job.payload
    key = {"job_id": job.id, "eval_set": p.eval, "student": p.student.name, "teacher": p.teacher.name,
           "method": p.method, "seed": p.seed}
    last = len(res["rows"])
    # a row may name its own teacher: multi-teacher jobs report "a+b+c"
    rows = [{**key, **{k: plain(v) for k, v in r.items()}, "teacher": r.get("teacher", key["teacher"]),
             "final": r["epoch"] == last} for r in res["rows"]]
    store.finish_job(job.id, JobState.DONE.value, results=rows, seconds=res.get("seconds"))


def plain(v):
    """A numpy scalar as a Python one; NaN (e.g. a transfer rate with no positive flips) as None (NULL)."""
    if isinstance(v, (np.floating, np.integer)):
        v = v.item()
    if isinstance(v, float) and v != v:
        return None
    return v
