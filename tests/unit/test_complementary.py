"""Every pair metric against a brute-force per-pair, per-sample reference (docs/methods.md definitions)."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from zoo_sweep.science.complementary import concentration, pair_matrices, pairs_frame


@pytest.fixture(autouse=True, scope="module")
def _kernel_cache_in_tmp(tmp_path_factory):
    """The calibrated kernel choice is cached under $ZOO_SWEEP_HOME: a temporary one here, not ~/.cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ZOO_SWEEP_HOME", str(tmp_path_factory.mktemp("home")))
        yield


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
            # the paper's convention: the authors' loop as written (distillation/flip_study.py,
            # get_top_p_percent_classes), float shares and all
            flips = np.asarray(per_class, dtype=np.float64)
            sorted_classes = np.argsort(flips)[::-1]
            paper = {}
            for q in (2, 5, 20, 50):
                share, k_val = 0, 1
                while share < q:
                    with np.errstate(invalid="ignore"):  # a pair without flips: 0 / 0
                        share = np.sum(flips[sorted_classes[:k_val]]) / np.sum(flips) * 100
                    k_val += 1
                paper[q] = k_val
            out[s, t] = dict(rho_pos=100 * pos / n, rho_neg=100 * neg / n, agreement=100 * agree / n,
                             oracle_acc=100 * oracle / n, ensemble_acc=100 * ens / n, flip_entropy=entropy,
                             **{f"top{q}_classes": v for q, v in tops.items()},
                             **{f"top{q}_classes_paper": v for q, v in paper.items()})
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


# ---------------------------------------------------------------- zoo-scale formulations
from zoo_sweep.science.complementary import (  # noqa: E402
    DEFAULT_METRICS,
    class_concentration,
    concentration_from_hist,
    dominance_counts,
    same_wrong_counts,
)


def _records(seed, m, n, k, ties=False, skew=False, confusers=True):
    """Models right with different probabilities; wrong guesses concentrated on a few classes per sample."""
    rng = np.random.default_rng(seed)
    if skew:  # one class far larger than 256 samples (bf16 chunking) and many small ones
        labels = np.concatenate([np.zeros(300, int), rng.integers(1, k, n - 300)])
        rng.shuffle(labels)
    else:
        labels = rng.integers(0, k, n)
    wrong_pool = rng.integers(0, k, (n, 3)) if confusers else None
    right = rng.random((m, n)) < rng.uniform(0.3, 0.9, (m, 1))
    if confusers:
        guess = wrong_pool[np.arange(n)[None, :], rng.integers(0, 3, (m, n))]
    else:
        guess = rng.integers(0, k, (m, n))
    preds = np.where(right, labels, guess)
    pmax = rng.random((m, n)).astype(np.float32)
    if ties:
        pmax = np.round(pmax * 4) / 4  # five distinct values: many exact ties between models
    return preds, labels, pmax.astype(np.float32)


@pytest.mark.parametrize("case", [dict(seed=4, m=6, n=500, k=70),  # > 64 classes: histogram path
                                  dict(seed=5, m=5, n=420, k=70, skew=True),  # a class of 300: chunked products
                                  dict(seed=6, m=6, n=300, k=5, ties=True),  # ties in pmax: student wins
                                  dict(seed=7, m=4, n=200, k=3, confusers=False)])
def test_pair_matrices_match_brute_force_on_every_path(case):
    preds, labels, pmax = _records(**case)
    k = case["k"]
    mats = pair_matrices(torch.as_tensor(preds), torch.as_tensor(labels), torch.as_tensor(pmax), k)
    ref = brute_force(preds, labels, pmax, k)
    for (s, t), r in ref.items():
        for key, val in r.items():
            assert float(mats[key][s, t]) == pytest.approx(val, abs=1e-9), (key, s, t)


@pytest.mark.parametrize("span,workers", [(1, 1), (7, 2), (400, 1)])
def test_same_wrong_counts_over_blocks_and_workers(span, workers):
    preds, labels, _ = _records(8, m=7, n=400, k=6)
    wrong = preds != labels
    sw = same_wrong_counts(torch.as_tensor(preds), torch.as_tensor(labels), 6, span=span, workers=workers).numpy()
    for s in range(7):
        for t in range(7):
            if s != t:
                assert sw[s, t] == int((wrong[s] & wrong[t] & (preds[s] == preds[t])).sum())


