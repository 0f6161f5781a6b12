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


# hierarchical intervals: rows of single runs nested as students > pairs > seeds

def _layout(pairs_per_student, seeds_per_pair):
    """Row labels of a design: student i has pairs_per_student[i] pairs (teachers t0, t1, ...); the k-th pair of
    the sweep has seeds_per_pair[k % len] seeds. Returns student, teacher, seed and the pair's index per row."""
    student, teacher, seed, pair = [], [], [], []
    for s, n_pairs in enumerate(pairs_per_student):
        for t in range(n_pairs):
            r = seeds_per_pair[len(set(pair)) % len(seeds_per_pair)]
            student += [f"s{s}"] * r
            teacher += [f"t{t}"] * r
            seed += list(range(r))
            pair += [len(set(pair))] * r
    return np.array(student), np.array(teacher), np.array(seed), np.array(pair)


# (pairs per student, seeds per pair, sd between students / between pairs within a student / between seeds)
DESIGNS = {
    "8x4x3": ([4] * 8, [3], (1.0, 1.0, 1.0)),
    "12x8x3": ([8] * 12, [3], (1.0, 1.0, 1.0)),
    "6x6x1": ([6] * 6, [1], (1.0, 1.0, 1.0)),
    "seed-dominated 10x4x2": ([4] * 10, [2], (0.2, 0.3, 3.0)),
    "student-dominated 6x3x3": ([3] * 6, [3], (2.0, 0.3, 0.3)),
    "unbalanced 10 students": ([2, 8, 3, 6, 4, 2, 7, 5, 3, 8], [1, 3, 2, 3, 1, 2], (1.0, 1.0, 1.0)),
    "3x4x3 (t interval)": ([4] * 3, [3], (1.0, 1.0, 1.0)),
}


def _coverage(pairs_per_student, seeds_per_pair, sd, n_sweeps=1000, n_boot=500, seed=2, mean=1.0):
    """Share of simulated sweeps (percent) whose 95 % interval covers the true mean: of ``hierarchical_mean``
    and of the plain percentile bootstrap over students (``bootstrap_paired_diff(groups=...)`` on the pair
    means). Every sweep draws new student, pair and seed effects around ``mean``."""
    student, teacher, seeds, pair = _layout(pairs_per_student, seeds_per_pair)
    s_idx = np.unique(student, return_inverse=True)[1]
    rng = np.random.default_rng(seed)
    x = (mean + rng.normal(0, sd[0], (n_sweeps, s_idx.max() + 1))[:, s_idx]
         + rng.normal(0, sd[1], (n_sweeps, pair.max() + 1))[:, pair] + rng.normal(0, sd[2], (n_sweeps, pair.size)))
    average = np.zeros((pair.size, pair.max() + 1))
    average[np.arange(pair.size), pair] = 1
    pair_means = x @ (average / average.sum(axis=0))
    pair_student = student[np.unique(pair, return_index=True)[1]]
    zeros = np.zeros(pair_student.size)
    hier = sum(stats.hierarchical_mean(x[i], student, teacher, seeds, n_boot=n_boot).contains(mean)
               for i in range(n_sweeps))
    plain = sum(stats.bootstrap_paired_diff(pair_means[i], zeros, groups=pair_student, n_boot=n_boot).contains(mean)
                for i in range(n_sweeps))
    return 100 * hier / n_sweeps, 100 * plain / n_sweeps


@pytest.mark.parametrize("design", list(DESIGNS))
def test_hierarchical_interval_covers_the_true_mean(design):
    """1,000 simulated sweeps per design with known variances: the 95 % interval covers the true mean in
    93-97 % of them, where the plain percentile bootstrap over the same few students falls short.

    The Monte Carlo standard error of one design's share is 0.7 points, and in longer runs the interval
    covers about 94-95 %, so with another data seed a design lands below 93 % now and then (data seeds 0-5
    gave 91.9-95.7 %, 2 of the 42 runs below 93 %); the seed is fixed so that the test is deterministic."""
    pairs_per_student, _, _ = DESIGNS[design]
    hier, plain = _coverage(*DESIGNS[design])
    assert 93 <= hier <= 97, (design, hier, plain)
    if len(pairs_per_student) <= 8:  # the plain interval's shortfall is about 3 points at 12 students
        assert plain < 91, (design, hier, plain)


T_975 = {1: 12.706205, 2: 4.302653, 3: 3.182446, 7: 2.364624}  # two-sided 95 % quantiles of Student's t (tables)
T_95 = {1: 6.313752, 2: 2.919986, 3: 2.353363}  # two-sided 90 %
Z_975 = 1.959964


