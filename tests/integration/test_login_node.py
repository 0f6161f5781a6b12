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
    _assert_torch_free([a.replace("{tmp}", str(tmp_path)) for a in argv], tmp_path)


def test_dry_run_of_an_own_checkpoint_zoo_never_imports_torch(tmp_path):
    """Architectures of timm's pretrained zoo are checked against the table shipped for the installed timm."""
    import torch
    from PIL import Image

    for split in ("val", "train"):
        for k in ("a", "b"):
            (tmp_path / split / k).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (8, 8), (60 * i, 0, 0)).save(tmp_path / split / k / f"{i}.png")
    for m in ("m1", "m2"):
        torch.save({"fc.weight": torch.zeros(2, 512)}, tmp_path / f"{m}.pth")
    (tmp_path / "classes.txt").write_text("\n".join(["a", "b"] + [f"n{i:04d}" for i in range(998)]) + "\n")
    spec = tmp_path / "own.toml"
    spec.write_text(f"""name = "own"
[zoo]
num_classes = 1000  # ImageNet heads: the shipped table's sizes
[zoo.defaults]
arch = "resnet18"
[zoo.model.m1]
checkpoint = "{tmp_path}/m1.pth"
[zoo.model.m2]
checkpoint = "{tmp_path}/m2.pth"
[data]
eval = "imagefolder:{tmp_path}/val"
transfer = "imagefolder:{tmp_path}/train"
class_map = "{tmp_path}/classes.txt"
[transfer]
methods = ["kl"]
""")
    _assert_torch_free(["plan", "--dry-run", str(spec)], tmp_path)


def _assert_torch_free(argv, tmp_path):
    code = ("import sys\nfrom zoo_sweep.cli import main\n"
            f"try:\n    rc = main({argv!r})\nexcept SystemExit as e:\n    rc = e.code or 0\n"
            "bad = sorted(m for m in ('torch', 'timm', 'torchvision', 'ray') if m in sys.modules)\n"
            "print('IMPORTED', bad)\nsys.exit(rc)")
    env_home = {"ZOO_SWEEP_HOME": str(tmp_path / "home"), "ZOO_SWEEP_DB": f"sqlite:///{tmp_path}/zoo.db"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, **env_home}, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "IMPORTED []" in r.stdout, r.stdout[-2000:]
