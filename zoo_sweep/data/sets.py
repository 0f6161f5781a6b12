"""Image sets by reference, without decoding anything and without torch: their content keys, sizes and
class counts, for planning and dry runs.

An image set is referenced by a string: ``digits:eval`` / ``digits:transfer`` (scikit-learn's bundled
handwritten digits, split by source image) or ``imagefolder:/path`` (the ImageNet val layout).
"""

from __future__ import annotations

import os
from pathlib import Path

from zoo_sweep.errors import UserError
from zoo_sweep.ids import content_id

DIGITS_VERSION = 2  # bump when the digits split or distortions change: it is part of every cache key
DIGITS_SOURCES = 1797  # scikit-learn's bundled digits
DIGITS_EVAL_SHARE = 0.4  # of the source images; the rest is the transfer split
DIGITS_VARIANTS = {"eval": 3, "transfer": 5}  # distorted copies per source image (the first undistorted)
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".JPEG")


def image_set_key(ref: str, image_size: int, class_map: str | None = None) -> str:
    """Content key of a decoded set: changes when anything that changes its pixels changes."""
    kind, _, arg = ref.partition(":")
    ident: dict = {"ref": ref, "size": image_size, "class_map": class_map}
    if kind == "digits":
        ident["digits_version"] = DIGITS_VERSION
    else:
        root = Path(arg)
        files = sorted(str(p.relative_to(root)) for p in image_files(root)) if root.is_dir() else []
        ident["files"] = content_id(files)
    return content_id(ident)


def count_images(ref: str, image_size: int, class_map: str | None = None) -> int:
    """Number of samples without decoding anything (for estimates and dry runs)."""
    kind, _, arg = ref.partition(":")
    if kind == "digits":
        n_eval = int(round(DIGITS_EVAL_SHARE * DIGITS_SOURCES))
        return (n_eval if arg == "eval" else DIGITS_SOURCES - n_eval) * DIGITS_VARIANTS.get(arg, 0)
    root = Path(arg)
    return sum(1 for _ in image_files(root)) if root.is_dir() else 0


def image_files(root: Path):
    for dirpath, _, files in os.walk(root):
        for f in files:
            if f.endswith(IMG_EXTENSIONS) or f.lower().endswith(IMG_EXTENSIONS):
                yield Path(dirpath) / f


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
