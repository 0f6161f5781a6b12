"""The commands a SLURM login node runs (help, dry runs) never import torch, timm or Ray: such nodes often
have none of them, and importing torch alone costs seconds."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("argv", [
    ["--help"],
    ["plan", "--dry-run", "jobs/digits-demo.toml"],
    ["submit", "slurm", "--dry-run", "jobs/digits-demo.toml", "--out", "{tmp}"],
], ids=["help", "plan-dry-run", "submit-slurm-dry-run"])
def test_commands_for_login_nodes_never_import_torch(argv, tmp_path):
    """Run in a fresh interpreter: the test session itself has torch loaded."""
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    code = ("import sys\nfrom zoo_sweep.cli import main\n"
            f"try:\n    rc = main({argv!r})\nexcept SystemExit as e:\n    rc = e.code or 0\n"
            "bad = sorted(m for m in ('torch', 'timm', 'torchvision', 'ray') if m in sys.modules)\n"
            "print('IMPORTED', bad)\nsys.exit(rc)")
    env_home = {"ZOO_SWEEP_HOME": str(tmp_path / "home"), "ZOO_SWEEP_DB": f"sqlite:///{tmp_path}/zoo.db"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, **env_home}, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "IMPORTED []" in r.stdout, r.stdout[-2000:]