def _balanced(n_students, n_teachers, n_seeds, rng):
    student, teacher, seed, _ = _layout([n_teachers] * n_students, [n_seeds])
    x = (np.repeat(rng.normal(0, 1, n_students), n_teachers * n_seeds)
         + np.repeat(rng.normal(0, 1, n_students * n_teachers), n_seeds) + rng.normal(0, 0.5, student.size))
    return x, student, teacher, seed


def test_hierarchical_mean_balanced_resamples_students_with_a_t_scaled_spread():
    x, student, teacher, seed = _balanced(8, 4, 3, np.random.default_rng(0))
    ci = stats.hierarchical_mean(x, student, teacher, seed)
    means = x.reshape(8, 12).mean(axis=1)  # rows are student-major: one student's 4 x 3 runs in a row
    assert ci.estimate == pytest.approx(x.mean()) and ci.estimate == pytest.approx(means.mean())
    assert (ci.n, ci.method) == (8, "bootstrap over 8 students, t-scaled")
    # the same resamples of students as the plain cluster bootstrap, deviations widened by sqrt(n/(n-1)) t / z
    plain = stats.bootstrap_paired_diff(x, np.zeros_like(x), groups=student)
    scale = np.sqrt(8 / 7) * T_975[7] / Z_975
    assert ci.lo == pytest.approx(ci.estimate - scale * (ci.estimate - plain.lo), rel=1e-5)
    assert ci.hi == pytest.approx(ci.estimate + scale * (plain.hi - ci.estimate), rel=1e-5)
    # a balanced design's interval is that of its student means, one row per student
    per_student = stats.hierarchical_mean(means, [f"s{i}" for i in range(8)])
    assert (per_student.lo, per_student.hi) == pytest.approx((ci.lo, ci.hi))
    # treating the 96 runs as independent pairs is far too narrow
    assert ci.width > 2 * stats.bootstrap_mean(x).width
    # and for a t interval's share of cases it is about as wide as the t interval over the student means
    t_width = 2 * T_975[7] * means.std(ddof=1) / np.sqrt(8)
    assert 0.8 * t_width < ci.width < 1.2 * t_width


def test_hierarchical_mean_unbalanced_averages_seeds_then_pairs():
    # student a: t1 seeds (1, 3) and t2 (4); b: t1 (0, 2, 4); c: t1 (5), t2 (7, 9), t3 (2)
    x = np.array([1, 3, 4, 0, 2, 4, 5, 7, 9, 2], dtype=float)
    student = np.array(list("aaabbbcccc"))
    teacher = np.array(["t1", "t1", "t2", "t1", "t1", "t1", "t1", "t2", "t2", "t3"])
    seed = np.array([0, 1, 0, 0, 1, 2, 0, 0, 1, 0])
    pair_means = np.array([2, 4, 2, 5, 8, 2], dtype=float)
    pair_student = np.array(list("aabccc"))
    ci = stats.hierarchical_mean(x, student, teacher, seed)
    # each pair counts once, whatever its number of seeds: not the row mean, nor the mean of student means
    assert ci.estimate == pytest.approx(23 / 6)
    assert ci.estimate != pytest.approx(x.mean()) and ci.estimate != pytest.approx(np.mean([3, 2, 5]))
    # 3 students: t interval over student means, each weighted by its number of pairs
    sums, counts = np.array([6.0, 2.0, 15.0]), np.array([2.0, 1.0, 3.0])
    se = np.sqrt(3 / 2 * ((sums - 23 / 6 * counts) ** 2).sum()) / 6
    assert (ci.lo, ci.hi) == pytest.approx((23 / 6 - T_975[2] * se, 23 / 6 + T_975[2] * se), abs=1e-5)
    assert ci.method == "t over 3 student means" and ci.n == 3
    # the same as one row per pair with its seeds averaged, and independent of the rows' order
    assert stats.hierarchical_mean(pair_means, pair_student) == ci
    order = np.random.default_rng(0).permutation(x.size)
    assert stats.hierarchical_mean(x[order], student[order], teacher[order], seed[order]) == ci
    # a teacher's name marks a pair within its student: "t1" of a and "t1" of b are different pairs
    both = np.char.add(np.char.add(student, "|"), teacher)
    assert stats.hierarchical_mean(x, student, both, seed) == ci
    # without pairs the rows of a student are the seeds of one unit; without seeds too, every row is a unit
    student_rows_mean = np.mean([8 / 3, 6 / 3, 23 / 4])
    assert stats.hierarchical_mean(x, student, seeds=np.arange(10)).estimate == pytest.approx(student_rows_mean)
    assert stats.hierarchical_mean(x, student).estimate == pytest.approx(x.mean())
    # with 5 or more students: the plain student bootstrap of the same estimate, t-scaled
    rng = np.random.default_rng(1)
    student, teacher, seed, pair = _layout([2, 8, 3, 6, 4, 2, 7, 5], [1, 3, 2])
    x = rng.normal(0, 1, 8)[np.unique(student, return_inverse=True)[1]] + rng.normal(0, 1, student.size)
    ci = stats.hierarchical_mean(x, student, teacher, seed)
    pair_means = np.bincount(pair, weights=x) / np.bincount(pair)
    pair_student = student[np.unique(pair, return_index=True)[1]]
    assert ci.estimate == pytest.approx(pair_means.mean())
    plain = stats.bootstrap_paired_diff(pair_means, np.zeros_like(pair_means), groups=pair_student)
    scale = np.sqrt(8 / 7) * T_975[7] / Z_975
    assert (ci.lo, ci.hi) == pytest.approx((ci.estimate - scale * (ci.estimate - plain.lo),
                                            ci.estimate + scale * (plain.hi - ci.estimate)), rel=1e-5)


