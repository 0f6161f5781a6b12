"""Cluster runs with real software, no stand-ins: `zoo-sweep submit slurm` on a SLURM cluster of two nodes
started on this machine (Debian's slurm-wlm and munge; see tests/real_cluster.py for how the nodes are kept
apart), and launches on a two-node Ray cluster of this machine.

Each SLURM job runs the micro sweep's spec against a copy of its store in which transfer jobs were reset to
pending, so the job does real work on the cluster and every result can be checked. What one machine cannot
show (GPUs, hence `--gres=gpu`; hosts with their own disks) is in test_submit.py or docs/cluster.md.
"""

from __future__ import annotations

import re
import secrets
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from conftest import BIN, ROOT
from real_cluster import RayPair, SlurmCluster, TcpRelay, slurm_missing

from zoo_sweep.pipeline.launch import in_shard
from zoo_sweep.storage.store import Store

TOKEN = secrets.token_hex(32)  # a Ray token for every cluster here: no log may show it
ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")


# ---------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """munged, slurmctld and two slurmds (n1, n2; one CPU each) for the session, stopped at the end."""
    why = slurm_missing()
    if why:
        pytest.skip(why)
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def two_hosts(slurm):
    if not slurm.separate_hosts:
        pytest.skip("; ".join(slurm.notes) or "the SLURM nodes share this machine's addresses")
    return slurm


@pytest.fixture(scope="module")
def ray_pair(tmp_path_factory):
    """Head (resource node_a) and a second node (node_b) on this machine, one CPU each."""
    root = tmp_path_factory.mktemp("raypair")
    token = root / "token"
    token.write_text(TOKEN)
    token.chmod(0o600)
    pair = RayPair(root, BIN / "ray", token)
    try:
        pair.start()
        yield pair
    finally:
        pair.stop()


# ---------------------------------------------------------------------- helpers
def _env(extra: dict | None = None, base: dict | None = None) -> dict:
    import os

    env = {k: v for k, v in (base or os.environ).items()
           if not k.startswith(("RAY_AUTH", "ZOO_SWEEP_")) and k != "RAY_ADDRESS"}
    env.update(RAY_USAGE_STATS_ENABLED="0", PYTHONPATH=str(ROOT), PATH=f"{BIN}:{env['PATH']}", **(extra or {}))
    return env


def _sqlite_copy(micro, dst: Path, reset: int | None = None) -> tuple[str, list[str]]:
    """A copy of the micro store with ``reset`` transfer jobs (all: None) pending again; (URL, their ids)."""
    src = sqlite3.connect(micro["db"].removeprefix("sqlite:///"))
    out = sqlite3.connect(dst)
    src.backup(out)
    src.close()
    out.close()
    url = f"sqlite:///{dst}"
    ids = sorted(Store(url).job_states("micro", "transfer"))[:reset]
    _reset(Store(url), ids)
    return url, ids


def _reset(store: Store, ids: list[str]) -> None:
    from sqlalchemy import delete

    from zoo_sweep.storage.store import transfer_results

    store.set_state(ids, "pending", attempts=0, worker=None, started_at=None, finished_at=None, error=None)
    with store.engine.begin() as conn:
        conn.execute(delete(transfer_results).where(transfer_results.c.job_id.in_(ids)))


def _submit(slurm: SlurmCluster, micro, db: str, out: Path, *args: str, env_extra: dict | None = None):
    env = slurm.env(_env({"RAY_AUTH_TOKEN": TOKEN, **(env_extra or {})}))
    r = subprocess.run([str(BIN / "zoo-sweep"), "--db", db, "--home", micro["home"], "submit", "slurm",
                        str(micro["spec_path"]), "--out", str(out), *args],
                       capture_output=True, text=True, env=env, cwd=out.parent, timeout=120)
    return r


def _job_id(r) -> str:
    assert r.returncode == 0, r.stdout + r.stderr
    return re.search(r"submitted SLURM job (\d+)", r.stdout).group(1)


def _logs(out: Path) -> str:
    return "\n".join(f"== {p.name}\n{p.read_text(errors='replace')}" for p in sorted(out.glob("*.out")))


