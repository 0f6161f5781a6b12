"""The default digits zoo's shipped weights are what their recipes make, rebuilt here with the portable arithmetic
(zoo/portable.py), which rounds the same on every x86-64 processor. Rebuilding all nine models takes 27 minutes
on 2 cores (`make digits-weights-check` does it); the suite checks the two halves of that claim in about 4
minutes: every model's first epochs give the very bits recorded when the shipped weights were built (the
recipe, the data, the initialisation and the arithmetic are the same), and the model quickest to rebuild,
trained whole, reaches its shipped digits:eval accuracy within 0.5 points (the stopping rule and the
evaluation are the same)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from zoo_sweep.zoo.build_shipped import check_one, decode_images, describe, shipped_info
from zoo_sweep.zoo.digits import recipes

FIRST_EPOCHS = 2


@pytest.fixture(scope="module")
def rebuilt(tmp_path_factory):
    """Both checks at once on two workers, each build in a one-thread process of its own: the whole rebuild
    (about 3 minutes) on one, the nine short ones on the other."""
    cache = str(tmp_path_factory.mktemp("zoo"))
    decode_images(cache)
    todo = recipes("default")
    quickest = min(todo, key=lambda r: shipped_info(r)["seconds"])
    with ThreadPoolExecutor(2) as pool:
        whole = pool.submit(check_one, quickest, cache)
        first = [pool.submit(check_one, r, cache, FIRST_EPOCHS) for r in todo]
        return whole.result(), [f.result() for f in first]


@pytest.mark.timeout(1800)  # about 4 minutes on 2 idle cores; the suite's 900 s per test is for everything else
def test_every_shipped_model_retraces_its_first_epochs_bit_for_bit(rebuilt):
    _, first = rebuilt
    assert len(first) == len(recipes("default"))
    off = [describe(c) for c in first if not c["ok"]]
    assert not off, f"rebuilt epochs differ from the shipped build's: {off}"


@pytest.mark.timeout(1800)
def test_the_quickest_shipped_model_rebuilt_whole_gives_its_accuracy(rebuilt):
    whole, _ = rebuilt
    shipped, got = whole["eval_accuracy"]
    assert abs(got - shipped) <= 0.5, describe(whole)
    assert whole["epochs"] == whole["recorded_epochs"], describe(whole)  # stopped where the shipped build did


def test_portable_training_gives_the_same_bits_whatever_kernels_the_processor_offers(tmp_path, monkeypatch):
    """One machine cannot be another processor, but MKL can be told to use only SSE4.2: with the portable
    arithmetic the weights are the same bits either way (each build runs in its own interpreter)."""
    import dataclasses

    from zoo_sweep.zoo import portable
    from zoo_sweep.zoo.digits import state_digest, train_portably

    assert portable.call("zoo_sweep.zoo.portable:active") and not portable.active()
    recipe = dataclasses.replace(recipes("micro")[0], epochs=1)  # a CNN: convolutions, BatchNorm, a linear head

    def digest() -> str:
        state, info = train_portably(recipe, str(tmp_path), 16)
        assert info["portable"]
        return state_digest(state)

    first = digest()
    monkeypatch.setenv("MKL_ENABLE_INSTRUCTIONS", "SSE4_2")
    assert digest() == first
