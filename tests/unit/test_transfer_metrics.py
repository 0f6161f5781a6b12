"""Transfer metrics against brute force, and the identity delta = gain - loss."""

import numpy as np
import pytest

from zoo_sweep.transfer.metrics import transfer_metrics


def test_transfer_metrics_match_brute_force():
    rng = np.random.default_rng(0)
    n = 400
    s0, sT, t = rng.random(n) < 0.7, rng.random(n) < 0.75, rng.random(n) < 0.6
    m = transfer_metrics(s0, sT, t)
    gain = sum(1 for i in range(n) if not s0[i] and sT[i]) * 100 / n
    loss = sum(1 for i in range(n) if s0[i] and not sT[i]) * 100 / n
    pos = [i for i in range(n) if not s0[i] and t[i]]
    neg = [i for i in range(n) if s0[i] and not t[i]]
    assert m["knowledge_gain"] == pytest.approx(gain)
    assert m["knowledge_loss"] == pytest.approx(loss)
    assert m["delta"] == pytest.approx(gain - loss)
    assert m["delta"] == pytest.approx((sT.mean() - s0.mean()) * 100)
    assert m["rho_pos_before"] == pytest.approx(len(pos) * 100 / n)
    assert m["rho_pos_after"] == pytest.approx(sum(1 for i in range(n) if not sT[i] and t[i]) * 100 / n)
    assert m["transfer_rate_sample"] == pytest.approx(100 * sum(sT[i] for i in pos) / len(pos))
    assert m["damage_rate"] == pytest.approx(100 * sum(not sT[i] for i in neg) / len(neg))


def test_rates_are_undefined_without_flips():
    same = np.array([True, False, True])
    m = transfer_metrics(same, same, same)
    assert np.isnan(m["transfer_rate_sample"]) and np.isnan(m["damage_rate"])
    assert m["delta"] == 0 and m["knowledge_gain"] == 0 and m["knowledge_loss"] == 0


def test_each_eval_group_computes_exactly_its_declared_metrics():
    from zoo_sweep.transfer.metrics import GROUP_FUNCTIONS, transfer_metrics
    from zoo_sweep.transfer.result_metrics import TRAINING_METRICS, TRANSFER_DECLARED, TRANSFER_METRICS

    rng = np.random.default_rng(0)
    s0, sT, t = (rng.random(500) < 0.7 for _ in range(3))
    labels = rng.integers(0, 10, 500)
    declared = {m.group for m in TRANSFER_DECLARED} - {"training"}  # the training loop fills those
    assert set(GROUP_FUNCTIONS) == declared
    for group, fn in GROUP_FUNCTIONS.items():
        assert set(fn(s0, sT, t, labels, 10)) == {m.name for m in TRANSFER_DECLARED if m.group == group}, group
    assert set(transfer_metrics(s0, sT, t, labels, 10)) == set(TRANSFER_METRICS) - set(TRAINING_METRICS)
