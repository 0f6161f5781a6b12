"""Pair policies: all, stratified, top_ck and explicit choose the pairs the spec asks for, reproducibly."""

import itertools

import pandas as pd
import pytest

from zoo_sweep.config.spec import PairSpec, parse_spec
from zoo_sweep.errors import UserError
from zoo_sweep.pipeline.select import needs_measurement, select_pairs

NAMES = ["cnn1", "cnn2", "vit1", "vit2", "mlp1"]
FAMILY = {"cnn1": "cnn", "cnn2": "cnn", "vit1": "transformer", "vit2": "transformer", "mlp1": "mlp"}
ACC = {"cnn1": 90, "cnn2": 80, "vit1": 85, "vit2": 70, "mlp1": 60}


def _pairs():
    rows = [{"student": s, "teacher": t, "acc_gap": ACC[t] - ACC[s], "rho_pos": (ACC[t] * 7 + ACC[s] * 3) % 23}
            for s, t in itertools.permutations(NAMES, 2)]
    return pd.DataFrame(rows).sample(frac=1, random_state=3)  # order of rows must not matter


def test_all_keeps_every_pair_and_caps_reproducibly():
    assert len(select_pairs(_pairs(), FAMILY, PairSpec())) == 20
    a = select_pairs(_pairs(), FAMILY, PairSpec(max_pairs=7, seed=1))
    assert len(a) == 7 and a == select_pairs(_pairs(), FAMILY, PairSpec(max_pairs=7, seed=1))


def test_stratified_covers_every_bin_and_family_combination():
    df = _pairs()
    chosen = select_pairs(df, FAMILY, PairSpec(policy="stratified", per_bin=1, gap_bins=(-100, 0, 100)))
    cells = {(FAMILY[s] + ">" + FAMILY[t], ACC[t] - ACC[s] > 0) for s, t in chosen}
    every = {(FAMILY[s] + ">" + FAMILY[t], ACC[t] - ACC[s] > 0) for s, t in itertools.permutations(NAMES, 2)}
    assert cells == every and len(chosen) == len(every)  # one pair per non-empty cell


def test_top_ck_takes_the_most_complementary_knowledge():
    df = _pairs()
    chosen = select_pairs(df, FAMILY, PairSpec(policy="top_ck", max_pairs=4))
    top = df.sort_values("rho_pos", ascending=False)["rho_pos"].iloc[3]
    picked = df.set_index(["student", "teacher"]).loc[chosen, "rho_pos"]
    assert len(chosen) == 4 and (picked >= top).all()


def test_explicit_grid():
    chosen = select_pairs(_pairs(), FAMILY, PairSpec(policy="explicit", students=("cnn*",), teachers=("vit1", "cnn1")))
    assert sorted(chosen) == [("cnn1", "vit1"), ("cnn2", "cnn1"), ("cnn2", "vit1")]
    assert not needs_measurement(PairSpec(policy="explicit", students=("a",), teachers=("b",)))
    assert needs_measurement(PairSpec(policy="top_ck", max_pairs=3))


@pytest.mark.parametrize("pairs, msg", [({"policy": "top_ck"}, "needs max_pairs"),
                                        ({"policy": "explicit", "students": ["a"]}, "needs students"),
                                        ({"max_pairs": 0}, "max_pairs must be >= 1")])
def test_policy_errors(pairs, msg):
    with pytest.raises(UserError, match=msg):
        parse_spec({"name": "x", "pairs": pairs})


def test_predicted_gain_without_history_falls_back_to_top_ck():
    df = _pairs()
    spec = PairSpec(policy="predicted_gain", max_pairs=4)
    assert needs_measurement(spec)
    chosen = select_pairs(df.assign(rho_neg=1.0), FAMILY, spec, (pd.DataFrame(), pd.DataFrame(), "kl_dp"))
    assert chosen == select_pairs(df, FAMILY, PairSpec(policy="top_ck", max_pairs=4))