def _done_once(store: Store, ids: list[str]) -> None:
    """Every job done, run exactly once, with its one final result row and nothing else."""
    jobs = store.table("jobs").set_index("id").loc[ids]
    assert (jobs["state"] == "done").all(), jobs[["state", "error"]]
    assert (jobs["attempts"] == 1).all(), jobs["attempts"]
    results = store.table("transfer_results")
    finals = results[results["final"].astype(bool) & results["job_id"].isin(ids)]
    assert sorted(finals["job_id"]) == sorted(ids)


def _nodes_of(workers) -> set[str]:
    """Ray node ids in jobs.worker values (host:NODE:pid:device)."""
    return {w.split(":")[1] for w in workers if isinstance(w, str) and w.count(":") == 3}


def _free_base() -> int:
    """A base for the PORT..PORT+999 range of a job's Ray ports, below the ephemeral range."""
    import random
    import socket

    for _ in range(100):
        base = random.randrange(20000, 31000, 10)
        try:
            for p in (*range(base, base + 9), base + 100):
                with socket.socket() as s:
                    s.bind(("0.0.0.0", p))
            return base
        except OSError:
            continue
    raise RuntimeError("no free port range")


def _has_symmetric_run() -> bool:
    r = subprocess.run([str(BIN / "ray"), "symmetric-run", "--help"], capture_output=True)
    return r.returncode == 0


# ---------------------------------------------------------------------- SLURM: one Ray cluster across the allocation
@pytest.mark.parametrize("mode", ["classic", "symmetric"])
def test_sweep_on_two_slurm_nodes(mode, two_hosts, micro, tmp_path):
    """sbatch takes the script; the job starts Ray on both nodes, runs the launch on the first, ends
    COMPLETED; every reset job is done once, on workers of both nodes; the log shows no token."""
    if mode == "symmetric" and not _has_symmetric_run():
        pytest.skip("the installed Ray has no `ray symmetric-run` (Ray < 2.49)")
    slurm = two_hosts
    db, ids = _sqlite_copy(micro, tmp_path / "zoo.db", reset=4)
    out = tmp_path / "slurm"
    r = _submit(slurm, micro, db, out, "--nodes", "2", "--cpus-per-node", "1", "--mode", mode,
                "--port", str(_free_base()))
    job = _job_id(r)
    rec = slurm.wait_job(job)[0]
    log = _logs(out)
    assert rec["JobState"] == "COMPLETED" and rec["ExitCode"] == "0:0", log
    assert rec["NodeList"] == "n[1-2]"
    assert "launch exited with 0" in log, log
    if mode == "classic":
        assert "2 Ray node(s) up" in log, log
    store = Store(db)
    _done_once(store, ids)
    workers = store.table("jobs").set_index("id").loc[ids, "worker"]
    assert len(_nodes_of(workers)) == 2, list(workers)  # both SLURM nodes ran jobs
    assert TOKEN not in log and TOKEN not in next(out.glob("*.sh")).read_text()
    assert list((Path(micro["home"]) / "export" / f"slurm-{job}").glob("*.parquet"))  # SQLite: a Parquet copy


def test_sbatch_refuses_gpus_the_cluster_lacks(slurm, micro, tmp_path):
    """A partition without GPUs: sbatch refuses --gres=gpu, and submit says so in one line."""
    db, _ = _sqlite_copy(micro, tmp_path / "zoo.db", reset=0)
    r = _submit(slurm, micro, db, tmp_path / "slurm", "--gpus-per-node", "1")
    assert r.returncode == 2 and r.stderr.startswith("error: sbatch rejected") and "--gpus-per-node" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


