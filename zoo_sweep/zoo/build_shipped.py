"""Train the default digits zoo from its recipes and write the weights the package ships (``digits.SHIPPED``),
or check the shipped weights against a rebuild.

    python -m zoo_sweep.zoo.build_shipped [--workers N]                       (make digits-weights)
    python -m zoo_sweep.zoo.build_shipped --check [--epochs N] [--only NAME]  (make digits-weights-check)

Run the build after changing a default recipe, the digits split or timm's minor version (all part of the recipe
key): files whose key no longer matches are removed, so a stale shipped model is never installed. Each file's
sidecar records its digits:eval accuracy and its weights' digest after every epoch; ``--check`` rebuilds (all
epochs, or the first N) and compares with both, writing nothing.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from zoo_sweep.data.sets import DIGITS_VERSION
from zoo_sweep.zoo import portable
from zoo_sweep.zoo.digits import (
    SHIPPED,
    eval_accuracy,
    recipes,
    save_trained,
    state_digest,
    train_recipe,
    weights_path,
)
from zoo_sweep.zoo.weights import file_sha256

IMAGE_SIZE = 32  # the digits specs' image_size: shipped weights are for it alone (it is part of the key)
ACCURACY_POINTS = 0.5  # a whole rebuild's digits:eval accuracy may differ this much from the shipped one


def build_one(recipe, cache_dir: str, epochs: int | None = None) -> tuple[dict, dict]:
    """Train and evaluate one recipe (its first ``epochs`` only, unevaluated, when given: a check). Run it
    through ``portable.call`` (``build_portably``): weights built in any other arithmetic are refused."""
    state, info = train_recipe(recipe, cache_dir, IMAGE_SIZE, epochs)
    if not info["portable"]:
        raise RuntimeError("shipped weights must be built with the portable arithmetic: use build_portably")
    if epochs is not None:
        return state, info
    return state, {**info, "eval_accuracy": eval_accuracy(recipe, state, cache_dir, IMAGE_SIZE)}


def build_portably(recipe, cache_dir: str, epochs: int | None = None) -> tuple[dict, dict]:
    return portable.call("zoo_sweep.zoo.build_shipped:build_one", recipe, cache_dir, epochs)


def decode_images(cache_dir: str) -> None:
    """Decode the digits splits once, before parallel builds read them from ``cache_dir``."""
    from zoo_sweep.data.images import load_image_set

    for split in ("transfer", "val", "eval"):
        load_image_set(f"digits:{split}", IMAGE_SIZE, cache_dir, progress=False)


def shipped_info(recipe) -> dict:
    """The sidecar of the weights the package ships for ``recipe`` (whatever its key)."""
    return json.loads(next(SHIPPED.glob(f"{recipe.name}-*.json")).read_text())


def check_one(recipe, cache_dir: str, epochs: int | None = None) -> dict:
    """Rebuild ``recipe`` (all of it, or its first ``epochs``) and compare with what the package ships: how many
    leading epochs gave the same bits, and for a whole rebuild both digits:eval accuracies (``ok``: a partial
    rebuild the same bits throughout, a whole one within ``ACCURACY_POINTS``)."""
    shipped = shipped_info(recipe)
    _, info = build_portably(recipe, cache_dir, epochs)
    rebuilt, recorded = info["epoch_sha256"], shipped.get("epoch_sha256", [])
    same = next((i for i, (a, b) in enumerate(zip(rebuilt, recorded)) if a != b), min(len(rebuilt), len(recorded)))
    out = {"name": recipe.name, "epochs": len(rebuilt), "same_epochs": same, "recorded_epochs": len(recorded),
           "seconds": info["seconds"]}
    if epochs is None:
        out["eval_accuracy"] = (shipped["eval_accuracy"], info["eval_accuracy"])
        out["ok"] = abs(info["eval_accuracy"] - shipped["eval_accuracy"]) <= ACCURACY_POINTS
    else:
        out["ok"] = same == len(rebuilt) <= len(recorded)
    return out


def describe(check: dict) -> str:
    bits = (f"{check['same_epochs']} of {check['epochs']} epoch(s) the same bits" if check["recorded_epochs"]
            else "no per-epoch digests shipped")
    acc = ""
    if "eval_accuracy" in check:
        acc = ", digits:eval {:.2f} % shipped, {:.2f} % rebuilt".format(*check["eval_accuracy"])
    return f"{check['name']}: {'ok' if check['ok'] else 'DIFFERS'} ({bits}{acc}; {check['seconds']:.0f} s)"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2, help="models trained at once, one core each (default 2)")
    ap.add_argument("--recipe", default="default", help="recipe set (default: default)")
    ap.add_argument("--check", action="store_true", help="rebuild and compare with the shipped weights; write nothing")
    ap.add_argument("--epochs", type=int, help="with --check: only the first N epochs, compared bit for bit")
    ap.add_argument("--only", action="append", help="with --check: this model only (repeatable)")
    args = ap.parse_args(argv)
    todo = recipes(args.recipe)
    if args.check:
        raise SystemExit(check(todo, args.workers, args.epochs, args.only))
    SHIPPED.mkdir(exist_ok=True)
    keep = {weights_path(r, SHIPPED.parent, IMAGE_SIZE).name for r in todo}
    with tempfile.TemporaryDirectory() as cache, ThreadPoolExecutor(args.workers) as pool:
        decode_images(cache)
        futures = {r.name: (r, pool.submit(build_portably, r, cache)) for r in todo}
        for name, (r, fut) in futures.items():
            state, info = fut.result()
            path = save_trained(r, cache, IMAGE_SIZE, state, {**info, "digits_version": DIGITS_VERSION})
            ship(path, state)
            print(f"{name}: {info['eval_accuracy']:.2f} % on digits:eval, {info['epochs']} epochs "
                  f"(best {info.get('best_epoch')}, {info.get('stopped')}), {info['seconds']:.0f} s", flush=True)
    for p in SHIPPED.iterdir():
        if p.with_suffix(".pth").name not in keep:
            p.unlink()
    print(json.dumps(sorted(keep)))


def ship(built: Path, state: dict) -> None:
    """Copy a build's weights and sidecar into the package. Weights the same bits as the file already shipped
    leave that file as it is (a new save of them differs in its archive's names and serialization id), and the
    sidecar records its checksum."""
    import torch

    shipped = SHIPPED / built.name
    info = json.loads(built.with_suffix(".json").read_text())
    if shipped.is_file() and state_digest(torch.load(shipped, map_location="cpu", weights_only=True)) == \
            state_digest(state):
        info["sha256"] = file_sha256(shipped)
    else:
        shipped.write_bytes(built.read_bytes())
    shipped.with_suffix(".json").write_text(json.dumps(info, indent=1, default=str))


def check(todo, workers: int, epochs: int | None, only: list[str] | None) -> int:
    unknown = sorted(set(only or ()) - {r.name for r in todo})
    if unknown:
        print(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(r.name for r in todo)}")
        return 2
    todo = [r for r in todo if not only or r.name in only]
    with tempfile.TemporaryDirectory() as cache, ThreadPoolExecutor(workers) as pool:
        decode_images(cache)
        failed = 0
        for fut in [pool.submit(check_one, r, cache, epochs) for r in todo]:
            result = fut.result()
            print(describe(result), flush=True)
            failed += not result["ok"]
    return 1 if failed else 0


if __name__ == "__main__":
    main()
