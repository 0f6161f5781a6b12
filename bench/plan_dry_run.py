"""`zoo-sweep plan jobs/imagenet-zoo-flips.toml --dry-run` at zoo scale: wall time end to end.

    .venv/bin/python bench/plan_dry_run.py [--spec jobs/imagenet-zoo-flips.toml] [--repeat 2] [--no-table]

Runs the real CLI in a subprocess with a fresh --home (so no parameter-count cache from earlier runs) and
prints its wall time (best of --repeat) and the summary lines. --no-table also hides the shipped table of
parameter counts, which measures the cold path: every model built once on the meta device.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--spec", default="jobs/imagenet-zoo-flips.toml")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--no-table", action="store_true", help="ignore zoo_sweep/timm_params.py (cold path)")
    args = ap.parse_args()
    exe = Path(sys.executable).parent / "zoo-sweep"
    env = dict(os.environ)
    if args.no_table:
        env["ZOO_SWEEP_NO_PARAM_TABLE"] = "1"
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    best, text = None, ""
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as home:
            t0 = time.perf_counter()
            r = subprocess.run([str(exe), "--home", home, "--db", f"sqlite:///{home}/zoo.db", "plan", args.spec,
                                "--dry-run"], capture_output=True, text=True, cwd=ROOT, env=env)
            dt = time.perf_counter() - t0
        if r.returncode != 0:
            print(r.stdout + r.stderr)
            return 1
        if best is None or dt < best:
            best, text = dt, r.stdout
    print(text)
    print(f"plan --dry-run {args.spec}: {best:.1f} s wall (best of {args.repeat}, fresh --home each)"
          + (" without the shipped parameter table" if args.no_table else ""))
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
