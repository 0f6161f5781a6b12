"""Train the default digits zoo from its recipes and write the weights the package ships (``digits.SHIPPED``).

    python -m zoo_sweep.zoo.build_shipped [--workers N]     (make digits-weights)

Run it after changing a default recipe, the digits split or timm's minor version (all part of the recipe key):
files whose key no longer matches are removed, so a stale shipped model is never installed. Each file's
sidecar records its digits:eval accuracy, which the test suite's rebuild compares with.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from concurrent.futures import ThreadPoolExecutor

from zoo_sweep.data.sets import DIGITS_VERSION
from zoo_sweep.zoo import portable
from zoo_sweep.zoo.digits import (
    SHIPPED,
    eval_accuracy,
    recipes,
    save_trained,
    train_recipe,
    weights_path,
)

IMAGE_SIZE = 32  # the digits specs' image_size: shipped weights are for it alone (it is part of the key)


def build_one(recipe, cache_dir: str) -> tuple[dict, dict]:
    """Train and evaluate one recipe. Run it through ``portable.call`` (``build_portably``): weights built in any
    other arithmetic are refused."""
    state, info = train_recipe(recipe, cache_dir, IMAGE_SIZE)
    if not info["portable"]:
        raise RuntimeError("shipped weights must be built with the portable arithmetic: use build_portably")
    return state, {**info, "eval_accuracy": eval_accuracy(recipe, state, cache_dir, IMAGE_SIZE)}


def build_portably(recipe, cache_dir: str) -> tuple[dict, dict]:
    return portable.call("zoo_sweep.zoo.build_shipped:build_one", recipe, cache_dir)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2, help="models trained at once, one core each (default 2)")
    ap.add_argument("--recipe", default="default", help="recipe set (default: default)")
    args = ap.parse_args(argv)
    todo = recipes(args.recipe)
    SHIPPED.mkdir(exist_ok=True)
    keep = {weights_path(r, SHIPPED.parent, IMAGE_SIZE).name for r in todo}
    with tempfile.TemporaryDirectory() as cache, ThreadPoolExecutor(args.workers) as pool:
        futures = {r.name: (r, pool.submit(build_portably, r, cache)) for r in todo}
        for name, (r, fut) in futures.items():
            state, info = fut.result()
            path = save_trained(r, cache, IMAGE_SIZE, state, {**info, "digits_version": DIGITS_VERSION})
            for src in (path, path.with_suffix(".json")):
                (SHIPPED / src.name).write_bytes(src.read_bytes())
            print(f"{name}: {info['eval_accuracy']:.2f} % on digits:eval, {info['epochs']} epochs "
                  f"(best {info.get('best_epoch')}, {info.get('stopped')}), {info['seconds']:.0f} s", flush=True)
    for p in SHIPPED.iterdir():
        if p.with_suffix(".pth").name not in keep:
            p.unlink()
    print(json.dumps(sorted(keep)))


if __name__ == "__main__":
    main()
