"""Cluster submission: generated sbatch scripts read by bash, the CLI's checks, --shard partitions, the GPU
path of a script (through fake sbatch/srun/scontrol: a SLURM cluster on this machine has no GPUs), and Ray
Jobs against a local head with the job server. Scripts on a real SLURM cluster: test_cluster.py.

Every Ray cluster started here runs on free loopback ports in its own process group and is stopped by
signalling that group (or by the script's own PID bookkeeping); nothing calls `ray stop`.
"""

from __future__ import annotations

import importlib.util
import os
import random
import re
import signal
import socket
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from conftest import BIN, ROOT, _listening
from real_cluster import free_port, free_ports

from zoo_sweep.cli.main import main
from zoo_sweep.errors import UserError
from zoo_sweep.pipeline.launch import in_shard
from zoo_sweep.submit.rayjobs import jobs_url
from zoo_sweep.submit.slurm import render_sbatch

SHIMS = ROOT / "tests" / "shims"
SECRET = "zz-not-a-real-token-0123456789abcdef"


@pytest.fixture
def spec_file(tmp_path):
    p = tmp_path / "tiny.toml"
    p.write_text((ROOT / "jobs" / "digits-demo.toml").read_text())
    return p


def _bash_ok(text: str, tmp_path: Path) -> None:
    f = tmp_path / "check.sh"
    f.write_text(text)
    r = subprocess.run(["bash", "-n", str(f)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def _copy_db(src_url: str, dst: Path) -> str:
    src = sqlite3.connect(src_url.removeprefix("sqlite:///"))
    out = sqlite3.connect(dst)
    src.backup(out)
    src.close()
    out.close()
    return f"sqlite:///{dst}"


def _token_file(tmp_path: Path) -> Path:
    from ray._private.authentication.authentication_token_generator import (
        generate_new_authentication_token,
    )

    p = tmp_path / "ray_token"
    p.write_text(generate_new_authentication_token())
    p.chmod(0o600)
    return p


# ---------------------------------------------------------------------- rendering (contents: unit tier)
HOSTILE = "a b'c\"d $(touch PWNED) `touch PWNED` ${HOME} %j"


def test_scripts_read_hostile_values_back_exactly(tmp_path, monkeypatch):
    """Every mode's script is valid bash, and bash itself reads each value back as given: a spec folder,
    store path, results folder and --launch-args full of shell syntax run nothing."""
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / f"specs {HOSTILE}"
    folder.mkdir()
    spec = folder / "tiny.toml"
    spec.write_text((ROOT / "jobs" / "digits-demo.toml").read_text())
    db = f"sqlite:///{tmp_path}/{HOSTILE}/zoo.db"
    home = str(tmp_path / f"home {HOSTILE}")
    for opts in ({"nodes": 2, "mode": "symmetric"}, {"nodes": 2, "port": 23000, "dashboard": False}, {"array": 2}):
        text = render_sbatch(spec, db=db, home=home, log_dir=tmp_path / f"logs {HOSTILE}",
                             launch_args=["--limit", HOSTILE], setup="echo setup", **opts)
        _bash_ok(text, tmp_path)
        values = text.split("# What `zoo-sweep submit slurm` was given, each value shell-quoted.\n", 1)[1]
        values = values.split("\n\n", 1)[0]
        probe = tmp_path / "probe.sh"
        probe.write_text(values + '\nprintf "%s\\0" "$spec" "$store" "$home" "${launch_args[@]}"\n')
        r = subprocess.run(["bash", str(probe)], capture_output=True, text=True, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert r.stdout.split("\0")[:-1] == [str(spec), db, home, "--limit", HOSTILE]
    assert not list(tmp_path.rglob("PWNED"))


def test_relative_sqlite_store(spec_file, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ZOO_SWEEP_DB", raising=False)
    with pytest.raises(UserError, match="PostgreSQL URL.*absolute SQLite path.*zoo-sweep export"):
        render_sbatch(spec_file, nodes=2)
    with pytest.raises(UserError, match="relative SQLite"):
        render_sbatch(spec_file, array=3)
    # one node: the same file the user would get locally, as an absolute path
    text = render_sbatch(spec_file, nodes=1, log_dir=tmp_path)
    assert f"\nstore=sqlite:///{tmp_path}/results/zoo.db\n" in text


def _cli(capsys, *args):
    try:
        code = main(list(args))
    except SystemExit as e:  # typer ends a successful sub-command with sys.exit(0) even in non-standalone mode
        code = e.code
    cap = capsys.readouterr()
    return code, cap.out, cap.err


@pytest.mark.parametrize("args, message", [
    (["--nodes", "0"], "--nodes must be >= 1"),
    (["--nodes", "two"], "--nodes must be a whole number"),
    (["--gpus-per-node", "1.5"], "--gpus-per-node must be a whole number"),
    (["--gpus-per-node", "-1"], "--gpus-per-node must be >= 0"),
    (["--nodes", "2"], "relative SQLite path"),
    (["--mode", "mpi"], "--mode must be symmetric or classic"),
    (["--array", "2", "--nodes", "2", "--dry-run"], "--array runs one node per array task"),
])
def test_slurm_bad_input_is_one_line(spec_file, tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ZOO_SWEEP_DB", raising=False)
    code, out, err = _cli(capsys, "submit", "slurm", str(spec_file), "--dry-run", "--out", str(tmp_path), *args)
    assert code == 2 and err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1, err
    assert not list(tmp_path.glob("*.sh"))  # nothing written


def test_missing_sbatch(spec_file, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    code, out, err = _cli(capsys, "--db", f"sqlite:///{tmp_path}/z.db", "submit", "slurm", str(spec_file),
                          "--out", str(tmp_path))
    assert code == 2 and "sbatch not found" in err and "--dry-run" in err and len(err.strip().splitlines()) == 1
    code, out, err = _cli(capsys, "--db", f"sqlite:///{tmp_path}/z.db", "submit", "slurm", str(spec_file),
                          "--out", str(tmp_path), "--dry-run")
    assert code == 0 and "wrote " in out and len(list(tmp_path.glob("digits-demo-*.sh"))) == 1


def test_slurm_reads_the_spec_once(spec_file, tmp_path, monkeypatch, capsys):
    import zoo_sweep.pipeline.plan as spec_mod

    real, calls = spec_mod.load_spec, []
    monkeypatch.setattr(spec_mod, "load_spec", lambda p: calls.append(p) or real(p))
    db = f"sqlite:///{tmp_path}/z.db"
    code, out, err = _cli(capsys, "--db", db, "submit", "slurm", str(spec_file), "--out", str(tmp_path), "--dry-run")
    assert code == 0 and len(calls) == 1, (err, calls)
    # what the CLI wrote from the spec it loaded is the script of the spec's file
    assert render_sbatch(spec_file, db=db, log_dir=tmp_path) == next(tmp_path.glob("digits-demo-*.sh")).read_text()


def test_unreachable_ray_jobs_address(spec_file, tmp_path, capsys):
    port = free_port()  # nothing listens there
    code, out, err = _cli(capsys, "--db", f"sqlite:///{tmp_path}/z.db", "--home", str(tmp_path), "submit", "ray",
                          str(spec_file), "--address", f"http://127.0.0.1:{port}")
    assert code == 2 and "cannot reach a Ray Jobs server" in err and len(err.strip().splitlines()) == 1, err
    code, out, err = _cli(capsys, "submit", "ray", "--logs", "raysubmit_x", "--address", f"127.0.0.1:{port}")
    assert code == 2 and "cannot reach" in err
    code, out, err = _cli(capsys, "submit", "ray", str(spec_file), "--address", "http://127.0.0.1:1")
    assert code == 2 and "relative SQLite path" in err  # the default store cannot serve a Ray Job
    assert jobs_url("head") == "http://head:8265" and jobs_url("10.0.0.1:9000/") == "http://10.0.0.1:9000"
    with pytest.raises(UserError, match="Ray Client address"):
        jobs_url("ray://head:10001")


def test_ray_job_request_layout(spec_file, tmp_path):
    from zoo_sweep.submit.rayjobs import ray_job_request

    # a spec inside the project: the project is the working dir (the package comes with it)
    entry, env = ray_job_request(ROOT / "jobs" / "digits-demo.toml", staging=tmp_path, gpus=2,
                                 launch_args=["--gpus-per-job", "0.5"], env_vars={"ZOO_SWEEP_DB": "postgresql://h/db"})
    assert env["working_dir"] == str(ROOT) and "py_modules" not in env and ".venv" in env["excludes"]
    assert entry == ("python -m zoo_sweep launch jobs/digits-demo.toml --address auto --gpus 2 --no-progress "
                     "--gpus-per-job 0.5")
    assert env["env_vars"] == {"ZOO_SWEEP_DB": "postgresql://h/db"}
    # a spec elsewhere: a folder with only the spec, and the package as a py_module
    staging = tmp_path / "stage"
    staging.mkdir()
    entry, env = ray_job_request(spec_file, staging=staging)
    assert env["working_dir"] == str(staging) and sorted(os.listdir(staging)) == ["tiny.toml"]
    assert env["py_modules"] == [str(ROOT / "zoo_sweep")] and " launch tiny.toml " in entry
    with pytest.raises(UserError, match="not inside --working-dir"):
        ray_job_request(spec_file, staging=staging, working_dir=ROOT)


# ---------------------------------------------------------------------- shards
def test_shards_partition_the_ledger(micro):
    ids = list(micro["store"].table("jobs")["id"])  # the micro ledger, plus whatever earlier tests added to it
    assert len(ids) >= 16
    for k in (1, 2, 3, 5):
        owners = [[i for i in range(k) if in_shard(j, (i, k))] for j in ids]
        assert all(len(o) == 1 for o in owners)  # every job in exactly one shard
    # and the shards are balanced: job ids are content hashes, so 1,000 of them spread evenly over 5 shards
    import hashlib

    many = [f"t-{hashlib.sha256(str(n).encode()).hexdigest()[:16]}" for n in range(1000)]
    sizes = [sum(in_shard(j, (i, 5)) for j in many) for i in range(5)]
    assert sum(sizes) == 1000 and min(sizes) > 150, sizes


# ---------------------------------------------------------------------- the script, run through fake SLURM
def _env(**extra) -> dict:
    """This environment without SLURM, Ray-auth, store and Ray-address settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "RAY_AUTH", "ZOO_SWEEP_")) and k != "RAY_ADDRESS"}
    env.update(RAY_USAGE_STATS_ENABLED="0", **extra)
    return env


def _run(*args: str, env: dict, timeout: int = 300) -> subprocess.CompletedProcess:
    """`zoo-sweep ARGS` with exactly ``env`` (run_cli would merge this process's environment back in)."""
    return subprocess.run([str(BIN / "zoo-sweep"), *args], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=ROOT)


def _shim_env(tmp_path, **extra) -> dict:
    return _env(PATH=f"{SHIMS}:{BIN}:{os.environ['PATH']}", FAKE_SLURM_RC_FILE=str(tmp_path / "rc"), **extra)


def _free_base() -> int:
    """A base for PORT..PORT+999 below the ephemeral range, with the fixed ports free now."""
    for _ in range(50):
        base = random.randrange(20000, 31000, 10)
        try:
            for p in range(base, base + 9):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
    raise RuntimeError("no free port range")


def test_gpu_script_through_fake_slurm(micro, tmp_path):
    """The GPU path of a script, which a SLURM cluster on this machine cannot run (it has no GPUs, so sbatch
    refuses --gres=gpu: test_cluster.py): fake sbatch/srun run a --gpus-per-node 1 script in place, so its
    Ray head claims the GPU (--num-gpus=1) and the launch asks for it (--gpus 1), which fails unless both
    reach Ray. Classic mode on one node; the launch finds the sweep done; the head is stopped by PID."""
    db = _copy_db(micro["db"], tmp_path / "zoo.db")
    base = _free_base()
    env = _shim_env(tmp_path, RAY_AUTH_TOKEN_PATH=str(_token_file(tmp_path)), FAKE_SLURM_JOB_ID="4242")
    r = _run("--db", db, "--home", micro["home"], "submit", "slurm", str(micro["spec_path"]), "--nodes", "1",
             "--gpus-per-node", "1", "--cpus-per-node", "2", "--mode", "classic", "--port", str(base),
             "--no-dashboard", "--out", str(tmp_path / "slurm"), env=env, timeout=400)
    assert r.returncode == 0, r.stderr
    assert "submitted SLURM job 4242" in r.stdout
    log = (tmp_path / "slurm" / "micro-4242.out").read_text()
    assert (tmp_path / "rc").read_text().strip() == "0", log
    assert re.search(rf"Ray head at [0-9.]+:{base} on localhost, 1 node\(s\) x 1 GPU\(s\) x 2 CPU\(s\)", log), log
    assert "12 transfer jobs" in log and "launch exited with 0" in log, log
    assert sorted(p.name for p in (Path(micro["home"]) / "export" / "slurm-4242").glob("*.parquet"))
    assert not _listening(base)  # the head this job started is gone
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert f"--port={base}" not in ps


# ---------------------------------------------------------------------- Ray Jobs
def _has_job_server() -> bool:
    return all(importlib.util.find_spec(m) for m in ("aiohttp", "aiohttp_cors", "prometheus_client", "opencensus"))


@pytest.fixture(scope="module")
def jobs_head(tmp_path_factory):
    """A local Ray head with the dashboard's job server, token authentication on, on free ports, in its
    own process group (stopped by signalling that group, never by `ray stop`)."""
    if not _has_job_server():
        pytest.skip("Ray Jobs need the job server from ray[default]: pip install -e '.[cluster]'")
    tmp = tmp_path_factory.mktemp("jobs")
    token = _token_file(tmp)
    names = ("port", "dashboard-port", "ray-client-server-port", "node-manager-port", "object-manager-port",
             "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
             "metrics-export-port")
    ports = dict(zip(names, free_ports(len(names))))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env.pop("RAY_ADDRESS", None)
    env.update(RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token),
               PATH=f"{BIN}:{env['PATH']}")
    log = open(tmp / "head.log", "w")
    head = subprocess.Popen([str(BIN / "ray"), "start", "--head", "--block", "--num-cpus=2", "--num-gpus=0",
                             "--node-ip-address=127.0.0.1", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                             "--disable-usage-stats", *[f"--{k}={v}" for k, v in ports.items()]],
                            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{ports['dashboard-port']}"
    try:
        import requests

        deadline = time.time() + 120
        while True:
            if head.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"ray head with dashboard did not start: see {log.name}")
            try:
                if requests.get(f"{url}/api/version", timeout=2).status_code in (200, 401, 403):
                    break
            except requests.RequestException:
                pass
            time.sleep(0.5)
        yield {"url": url, "token": token, "tmp": tmp}
    finally:
        try:
            os.killpg(head.pid, signal.SIGTERM)
            head.wait(timeout=5)
        except (ProcessLookupError, subprocess.TimeoutExpired):  # gone already (a failed start), or draining
            pass
        try:  # whatever of this group is left (Ray drains for up to 30 s on SIGTERM)
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        log.close()


def test_ray_job_submit_logs_stop(micro, jobs_head, tmp_path):
    """Submit through the token-protected job server, follow it to the end, read its logs, stop one."""
    db = _copy_db(micro["db"], tmp_path / "zoo.db")
    env = _env(RAY_AUTH_TOKEN_PATH=str(jobs_head["token"]))
    url, spec, py = jobs_head["url"], str(micro["spec_path"]), str(BIN / "python")
    submit = ["--db", db, "--home", micro["home"], "submit", "ray", spec, "--address", url, "--python", py]
    secret = jobs_head["token"].read_text()

    r = _run(*submit, "--follow", env=env)
    assert secret not in r.stdout + r.stderr
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr
    job = re.search(r"submitted Ray Job (\S+) to ", r.stdout).group(1)
    assert "12 transfer jobs" in r.stdout and f"Ray Job {job}: SUCCEEDED" in r.stdout  # the launch's summary

    r = _run("submit", "ray", "--logs", job, "--address", url, env=env)
    assert r.returncode == 0 and "12 transfer jobs" in r.stdout and "SUCCEEDED" in r.stdout, r.stderr
    r = _run("submit", "ray", "--stop", job, "--address", url, env=env)
    assert r.returncode == 0 and "had already ended (SUCCEEDED)" in r.stdout, r.stderr
    r = _run("submit", "ray", "--logs", "raysubmit_nope", "--address", url, env=env)
    assert r.returncode == 2 and "no Ray Job 'raysubmit_nope'" in r.stderr, r.stderr

    # a second job, stopped while it runs: its interpreter waits first, so it is still running however slowly
    # the stop command starts on a busy machine (the sweep itself is done: a launch would end in seconds)
    slow = tmp_path / "slow-python"
    slow.write_text(f"#!/bin/sh\nsleep 600\nexec {py} \"$@\"\n")
    slow.chmod(0o755)
    r = _run(*submit[:-1], str(slow), env=env)
    assert r.returncode == 0, r.stderr
    job2 = re.search(r"submitted Ray Job (\S+) to ", r.stdout).group(1)
    r = _run("submit", "ray", "--stop", job2, "--address", url, env=env)
    assert r.returncode == 0 and f"stopping Ray Job {job2}" in r.stdout, r.stdout + r.stderr
    r = _run("submit", "ray", "--logs", job2, "--follow", "--address", url, env=env)
    assert r.returncode == 1 and f"Ray Job {job2}: STOPPED" in r.stdout, r.stdout + r.stderr
    assert secret not in r.stdout + r.stderr


def test_ray_job_wrong_token_is_refused(jobs_head, tmp_path):
    wrong = tmp_path / "wrong"
    wrong.write_text("0" * 64)
    r = _run("submit", "ray", "--logs", "raysubmit_x", "--address", jobs_head["url"],
             env=_env(RAY_AUTH_TOKEN_PATH=str(wrong)))
    assert r.returncode == 2 and "refused" in r.stderr and "RAY_AUTH_TOKEN" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "0" * 64 not in r.stderr + r.stdout
