"""Ctrl-C, SIGTERM (SLURM, `timeout`, container runtimes) and SIGHUP (a closed terminal) stop a real launcher
alike: the jobs in flight are marked interrupted, the exit code is the shell's for that signal, one
line says so, no traceback or native stack dump, and the next launch finishes every job (checked after SIGTERM:
the jobs are left in the same states whichever signal stopped the launch)."""

from __future__ import annotations

import signal
import time

import pytest
from conftest import run_cli, sqlite_rows, sqlite_rows_so_far
from test_reliability import _launcher, spec_and_path


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_a_stop_signal_ends_a_launch_like_ctrl_c(micro, tmp_path, sig):
    spec, db = spec_and_path(tmp_path, f"stopped-{sig.name.lower()}", 2), tmp_path / "s.db"  # 8 transfer jobs
    proc = _launcher(micro, db, spec)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
        if sqlite_rows_so_far(db, "select id from jobs where kind = 'transfer' and state = 'running'"):
            break
    assert proc.poll() is None, proc.communicate()[0]
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, out
    lines = [ln for ln in out.splitlines() if ln.strip()]
    if sig == signal.SIGINT:  # Ctrl-C keeps its own words
        assert "interrupted" in out
    else:
        assert lines[-1] == (f"stopped by {sig.name}: jobs in flight are marked 'interrupted' and run again on the "
                             "next launch")
    for dump in ("Traceback", "*** SIG", "PC: @", "Fatal Python error", "core dumped"):
        assert dump not in out, out
    states = dict(sqlite_rows(db, "select state, count(*) from jobs where kind = 'transfer' group by state"))
    assert states.get("interrupted", 0) >= 1 and "running" not in states, states
    if sig != signal.SIGTERM:  # what a launch leaves is the same whatever stopped it: one relaunch checks it
        return
    r = run_cli("--db", f"sqlite:///{db}", "--home", micro["home"], "launch", str(spec), "--address",
                micro["address"], "--no-progress")
    assert r.returncode == 0, r.stdout + r.stderr
    assert sqlite_rows(db, "select count(*) from jobs where kind = 'transfer' and state = 'done'") == [(8,)]
    assert sqlite_rows(db, "select count(*), count(distinct job_id) from transfer_results where final") == [(8, 8)]
