"""predicted_gain: ranks unrun pairs better than chance where the truth is known, says when it cannot, and
falls back to top_ck (most rho_pos first)."""

import numpy as np
import pandas as pd
import pytest

from zoo_sweep.science.gains import (
    finished_pairs,
    heldout_rank_correlation,
    pair_features,
    rank_pairs,
)
from zoo_sweep.science.stats import spearman

FAMILIES = ("cnn", "transformer", "mlp")


def zoo(n=14, seed=0):
    """A synthetic zoo whose true transfer delta depends on the accuracy gap, the student's accuracy and
    family, and (weakly) rho_pos, plus noise."""
    rng = np.random.default_rng(seed)
    names = [f"m{i:02d}" for i in range(n)]
    models = pd.DataFrame({"name": names, "family": [FAMILIES[i % 3] for i in range(n)],
                           "params": (10 ** rng.uniform(4, 8, n)).astype(int), "accuracy": rng.uniform(55, 95, n)})
    acc = models.set_index("name")["accuracy"]
    fam = models.set_index("name")["family"]
    rows = [{"eval_set": "e", "student": s, "teacher": t, "acc_student": acc[s], "acc_teacher": acc[t],
             "acc_gap": acc[t] - acc[s], "rho_pos": rng.uniform(2, 25), "rho_neg": rng.uniform(2, 25),
             "flip_entropy": rng.uniform(1, 2.3)} for s in names for t in names if s != t]
    pairs = pd.DataFrame(rows)
    truth = (0.12 * pairs["acc_gap"] - 0.05 * (pairs["acc_student"] - 75) + 0.04 * pairs["rho_pos"]
             + pairs["student"].map(fam).map({"cnn": 0.8, "transformer": 0.0, "mlp": -0.8}))
    return pairs, models, truth.to_numpy()


def results_for(pairs, truth, idx, method="kl_dp", noise=0.3, seed=1):
    rng = np.random.default_rng(seed)
    run = pairs.iloc[idx]
    return pd.DataFrame({"student": run["student"].to_numpy(), "teacher": run["teacher"].to_numpy(),
                         "method": method, "final": True, "seed": 0,
                         "delta": truth[idx] + rng.normal(0, noise, len(idx))})


def test_predicted_gain_ranks_better_than_random():
    pairs, models, truth = zoo()
    rng = np.random.default_rng(0)
    idx = rng.choice(len(pairs), 60, replace=False)
    res = results_for(pairs, truth, idx)
    ranked = rank_pairs(pairs, models, res, "kl_dp")
    assert ranked.attrs["policy"] == "predicted_gain" and ranked.attrs["n_train"] == 60
    assert (ranked["policy"] == "predicted_gain").all()
    assert len(ranked) == len(pairs) - 60 and list(ranked["rank"]) == list(range(1, len(ranked) + 1))
    # never proposes a pair that already ran
    done = set(zip(res["student"], res["teacher"]))
    assert not done & set(zip(ranked["student"], ranked["teacher"]))
    assert ranked["predicted_delta"].is_monotonic_decreasing
    true = pd.Series(truth, index=pd.MultiIndex.from_frame(pairs[["student", "teacher"]]))
    got = true.loc[list(zip(ranked["student"], ranked["teacher"]))].to_numpy()
    assert spearman(ranked["predicted_delta"], got) > 0.7
    # the 10 pairs it would run next are far better than 10 random unrun pairs on average
    random_top = np.mean([rng.choice(got, 10, replace=False).mean() for _ in range(200)])
    assert got[:10].mean() > random_top + 1.0
    # and better than ranking by complementary knowledge alone (top_ck)
    top_ck = true.loc[list(zip(*ranked.sort_values("rho_pos", ascending=False)[["student", "teacher"]].
                               head(10).to_numpy().T))].mean()
    assert got[:10].mean() > top_ck


def test_heldout_rank_correlation():
    pairs, models, truth = zoo()
    idx = np.random.default_rng(2).choice(len(pairs), 80, replace=False)
    h = heldout_rank_correlation(pairs, models, results_for(pairs, truth, idx), "kl_dp", repeats=10)
    assert h.n_pairs == 80 and h.n_test == 24 and h.repeats == 10
    assert h.spearman > 0.6 and h.spearman > h.top_ck_spearman
    assert h.spearman_lo <= h.spearman <= h.spearman_hi
    assert len(h.predictions) == 10 * 24
    # the same inputs give the same answer
    again = heldout_rank_correlation(pairs, models, results_for(pairs, truth, idx), "kl_dp", repeats=10)
    assert again.spearman == h.spearman
    gbm = heldout_rank_correlation(pairs, models, results_for(pairs, truth, idx), "kl_dp", repeats=3, model="gbm")
    assert gbm.spearman > 0.3


