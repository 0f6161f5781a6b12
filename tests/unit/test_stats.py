"""Bootstrap intervals: contain the estimate, shrink with more pairs, are reproducible, and tell a real
difference from noise."""

import numpy as np
import pytest

from zoo_sweep.science import stats


@pytest.mark.parametrize("seed", range(5))
def test_intervals_contain_the_point_estimate(seed):
    rng = np.random.default_rng(seed)
    delta = rng.normal(0.5, 2.0, 40)
    students = rng.integers(0, 8, 40)
    for ci, est in ((stats.bootstrap_mean(delta), delta.mean()),
                    (stats.bootstrap_rate(delta > 0), (delta > 0).mean() * 100),
                    (stats.student_success(students, delta), None),
                    (stats.bootstrap_corr(delta, delta + rng.normal(0, 1, 40), "spearman"), None)):
        assert ci.lo <= ci.estimate <= ci.hi, ci
        assert ci.n == 40
        if est is not None:
            assert ci.estimate == pytest.approx(est)
    # the paper's statistic: median over students of each student's share of teachers with delta > 0
    rates = stats.per_student_rates(students, delta)
    assert stats.student_success(students, delta).estimate == pytest.approx(np.median(list(rates.values())))


def test_intervals_shrink_with_more_pairs():
    rng = np.random.default_rng(0)
    small, large = rng.normal(0, 1, 20), rng.normal(0, 1, 500)
    assert stats.bootstrap_mean(large).width < stats.bootstrap_mean(small).width / 2.5  # ~ sqrt(25) = 5
    assert stats.bootstrap_rate(large > 0).width < stats.bootstrap_rate(small > 0).width / 2
    s_small, s_large = np.repeat(np.arange(5), 4), np.repeat(np.arange(5), 100)  # 4 vs 100 teachers per student
    d_small, d_large = rng.normal(0.3, 1, s_small.size), rng.normal(0.3, 1, s_large.size)
    assert stats.student_success(s_large, d_large).width < stats.student_success(s_small, d_small).width


def test_seeded_and_level():
    x = np.random.default_rng(3).normal(size=50)
    assert stats.bootstrap_mean(x, seed=7) == stats.bootstrap_mean(x, seed=7)
    assert stats.bootstrap_mean(x, level=0.5).width < stats.bootstrap_mean(x, level=0.95).width


def test_degenerate_inputs():
    one = stats.bootstrap_mean([2.5])
    assert one.estimate == 2.5 and np.isnan(one.lo) and one.format() == "2.50"
    assert np.isnan(stats.bootstrap_mean([]).estimate)
    assert np.isnan(stats.bootstrap_corr([1, 1, 1, 1], [1, 2, 3, 4]).estimate)  # constant: no correlation
    assert stats.bootstrap_mean([1.0, np.nan, 3.0]).estimate == 2.0  # NaNs dropped
    assert stats.bootstrap_mean([1.0, 3.0]).format(1).startswith("2.0 [")


def test_differences_tell_signal_from_noise():
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, 60)
    same = stats.bootstrap_paired_diff(a + rng.normal(0, 0.1, 60), a)
    assert same.contains(0) and not same.excludes_zero
    better = stats.bootstrap_paired_diff(a + 0.5 + rng.normal(0, 0.1, 60), a)
    assert better.excludes_zero and better.lo > 0
    # pairing matters: the same shift hidden in pair-to-pair spread is not detectable unpaired
    assert not stats.bootstrap_diff(a + 0.1, a).excludes_zero
    assert stats.bootstrap_paired_diff(a + 0.1, a).excludes_zero
    rate = stats.bootstrap_paired_diff(np.ones(30), -np.ones(30), "rate")
    assert rate.estimate == 100 and rate.lo == 100
    with pytest.raises(ValueError):
        stats.bootstrap_paired_diff([1, 2], [1])


def test_a_student_clustered_difference_resamples_students_not_pairs():
    rng = np.random.default_rng(3)
    students = np.repeat([f"s{i}" for i in range(9)], 8)  # 9 students x 8 teachers
    base = np.repeat(rng.normal(0, 1, 9), 8)  # a method that ignores the teacher: one result per student
    d = 0.2 + np.repeat(rng.normal(0, 0.5, 9), 8) + rng.normal(0, 0.05, 72)  # mostly the student's luck
    pairs = stats.bootstrap_paired_diff(base + d, base)
    clustered = stats.bootstrap_paired_diff(base + d, base, groups=students)
    assert clustered.estimate == pytest.approx(pairs.estimate) and (pairs.n, clustered.n) == (72, 9)
    assert clustered.width > 2 * pairs.width  # ~sqrt(8): 8 pairs per student carry one student's luck
    # one pair per group: the same draws as the pair bootstrap
    a, b = rng.normal(0, 1, 30), rng.normal(0, 1, 30)
    one_each = stats.bootstrap_paired_diff(a, b, groups=[f"g{i:02d}" for i in range(30)])
    plain = stats.bootstrap_paired_diff(a, b)
    assert one_each.n == plain.n == 30 and one_each.width > 0
    assert (one_each.lo, one_each.hi) == pytest.approx((plain.lo, plain.hi))
    # NaN pairs leave their group's other pairs in
    a2, b2 = np.array([1.0, np.nan, 3.0, 4.0]), np.zeros(4)
    assert stats.bootstrap_paired_diff(a2, b2, groups=["x", "x", "y", "y"]).estimate == pytest.approx(8 / 3)
    with pytest.raises(ValueError):
        stats.bootstrap_paired_diff([1, 2], [1, 2], groups=["x"])


def test_correlations_match_scipy():
    from scipy.stats import pearsonr, rankdata, spearmanr

    rng = np.random.default_rng(1)
    x = rng.integers(0, 6, 40).astype(float)  # ties
    y = x + rng.normal(0, 2, 40)
    assert stats.bootstrap_corr(x, y, "pearson").estimate == pytest.approx(pearsonr(x, y)[0])
    assert stats.bootstrap_corr(x, y, "spearman").estimate == pytest.approx(spearmanr(x, y)[0])
    assert stats.spearman(x, y) == pytest.approx(spearmanr(x, y)[0])
    m = rng.integers(0, 4, (7, 11)).astype(float)
    np.testing.assert_allclose(stats._rank_rows(m), rankdata(m, axis=1))