@pytest.mark.parametrize("n", [2, 3, 4])
def test_fewer_than_five_students_get_a_t_interval(n):
    x, student, teacher, seed = _balanced(n, 3, 2, np.random.default_rng(n))
    means = x.reshape(n, 6).mean(axis=1)
    for level, table in ((0.95, T_975), (0.90, T_95)):
        ci = stats.hierarchical_mean(x, student, teacher, seed, level=level, seed=n)
        half = table[n - 1] * means.std(ddof=1) / np.sqrt(n)
        assert (ci.estimate, ci.lo, ci.hi) == pytest.approx((means.mean(), means.mean() - half, means.mean() + half),
                                                          rel=1e-6)
        assert (ci.n, ci.method) == (n, f"t over {n} student means")
        assert stats.hierarchical_mean(x, student, teacher, seed, level=level, seed=n + 1) == ci  # no resampling
    x5, student5, teacher5, seed5 = _balanced(5, 3, 2, np.random.default_rng(5))
    assert stats.hierarchical_mean(x5, student5, teacher5, seed5).method.startswith("bootstrap over 5 students")


def test_one_student_and_no_rows():
    one = stats.hierarchical_mean([1.0, 2.0, 6.0], ["s", "s", "s"], ["t1", "t1", "t2"], [0, 1, 0])
    assert one.estimate == pytest.approx(3.75) and np.isnan(one.lo) and np.isnan(one.hi) and one.n == 1
    assert one.format() == "3.75" and "no interval" in one.method
    assert np.isnan(stats.hierarchical_mean([], []).estimate)
    assert np.isnan(stats.hierarchical_mean([np.nan, np.nan], ["a", "b"]).estimate)


def test_hierarchical_mean_drops_nan_rows_with_their_labels():
    x, student, teacher, seed = _balanced(6, 3, 2, np.random.default_rng(4))
    x = x.copy()
    x[[0, 6, 7]] = np.nan  # one seed of s0|t0, and a whole pair, s1|t0 (both seeds)
    x[student == "s5"] = np.nan  # and a whole student
    keep = ~np.isnan(x)
    ci = stats.hierarchical_mean(x, student, teacher, seed)
    assert ci == stats.hierarchical_mean(x[keep], student[keep], teacher[keep], seed[keep])
    assert ci.n == 5 and np.isfinite(ci.lo) and np.isfinite(ci.hi)
    pair_means = [np.mean(x[keep & (student == s) & (teacher == t)]) for s in np.unique(student[keep])
                  for t in np.unique(teacher[keep & (student == s)])]
    assert len(pair_means) == 14 and ci.estimate == pytest.approx(np.mean(pair_means))


def test_hierarchical_mean_is_seeded():
    x, student, teacher, seed = _balanced(8, 4, 3, np.random.default_rng(2))
    a = stats.hierarchical_mean(x, student, teacher, seed, seed=7)
    assert a == stats.hierarchical_mean(x, student, teacher, seed, seed=7)
    b = stats.hierarchical_mean(x, student, teacher, seed, seed=8)
    assert b.estimate == a.estimate and (b.lo, b.hi) != (a.lo, a.hi)
    assert stats.hierarchical_mean(x, student, teacher, seed, level=0.5).width < a.width


def test_hierarchical_mean_rejects_bad_input():
    with pytest.raises(ValueError):
        stats.hierarchical_mean([1.0, 2.0], ["a"])
    with pytest.raises(ValueError):
        stats.hierarchical_mean([1.0, 2.0], ["a", "b"], pairs=["t"])
    with pytest.raises(ValueError):  # the same run twice
        stats.hierarchical_mean([1.0, 2.0, 3.0], ["a", "a", "b"], ["t", "t", "t"], [0, 0, 0])
    with pytest.raises(ValueError):  # two teachers of one student without pair labels: seeds repeat
        stats.hierarchical_mean([1.0, 2.0, 3.0], ["a", "a", "b"], seeds=[0, 0, 0])
    with pytest.raises(ValueError):
        stats.hierarchical_mean([1.0, 2.0], ["a", "b"], level=95)