def test_without_finished_results_it_says_so_and_falls_back_to_top_ck():
    pairs, models, _ = zoo(6)
    for res in (pd.DataFrame(), pd.DataFrame(columns=["student", "teacher", "method", "delta"])):
        ranked = rank_pairs(pairs, models, res, "kl_dp")
        assert ranked.attrs["policy"] == "top_ck" and "no finished kl_dp" in ranked.attrs["note"]
        assert ranked["rho_pos"].is_monotonic_decreasing and ranked["predicted_delta"].isna().all()
        assert len(ranked) == len(pairs)
    # results of another method do not count
    other = results_for(pairs, np.zeros(len(pairs)), np.arange(20), method="kl")
    assert rank_pairs(pairs, models, other, "kl_dp").attrs["policy"] == "top_ck"
    few = rank_pairs(pairs, models, results_for(pairs, np.arange(len(pairs), dtype=float), np.arange(3)), "kl_dp")
    assert few.attrs["policy"] == "top_ck" and "only 3 finished" in few.attrs["note"] and len(few) == len(pairs) - 3
    h = heldout_rank_correlation(pairs, models, pd.DataFrame(), "kl_dp")
    assert np.isnan(h.spearman) and "too few" in h.note


def test_finished_pairs_averages_seeds_and_skips_multi_teacher_and_other_epochs():
    """Multi-teacher rows are told by their multi_teacher flag (the store's job_teachers), not by the name:
    a single teacher whose name contains "+" is a pair like any other."""
    res = pd.DataFrame([
        {"job_id": "1", "student": "a", "teacher": "b", "method": "m", "final": True, "delta": 1.0, "multi_teacher": 0},
        {"job_id": "2", "student": "a", "teacher": "b", "method": "m", "final": True, "delta": 3.0,
         "multi_teacher": 0},  # second seed
        {"job_id": "1", "student": "a", "teacher": "b", "method": "m", "final": False, "delta": 99.0,
         "multi_teacher": 0},  # an earlier epoch
        {"job_id": "3", "student": "a", "teacher": "b+c", "method": "m", "final": True, "delta": 5.0,
         "multi_teacher": 1},
        {"job_id": "4", "student": "a", "teacher": "vit+b", "method": "m", "final": True, "delta": 4.0,
         "multi_teacher": 0},  # one teacher, "+" in its name
        {"job_id": "5", "student": "b", "teacher": "a", "method": "other", "final": True, "delta": 5.0,
         "multi_teacher": 0},
    ])
    got = finished_pairs(res, "m")
    assert got.to_dict("records") == [{"student": "a", "teacher": "b", "delta": 2.0},
                                      {"student": "a", "teacher": "vit+b", "delta": 4.0}]
    with pytest.raises(ValueError, match="multi_teacher"):  # stored rows without the flag: refused, not guessed
        finished_pairs(res.drop(columns="multi_teacher"), "m")


def test_finished_pairs_with_no_delta_yet():
    """Rows whose delta is NULL in every row come back from SQL as objects: no finished pairs, no error."""
    res = pd.DataFrame([{"student": "a", "teacher": "b", "method": "m", "final": True, "delta": None}] * 2)
    assert res["delta"].dtype == object
    assert finished_pairs(res, "m").empty


def test_missing_sizes_and_unknown_families_are_tolerated():
    pairs, models, truth = zoo(8)
    models.loc[0, "params"] = None
    models.loc[1, "family"] = "hybrid"  # a family the rest of the zoo lacks
    idx = np.arange(0, len(pairs), 2)
    ranked = rank_pairs(pairs.drop(columns="flip_entropy"), models, results_for(pairs, truth, idx), "kl_dp")
    assert ranked.attrs["policy"] == "predicted_gain" and ranked["predicted_delta"].notna().all()


def test_features_built_once_serve_every_method():
    pairs, models, truth = zoo(8)
    feats = pair_features(pairs, models)
    before = feats.copy()
    for method, idx in (("kl", np.arange(0, len(pairs), 2)), ("kl_dp", np.arange(1, len(pairs), 3))):
        res = results_for(pairs, truth, idx, method=method)
        pd.testing.assert_frame_equal(rank_pairs(pairs, models, res, method, features=feats),
                                      rank_pairs(pairs, models, res, method))
        shared = heldout_rank_correlation(pairs, models, res, method, repeats=3, features=feats)
        own = heldout_rank_correlation(pairs, models, res, method, repeats=3)
        assert shared.as_row() == own.as_row() and np.isfinite(shared.spearman)
        pd.testing.assert_frame_equal(shared.predictions, own.predictions)
    pd.testing.assert_frame_equal(feats, before)  # shared between methods, so never changed in place
