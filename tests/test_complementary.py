"""Every pair metric against a brute-force per-pair, per-sample reference (METRICS.md definitions)."""

import math

import numpy as np
import pytest
import torch

from zoo_sweep.complementary import concentration, pair_matrices, pairs_frame


def brute_force(preds, labels, pmax, k):
    m, n = preds.shape
    out = {}
    for s in range(m):
        for t in range(m):
            pos = neg = agree = oracle = ens = 0
            per_class = [0] * k
            for x in range(n):
                sr, tr = preds[s, x] == labels[x], preds[t, x] == labels[x]
                if not sr and tr:
                    pos += 1
                    per_class[labels[x]] += 1
                neg += sr and not tr
                agree += preds[s, x] == preds[t, x]
                oracle += sr or tr
                ens += sr if pmax[s, x] >= pmax[t, x] else tr
            total = sum(per_class)
            probs = [c / total for c in per_class if c] if total else []
            entropy = -sum(p * math.log(p) for p in probs)
            tops = {}
            for q in (2, 5, 20, 50):
                if total == 0:
                    tops[q] = 0
                    continue
                acc, cnt = 0, 0
                for c in sorted(per_class, reverse=True):
                    acc += c
                    cnt += 1
                    if acc / total >= q / 100 - 1e-12:
                        break
                tops[q] = cnt
            out[s, t] = dict(rho_pos=100 * pos / n, rho_neg=100 * neg / n, agreement=100 * agree / n,
                             oracle_acc=100 * oracle / n, ensemble_acc=100 * ens / n, flip_entropy=entropy,
                             **{f"top{q}_classes": v for q, v in tops.items()})
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_pair_matrices_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    m, n, k = 5, 300, 7
    labels = rng.integers(0, k, n)
    # models right with different probabilities, so accuracies and flips differ
    preds = np.where(rng.random((m, n)) < rng.uniform(0.4, 0.9, (m, 1)), labels, rng.integers(0, k, (m, n)))
    pmax = rng.random((m, n)).astype(np.float32)
    mats = pair_matrices(torch.as_tensor(preds), torch.as_tensor(labels), torch.as_tensor(pmax), k,
                         chunk_bytes=1)  # forces one student row per chunk: the chunked path is tested too
    ref = brute_force(preds, labels, pmax, k)
    for (s, t), r in ref.items():
        for key, val in r.items():
            assert float(mats[key][s, t]) == pytest.approx(val, abs=1e-9), (key, s, t)
    acc = (preds == labels).mean(axis=1) * 100
    assert np.allclose(mats["acc_gap"].numpy(), acc[None, :] - acc[:, None])


def test_pairs_frame_has_every_ordered_pair_once():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, 50)
    preds = rng.integers(0, 4, (4, 50))
    df = pairs_frame(["a", "b", "c", "d"], preds, labels, rng.random((4, 50)), 4)
    assert len(df) == 12
    assert not (df["student"] == df["teacher"]).any()
    assert len(df.drop_duplicates(["student", "teacher"])) == 12
    # rho_pos(s, t) is rho_neg(t, s)
    back = df.set_index(["student", "teacher"])
    for (s, t), row in back.iterrows():
        assert row["rho_pos"] == pytest.approx(back.loc[(t, s), "rho_neg"])


def test_concentration_of_uniform_and_single_class_flips():
    counts = torch.tensor([[10.0, 10, 10, 10], [0, 0, 8, 0], [0, 0, 0, 0]])
    c = concentration(counts)
    assert c["flip_entropy"][0].item() == pytest.approx(math.log(4))
    assert c["flip_entropy"][1].item() == pytest.approx(0.0)
    assert c["top50_classes"].tolist() == [2, 1, 0]
    assert c["top2_classes"].tolist() == [1, 1, 0]