# ---------------------------------------------------------------------- SLURM: array tasks on one PostgreSQL store
@pytest.fixture
def pg_on_cluster(two_hosts, postgres_url):
    """A fresh database on the session's PostgreSQL, at an address every SLURM node reaches."""
    import psycopg
    from sqlalchemy.engine import make_url

    u = make_url(postgres_url)
    name = f"slurm_{secrets.token_hex(4)}"
    with psycopg.connect(host=u.host, port=u.port, user=u.username, dbname=u.database, autocommit=True) as c:
        c.execute(f"create database {name}")
    # the tables exist before the tasks start, so this test is about the tasks: two processes creating
    # them in one empty database at once is the store's own concern
    Store(u.set(database=name).render_as_string(hide_password=False))
    relay = TcpRelay(two_hosts.store_host, (u.host, u.port))
    host, port = relay.address
    yield u.set(host=host, port=port, database=name).render_as_string(hide_password=False)
    relay.close()


def test_array_tasks_share_a_postgres_store(two_hosts, micro, pg_on_cluster, tmp_path):
    """--array 2 on a PostgreSQL store without a sweep: the two tasks run at once on the two nodes, each
    plans the sweep and runs its shard, and every job of the sweep is done exactly once."""
    slurm = two_hosts
    out = tmp_path / "slurm"
    job = _job_id(_submit(slurm, micro, pg_on_cluster, out, "--array", "2", "--cpus-per-node", "1"))
    recs = slurm.wait_job(job)
    log = _logs(out)
    assert sorted(r["JobState"] for r in recs) == ["COMPLETED", "COMPLETED"], log
    assert {r["NodeList"] for r in recs} == {"n1", "n2"}
    (s0, e0), (s1, e1) = [(r["StartTime"], r["EndTime"]) for r in recs]
    assert s0 <= e1 and s1 <= e0, recs  # their run times overlap: both ran at once
    store = Store(pg_on_cluster)
    jobs = store.table("jobs").set_index("id")
    assert len(jobs) == 16 and (jobs["state"] == "done").all(), jobs[["kind", "state"]]
    # predict and transfer jobs ran once each, in their own shard; the compare is the launcher's own
    # computation, which every shard makes from all the predictions (the same rows, written twice)
    ran = jobs[jobs["kind"] != "compare"]
    assert (ran["attempts"] == 1).all(), ran["attempts"]
    _done_once(store, list(jobs.index[jobs["kind"] == "transfer"]))
    assert len(store.table("pairs")) == 6
    ran_by = {}
    for i in range(2):
        task_log = (out / f"micro-{job}_{i}.out").read_text()
        assert f"shard {i}/2 of micro" in task_log, task_log
        counts = re.search(r"micro: ran (.*) in [0-9.]+ s", task_log).group(1)
        ran_by[i] = {kind: int(n) for n, kind in re.findall(r"(\d+) (\w+)", counts)}
        nodes = _nodes_of(ran.loc[[j for j in ran.index if in_shard(j, (i, 2))], "worker"])
        assert len(nodes) == 1, nodes  # a shard's jobs ran on its task's node
        ran_by[i]["node"] = nodes.pop()
    assert ran_by[0]["node"] != ran_by[1]["node"]
    for kind in ("predict", "transfer"):  # together the shards ran each job once
        assert ran_by[0].get(kind, 0) + ran_by[1].get(kind, 0) == (jobs["kind"] == kind).sum(), ran_by
    assert TOKEN not in log


# ---------------------------------------------------------------------- SLURM: cancel, resubmit, resume
def test_cancelled_job_resumes_when_resubmitted(slurm, micro, tmp_path):
    """scancel while the job runs, then the same submission again: it completes, and the jobs finished
    before the cancel are not run again."""
    db, ids = _sqlite_copy(micro, tmp_path / "zoo.db", reset=5)
    store = Store(db)
    out = tmp_path / "slurm"
    args = ("--nodes", "1", "--cpus-per-node", "1", "--mode", "classic", "--port", str(_free_base()))
    job = _job_id(_submit(slurm, micro, db, out, *args))
    deadline = time.time() + 900
    while sum(store.job_states("micro", "transfer")[j] == "done" for j in ids) < 1:
        state = slurm.job(job)["JobState"]
        assert state in ("PENDING", "RUNNING") and time.time() < deadline, (state, _logs(out))
        time.sleep(2)
    slurm.cmd("scancel", job)
    assert slurm.wait_job(job)[0]["JobState"] == "CANCELLED"
    before = store.table("jobs").set_index("id").loc[ids]
    finished = list(before[before["state"] == "done"].index)
    assert 1 <= len(finished) < len(ids)

    job2 = _job_id(_submit(slurm, micro, db, out, *args))
    rec = slurm.wait_job(job2)[0]
    assert rec["JobState"] == "COMPLETED", _logs(out)
    after = store.table("jobs").set_index("id").loc[ids]
    assert (after["state"] == "done").all()
    # the jobs finished before the cancel were not run again
    assert (after.loc[finished, "attempts"] == 1).all()
    assert (after.loc[finished, "finished_at"] == before.loc[finished, "finished_at"]).all()
    results = store.table("transfer_results")
    finals = results[results["final"].astype(bool) & results["job_id"].isin(ids)]
    assert sorted(finals["job_id"]) == sorted(ids)  # one final row per job: nothing lost, nothing twice


