"""The default digits zoo's shipped weights are what their recipes make: every model, rebuilt from its recipe
here with the portable arithmetic (zoo/portable.py), reaches the digits:eval accuracy recorded beside its
shipped file within 0.5 points. That arithmetic rounds the same on every x86-64 processor, so the rebuild is
normally bit for bit; the test asks only for what a user needs, the same accuracies."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from zoo_sweep.data.images import load_image_set
from zoo_sweep.zoo.build_shipped import IMAGE_SIZE, build_portably
from zoo_sweep.zoo.digits import SHIPPED, recipes


@pytest.mark.timeout(3600)  # 27 minutes on 2 idle cores: the suite's 900 s per test is for everything else
def test_rebuilding_the_shipped_zoo_from_its_recipes_gives_the_same_accuracies(tmp_path):
    info = {r.name: json.loads(next(SHIPPED.glob(f"{r.name}-*.json")).read_text()) for r in recipes("default")}
    for split in ("transfer", "val", "eval"):  # decoded once, before the workers read them
        load_image_set(f"digits:{split}", IMAGE_SIZE, tmp_path, progress=False)
    # slowest first, so two workers finish together (49 minutes of CPU time in all: 27 on 2 cores)
    todo = sorted(recipes("default"), key=lambda r: -info[r.name]["seconds"])
    with ThreadPoolExecutor(2) as pool:  # each call trains in a process of its own, on one core
        rebuilt = {r.name: pool.submit(build_portably, r, str(tmp_path)) for r in todo}
        got = {name: fut.result()[1]["eval_accuracy"] for name, fut in rebuilt.items()}
    off = {n: (info[n]["eval_accuracy"], got[n]) for n in got if abs(got[n] - info[n]["eval_accuracy"]) > 0.5}
    assert not off, f"rebuilt accuracy more than 0.5 points from the shipped one (shipped, rebuilt): {off}"


def test_portable_training_gives_the_same_bits_whatever_kernels_the_processor_offers(tmp_path, monkeypatch):
    """One machine cannot be another processor, but MKL can be told to use only SSE4.2: with the portable
    arithmetic the weights are the same bits either way (each build runs in its own interpreter)."""
    import dataclasses
    import hashlib

    from zoo_sweep.zoo import portable
    from zoo_sweep.zoo.digits import train_portably

    assert portable.call("zoo_sweep.zoo.portable:active") and not portable.active()
    recipe = dataclasses.replace(recipes("micro")[0], epochs=1)  # a CNN: convolutions, BatchNorm, a linear head

    def digest() -> str:
        state, info = train_portably(recipe, str(tmp_path), 16)
        assert info["portable"]
        return hashlib.sha256(b"".join(v.numpy().tobytes() for v in state.values())).hexdigest()

    first = digest()
    monkeypatch.setenv("MKL_ENABLE_INSTRUCTIONS", "SSE4_2")
    assert digest() == first
