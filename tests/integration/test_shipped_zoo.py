"""The default digits zoo's shipped weights are what their recipes make: every model, rebuilt from its recipe
here, reaches the digits:eval accuracy recorded beside its shipped file within 0.5 points. Another processor
rounds differently, and training to a plateau amplifies that a little, so equality is not asked for."""

from __future__ import annotations

import json
import multiprocessing
from concurrent.futures import ProcessPoolExecutor

from zoo_sweep.data.images import load_image_set
from zoo_sweep.zoo.build_shipped import IMAGE_SIZE, build_one
from zoo_sweep.zoo.digits import SHIPPED, recipes


def test_rebuilding_the_shipped_zoo_from_its_recipes_gives_the_same_accuracies(tmp_path):
    todo = recipes("default")
    shipped = {r.name: json.loads(next(SHIPPED.glob(f"{r.name}-*.json")).read_text())["eval_accuracy"]
               for r in todo}
    for split in ("transfer", "val", "eval"):  # decoded once, before the workers read them
        load_image_set(f"digits:{split}", IMAGE_SIZE, tmp_path, progress=False)
    # slowest first, so two workers finish together (about 10 minutes of CPU time in all)
    todo.sort(key=lambda r: -json.loads(next(SHIPPED.glob(f"{r.name}-*.json")).read_text())["seconds"])
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        rebuilt = {r.name: pool.submit(build_one, r, str(tmp_path)) for r in todo}
        got = {name: fut.result()[1]["eval_accuracy"] for name, fut in rebuilt.items()}
    off = {n: (shipped[n], got[n]) for n in got if abs(got[n] - shipped[n]) > 0.5}
    assert not off, f"rebuilt accuracy more than 0.5 points from the shipped one (shipped, rebuilt): {off}"
