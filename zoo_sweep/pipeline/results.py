"""A transfer job's outcome in the store; the launcher and Tune trials both record through here."""

from __future__ import annotations

import numpy as np

from zoo_sweep.pipeline.jobs import Job, Outcome
from zoo_sweep.storage.schema import JobState
from zoo_sweep.storage.store import Store


def record_transfer(store: Store, job: Job, out: Outcome, owner: str | None = None) -> None:
    """Its per-epoch rows, its teachers (multi-teacher jobs) and its state, in one transaction. The launcher
    (``owner``: its lease) and Tune trials both record through here."""
    if out.state is not JobState.DONE:
        store.finish_job(job.id, out.state.value, error=out.error, seconds=out.seconds, owner=owner)
        return
    p = job.payload
    key = {"job_id": job.id, "eval_set": p.eval, "student": p.student.name, "teacher": p.teacher.name,
           "method": p.method, "seed": p.seed}
    rows = out.rows or []
    last = len(rows)
    # a row may name its own teacher: multi-teacher rows carry a label ("a+b+c"), their teachers go to job_teachers
    rows = [{**key, **{k: plain(v) for k, v in r.items()}, "teacher": r.get("teacher", key["teacher"]),
             "final": r["epoch"] == last} for r in rows]
    teachers = list(p.teacher_names) if p.multi else None
    store.finish_job(job.id, JobState.DONE.value, results=rows, seconds=out.seconds, owner=owner,
                     teachers=teachers)


def plain(v):
    """A numpy scalar as a Python one; NaN (e.g. a transfer rate with no positive flips) as None (NULL)."""
    if isinstance(v, (np.floating, np.integer)):
        v = v.item()
    if isinstance(v, float) and v != v:
        return None
    return v
