"""Image sets, decoded once into a compact uint8 cache, and the per-model transform applied at batch time.

An image set is referenced by a string: ``digits:eval`` / ``digits:transfer`` (scikit-learn's bundled
handwritten digits, split by source image) or ``imagefolder:/path`` (the ImageNet val layout). Decoding,
resizing and centre-cropping to the cache resolution happen once; each model's own timm data config
(input size, crop, interpolation, mean/std) is applied on the device per batch, so N models cost one
decode, not N.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from zoo_sweep.data.sets import (  # noqa: F401
    DIGITS_EVAL_SHARE,
    DIGITS_SOURCES,
    DIGITS_VARIANTS,
    image_files,
    image_set_key,
)
from zoo_sweep.errors import UserError
from zoo_sweep.paths import write_atomic


@dataclass
class ImageSet:
    ref: str
    images: torch.Tensor  # uint8, N x 3 x S x S
    labels: torch.Tensor  # int64, N
    classes: list[str]
    source_ids: torch.Tensor  # int64, N: which source image a sample came from (distortions share it)
    skipped: int = 0  # unreadable files left out (imagefolder)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.labels)

    def head(self, n: int) -> "ImageSet":
        """The first ``n`` samples (views, no copy): smaller sets for tests and benchmarks."""
        return dataclasses.replace(self, images=self.images[:n], labels=self.labels[:n],
                                   source_ids=self.source_ids[:n])


def load_image_set(ref: str, image_size: int, cache_dir: str | Path, class_map: str | None = None) -> ImageSet:
    """The decoded set from the cache, decoding it first when missing."""
    key = image_set_key(ref, image_size, class_map)
    path = Path(cache_dir) / "images" / f"{key}.pt"
    if path.exists():
        try:
            d = torch.load(path, weights_only=False)
            return _warn_skipped(ImageSet(**d))
        except Exception:
            path.unlink(missing_ok=True)  # truncated by a killed run: decode again
    kind, _, arg = ref.partition(":")
    if kind == "digits":
        s = _digits(arg, image_size)
    elif kind == "imagefolder":
        s = _image_folder(Path(arg), image_size, class_map)
    else:
        raise UserError(f"unknown image set {ref!r}: use digits:eval, digits:transfer or imagefolder:PATH")
    s.ref = ref
    write_atomic(path, lambda tmp: torch.save(s.__dict__, tmp))
    return _warn_skipped(s)


def _warn_skipped(s: ImageSet) -> ImageSet:
    """Unreadable files cost one sample each; say so once per process wherever the set is loaded (the
    launcher's compare stage loads the eval set, so its output carries the line)."""
    if s.skipped:
        warnings.warn(f"{s.ref}: {s.skipped} unreadable image file(s) skipped; {len(s)} images used",
                      UserWarning, stacklevel=3)
    return s


# ---------------------------------------------------------------- digits
def _digits(split: str, image_size: int) -> ImageSet:
    """scikit-learn's 1,797 real 8x8 digits, split by source image, upscaled, with deterministic distortions.

    Distortions enlarge the set and make it hard enough that tiny models disagree (accuracies spread
    below 100 %), which is what makes complementary knowledge visible.
    """
    from sklearn.datasets import load_digits

    if split not in ("eval", "transfer"):
        raise UserError(f"digits has the splits 'eval' and 'transfer', not {split!r}")
    X, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(1234)
    order = rng.permutation(len(y))
    n_eval = int(round(DIGITS_EVAL_SHARE * len(y)))
    idx = np.sort(order[:n_eval] if split == "eval" else order[n_eval:])
    variants = DIGITS_VARIANTS[split]
    base = torch.tensor(X[idx], dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
    base = F.interpolate(base, size=(image_size, image_size), mode="bilinear", align_corners=False)
    gen = torch.Generator().manual_seed(7 if split == "eval" else 11)
    out = [_distort(base, gen, strength=0.0 if v == 0 else 1.0) for v in range(variants)]
    imgs = torch.cat(out).clamp(0, 1)
    imgs = (imgs * 255).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    labels = torch.tensor(y[idx], dtype=torch.int64).repeat(variants)
    source = torch.tensor(idx, dtype=torch.int64).repeat(variants)
    return ImageSet("", imgs, labels, [str(i) for i in range(10)], source)


def _distort(x: torch.Tensor, gen: torch.Generator, strength: float) -> torch.Tensor:
    """Random affine (rotation, scale, shear, shift), stroke noise and an occluding patch, seeded."""
    n, _, h, w = x.shape

    def u(lo, hi):
        return lo + (hi - lo) * torch.rand(n, generator=gen)

    ang = u(-0.45, 0.45) * strength
    scale = 1 + u(-0.2, 0.15) * strength
    shear = u(-0.3, 0.3) * strength
    tx, ty = u(-0.15, 0.15) * strength, u(-0.15, 0.15) * strength
    cos, sin = torch.cos(ang) / scale, torch.sin(ang) / scale
    theta = torch.stack([torch.stack([cos, -sin + shear, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, align_corners=False, padding_mode="zeros")
    x = x + 0.18 * strength * torch.randn(x.shape, generator=gen)
    if strength > 0:  # an occluding block in a third of the images
        ph = h // 3
        for i in torch.nonzero(torch.rand(n, generator=gen) < 0.35).flatten().tolist():
            r, c = torch.randint(0, h - ph, (2,), generator=gen).tolist()
            x[i, :, r:r + ph, c:c + ph] = 0.0
    return x


# ---------------------------------------------------------------- image folders
def _image_folder(root: Path, image_size: int, class_map: str | None) -> ImageSet:
    """An ImageFolder tree (one sub-folder per class), resized on the short side and centre-cropped."""
    from PIL import Image

    if not root.is_dir():
        raise UserError(f"image folder not found: {root}")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
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
    imgs, labels, skipped = [], [], 0
    for cls in folders:
        for f in sorted(image_files(root / cls)):
            try:
                with Image.open(f) as im:
                    imgs.append(_square(im.convert("RGB"), image_size))
                labels.append(index[cls])
            except Exception:  # a corrupt file costs one sample, not the set
                skipped += 1
    if not imgs:
        raise UserError(f"no readable images under {root} ({skipped} unreadable)")
    images = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).contiguous()
    lab = torch.tensor(labels, dtype=torch.int64)
    return ImageSet("", images, lab, classes, torch.arange(len(lab)), skipped)


def _square(im, size: int) -> np.ndarray:
    from PIL import Image

    w, h = im.size
    s = size / min(w, h)
    im = im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BICUBIC)
    w, h = im.size
    left, top = (w - size) // 2, (h - size) // 2
    return np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.uint8)


# ---------------------------------------------------------------- per-model transform, on the device
def model_input(batch: torch.Tensor, cfg: dict, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 N x 3 x S x S -> the model's normalised float input, following its timm data config."""
    x = batch.to(device, non_blocking=True).float().div_(255.0)
    size = cfg["input_size"][-1]
    crop_pct = cfg.get("crop_pct") or 1.0
    scale = int(math.floor(size / crop_pct))
    mode = {"bicubic": "bicubic", "bilinear": "bilinear", "nearest": "nearest"}.get(cfg.get("interpolation"), "bilinear")
    if x.shape[-1] != scale:
        x = F.interpolate(x, size=(scale, scale), mode=mode, align_corners=False if mode != "nearest" else None,
                          antialias=mode in ("bilinear", "bicubic") and scale < x.shape[-1])
    if scale != size:
        off = (scale - size) // 2
        x = x[..., off:off + size, off:off + size]
    mean, std = _norm_constants(tuple(cfg["mean"]), tuple(cfg["std"]), x.device)
    return (x - mean) / std


@functools.lru_cache(maxsize=64)
def _norm_constants(mean: tuple, std: tuple, device: torch.device):
    # made once per (config, device): building them from Python lists per batch would stall the CUDA stream
    return (torch.tensor(mean, device=device).view(1, -1, 1, 1), torch.tensor(std, device=device).view(1, -1, 1, 1))


def augment(batch: torch.Tensor, gen: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """Cheap train-time augmentation on uint8 batches: a random shift per sample (digits must not flip)."""
    n, dev = batch.shape[0], batch.device
    padded = F.pad(batch, (max_shift,) * 4)
    # drawn on the CPU generator (the same numbers on every device), applied where the batch is
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    dx, dy = torch.stack([dx, dy]).to(dev)  # one copy to the device, not two
    h, w = batch.shape[-2:]
    rows = (dy.view(n, 1) + torch.arange(h, device=dev)).view(n, 1, h, 1)
    out = padded.gather(2, rows.expand(n, batch.shape[1], h, w + 2 * max_shift))
    cols = (dx.view(n, 1) + torch.arange(w, device=dev)).view(n, 1, 1, w).expand(n, batch.shape[1], h, w)
    return out.gather(3, cols)
