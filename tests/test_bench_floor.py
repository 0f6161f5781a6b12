"""The reuse floor that bench/teacher_cache.py and bench/gpu_check.py print next to each ratio (issue 8):
the closed forms of README "On GPUs" for disjoint S x T sweeps and for all ordered pairs of N models."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from teacher_cache import pairs, reuse_floor  # noqa: E402

FWD, TRAIN, STEPS = 10.0, 30.0, 7  # ms per forward pass of any model, ms of a student's own step, steps per job


def off_s(n_jobs: int, passes_per_job: int) -> float:
    return n_jobs * (TRAIN + passes_per_job * FWD) * STEPS / 1000


@pytest.mark.parametrize("s", [2, 4])
def test_disjoint_sweep_floor(s):
    students, teachers = [f"s{i}" for i in range(s)], [f"t{i}" for i in range(s)]
    cost = dict.fromkeys(students + teachers, FWD)
    f = 2 * FWD / (TRAIN + 2 * FWD)  # the share of a kl_dp job in teacher + s0 forward passes
    got = reuse_floor(students, teachers, "kl_dp", cost, STEPS, off_s(s * s, 2))
    assert got == pytest.approx(1 - f * (1 - 1 / s))  # 1 - f/2 at 2 x 2, 1 - 3f/4 at 4 x 4


@pytest.mark.parametrize("n", [3, 4, 8])
def test_all_pairs_floor_shares_one_stream_per_model(n):
    models = [f"m{i}" for i in range(n)]
    assert len(pairs(models, models)) == n * (n - 1)  # nobody learns from itself
    cost = dict.fromkeys(models, FWD)
    f = 2 * FWD / (TRAIN + 2 * FWD)
    got = reuse_floor(models, models, "kl_dp", cost, STEPS, off_s(n * (n - 1), 2))
    assert got == pytest.approx(1 - f * (1 - 1 / (2 * (n - 1))))
    f_kl = FWD / (TRAIN + FWD)  # kl runs no s0: each stream serves the model's n - 1 teacher jobs only
    got = reuse_floor(models, models, "kl", cost, STEPS, off_s(n * (n - 1), 1))
    assert got == pytest.approx(1 - f_kl * (1 - 1 / (n - 1)))
