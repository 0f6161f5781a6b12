"""The speed options change the arithmetic's order only: a micro sweep launched with ``[run] compile = true`` and
``fused_optimizer = true`` (torch.compile through inductor, which builds C++ kernels here, and fused SGD) stores
transfer metrics within the tolerance the GPU check holds bf16 runs to, against the session's plain micro sweep.
Real launcher, real Ray workers, real tiny timm models."""

import json
import shutil
from pathlib import Path

import pytest
from conftest import run_cli

# bench/gpu_e2e.py's defaults (--tol-points, --tol-loss): a bf16 GPU run against a float32 CPU run
TOL_POINTS, TOL_LOSS = 2.0, 0.05
POINT_METRICS = ("student_acc", "s0_acc", "delta", "knowledge_gain", "knowledge_loss")
SQL = ("select job_id, train_loss, " + ", ".join(POINT_METRICS) + " from transfer_results where final")


def _rows(db: str) -> dict[str, dict]:
    q = run_cli("--db", db, "query", SQL, "-f", "json")
    assert q.returncode == 0, q.stderr
    return {r["job_id"]: r for r in json.loads(q.stdout)}


@pytest.mark.skipif(shutil.which("g++") is None, reason="torch.compile on the CPU needs a C++ compiler: install g++ "
                    "(.ci/run does)")
def test_compiled_fused_micro_sweep_stays_within_the_bf16_tolerance_of_the_plain_one(micro, tmp_path):
    spec = tmp_path / "fast.toml"
    text = micro["spec_path"].read_text().replace('name = "micro"', 'name = "fast"')
    spec.write_text(text.replace("[run]\n", "[run]\ncompile = true\nfused_optimizer = true\n"))
    db = f"sqlite:///{tmp_path / 'fast.db'}"
    out = run_cli("--db", db, "--home", micro["home"], "launch", str(spec), "--address", micro["address"],
                  "--no-progress", timeout=900)
    assert out.returncode == 0, out.stdout + out.stderr

    # the speed options are not in a job's id: the same 12 jobs (3 x 2 ordered pairs x 2 methods), which the
    # session's micro store holds beside any other tests add to it
    fast, plain = _rows(db), _rows(micro["db"])
    assert len(fast) == 12 and set(fast) <= set(plain)
    for i, f in fast.items():
        p = plain[i]
        for m in POINT_METRICS:
            assert abs(f[m] - p[m]) <= TOL_POINTS, (m, f, p)
        assert abs(f["train_loss"] - p["train_loss"]) <= TOL_LOSS * abs(p["train_loss"]), (f, p)

    # each job's log says how it ran; the first job of each architecture on a worker says what compiling cost
    logs = [p.read_text() for p in (Path(micro["home"]) / "logs" / "jobs").glob("*.log")]
    fast_logs = [t for t in logs if "speed options: compile, fused" in t]
    assert len(fast_logs) >= 12
    assert any("torch.compile: " in t and "new graph(s)" in t for t in fast_logs)
