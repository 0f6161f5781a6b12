"""Image sets by reference, without decoding anything and without torch: their content keys, sizes, class
counts, file lists and subsets, for planning and dry runs.

An image set is referenced by a string: ``digits:eval`` / ``digits:transfer`` (scikit-learn's bundled
handwritten digits, split by source image) or ``imagefolder:/path`` (the ImageNet layout), optionally narrowed
to a class-stratified subset (``[data] eval_subset`` / ``transfer_subset``, a fraction or a count, drawn with
``subset_seed``).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from zoo_sweep.errors import UserError
from zoo_sweep.ids import content_id

DIGITS_VERSION = 4  # bump when the digits split or distortions change: it is part of every cache key
DIGITS_SOURCES = 1797  # scikit-learn's bundled digits
# Shares of the source images, in the order they are taken from one seeded permutation: eval first (the
# measurement), then val (held out for the embedded zoo's early stopping), then transfer (the rest: the
# zoo's training data, and the images transfer jobs train on).
DIGITS_SPLITS = {"eval": 0.4, "val": 0.1, "transfer": None}
DIGITS_VARIANTS = {"eval": 3, "val": 3, "transfer": 5}  # distorted copies per source image (the first undistorted)
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".JPEG")
SUBSET_SEED = 1234  # the paper's random_state for its 10 % split of ImageNet train


def image_set_key(ref: str, image_size: int, class_map: str | None = None, subset: float | int | None = None,
                  subset_seed: int = SUBSET_SEED) -> str:
    """Content key of a decoded set: changes when anything that changes its pixels or its samples changes.
    A set without a subset keeps the key it had before subsets existed, so its caches and records stay valid."""
    kind, _, arg = ref.partition(":")
    ident: dict = {"ref": ref, "size": image_size, "class_map": class_map}
    if kind == "digits":
        ident["digits_version"] = DIGITS_VERSION
        n, k = count_images(ref, image_size), 10
    else:
        root = Path(arg)
        files = sorted(str(p.relative_to(root)) for p in image_files(root)) if root.is_dir() else []
        ident["files"] = content_id(files)
        n, k = len(files), sum(1 for p in root.iterdir() if p.is_dir()) if files else 0
    if subset is not None:
        if n:  # a set not reachable from here (a dry run elsewhere) is checked where it is decoded
            check_subset(n, k, subset, ref)
        ident.update(subset=subset, subset_seed=subset_seed)
    return content_id(ident)


def check_subset(n: int, k: int, subset: float | int, where: str) -> None:
    """A stratified subset of ``n`` images in ``k`` classes needs at least one image per class on both sides of
    the split: caught when the plan is made, not in a worker."""
    m = subset_size(n, subset)
    if m < k or n - m < k:
        raise UserError(f"{where}: a subset of {subset!r} is {m} of its {n} images, but a stratified subset needs "
                        f"at least one per class ({k} classes) in it and outside it")


def set_args(data, role: str) -> dict:
    """The arguments that name one set of a [data] section (``role``: "eval" or "transfer"), for
    ``image_set_key``, ``count_images`` and ``load_image_set`` alike."""
    return {"ref": getattr(data, role), "image_size": data.image_size, "class_map": data.class_map,
            "subset": getattr(data, f"{role}_subset"), "subset_seed": data.subset_seed}


def subset_fields(data) -> dict:
    """The subset keys a job payload carries: only those set, so payloads (and the checkpoint folders named by
    their hash) of sweeps without subsets stay as they were."""
    out = {k: getattr(data, k) for k in ("eval_subset", "transfer_subset") if getattr(data, k) is not None}
    if out:
        out["subset_seed"] = data.subset_seed
    return out


def subset_size(n: int, subset: float | int | None) -> int:
    """Samples in a subset of ``n``, by scikit-learn's rule for ``test_size`` (a fraction rounds up)."""
    if subset is None:
        return n
    return min(n, math.ceil(subset * n) if isinstance(subset, float) else subset)


def subset_positions(labels: np.ndarray, subset: float | int, seed: int = SUBSET_SEED,
                     where: str = "image set") -> np.ndarray:
    """Sorted positions of a class-stratified subset of a set whose samples have ``labels``: the test part of
    ``StratifiedShuffleSplit(n_splits=1, test_size=subset, random_state=seed)`` (the paper's 10 % split of
    ImageNet train is ``subset=0.1, seed=1234`` over the sorted ImageFolder file list)."""
    from sklearn.model_selection import StratifiedShuffleSplit

    labels = np.asarray(labels)
    if isinstance(subset, int) and subset >= len(labels):
        raise UserError(f"{where}: a subset of {subset} needs more than the {len(labels)} images there are")
    try:
        split = StratifiedShuffleSplit(n_splits=1, test_size=subset, random_state=seed)
        _, test = next(split.split(np.zeros(len(labels)), labels))
    except ValueError as e:  # too few per class, or fewer subset samples than classes
        raise UserError(f"{where}: cannot draw a stratified subset of {subset!r}: {e}") from None
    return np.sort(test)


def digits_sources(split: str) -> np.ndarray:
    """The source-image indices (into scikit-learn's digits) of one digits split, sorted; splits never share one."""
    order = np.random.default_rng(1234).permutation(DIGITS_SOURCES)
    start = 0
    for name, share in DIGITS_SPLITS.items():
        n = DIGITS_SOURCES - start if share is None else int(round(share * DIGITS_SOURCES))
        if name == split:
            return np.sort(order[start:start + n])
        start += n
    raise UserError(f"digits has the splits {', '.join(map(repr, DIGITS_SPLITS))}, not {split!r}")


