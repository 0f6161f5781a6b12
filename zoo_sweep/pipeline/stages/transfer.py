"""Stage 4: one job per (student, teacher(s), method, seed) on the warm workers, in the order that lets jobs
share teacher / s0 logit streams; each run logged to the spec's tracker where one is on; then which students
the labels control says have not converged."""

from __future__ import annotations

import time
from collections import Counter

from zoo_sweep.pipeline.jobs import Job, Outcome
from zoo_sweep.pipeline.options import in_shard
from zoo_sweep.pipeline.plan import run_order
from zoo_sweep.pipeline.results import record_transfer
from zoo_sweep.pipeline.stages.core import DONE, FAILED, Launch, describe
from zoo_sweep.pipeline.tracking import CLOSE_WAIT_S, START_WAIT_S, log_missing, log_missing_predictions
from zoo_sweep.transfer.logit_store import StreamPlan, plan_streams


def transfer(run: Launch) -> None:
    run.requeue_stale("transfer")  # select may have just linked jobs another sweep's launcher left behind
    jobs = run.jobs("transfer")
    todo = run.filter(jobs, limit=run.opts.limit)
    run.report.reused["transfer jobs"] = sum(j.state is DONE for j in jobs)
    settled = _track_earlier(run, jobs, START_WAIT_S)
    if todo or run.others_running("transfer"):
        _run_transfers(run, todo, jobs)
    end = time.monotonic() + CLOSE_WAIT_S  # the most the stage's end waits for the tracker, all told
    if not settled:
        _track_earlier(run, jobs, CLOSE_WAIT_S)
    if run.tracker is not None and run.opts.shard is None:  # a shard sees part of the sweep's results
        run.tracker.log_sweep(run.store)
    run.close_tracker(max(0.0, end - time.monotonic()))  # a launch stopped before this waits less (close)


def _run_transfers(run: Launch, todo: list[Job], jobs: list[Job]) -> None:
    streams = _plan_streams(run, todo)
    by_id = {j.id: j for j in todo}
    todo = [by_id[d["id"]] for d in streams.order([{"id": i} for i in by_id])]
    todo.sort(key=run_order)  # stable: the logit streams' order holds within each group
    correct_of = run.records.correct_of

    def inputs(job: Job) -> dict:
        p = job.payload
        out = {"s0_correct": correct_of(p.student.name), "teacher_correct": correct_of(p.teacher.name),
               "streams": streams.streams.get(job.id, {}), **run.spec.run.speed()}
        if p.multi:  # every teacher's, so the worker evaluates none of them again
            out["teachers_correct"] = [correct_of(n) for n in p.teacher_names]
        return out

    def on_result(job: Job, out: Outcome) -> None:
        record_transfer(run.store, job, out, owner=run.lease.owner)
        if run.tracker is not None:  # queued: never waits for the tracker
            if out.state is DONE:
                run.tracker.log(job, out.rows, out.seconds)
            else:  # diverged: final, a run marked failed
                run.tracker.log_failed(job, out.state.value, out.error, out.seconds)
        streams.release(job.id, run.paths.logits)
        if out.logits_read:  # epochs of teacher / s0 logits read back instead of recomputed
            r = run.report.reused
            r["cached logit epochs"] = r.get("cached logit epochs", 0) + out.logits_read

    def on_failed(job: Job, err: str) -> None:
        if run.tracker is not None:
            run.tracker.log_failed(job, FAILED.value, err)
        streams.release(job.id, run.paths.logits)

    if todo and run.share == "auto":
        _auto_share(run, jobs, inputs)
    run.run_jobs("transfer", todo, inputs, on_result, on_failed)


