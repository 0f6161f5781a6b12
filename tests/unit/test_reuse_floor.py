"""The reuse floor (zoo_sweep.pipeline.reuse) that bench/teacher_cache.py and bench/gpu_check.py print next to
each ratio: the closed forms of docs/gpus.md ("On GPUs") for disjoint S x T sweeps and for all ordered pairs of
N models."""

import pytest

from zoo_sweep.pipeline.reuse import pairs, reuse_floor

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


def test_each_model_is_charged_its_own_forward_cost():
    """By hand, one step per job and 1 s off: the saved passes are each model's own cost times its uses - 1."""
    cost = {"s0": 5.0, "s1": 7.0, "t0": 11.0, "t1": 13.0}
    # 2 x 2: each teacher and each student's s0 serves 2 jobs, so one pass of each is saved
    assert reuse_floor(["s0", "s1"], ["t0", "t1"], "kl_dp", cost, 1, 1.0) == pytest.approx(1 - 36 / 1000)
    assert reuse_floor(["s0", "s1"], ["t0", "t1"], "kl", cost, 1, 1.0) == pytest.approx(1 - 24 / 1000)
    cost = {"a": 2.0, "b": 3.0, "c": 5.0}
    # all pairs of 3: with s0 each model serves 4 jobs (3 saved passes), without it 2 (1 saved)
    assert reuse_floor(list(cost), list(cost), "kl_dp", cost, 1, 1.0) == pytest.approx(1 - 30 / 1000)
    assert reuse_floor(list(cost), list(cost), "kl", cost, 1, 1.0) == pytest.approx(1 - 10 / 1000)