def test_same_wrong_counts_without_groups_and_with_any_integer_type():
    """All right, or every wrong guess alone in its class: no table row at all. int32 and int64 records
    give the same counts; one model has no pair."""
    labels = np.array([0, 1, 2, 3])
    right = np.tile(labels, (3, 1))
    assert not same_wrong_counts(torch.as_tensor(right), torch.as_tensor(labels), 4).any()
    alone = np.array([[1, 1, 2, 3], [2, 1, 2, 3], [3, 1, 2, 3]])  # sample 0: three different wrong classes
    assert not same_wrong_counts(torch.as_tensor(alone), torch.as_tensor(labels), 4).any()
    preds, labels, _ = _records(12, m=5, n=90, k=4)
    a = same_wrong_counts(torch.as_tensor(preds).int(), torch.as_tensor(labels).int(), 4, span=16)
    b = same_wrong_counts(torch.as_tensor(preds).long(), torch.as_tensor(labels).long(), 4, span=16)
    assert torch.equal(a, b) and a.sum() > 0
    one = same_wrong_counts(torch.as_tensor(preds[:1]), torch.as_tensor(labels), 4)  # no pair to count
    assert one.shape == (1, 1) and int(one) == 0


@pytest.mark.parametrize("span", [1, 5, 400])
@pytest.mark.parametrize("ties", [False, True])
def test_dominance_counts_over_blocks(span, ties):
    preds, labels, pmax = _records(9, m=6, n=400, k=4, ties=ties)
    right = preds == labels
    ge, gt = dominance_counts(torch.as_tensor(right), torch.as_tensor(pmax), span=span)
    for s in range(6):
        for t in range(6):
            mask = right[s] & ~right[t]
            assert ge[s, t] == int((mask & (pmax[s] >= pmax[t])).sum())
            assert gt[s, t] == int((mask & (pmax[s] > pmax[t])).sum())


def test_histogram_and_sorted_concentration_agree():
    rng = np.random.default_rng(10)
    counts = torch.as_tensor(rng.integers(0, 6, (40, 90)) * (rng.random((40, 90)) < 0.3))
    counts[0] = 0  # a pair without flips
    counts[1] = 0
    counts[1, 7] = 5  # all flips in one class
    hist = torch.stack([torch.bincount(c, minlength=6) for c in counts])
    a, b = concentration(counts), concentration_from_hist(hist)
    assert torch.allclose(a["flip_entropy"], b["flip_entropy"], atol=1e-12)
    assert a.keys() == b.keys()
    for key in a.keys() - {"flip_entropy"}:
        assert torch.equal(a[key].long(), b[key].long()), key
    assert a["top2_classes_paper"][:2].tolist() == [2, 2]  # no flips: the authors' loop stops at 2; one class: 1 + 1


def test_class_concentration_is_independent_of_chunking():
    preds, labels, _ = _records(11, m=9, n=700, k=80)
    right = torch.as_tensor(preds == labels)
    whole = class_concentration(right, torch.as_tensor(labels), 80)
    rows = class_concentration(right, torch.as_tensor(labels), 80, chunk_bytes=1)
    for key in whole:
        assert torch.equal(whole[key], rows[key]), key


def test_metric_groups_can_be_left_out():
    preds, labels, pmax = _records(12, m=4, n=100, k=5)
    full = pair_matrices(torch.as_tensor(preds), torch.as_tensor(labels), torch.as_tensor(pmax), 5)
    timings = {}
    core = pair_matrices(torch.as_tensor(preds), torch.as_tensor(labels), torch.as_tensor(pmax), 5,
                         metrics=(), timings=timings)
    assert set(timings) == {"flips"}
    for key in ("rho_pos", "rho_neg", "oracle_acc", "acc_gap"):
        assert torch.equal(core[key], full[key])
    for key in ("agreement", "ensemble_acc", "flip_entropy", "top50_classes", "top50_classes_paper"):
        assert torch.isnan(core[key]).all()
    df = pairs_frame(list("abcd"), preds, labels, pmax, 5, metrics=("agreement",))
    assert df["ensemble_acc"].isna().all() and df["agreement"].notna().all()
    assert set(DEFAULT_METRICS) == {"flips", "agreement", "ensemble", "classes"}
    with pytest.raises(ValueError, match="unknown metric"):
        pair_matrices(torch.as_tensor(preds), torch.as_tensor(labels), torch.as_tensor(pmax), 5, metrics=("nope",))