def test_hierarchical_paired_diff():
    x, student, teacher, seed = _balanced(6, 3, 2, np.random.default_rng(6))
    a, b = x + 0.3, x.copy()
    a[3], b[10] = np.nan, np.nan
    d = stats.hierarchical_paired_diff(a, b, student, teacher, seed)
    assert d == stats.hierarchical_mean(a - b, student, teacher, seed)
    assert d.estimate == pytest.approx(0.3) and d.width == pytest.approx(0, abs=1e-12)  # the same shift everywhere
    noisy = stats.hierarchical_paired_diff(x + 0.3 + np.random.default_rng(0).normal(0, 1, x.size), x, student,
                                           teacher, seed)
    assert noisy.width > 0.5 and noisy.n == 6
    with pytest.raises(ValueError):
        stats.hierarchical_paired_diff([1.0, 2.0], [1.0], ["a", "b"])


def test_seed_sd_pools_within_unit_variance():
    units = ["u1", "u1", "u1", "u2", "u2", "u2", "u3"]
    x = [1.0, 2.0, 3.0, 2.0, 6.0, np.nan, 5.0]  # u1: variance 1 on 2 df; u2: 8 on 1 df; u3: one seed
    assert stats.seed_sd(x, units) == pytest.approx(np.sqrt((2 * 1 + 1 * 8) / 3))
    assert stats.seed_sd(x, units, seeds=[0, 1, 2, 0, 1, 2, 0]) == pytest.approx(np.sqrt(10 / 3))
    assert np.isnan(stats.seed_sd([1.0, 2.0, np.nan], ["a", "b", "b"]))  # no unit with two seeds
    assert np.isnan(stats.seed_sd([], []))
    with pytest.raises(ValueError):
        stats.seed_sd([1.0, 2.0], ["a", "a"], seeds=[0, 0])
    with pytest.raises(ValueError):
        stats.seed_sd([1.0, 2.0], ["a"])
    # recovers the seed noise, whatever the spread between units
    rng = np.random.default_rng(0)
    unit = np.repeat(np.arange(300), 3)
    x = rng.normal(0, 5, 300)[unit] + rng.normal(0, 0.5, unit.size)
    assert stats.seed_sd(x, unit) == pytest.approx(0.5, rel=0.1)


def test_t_quantile():
    for df, q in T_975.items():
        assert stats.t_quantile(0.975, df) == pytest.approx(q, abs=1e-6)
        assert stats.t_quantile(0.025, df) == pytest.approx(-q, abs=1e-6)
    for df, q in T_95.items():
        assert stats.t_quantile(0.95, df) == pytest.approx(q, abs=1e-6)
    assert stats.t_quantile(0.5, 4) == 0
    assert stats.t_quantile(0.975, 10_000) == pytest.approx(Z_975, abs=1e-3)
    for bad in ((0.0, 3), (1.0, 3), (0.9, 0), (0.9, 2.5)):
        with pytest.raises(ValueError):
            stats.t_quantile(*bad)


def test_t_quantile_matches_scipy():
    from scipy.stats import t

    for df in [*range(1, 40), 57, 120, 999]:
        for p in (0.6, 0.9, 0.95, 0.975, 0.995, 0.9995, 0.01):
            assert stats.t_quantile(p, df) == pytest.approx(t.ppf(p, df), rel=1e-9)


def test_ci_method_defaults_to_bootstrap():
    assert stats.CI(1.0, 0.0, 2.0, 3).method == "bootstrap"
    assert stats.bootstrap_mean([1.0, 2.0, 3.0]).method == "bootstrap"


def test_correlation_ratio_against_its_definition():
    rng = np.random.default_rng(5)
    g = np.array(["a"] * 10 + ["b"] * 15 + ["c"] * 5)
    y = rng.normal(size=30) + (g == "b") * 2.0
    ci = stats.bootstrap_eta(g, y, n_boot=300)
    means = {k: y[g == k].mean() for k in "abc"}
    between = sum((g == k).sum() * (means[k] - y.mean()) ** 2 for k in "abc")
    assert ci.estimate == pytest.approx(np.sqrt(between / ((y - y.mean()) ** 2).sum()))
    assert 0 <= ci.lo <= ci.estimate <= ci.hi <= 1 and ci.n == 30
    two = g != "c"  # two groups: the absolute point-biserial correlation
    r = np.corrcoef((g[two] == "b").astype(float), y[two])[0, 1]
    assert stats.bootstrap_eta(g[two], y[two], n_boot=50).estimate == pytest.approx(abs(r))
    assert np.isnan(stats.bootstrap_eta(["a"] * 5, y[:5]).estimate)  # one group explains nothing to compare
    assert stats.bootstrap_eta(g, y, n_boot=300) == ci  # seeded