def _auto_share(run: Launch, jobs: list[Job], inputs) -> None:
    """``gpus_per_job = "auto"``: how many transfer jobs share a GPU, measured on one GPU (or remembered from
    an earlier launch) before they start (pipeline/share.py), on the sweep's heaviest job (of all its jobs, not
    of those left: the same each launch). A CPU launch has nothing to measure: --cpus-per-job sizes its
    workers."""
    from zoo_sweep.pipeline import share

    run.share = 1.0  # unless measured
    if run.opts.gpus <= 0:
        return
    job = share.heaviest(jobs, run.plan.params)
    if job is None:
        run.warn("gpus_per_job auto: the sweep has no single-teacher job to measure: one job per GPU")
        return
    run.close_workers()  # the earlier stages' workers hold the GPUs the measurement needs
    device = share.gpu_model()
    if device is None:
        run.warn("gpus_per_job auto: no GPU came free to measure on (other launchers hold them): one job per GPU")
        return
    key = share.memo_key(job, run.spec.run.speed(), device)
    found = share.remembered(run.paths, key)
    if found is None:
        cluster = run.cluster()
        max_jobs = int(cluster.cpus / max(cluster.gpus, 1) / run.opts.cpus_per_job)
        found = share.measure(job, inputs(job), run.paths, run.opts.cpus_per_job, max_jobs, device, describe,
                              say=run.say)
        share.remember(run.paths, key, found)
    run.say(found.line())
    run.share = found.gpus_per_job


def _plan_streams(run: Launch, jobs: list[Job]) -> StreamPlan:
    """Which teacher / s0 logits the jobs about to run share, by the spec's teacher_cache policy."""
    from zoo_sweep.data.sets import count_images, set_args

    t, d = run.spec.transfer, run.spec.data
    if t.teacher_cache == "off":  # nothing to plan, and no need to count the transfer set
        return StreamPlan({}, Counter())
    n = count_images(**set_args(d, "transfer"))
    plan = plan_streams([(j.id, j.payload.to_dict()) for j in jobs], t.teacher_cache, run.plan.transfer_key, n,
                        run.plan.num_classes, t.teacher_cache_max_gb * 2**30)
    if plan.skipped_large:
        run.console.print(f"teacher_cache: {plan.skipped_large} shared stream(s) over teacher_cache_max_gb "
                          f"({t.teacher_cache_max_gb:g}) are computed per job")
    return plan


def _track_earlier(run: Launch, jobs: list[Job], wait_s: float) -> bool:
    """Log the finished ``jobs`` of this shard, and its finished predict jobs, that the sweep's experiment lacks
    (done by this launch's predict stage, by a launch without tracking, or while the tracker was down), from
    the store. Waits ``wait_s`` at most to learn whether the tracker answers; False: not known yet. A tracker
    that cannot be reached is one warning, and is not tried again in this launch."""
    t = run.tracker
    if t is None:
        return True
    if not t.ready(wait_s):
        if t.error is None:
            return False
        run.tracker = None
        run.warn(t.close(0) or f"{t.name} at {t.where} is not reachable ({t.error}): this launch logs no runs "
                               f"there; the store has every result, and `zoo-sweep track {run.spec.name}` "
                               "logs them")
        return True

    def done(of: list[Job]) -> dict[str, Job]:
        return {j.id: j for j in of if j.state is DONE and in_shard(j.id, run.opts.shard)}

    log_missing_predictions(t, run.store, done(run.jobs("predict")))
    log_missing(t, run.store, run.spec.name, done(jobs))
    return True


def note_unconverged(run: Launch) -> None:
    """Name the students whose labels control improved them by more than their seed noise: their gains in
    this sweep are mostly continued training (the report says the same, with intervals)."""
    from zoo_sweep.science.controls import NOT_CONVERGED, convergence

    if "labels" not in run.spec.transfer.controls:
        return
    rows = run.store.query("select r.student, r.teacher, r.method, r.seed, r.delta, r.final "
                           "from transfer_results r join sweep_jobs sj on sj.job_id = r.job_id "
                           "where sj.sweep = :s and r.final", {"s": run.spec.name})
    c = convergence(rows, n_boot=200)
    notes = run.report.notes
    for r in c.students.itertuples(index=False):
        if r.verdict == NOT_CONVERGED:
            notes.append(f"not converged: {r.student}: training on the labels alone improves it by "
                         f"{r.labels_delta:+.2f} points, more than its seed noise "
                         f"({r.noise_sd:.2f}): its gains are mostly continued training")
    if c.cannot_tell:
        notes.append(f"convergence: cannot tell for {len(c.cannot_tell)} student(s) with one seed "
                     "and no repeated seed in the sweep; run more seeds ([transfer] seeds) to tell "
                     "continued training from transfer")