def test_per_class_and_flip_count_helpers():
    from zoo_sweep.science.complementary import flip_counts, per_class_flips

    preds, labels, _ = _records(13, m=4, n=150, k=6)
    right = torch.as_tensor(preds == labels)
    pk = per_class_flips(right, torch.as_tensor(labels), 6, slice(1, 3)).numpy()
    pos = flip_counts(right).numpy()
    for s in (1, 2):
        for t in range(4):
            flips = ~right[s].numpy() & right[t].numpy()
            assert pos[s, t] == flips.sum()
            for k in range(6):
                assert pk[s - 1, t, k] == (flips & (labels == k)).sum()


# ---------------------------------------------------------------- the fast paths (exactness)
def _dominance_brute(right, pmax):
    r, w = right[:, None, :], ~right[None, :, :]
    ge = (r & w & (pmax[:, None, :] >= pmax[None, :, :])).sum(-1)
    gt = (r & w & (pmax[:, None, :] > pmax[None, :, :])).sum(-1)
    return ge, gt


def _pmax(rng, m, n, pattern):
    pmax = rng.random((m, n)).astype(np.float32)
    if pattern == "ties":
        pmax = (np.round(pmax * 3) / 3).astype(np.float32)
    elif pattern == "one_value":
        pmax[:] = 0.5
        pmax[:, ::7] = rng.random((m, len(range(0, n, 7)))).astype(np.float32)
    elif pattern == "signed":
        pmax = (np.round(pmax * 6) / 3 - 1).astype(np.float32)  # -1 .. 1 with many zeros
        zeros = pmax == 0
        pmax[zeros & (rng.random((m, n)) < 0.5)] = -0.0
    return pmax


@pytest.mark.parametrize("accuracy", [(0.2, 0.5), (0.5, 0.95)])  # wrongs gather / rights gather (roles flip)
@pytest.mark.parametrize("span,workers", [(16, 1), (37, 2), (90, 1)])
@pytest.mark.parametrize("pattern", ["random", "ties", "one_value", "signed"])
def test_dominance_counts_match_brute_force_on_wide_zoos(accuracy, span, workers, pattern):
    """Many models (long confidence orders with many right/wrong runs; table rows padded per group of 32
    samples), several sample blocks shared by worker threads, ties in pmax (mixed tie groups of every size,
    a sample where all but a few models tie), negative values and -0.0 against +0.0."""
    rng = np.random.default_rng(20 + span)
    m, n = 70, 90
    right = rng.random((m, n)) < rng.uniform(*accuracy, (m, 1))
    pmax = _pmax(rng, m, n, pattern)
    ge, gt = dominance_counts(torch.as_tensor(right), torch.as_tensor(pmax), span=span, workers=workers)
    ref_ge, ref_gt = _dominance_brute(right, pmax)
    assert np.array_equal(ge.numpy(), ref_ge) and np.array_equal(gt.numpy(), ref_gt)


def test_dominance_counts_on_degenerate_blocks():
    """A block with no wrong entry, one with no right entry, a single model, a single sample."""
    rng = np.random.default_rng(30)
    right = np.ones((5, 12), bool)
    right[:, 6:] = False
    pmax = rng.random((5, 12)).astype(np.float32)
    for r, p, span in [(right, pmax, 6), (right[:1], pmax[:1], 4), (right[:, :1], pmax[:, :1], 1)]:
        ge, gt = dominance_counts(torch.as_tensor(r), torch.as_tensor(p), span=span)
        ref_ge, ref_gt = _dominance_brute(r, p)
        assert np.array_equal(ge.numpy(), ref_ge) and np.array_equal(gt.numpy(), ref_gt)


@pytest.mark.parametrize("span,workers", [(None, 1), (3, 2), (64, 1)])
def test_same_wrong_counts_with_many_groups(span, workers):
    """Groups of 2 to many models, several per sample, blocks smaller than the data."""
    rng = np.random.default_rng(41)
    m, n, k = 60, 300, 9
    labels = rng.integers(0, k, n)
    preds = np.where(rng.random((m, n)) < 0.4, labels, rng.integers(0, k, (m, n)))
    wrong = preds != labels
    sw = same_wrong_counts(torch.as_tensor(preds), torch.as_tensor(labels), k, span=span, workers=workers).numpy()
    both = wrong[:, None, :] & wrong[None, :, :] & (preds[:, None, :] == preds[None, :, :])
    ref = both.sum(-1)
    off = ~np.eye(m, dtype=bool)
    assert np.array_equal(sw[off], ref[off])