# ---------------------------------------------------------------------- two Ray nodes on this machine
def _launch(pair: RayPair, micro, db: str) -> subprocess.Popen:
    return subprocess.Popen([str(BIN / "zoo-sweep"), "--db", db, "--home", micro["home"], "launch",
                             str(micro["spec_path"]), "--address", pair.address, "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=_env({"RAY_AUTH_TOKEN": TOKEN}), cwd=ROOT)


def _node_ids(pair: RayPair) -> dict[str, str]:
    """node_a / node_b -> the first 8 hex digits of that Ray node's id."""
    out = {}
    for n in pair.alive_nodes():
        for res in ("node_a", "node_b"):
            if res in n["resources"]:
                out[res] = n["id"][:8]
    return out


def test_launch_places_workers_on_both_ray_nodes(ray_pair, micro, tmp_path):
    db, ids = _sqlite_copy(micro, tmp_path / "zoo.db", reset=4)
    proc = _launch(ray_pair, micro, db)
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out
    store = Store(db)
    _done_once(store, ids)
    nodes = _node_ids(ray_pair)
    seen = _nodes_of(store.table("jobs").set_index("id").loc[ids, "worker"])
    assert seen == {nodes["node_a"], nodes["node_b"]}, (seen, nodes)


def test_lost_ray_node_jobs_are_retried_on_the_head(ray_pair, micro, tmp_path):
    """The second node's raylet is killed while it runs jobs: they fail over to the head's worker, and the
    launch completes with every job done and one result each."""
    if len(ray_pair.alive_nodes()) < 2:
        ray_pair.start_node()
    nodes = _node_ids(ray_pair)
    db, ids = _sqlite_copy(micro, tmp_path / "zoo.db", reset=6)
    store = Store(db)
    proc = _launch(ray_pair, micro, db)
    try:
        deadline = time.time() + 600
        while True:  # until a job is running on the second node
            jobs = store.table("jobs").set_index("id").loc[ids]
            on_b = jobs[(jobs["state"] == "running") & jobs["worker"].fillna("").str.contains(f":{nodes['node_b']}:")]
            if len(on_b):
                break
            assert proc.poll() is None and time.time() < deadline, proc.stdout.read() if proc.poll() is not None else ""
            time.sleep(0.5)
        import os

        os.kill(ray_pair.node_raylet_pid(), signal.SIGKILL)
        out, _ = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    jobs = store.table("jobs").set_index("id").loc[ids]
    assert (jobs["state"] == "done").all(), jobs[["state", "error"]]
    assert set(jobs["attempts"]) <= {1, 2}, jobs["attempts"]
    # the jobs the second node held when it died (those seen running there, unless one finished in the
    # moment before the kill) ran again, on the head
    retried = jobs[jobs["attempts"] == 2]
    assert len(retried) >= 1 and set(retried.index) & set(on_b.index), (retried, on_b)
    assert _nodes_of(retried["worker"]) == {nodes["node_a"]}
    results = store.table("transfer_results")
    finals = results[results["final"].astype(bool) & results["job_id"].isin(ids)]
    assert sorted(finals["job_id"]) == sorted(ids)  # nothing lost, nothing twice
    assert len(results[results["job_id"].isin(ids)]) == len(ids)  # one epoch each: no stray rows
