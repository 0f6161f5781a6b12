"""The embedded default zoo: timm architectures at tiny sizes, trained locally on the digits transfer split.

Each model is a recipe (architecture, size overrides, data config, training recipe). The default zoo's
recipes train to a plateau on a validation split and vary in architecture, width, seed, input size,
augmentation and label smoothing, so that models make different mistakes without being undertrained: what
one knows and another lacks is then complementary knowledge, not missing training. The package ships their
weights (SHIPPED). A trained model is cached under ``CACHE/zoo/`` keyed by its own recipe, so changing one
recipe rebuilds one model. The recipe key names the weights in job ids (they do not exist yet when a sweep
is planned); the sha256 recorded beside each file when it is built guards it: a file that no longer matches
(truncated, altered) is rebuilt from its recipe before anything uses it.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from zoo_sweep.ids import content_id
from zoo_sweep.paths import write_atomic
from zoo_sweep.zoo import portable
from zoo_sweep.zoo.entry import ModelEntry, family_of

IMAGENET_NORM = dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
SHIPPED = Path(__file__).parent / "digits_weights"  # the default zoo's weights, built by zoo/build_shipped.py
HALF_NORM = dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


@dataclass(frozen=True)
class Recipe:
    name: str
    arch: str
    kwargs: dict
    input_size: int = 32
    norm: dict = field(default_factory=lambda: IMAGENET_NORM)
    crop_pct: float = 1.0
    interpolation: str = "bilinear"
    epochs: int = 4  # patience 0: the epochs of a one-cycle schedule; otherwise the cap
    # > 0: train to a plateau on digits:val (see train_recipe): the rate drops tenfold after this many epochs
    # without a better validation loss, and training stops at the plateau after `lr_drops` drops
    patience: int = 0
    lr_drops: int = 2
    lr: float = 2e-3
    batch_size: int = 128
    train_fraction: float = 1.0  # share of the transfer split's source images used for training
    label_smoothing: float = 0.0
    augment: bool = True
    seed: int = 0

    @property
    def data_cfg(self) -> dict:
        return {"input_size": (3, self.input_size, self.input_size), "crop_pct": self.crop_pct,
                "interpolation": self.interpolation, **{k: tuple(v) for k, v in self.norm.items()}}

    def model_kwargs(self) -> dict:
        kw = dict(self.kwargs)
        if self.arch.startswith(("vit", "deit", "tiny_")):
            kw["img_size"] = self.input_size
        return kw


def _r(name, arch, **kw) -> Recipe:
    fields = {f.name for f in dataclasses.fields(Recipe)}
    size = {k: v for k, v in kw.items() if k not in fields}
    return Recipe(name=name, arch=arch, kwargs=size, **{k: v for k, v in kw.items() if k in fields})


def _converged(name, arch, **kw) -> Recipe:
    return _r(name, arch, epochs=60, patience=3, **kw)


RECIPES: dict[str, list[Recipe]] = {
    # 9 models: 4 CNNs, 2 transformers, 3 MLPs, each trained to a plateau on digits:val (cap 60 epochs). They
    # differ by architecture, width, augmentation, label smoothing, input size and seed, never by truncated
    # training or less data: every one learns from the whole transfer split, as ImageNet zoos learn from all
    # of ImageNet. 27 minutes on 2 CPU cores; the package ships them (SHIPPED), so nobody waits.
    "default": [
        _converged("resnet_a", "resnet18", layers=(1, 1, 1, 1), channels=(16, 32, 64, 128), stem_width=16, seed=1),
        _converged("resnet_b", "resnet10t", channels=(16, 32, 48, 64), stem_width=16, label_smoothing=0.1, seed=2,
                   crop_pct=0.875, input_size=28),
        _converged("convnext_a", "convnext_atto", dims=(16, 32, 64, 128), depths=(1, 1, 2, 1), seed=3, lr=3e-3,
                   norm=HALF_NORM),
        _converged("densenet_a", "densenet121", growth_rate=8, block_config=(2, 2, 2, 2), seed=4, lr=4e-3,
                   augment=False),
        _converged("vit_a", "vit_tiny_patch16_224", patch_size=8, embed_dim=64, depth=3, num_heads=2, seed=5,
                   lr=4e-3, norm=HALF_NORM),
        _converged("vit_b", "vit_tiny_patch16_224", patch_size=6, embed_dim=64, depth=2, num_heads=2, input_size=24,
                   seed=6, lr=4e-3, label_smoothing=0.1),
        _converged("mixer_a", "tiny_mixer", patch_size=8, embed_dim=96, seed=7, norm=HALF_NORM),
        _converged("resmlp_a", "tiny_resmlp", patch_size=8, embed_dim=96, seed=8, lr=4e-3, augment=False),
        _converged("gmlp_a", "tiny_gmlp", patch_size=4, embed_dim=48, input_size=24, seed=9, lr=3e-3,
                   label_smoothing=0.1),
    ],
    # 3 models for the test suite: seconds to build, still three families and distinct mistakes.
    "micro": [
        _r("cnn_micro", "resnet10t", channels=(8, 16, 24, 32), stem_width=8, input_size=16, epochs=2,
           lr=5e-3, seed=1),
        _r("vit_micro", "vit_tiny_patch16_224", patch_size=4, embed_dim=32, depth=1, num_heads=2,
           input_size=16, epochs=5, lr=5e-3, seed=2, norm=HALF_NORM),
        _r("mlp_micro", "tiny_mixer", patch_size=4, embed_dim=32, num_blocks=1, input_size=16, epochs=3,
           lr=5e-3, seed=3),
    ],
}


def recipe_key(recipe: Recipe, image_size: int) -> str:
    from zoo_sweep.data.sets import DIGITS_VERSION

    timm_version = importlib.metadata.version("timm")  # not timm.__version__: keys need no torch import
    return content_id({"recipe": dataclasses.asdict(recipe), "image_size": image_size,
                       "digits": DIGITS_VERSION, "timm": timm_version.rsplit(".", 1)[0]})


def weights_path(recipe: Recipe, cache_dir: str | Path, image_size: int) -> Path:
    return Path(cache_dir) / "zoo" / f"{recipe.name}-{recipe_key(recipe, image_size)}.pth"


def recipes(recipe_set: str) -> list[Recipe]:
    from zoo_sweep.errors import UserError

    if recipe_set not in RECIPES:
        raise UserError(f"unknown digits recipe set {recipe_set!r}; known: {', '.join(RECIPES)}")
    return RECIPES[recipe_set]


def digits_entries(recipe_set: str, cache_dir: str | Path, image_size: int) -> list[ModelEntry]:
    return [ModelEntry(name=r.name, arch=r.arch, family=family_of(r.arch),
                       weights=str(weights_path(r, cache_dir, image_size)), kwargs=r.model_kwargs(),
                       data_cfg=r.data_cfg, num_classes=10, weights_key=recipe_key(r, image_size))
            for r in recipes(recipe_set)]


def missing_recipes(recipe_set: str, cache_dir: str | Path, image_size: int) -> list[Recipe]:
    return [r for r in recipes(recipe_set) if not weights_path(r, cache_dir, image_size).exists()]


def to_build(models: list[ModelEntry], recipe_set: str, cache_dir: str | Path,
             image_size: int) -> tuple[list[Recipe], int]:
    """The recipes behind ``models`` (the embedded-zoo entries among them) whose weights must be (re)built:
    missing, or not what was built (the file's sha256 differs from the one recorded when it was saved, or a
    file from before checksums is not whole). Such files are removed, so nothing loads them meanwhile.
    Also returns how many of ``models`` are embedded-zoo models."""
    from zoo_sweep.zoo.weights import HashCache, check_whole

    used = {m.weights for m in models}
    hashes = HashCache(cache_dir)
    todo, embedded = [], 0
    for r in recipes(recipe_set):
        path = weights_path(r, cache_dir, image_size)
        if str(path) not in used:
            continue
        embedded += 1
        if not path.exists():
            _install_shipped(path)
        if not path.exists() or not _intact(path, hashes, check_whole):
            path.unlink(missing_ok=True)
            path.with_suffix(".json").unlink(missing_ok=True)
            todo.append(r)
    hashes.save()
    return todo, embedded


def _install_shipped(path: Path) -> None:
    """Copy the weights the package ships for this recipe (same recipe key: same recipe, digits split, image
    size and timm minor version) into the cache, so a new user does not train them. Anything else is trained."""
    shipped = SHIPPED / path.name
    if not (shipped.is_file() and shipped.with_suffix(".json").is_file()):
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    for src, dst in ((shipped, path), (shipped.with_suffix(".json"), path.with_suffix(".json"))):
        write_atomic(dst, lambda tmp, src=src: shutil.copyfile(src, tmp))


def _intact(path: Path, hashes, check_whole) -> bool:
    info_path = path.with_suffix(".json")
    try:
        info = json.loads(info_path.read_text())
    except (OSError, ValueError):
        info = {}
    if info.get("sha256"):
        return hashes.get(path) == info["sha256"]
    if check_whole(path):  # built before checksums were recorded: trust it if whole, and record it now
        return False
    info["sha256"] = hashes.get(path)
    write_atomic(info_path, lambda tmp: tmp.write_text(json.dumps(info, indent=1, default=str)))
    return True


def train_recipe(recipe: Recipe, cache_dir: str, image_size: int, epochs: int | None = None) -> tuple[dict, dict]:
    """Train one zoo model from scratch; returns (state_dict, info). Plain CPU torch, no Ray. In this process's
    arithmetic; ``train_portably`` gives the weights any x86-64 processor rebuilds bit for bit. ``info
    ["epoch_sha256"]`` is the weights' digest after each epoch (``state_digest``), so a rebuild can be checked
    against a build epoch by epoch. ``epochs`` stops after that many (a rebuild check of the first ones)."""
    import timm
    import torch

    from zoo_sweep.data.images import load_image_set
    from zoo_sweep.zoo import tiny_archs  # noqa: F401  (registers the tiny MLP entrypoints)

    t0 = time.time()
    torch.manual_seed(recipe.seed)
    data = load_image_set("digits:transfer", image_size, cache_dir)
    sources = data.source_ids.unique()
    g = torch.Generator().manual_seed(recipe.seed)
    keep = sources[torch.randperm(len(sources), generator=g)[: max(1, int(recipe.train_fraction * len(sources)))]]
    idx = torch.nonzero(torch.isin(data.source_ids, keep)).flatten()
    model = timm.create_model(recipe.arch, num_classes=10, **recipe.model_kwargs())
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=0.05)
    cap = min(recipe.epochs, epochs or recipe.epochs)
    trail: list[str] = []
    if recipe.patience:
        val = load_image_set("digits:val", image_size, cache_dir)
        info = _train_to_plateau(model, opt, recipe, data, idx, g, val, cap, trail)
    else:
        steps = recipe.epochs * ((len(idx) + recipe.batch_size - 1) // recipe.batch_size)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, total_steps=steps, pct_start=0.15)
        for _ in range(cap):
            _epoch(model, opt, recipe, data, idx, g, sched)
            trail.append(state_digest(model.state_dict()))
        info = {"epochs": cap}
    info = {"recipe": dataclasses.asdict(recipe), "train_samples": len(idx), **info, "epoch_sha256": trail,
            "portable": portable.active(), "seconds": round(time.time() - t0, 1)}
    return model.state_dict(), info


def train_portably(recipe: Recipe, cache_dir: str, image_size: int, epochs: int | None = None) -> tuple[dict, dict]:
    """``train_recipe`` in a new interpreter with the portable arithmetic (zoo/portable.py)."""
    return portable.call("zoo_sweep.zoo.digits:train_recipe", recipe, str(cache_dir), image_size, epochs)


def state_digest(state: dict) -> str:
    """A short sha256 of a state dict's names and tensor bytes: equal digests, equal weights (the zoo's are
    float32 and int64 tensors, so ``numpy`` holds their exact bytes)."""
    import hashlib

    h = hashlib.sha256()
    for name, value in state.items():
        h.update(name.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _epoch(model, opt, recipe: Recipe, data, idx, g, sched=None) -> None:
    import torch
    import torch.nn.functional as F

    from zoo_sweep.data.images import augment, model_input

    model.train()
    for b in idx[torch.randperm(len(idx), generator=g)].split(recipe.batch_size):
        x = data.images[b]
        if recipe.augment:
            x = augment(x, g)
        loss = F.cross_entropy(model(model_input(x, recipe.data_cfg)), data.labels[b],
                               label_smoothing=recipe.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()


def _train_to_plateau(model, opt, recipe: Recipe, data, idx, g, val, cap: int, trail: list[str]) -> dict:
    """Train until the validation loss stops improving: after ``patience`` epochs without a lower loss on
    digits:val (source digits neither the eval split nor the transfer split has), the rate drops tenfold;
    at the next such plateau after ``lr_drops`` drops, or at the ``epochs`` cap, training stops and the
    weights of the best validation loss are kept. The first epoch warms the rate up linearly. ``cap`` is the
    recipe's cap or fewer (a rebuild check); each epoch's weights digest is appended to ``trail``."""
    import copy

    import torch
    import torch.nn.functional as F

    from zoo_sweep.data.images import model_input

    warmup = (len(idx) + recipe.batch_size - 1) // recipe.batch_size
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / warmup))
    best, best_state, best_epoch, waited, drops, stop = math.inf, None, 0, 0, 0, "cap"
    for epoch in range(1, cap + 1):
        _epoch(model, opt, recipe, data, idx, g, sched if epoch == 1 else None)
        trail.append(state_digest(model.state_dict()))
        model.eval()
        with torch.no_grad():
            logits = torch.cat([model(model_input(x, recipe.data_cfg)) for x in val.images.split(512)])
        loss, acc = F.cross_entropy(logits, val.labels).item(), (logits.argmax(1) == val.labels).float().mean().item()
        if loss < best:
            best, best_state, best_epoch, best_acc, waited = loss, copy.deepcopy(model.state_dict()), epoch, acc, 0
            continue
        waited += 1
        if waited < recipe.patience:
            continue
        if drops == recipe.lr_drops:
            stop = "plateau"
            break
        drops, waited = drops + 1, 0
        for group in opt.param_groups:
            group["lr"] *= 0.1
    model.load_state_dict(best_state)
    return {"epochs": epoch, "best_epoch": best_epoch, "stopped": stop, "lr_drops": drops,
            "val_loss": round(best, 4), "val_accuracy": round(100 * best_acc, 2)}


def save_trained(recipe: Recipe, cache_dir: str | Path, image_size: int, state: dict, info: dict) -> Path:
    import torch

    from zoo_sweep.zoo.weights import file_sha256

    path = weights_path(recipe, cache_dir, image_size)
    write_atomic(path, lambda tmp: torch.save(state, tmp))
    info = {**info, "sha256": file_sha256(path)}
    write_atomic(path.with_suffix(".json"), lambda tmp: tmp.write_text(json.dumps(info, indent=1, default=str)))
    return path


def eval_accuracy(recipe: Recipe, state: dict, cache_dir: str | Path, image_size: int) -> float:
    """Top-1 accuracy (%) of a trained recipe on digits:eval: what the shipped weights record, to compare with a
    rebuild."""
    import timm
    import torch

    from zoo_sweep.data.images import load_image_set, model_input
    from zoo_sweep.zoo import tiny_archs  # noqa: F401

    model = timm.create_model(recipe.arch, num_classes=10, **recipe.model_kwargs())
    model.load_state_dict(state)
    model.eval()
    data = load_image_set("digits:eval", image_size, cache_dir)
    with torch.no_grad():
        pred = torch.cat([model(model_input(x, recipe.data_cfg)).argmax(1) for x in data.images.split(512)])
    return round(100 * (pred == data.labels).float().mean().item(), 2)
