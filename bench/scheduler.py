"""Scheduler overhead: N no-op jobs through the launcher's warm-actor loop (`pipeline.pool.Pool.run`) with the same
store writes a real launch does (start_job, finish_job), on a local Ray cluster.

    .venv/bin/python bench/scheduler.py --jobs 1000 --cpus 2

Prints jobs/s and the per-job overhead in ms after start-up (actor start and the torch import in each
actor's constructor are timed separately: they happen once per actor, never per job).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--cpus", type=int, default=2)
    args = ap.parse_args()

    from zoo_sweep.paths import Paths
    from zoo_sweep.pipeline.cluster import connect
    from zoo_sweep.pipeline.jobs import Job, NoopPayload, job_rows
    from zoo_sweep.pipeline.pool import Handlers, Pool, actor_shape
    from zoo_sweep.storage.leases import Lease
    from zoo_sweep.storage.store import Store

    tmp = Path(tempfile.mkdtemp())
    store = Store(f"sqlite:///{tmp / 'bench.db'}")
    store.add_jobs("bench", job_rows([Job(f"n-{i:016x}", NoopPayload()) for i in range(args.jobs)], tmp))
    jobs = [Job.from_row(r, tmp) for r in store.sweep_jobs("bench")]

    t0 = time.perf_counter()
    cluster = connect(None, args.cpus, 0)
    t1 = time.perf_counter()
    pool = Pool(actor_shape(cluster, 0, 1.0, 1), Paths(tmp))  # waits until every actor is up
    t2 = time.perf_counter()

    lease = Lease(store)  # the launcher's claim (compare-and-set) and release per job

    def done(job, out):
        store.finish_job(job.id, "done", seconds=out.seconds, owner=lease.owner)
        lease.release(job.id)

    pool.run(jobs, Handlers(lambda job: {}, lambda job, worker: lease.claim(job.id, worker), done,
                            lambda *a: None), 0)
    lease.stop()
    t3 = time.perf_counter()
    n_done = store.query("select count(*) from jobs where state = 'done'").iloc[0, 0]
    assert n_done == args.jobs, n_done
    per_job_ms = (t3 - t2) / args.jobs * 1000
    print(f"ray start: {t1 - t0:.1f} s; {pool.size} warm actors up (torch imported once each): {t2 - t1:.1f} s")
    print(f"{args.jobs} no-op jobs in {t3 - t2:.2f} s: {args.jobs / (t3 - t2):.0f} jobs/s, "
          f"{per_job_ms:.1f} ms per job (target < 20 ms), store writes included")
    pool.close()


if __name__ == "__main__":
    sys.exit(main())
