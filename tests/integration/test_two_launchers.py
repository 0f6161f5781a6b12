"""Two launchers on one sweep and one SQLite store: every job runs once (each is claimed by a compare-and-set
UPDATE before it runs), the results are those of a single launcher, and when one launcher is killed the
other takes its jobs over.

Results are checked against the session's micro sweep: its kl / kl_dp jobs of seed 0 are the same jobs
(job ids hash what determines a result, not the sweep), run once by one launcher.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time

import pandas as pd
from conftest import BIN, ROOT, micro_spec, sqlite_rows, sqlite_rows_so_far

from zoo_sweep.transfer.result_metrics import TRANSFER_METRICS


def _spec(tmp_path, name):
    p = tmp_path / f"{name}.toml"
    # 5 pairs x 2 methods x 2 seeds = 20 transfer jobs, 3 predict jobs, 1 compare
    p.write_text(micro_spec(name, pairs={"policy": "top_ck", "max_pairs": 5}, transfer={"seeds": [0, 1]}))
    return p


def _launcher(micro, db, spec, *extra, lease_s="5"):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["ZOO_SWEEP_LEASE_S"] = lease_s
    return subprocess.Popen([str(BIN / "zoo-sweep"), "--db", f"sqlite:///{db}", "--home", micro["home"], "launch",
                             str(spec), "--no-progress", *extra], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _count(db, sql) -> int:
    rows = sqlite_rows_so_far(db, sql)
    return rows[0][0] if rows else 0


def _assert_same_results_as_one_launcher(micro, db):
    """Final transfer rows of the jobs the micro sweep ran too: equal to the last bit."""
    with sqlite3.connect(db) as c:
        got = pd.read_sql("select * from transfer_results where final", c).set_index("job_id").sort_index()
    ref = micro["store"].table("transfer_results")
    ref = ref[ref["final"].astype(bool)].set_index("job_id").sort_index()
    common = got.index.intersection(ref.index)
    assert len(common) >= 8, (len(common), "the micro sweep and this one share their seed-0 jobs")
    cols = ["student", "teacher", "method", "seed", *TRANSFER_METRICS]
    pd.testing.assert_frame_equal(got.loc[common, cols], ref.loc[common, cols], check_exact=True, check_dtype=False)


def test_two_concurrent_launchers_run_every_job_once(micro, tmp_path):
    """Each launcher on its own one-CPU Ray cluster, so they really run side by side and race for jobs."""
    spec, db = _spec(tmp_path, "two"), tmp_path / "two.db"
    procs = [_launcher(micro, db, spec, "--cpus", "1") for _ in range(2)]
    for p in procs:
        out, _ = p.communicate(timeout=900)
        assert p.returncode == 0, out
    jobs = sqlite_rows(db, "select kind, state, attempts, owner, lease_until from jobs")
    assert len(jobs) == 3 + 1 + 20
    assert {(k, s, a) for k, s, a, _, _ in jobs} == {("predict", "done", 1), ("compare", "done", 1),
                                                      ("transfer", "done", 1)}, jobs
    assert all(o is None and u is None for *_, o, u in jobs)  # every lease released
    assert sqlite_rows(db, "select count(*), count(distinct job_id) from transfer_results where final") == [(20, 20)]
    _assert_same_results_as_one_launcher(micro, db)


def test_a_killed_launchers_jobs_are_taken_over(micro, tmp_path):
    """SIGKILL one launcher while it runs transfer jobs: the other, waiting on the same sweep, runs what it
    left behind (put back to pending as its owner is gone), and nothing finished runs again."""
    spec, db = _spec(tmp_path, "killed-one"), tmp_path / "k.db"
    first = _launcher(micro, db, spec, "--address", micro["address"])
    deadline = time.time() + 600
    done = []
    while time.time() < deadline and first.poll() is None:
        time.sleep(0.5)
        running = _count(db, "select count(*) from jobs where kind = 'transfer' and state = 'running'")
        if running and _count(db, "select count(*) from jobs where kind = 'transfer' and state = 'done'") >= 4:
            done = sqlite_rows(db, "select id, finished_at from jobs where kind = 'transfer' and state = 'done'")
            break
    assert first.poll() is None and len(done) >= 4, first.communicate()[0] if first.poll() is not None else done
    second = _launcher(micro, db, spec, "--address", micro["address"])
    time.sleep(2.0)  # the second launcher has planned and waits for the cluster's CPUs the first one holds
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    left = sqlite_rows(db, "select id, owner from jobs where kind = 'transfer' and state = 'running'")
    out, _ = second.communicate(timeout=900)
    assert second.returncode == 0, out
    assert sqlite_rows(db, "select count(*) from jobs where state != 'done'") == [(0,)]
    assert sqlite_rows(db, "select count(*), count(distinct job_id) from transfer_results where final") == [(20, 20)]
    after = dict(sqlite_rows(db, "select id, finished_at from jobs where kind = 'transfer'"))
    assert all(after[i] == t for i, t in done), "a job the killed launcher finished ran again"
    attempts = dict(sqlite_rows(db, "select id, attempts from jobs where kind = 'transfer'"))
    assert all(attempts[i] == 2 for i, _ in left) and left, left  # taken over: its second start
    assert all(attempts[i] == 1 for i in attempts if i not in dict(left))
    _assert_same_results_as_one_launcher(micro, db)


def test_a_store_deleted_during_a_launch_ends_in_one_line(micro, tmp_path):
    """The SQLite file vanishes while transfer jobs run: the launcher stops with one line and exit code 2
    instead of writing results into the unlinked file, and creates no empty store in its place."""
    spec, db = _spec(tmp_path, "deleted"), tmp_path / "d.db"
    proc = _launcher(micro, db, spec, "--address", micro["address"])
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
        if _count(db, "select count(*) from jobs where kind = 'transfer' and state = 'running'"):
            break
    db.unlink()
    out, _ = proc.communicate(timeout=300)
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert proc.returncode == 2, out
    assert lines[-1].startswith(f"error: the store {db} was deleted or replaced while in use"), out
    assert "Traceback" not in out
    assert not db.exists()