def test_half_precision_row_sums_give_the_same_counts(monkeypatch):
    """The float16 embedding-bag path (what CUDA and torch builds without FBGEMM's byte kernel use), run here
    on the CPU through the same code."""
    import zoo_sweep.science.kernels as kernels

    monkeypatch.setattr(kernels, "_BYTE_OK", [False])
    assert kernels.BagTable(4).dtype == torch.float16
    rng = np.random.default_rng(42)
    m, n, k = 40, 200, 5
    labels = rng.integers(0, k, n)
    preds = np.where(rng.random((m, n)) < 0.6, labels, rng.integers(0, k, (m, n)))
    right = preds == labels
    pmax = _pmax(rng, m, n, "ties")
    ge, gt = dominance_counts(torch.as_tensor(right), torch.as_tensor(pmax), span=50)
    ref_ge, ref_gt = _dominance_brute(right, pmax)
    assert np.array_equal(ge.numpy(), ref_ge) and np.array_equal(gt.numpy(), ref_gt)
    sw = same_wrong_counts(torch.as_tensor(preds), torch.as_tensor(labels), k, span=50).numpy()
    wrong = ~right
    ref = (wrong[:, None, :] & wrong[None, :, :] & (preds[:, None, :] == preds[None, :, :])).sum(-1)
    off = ~np.eye(m, dtype=bool)
    assert np.array_equal(sw[off], ref[off])


@pytest.mark.parametrize("kernel", ["fp32", "bf16"])
@pytest.mark.parametrize("threads", [1, 2])
def test_class_concentration_in_chunks_and_histogram_slices(monkeypatch, kernel, threads):
    """Product chunks of 6 student rows (the last one short), histograms of 2 rows at a time inside each,
    the histogram offsets added by the product itself (fp32) or afterwards (bf16)."""
    import zoo_sweep.science.classes as classes

    monkeypatch.setattr(classes, "_HIST_BYTES", 2 * 50 * 20 * 8)
    preds, labels, _ = _records(43, m=50, n=700, k=70)
    right = torch.as_tensor(preds == labels)
    per_row = 50 * 70 * (4 if kernel == "fp32" else 2)
    got = class_concentration(right, torch.as_tensor(labels), 70, chunk_bytes=per_row * threads * 7,
                              threads=threads, k=kernel)
    flips = (~right.numpy())[:, None, :] & right.numpy()[None, :, :]
    counts = torch.as_tensor(np.stack([(flips & (labels == c)).sum(-1) for c in range(70)], -1))
    ref = concentration(counts)
    for key in ref:
        assert torch.allclose(got[key].double(), ref[key].double(), atol=1e-12), key


@pytest.mark.parametrize("threads", [1, 2])
def test_class_concentration_threads_and_unequal_classes(threads):
    preds, labels, _ = _records(42, m=12, n=900, k=90)
    right = torch.as_tensor(preds == labels)
    whole = class_concentration(right, torch.as_tensor(labels), 90, threads=threads)
    rows = class_concentration(right, torch.as_tensor(labels), 90, chunk_bytes=1, threads=threads)
    counts = torch.stack([torch.as_tensor(((~(preds[s] == labels)) & (preds[t] == labels))[None, :]
                                          & (labels[None, :] == np.arange(90)[:, None])).sum(-1)
                          for s in range(12) for t in range(12)]).view(12, 12, 90)
    ref = concentration(counts)
    for key in whole:
        assert torch.equal(whole[key], rows[key]), key
        assert torch.allclose(whole[key].double(), ref[key].double(), atol=1e-12), key


# ---------------------------------------------------------------- product kernels and where the compare runs
from zoo_sweep.errors import UserError  # noqa: E402
from zoo_sweep.science import kernels  # noqa: E402

_HERE = [name for name, k in kernels.KERNELS.items() if k.available()]


@pytest.mark.parametrize("name", list(kernels.KERNELS))
def test_every_kernel_gives_exact_products(name):
    """Each kernel available on this machine (the CUDA one only where a GPU is) against numpy, with inner
    sizes past the bf16 chunk of 256, batched and symmetric (block-triangle) products too."""
    if name not in _HERE:
        pytest.skip(f"kernel {name} is not available on this machine")
    rng = np.random.default_rng(50)
    a, b = rng.random((37, 700)) < 0.6, rng.random((700, 29)) < 0.5
    ref = a.astype(np.int64) @ b.astype(np.int64)
    assert np.array_equal(kernels.mm01(torch.as_tensor(a), torch.as_tensor(b), name).cpu().numpy(), ref)
    c = rng.random((300, 513)) < 0.5  # >= 256 rows: the block-triangle path
    g = kernels.gram01(torch.as_tensor(c), name, blocks=3)
    assert g.dtype == torch.int64 and np.array_equal(g.numpy(), c.astype(np.int64) @ c.T.astype(np.int64))
    x, y = rng.random((3, 8, 300)) < 0.5, rng.random((3, 300, 5)) < 0.5
    got = kernels.bmm01(torch.as_tensor(x), torch.as_tensor(y), name).cpu().numpy()
    assert np.array_equal(got, x.astype(np.int64) @ y.astype(np.int64))


