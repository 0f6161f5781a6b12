"""Teacher-output reuse: cached teacher / s0 logits give the same results as computing them.

Real tiny timm models on a slice of the digits data, no Ray. A counting wrapper proves the cached model is
not run again; the planner and the job order are checked on real plan payloads.
"""

import json
from pathlib import Path

import numpy as np
from conftest import run_cli
from tiny import CFG, assert_same_rows, cnn, correct, digits_slices, mlp, one_thread  # noqa: F401  (one_thread: autouse)

from zoo_sweep.transfer.train import TransferParams

HP = TransferParams(epochs=2, batch_size=32, lr=0.05)


def test_a_launch_reuses_teacher_logits_and_matches_an_uncached_launch(micro, tmp_path):
    """Through the real launcher and Ray workers: the cached sweep reads logits back and stores the same
    results as the same sweep with teacher_cache = "off"."""
    results = {}
    for policy in ("auto", "off"):
        spec = tmp_path / f"cache-{policy}.toml"
        text = micro["spec_path"].read_text().replace('name = "micro"', f'name = "cache-{policy}"')
        spec.write_text(text.replace("[transfer]\n", f'[transfer]\nteacher_cache = "{policy}"\n'))
        db = f"sqlite:///{tmp_path / policy}.db"
        out = run_cli("--db", db, "--home", micro["home"], "launch", str(spec), "--address", micro["address"],
                      "--no-progress")
        assert out.returncode == 0, out.stderr
        assert ("cached logit epochs" in out.stdout + out.stderr) == (policy == "auto"), out.stdout + out.stderr
        q = run_cli("--db", db, "query", "select student, teacher, method, knowledge_gain, knowledge_loss, "
                    "student_acc from transfer_results order by student, teacher, method", "-f", "json")
        assert q.returncode == 0, q.stderr
        results[policy] = json.loads(q.stdout)
    assert len(results["auto"]) == len(results["off"]) == 12  # 3 x 2 ordered pairs x 2 methods, one epoch
    for a, b in zip(results["auto"], results["off"]):
        assert (a["student"], a["teacher"], a["method"]) == (b["student"], b["teacher"], b["method"])
        assert np.allclose([a["knowledge_gain"], a["knowledge_loss"], a["student_acc"]],
                           [b["knowledge_gain"], b["knowledge_loss"], b["student_acc"]], atol=1e-9)
    logits = Path(micro["home"]) / "cache" / "logits"
    assert logits.is_dir() and not any(logits.iterdir())  # streams were written there, each removed after its last job
