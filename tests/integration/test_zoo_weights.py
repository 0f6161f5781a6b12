"""Weights that changed after they were built or planned: the embedded zoo rebuilds them from their recipe,
so no result ever comes from altered weights (and no launch exits 0 with its work undone)."""

from __future__ import annotations

import json
import shutil
import sqlite3

import pytest
import torch
from conftest import run_cli

SPEC = """
name = "weights-check"
[zoo]
source = "digits"
recipe = "micro"
[transfer]
methods = []
"""


def _accuracy(db) -> dict[str, float]:
    with sqlite3.connect(db) as c:
        return dict(c.execute("select name, accuracy from models").fetchall())


def test_altered_or_truncated_zoo_weights_are_rebuilt_before_use(micro, tmp_path):
    from zoo_sweep.zoo.weights import check_whole, file_sha256

    home = tmp_path / "home"
    shutil.copytree(micro["paths"].cache, home / "cache")
    spec, db = tmp_path / "weights-check.toml", tmp_path / "w.db"
    spec.write_text(SPEC)
    cli = ("--db", f"sqlite:///{db}", "--home", str(home))
    r = run_cli(*cli, "launch", str(spec), "--address", micro["address"], "--no-progress")
    assert r.returncode == 0 and "reused 3 zoo models" in r.stdout, r.stdout + r.stderr
    before = _accuracy(db)

    # perturbed weights (what a stray write or a bad copy leaves), and the record made with the old ones gone
    zoo = home / "cache" / "zoo"
    victim = sorted(zoo.glob("cnn_micro-*.pth"))[0]
    state = torch.load(victim, weights_only=True)
    torch.save({k: v + torch.randn_like(v) if v.is_floating_point() else v for k, v in state.items()}, victim)
    with sqlite3.connect(db) as c:
        (job,) = c.execute("select id from jobs where kind = 'predict' and payload like '%cnn_micro%'").fetchone()
    (home / "records" / f"{job}.npz").unlink()
    r = run_cli(*cli, "launch", str(spec), "--address", micro["address"], "--no-progress")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ran 1 zoo, 1 predict" in r.stdout, r.stdout
    assert file_sha256(victim) == json.loads(victim.with_suffix(".json").read_text())["sha256"]
    # the record comes from weights rebuilt from the recipe, not from the perturbed ones (chance level)
    assert _accuracy(db)["cnn_micro"] == pytest.approx(before["cnn_micro"], abs=3)

    # truncated (a full disk, a killed copy): rebuilt as well; the predict record stays valid
    victim.write_bytes(victim.read_bytes()[:2000])
    r = run_cli(*cli, "launch", str(spec), "--address", micro["address"], "--no-progress")
    assert r.returncode == 0 and "ran 1 zoo" in r.stdout and "reused 2 zoo models" in r.stdout, r.stdout + r.stderr
    assert check_whole(victim) is None