def count_images(ref: str, image_size: int, class_map: str | None = None, subset: float | int | None = None,
                 subset_seed: int = SUBSET_SEED) -> int:
    """Number of samples without decoding anything (for estimates and dry runs)."""
    kind, _, arg = ref.partition(":")
    if kind == "digits":
        n = len(digits_sources(arg)) * DIGITS_VARIANTS[arg]
    else:
        root = Path(arg)
        n = sum(1 for _ in image_files(root)) if root.is_dir() else 0
    return subset_size(n, subset)


def image_files(root: Path):
    for dirpath, _, files in os.walk(root):
        for f in files:
            if f.endswith(IMG_EXTENSIONS) or f.lower().endswith(IMG_EXTENSIONS):
                yield Path(dirpath) / f


def folder_items(root: Path, class_map: str | None) -> tuple[list[str], list[Path], np.ndarray]:
    """(classes, files, labels) of an ImageFolder tree (one sub-folder per class): class folders in sorted order
    and, within each, its files sorted. This is the order of torchvision's ImageFolder, the order a subset
    is drawn from, and the order of the decoded set."""
    if not root.is_dir():
        raise UserError(f"image folder not found: {root}")
    folders = class_folders(root)
    if class_map:
        classes = [line.strip() for line in Path(class_map).read_text().splitlines() if line.strip()]
        missing = sorted(set(folders) - set(classes))
        if missing:
            raise UserError(f"{root} has class folders not in {class_map}: {', '.join(missing[:5])}")
    else:
        classes = folders  # sorted names: the torchvision ImageFolder order, and the ImageNet synset order
    if not folders:
        raise UserError(f"{root} has no class sub-folders (expected ROOT/CLASS/IMAGE files)")
    index = {c: i for i, c in enumerate(classes)}
    files: list[Path] = []
    labels: list[int] = []
    for cls in folders:
        found = sorted(image_files(root / cls))
        files += found
        labels += [index[cls]] * len(found)
    return classes, files, np.asarray(labels, dtype=np.int64)


def num_classes_of(ref: str, class_map: str | None) -> int:
    kind, _, arg = ref.partition(":")
    if kind == "digits":
        return 10
    if class_map:
        if not Path(class_map).is_file():
            raise UserError(f"class map not found: {class_map}")
        return sum(1 for line in Path(class_map).read_text().splitlines() if line.strip())
    root = Path(arg)
    if not root.is_dir():
        raise UserError(f"image folder not found: {root}")
    k = sum(1 for p in root.iterdir() if p.is_dir())
    if k == 0:
        raise UserError(f"{root} has no class sub-folders (expected ROOT/CLASS/IMAGE files)")
    if not any(True for _ in image_files(root)):
        raise UserError(f"no images under {root} (looked for {', '.join(sorted(set(IMG_EXTENSIONS)))})")
    return k


def class_folders(root: Path) -> list[str]:
    """The class folders of an ImageFolder tree, sorted: the torchvision ImageFolder order of its classes."""
    return sorted(p.name for p in root.iterdir() if p.is_dir())


def check_same_classes(eval_ref: str, transfer_ref: str, class_map: str | None = None) -> None:
    """Refuse a transfer set whose classes are not the eval set's, before anything is planned. A label is a class
    position: without a class map each set numbers its own sorted class folders, so a renamed class shifts every
    later label (a student silently taught the wrong classes) and an extra class is a label past the models'
    heads (a failed job). With a class map, which fixes every class's position, each class folder of either set
    must be in it. A set not reachable from here (a dry run elsewhere) is checked where it is decoded."""
    if class_map:
        if not Path(class_map).is_file():
            raise UserError(f"class map not found: {class_map}")
        known = {line.strip() for line in Path(class_map).read_text().splitlines() if line.strip()}
        for role, ref in (("eval", eval_ref), ("transfer", transfer_ref)):
            found = _classes(ref)
            extra = sorted(set(found or ()) - known) if ref.startswith("imagefolder:") else []
            if extra:
                raise UserError(f"the {role} set {ref} has class folders not in the class map {class_map}: "
                                f"{_names(extra)}; add them to the map or remove them from the set")
        return
    if eval_ref == transfer_ref:
        return
    ev, tr = _classes(eval_ref), _classes(transfer_ref)
    if ev is None or tr is None or ev == tr:
        return
    only_tr, only_ev = sorted(set(tr) - set(ev)), sorted(set(ev) - set(tr))
    raise UserError(f"the transfer set {transfer_ref} and the eval set {eval_ref} have different classes "
                    f"(only in the transfer set: {_names(only_tr)}; only in the eval set: {_names(only_ev)}): "
                    "give both the same class folders, or list every class in [data] class_map")


def _classes(ref: str) -> list[str] | None:
    """A set's class names as its labels number them (digits: "0".."9"); None when its folder is not here."""
    kind, _, arg = ref.partition(":")
    if kind == "digits":
        return [str(i) for i in range(10)]
    root = Path(arg)
    return class_folders(root) if root.is_dir() else None


def _names(names: list[str], most: int = 5) -> str:
    if not names:
        return "none"
    shown = ", ".join(repr(n) for n in names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")
