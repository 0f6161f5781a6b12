"""Stage 1: one forward pass per model over the eval set on the warm workers, each leaving a prediction record;
a done job whose record went missing runs again."""

from __future__ import annotations

from rich.markup import escape

from zoo_sweep.pipeline.jobs import Job, Outcome
from zoo_sweep.pipeline.stages.core import DONE, PENDING, Launch
from zoo_sweep.science.records import load_record, save_record
from zoo_sweep.zoo.entry import chance_note


def predict(run: Launch) -> None:
    jobs = run.jobs("predict")
    recs = run.records
    todo = []
    for j in jobs:
        recs.predict_id.setdefault(j.payload.model.name, j.id)
        rec = load_record(recs.path(j.id)) if j.state is DONE else None
        if rec is not None:
            recs.loaded[j.id] = rec
            continue
        if j.state is DONE:  # its record went missing or is unreadable: run it again
            run.store.set_state([j.id], PENDING.value)
            j = j.but(state=PENDING)
        todo.append(j)
    run.report.reused["prediction records"] = len(jobs) - len(todo)

    def on_result(job: Job, out: Outcome) -> None:
        path = recs.path(job.id)
        save_record(path, out.record)  # the file first: a 'done' job always has its record
        recs.loaded[job.id] = out.record
        run.store.finish_job(job.id, DONE.value, model_rows=[_model_row(run, job, out.accuracy, path)],
                             seconds=out.seconds, owner=run.lease.owner)
        note = chance_note(out.accuracy, run.plan.num_classes, len(out.record["pred"]))
        if note:  # a warning, not an error: the sweep goes on
            run.console.print(f"[yellow]warning:[/] {escape(f'{job.payload.model.name}: {note}')}")

    run.run_jobs("predict", run.filter(todo, limit=None),
                 lambda job: {"batch_size": run.spec.run.predict_batch_size}, on_result)


def _model_row(run: Launch, job: Job, accuracy: float, record) -> dict:
    """The models row of a finished predict job; a model of an earlier version of the spec keeps the
    parameter count its own plan stored."""
    e = job.payload.model
    row = {"name": e.name, "eval_set": job.payload.eval, "arch": e.arch, "family": e.family,
           "accuracy": accuracy, "record": str(record)}
    if e.name in run.plan.params:
        row["params"] = run.plan.params[e.name]
    return row