@pytest.mark.parametrize("name", list(kernels.KERNELS))
def test_pair_matrices_identical_with_every_kernel(name):
    """Every kernel gives the brute-force reference, so identical matrices (equal-class and padded class
    blocks both)."""
    if name not in _HERE:
        pytest.skip(f"kernel {name} is not available on this machine")
    for case in (dict(seed=60, m=6, n=350, k=70), dict(seed=61, m=5, n=420, k=70, skew=True)):
        preds, labels, pmax = _records(**case)
        mats = pair_matrices(torch.as_tensor(preds), torch.as_tensor(labels), torch.as_tensor(pmax), case["k"],
                             kernel=name)
        ref = brute_force(preds, labels, pmax, case["k"])
        for (s, t), r in ref.items():
            for key, val in r.items():
                assert float(mats[key][s, t]) == pytest.approx(val, abs=1e-9), (name, key, s, t)
        base = pair_matrices(torch.as_tensor(preds), torch.as_tensor(labels), torch.as_tensor(pmax), case["k"],
                             kernel="fp32")
        for key in base:
            assert torch.equal(mats[key].nan_to_num(-1), base[key].nan_to_num(-1)), (name, key)


def test_kernel_forced_by_name_or_environment(monkeypatch):
    monkeypatch.setenv(kernels.ENV, "bf16")
    assert kernels.kernel().name == "bf16"
    assert kernels.kernel("fp32").name == "fp32"  # an explicit name wins over the environment
    monkeypatch.setenv(kernels.ENV, "fast")
    with pytest.raises(UserError, match="unknown matmul kernel 'fast'"):
        kernels.kernel()
    monkeypatch.delenv(kernels.ENV)
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="not available here"):
            kernels.kernel("cuda")
    threads = torch.get_num_threads()
    assert kernels.kernel("fp32").describe() == f"compare: fp32 GEMM kernel, {threads} threads"


def test_calibration_keeps_the_fastest_on_this_host(monkeypatch, tmp_path):
    """The contract on whatever kernels this host keeps (which ones survive the screen depends on its vector
    units: on AVX-512 VNNI int8 can leave fp32 behind, on AVX2 it is the one dropped): the fastest measured
    kernel is always among them, every time is positive, and the saved choice is the fastest saved time."""
    monkeypatch.delenv(kernels.ENV, raising=False)
    monkeypatch.setattr(kernels, "_CHOSEN", {})
    times = kernels.calibrate()
    assert times and set(times) <= set(kernels.CPU_KERNELS) and all(t > 0 for t in times.values())
    chosen = kernels.kernel(cache_dir=tmp_path).name
    saved = json.loads(kernels.cache_file(tmp_path).read_text())
    assert chosen == saved["kernel"] == min(saved["seconds"], key=saved["seconds"].get)


def test_calibration_screens_out_kernels_over_three_times_slower(monkeypatch):
    """The screen, on two stand-in kernels whose costs differ by a known factor of work (CPU time, so a busy
    or slow host scales both alike): the 20x slower one is never timed on the larger product."""
    timed = []

    def busy(name, repeats):
        def mm(a, b):
            timed.append((name, a.shape))
            for _ in range(repeats):
                torch.mm(a.float(), b.float())
            return torch.zeros(a.shape[0], b.shape[1], dtype=torch.int32)
        return kernels.Kernel(name, name, "cpu", torch.float32, mm, None, lambda: True)

    monkeypatch.setattr(kernels, "KERNELS", {"fast": busy("fast", 1), "slow": busy("slow", 20)})
    times = kernels.calibrate(kernels=("fast", "slow"), screen=(64, 512, 64), size=(128, 1024, 128))
    assert set(times) == {"fast"}
    assert {shape for name, shape in timed if name == "slow"} == {(64, 512)}  # timed on the screen only
    assert (128, 1024) in {shape for name, shape in timed if name == "fast"}


