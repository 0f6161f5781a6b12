"""``gpus_per_job = "auto"`` through a real launch: before the transfer stage the launcher measures 1 and 2
concurrent copies of a transfer job on one GPU's bundle, picks by the rule, runs the jobs with that share, and a
later launch reuses the measurement.

Test double: this machine has no GPU, so the Ray head *declares* one (``--num-gpus=1``). Everything else is real:
the placement group that holds the measured workers on that one GPU, the fractional-GPU actors, the warm
workers and their training steps (on the CPU: a worker given a GPU share with no CUDA device trains there).
What the numbers are is the host's business; what is checked is that the choice follows the rule from the
numbers the launch printed, and that the jobs ran."""

import re

import pytest
from conftest import run_cli
from real_cluster import ray_head

from zoo_sweep.pipeline.share import choose

LINE = re.compile(r"gpus_per_job auto: (\d+) job\(s\) per GPU \(gpus_per_job ([\d.]+)\); (measured|remembered from an "
                  r"earlier launch) on (\S+), .*summed images/s by jobs per GPU: (.*)")


@pytest.fixture(scope="module")
def gpu_head(tmp_path_factory):
    with ray_head(tmp_path_factory.mktemp("gpu_head") / "head.log", gpus=1) as address:
        yield address


def _share_line(out: str) -> tuple[int, float, str, dict[int, float | None]]:
    found = [LINE.search(ln) for ln in out.splitlines()]
    m = [x for x in found if x]
    assert len(m) == 1, out
    rates = {int(k): None if v == "failed" else float(v.replace(",", ""))
             for k, v in (c.split(": ") for c in m[0].group(5).split(", "))}
    return int(m[0].group(1)), float(m[0].group(2)), m[0].group(3), rates


def test_auto_measures_once_chooses_by_the_rule_and_runs_the_jobs(micro, gpu_head, tmp_path):
    spec = tmp_path / "auto.toml"
    text = micro["spec_path"].read_text().replace('name = "micro"', 'name = "auto"')
    spec.write_text(text.replace("[run]\n", '[run]\ngpus_per_job = "auto"\n'))
    db = f"sqlite:///{tmp_path / 'auto.db'}"

    def launch(limit: int) -> str:
        r = run_cli("--db", db, "--home", micro["home"], "launch", str(spec), "--gpus", "1", "--address", gpu_head,
                    "--limit", str(limit), "--no-progress", timeout=900)
        assert r.returncode == 0, r.stdout + r.stderr
        return r.stdout + r.stderr

    out = launch(2)
    k, per, how, rates = _share_line(out)
    assert how == "measured" and set(rates) <= {1, 2} and 1 in rates  # 2 CPUs for the one GPU: 2 workers at most
    assert rates[1] > 0 and k == choose(rates) and per == pytest.approx(1 / k, abs=1e-3)
    assert len(rates) == 2 or rates[1] is not None  # 2 was measured unless 1 already failed
    # the transfer stage's workers (the last started) hold the share chosen
    pools = re.findall(r"workers: (\d+) of ([\d.]+) GPU and 1 CPU\(s\) each", out)
    assert pools and pools[-1] == (str(k), f"{1 / k:g}"), out

    k2, per2, how2, rates2 = _share_line(launch(2))  # two more jobs
    assert how2 == "remembered from an earlier launch" and (k2, rates2) == (k, rates)
    q = run_cli("--db", db, "query", "select count(*) as n from transfer_results where final", "-f", "json")
    assert q.returncode == 0 and '"n":4' in q.stdout.replace(" ", ""), q.stdout + q.stderr

    # the flag wins over the spec: a number skips the measurement
    r = run_cli("--db", db, "--home", micro["home"], "launch", str(spec), "--gpus", "1", "--address", gpu_head,
                "--gpus-per-job", "0.5", "--limit", "2", "--no-progress", timeout=900)
    assert r.returncode == 0 and "gpus_per_job auto" not in r.stdout + r.stderr, r.stdout + r.stderr
