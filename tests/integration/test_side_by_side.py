"""Sweeps that share a machine and nothing else: each its own results folder, store and Ray cluster (or the
session's cluster), started at the same moment. None may stop, starve or cancel another's workers.

Every local Ray cluster writes ~/.ray/auth_token when it starts, while the session's head has no
authentication: a launch that joined it in token mode because that file existed had every actor cancelled
("The actor never ran"). These launches run with a token file configured on purpose.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from conftest import BIN, ROOT, micro_spec, sqlite_rows


@pytest.fixture
def token_file(tmp_path):
    from ray._private.authentication.authentication_token_generator import generate_new_authentication_token

    p = tmp_path / "auth_token"
    p.write_text(generate_new_authentication_token())
    return p


def _home(micro, root):
    """A results folder of its own holding a copy of the micro zoo (not trained again)."""
    home = root / "home"
    shutil.copytree(micro["paths"].cache / "zoo", home / "cache" / "zoo")
    return home


def _start(micro, root, name, *launch_args, command="launch", token=None, **sections):
    root.mkdir(parents=True)
    spec = root / f"{name}.toml"
    spec.write_text(micro_spec(name, **sections))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    if token is not None:
        env["RAY_AUTH_TOKEN_PATH"] = str(token)
    db = root / "zoo.db"
    proc = subprocess.Popen([str(BIN / "zoo-sweep"), "--db", f"sqlite:///{db}", "--home", str(_home(micro, root)),
                             command, str(spec), "--no-progress", *launch_args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    return proc, db


def _finish(proc, timeout=900) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"still running after {timeout} s:\n{out}")
    assert proc.returncode == 0, out
    return out


def test_sweeps_started_at_the_same_moment_all_finish(micro, tmp_path, token_file):
    """Two sweeps on local one-CPU clusters of their own and a third on the session's cluster, all at once."""
    a = _start(micro, tmp_path / "a", "side-a", "--cpus", "1", transfer={"methods": ["kl"], "controls": ["labels"]})
    b = _start(micro, tmp_path / "b", "side-b", "--cpus", "1", transfer={"methods": ["kl_dp"]})
    c = _start(micro, tmp_path / "c", "side-c", "--address", micro["address"], token=token_file,
               transfer={"methods": ["kl"], "seeds": [1]})
    outs = []
    for (proc, db), controls in zip((a, b, c), (3, 0, 0)):
        outs.append(_finish(proc))
        assert sqlite_rows(db, "select kind, state, count(*) from jobs group by 1, 2 order by 1") == [
            ("compare", "done", 1), ("predict", "done", 3), ("transfer", "done", 6 + controls)]
    # a's labels control, one per student: one seed and no repeated seed anywhere, so the launcher says it
    # cannot tell continued training from transfer
    assert "convergence: cannot tell for 3 student(s)" in outs[0], outs[0]
    assert sqlite_rows(a[1], "select count(*) from transfer_results where method = 'labels' and teacher = student "
                             "and final") == [(3,)]


def test_a_launch_beside_a_running_tune(micro, tmp_path, token_file):
    """`zoo-sweep tune` on the session's cluster and a launch on a local cluster, started together."""
    tune = _start(micro, tmp_path / "t", "side-tune", "--method", "kl", "--samples", "2", "--pairs", "1",
                  "--address", micro["address"], command="tune", token=token_file)
    launch = _start(micro, tmp_path / "l", "side-launch", "--cpus", "1", transfer={"methods": ["kl"]})
    assert "best: " in _finish(tune[0])
    assert sqlite_rows(tune[1], "select count(*) from sweep_jobs where sweep = 'side-tune.tune.kl'") == [(2,)]
    _finish(launch[0])
    assert sqlite_rows(launch[1], "select state, count(*) from jobs where kind = 'transfer' group by 1") == [
        ("done", 6)]