def test_calibration_is_cached_per_host_and_torch_version(monkeypatch, tmp_path):
    monkeypatch.delenv(kernels.ENV, raising=False)
    monkeypatch.setattr(kernels, "_CHOSEN", {})
    monkeypatch.setattr(kernels, "calibrate", lambda: {"bf16": 1.0, "fp32": 2.0})
    assert kernels.kernel(cache_dir=tmp_path).name == "bf16"
    saved = json.loads(kernels.cache_file(tmp_path).read_text())
    assert saved["kernel"] == "bf16" and saved["torch"] == torch.__version__
    assert kernels.cache_file(tmp_path).parent == tmp_path / "matmul"
    assert torch.__version__.replace("+", "_") in kernels.cache_file(tmp_path).name

    def must_not_run():
        raise AssertionError("calibrated again")

    monkeypatch.setattr(kernels, "calibrate", must_not_run)
    assert kernels.kernel(cache_dir=tmp_path).name == "bf16"  # once per process
    monkeypatch.setattr(kernels, "_CHOSEN", {})
    assert kernels.kernel(cache_dir=tmp_path).name == "bf16"  # a new process reads the cache
    monkeypatch.setattr(kernels, "_CHOSEN", {})
    kernels.cache_file(tmp_path).write_text("{not json")  # a damaged cache: measured again
    monkeypatch.setattr(kernels, "calibrate", lambda: {"fp32": 1.0})
    assert kernels.kernel(cache_dir=tmp_path).name == "fp32"
    monkeypatch.setattr(kernels, "_CHOSEN", {})
    monkeypatch.setattr(kernels.socket, "gethostname", lambda: "another-host")
    monkeypatch.setattr(kernels, "calibrate", lambda: {"int8": 1.0, "fp32": 2.0})
    assert kernels.kernel(cache_dir=tmp_path).name == "int8"  # another host measures for itself


def test_compare_job_on_a_worker_matches_the_driver(tmp_path):
    """The compare job as a GPU worker runs it (Worker._compare: the same function on the worker's device),
    here on the CPU (no GPU on the test machine: device "cpu"), against pairs_frame in the caller."""
    from zoo_sweep.pipeline.jobs import ComparePayload, Job
    from zoo_sweep.pipeline.worker import Worker, compare_pairs

    preds, labels, pmax = _records(62, m=5, n=300, k=70)
    names = list("abcde")
    inputs = {"preds": preds.astype(np.int32), "pmax": pmax, "labels": labels, "num_classes": 70}
    worker = Worker(str(tmp_path))
    worker.device = "cpu"
    res = worker.run(Job("c-test", ComparePayload("digits:eval", "key", names, [])), inputs)
    assert res.state == "done" and res.kernel.startswith("compare: ")
    direct = pairs_frame(names, preds, labels, pmax, 70)
    pd.testing.assert_frame_equal(res.pairs, direct)
    again = compare_pairs(names, {**inputs, "kernel": "bf16"}, "cpu", tmp_path)
    pd.testing.assert_frame_equal(again.pairs, direct)
    assert "bf16" in again.kernel


def test_each_metric_group_computes_exactly_its_declared_metrics():
    """A metric declared in pair_metrics without its group's function computing it (or the reverse) fails here,
    not as a missing column at a launch's end."""
    from zoo_sweep.science.complementary import GROUP_FUNCTIONS
    from zoo_sweep.science.pair_metrics import CLASS_COUNTS, PAIR_GROUPS, PAIR_METRICS, group_metrics

    preds, labels, pmax = _records(0, 4, 300, 7)
    assert list(GROUP_FUNCTIONS) == list(PAIR_GROUPS)
    every = pair_matrices(torch.as_tensor(preds), torch.as_tensor(labels), torch.as_tensor(pmax), 7)
    assert set(every) - {"both_right"} == set(PAIR_METRICS) | set(CLASS_COUNTS)
    for group in PAIR_GROUPS[1:]:  # each optional group alone: its metrics are computed, the others' NaN
        alone = pair_matrices(torch.as_tensor(preds), torch.as_tensor(labels), torch.as_tensor(pmax), 7,
                              metrics=(group,))
        for name in set(PAIR_METRICS) | set(CLASS_COUNTS):
            computed = not torch.isnan(alone[name]).all()
            assert computed == (name in group_metrics(group) or name in group_metrics("flips")), (group, name)
            if computed:
                assert torch.equal(alone[name], every[name])
