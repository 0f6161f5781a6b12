"""Image sets, decoded once into a shared memory-mapped uint8 cache, and the per-model transform applied at batch
time.

An image set is referenced by a string: ``digits:eval`` / ``digits:transfer`` (scikit-learn's bundled
handwritten digits, split by source image) or ``imagefolder:/path`` (the ImageNet layout), optionally narrowed
to a class-stratified subset. Decoding, resizing and centre-cropping to the cache resolution happen once, in
parallel worker processes, into the sharded cache of data/cache.py; every process then maps that file, so
``ImageSet.images`` is a read-only uint8 tensor whose pages live in the node's page cache, shared by every
process on the node and read batch by batch. Each model's own timm data config (input size, crop,
interpolation, mean/std) is applied on the device per batch, so N models cost one decode, not N.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from zoo_sweep.data import cache
from zoo_sweep.data.sets import (  # noqa: F401
    DIGITS_SOURCES,
    DIGITS_VARIANTS,
    SUBSET_SEED,
    digits_sources,
    folder_items,
    image_files,
    image_set_key,
    subset_positions,
)
from zoo_sweep.errors import UserError


@dataclass
class ImageSet:
    ref: str
    # uint8, N x 3 x S x S. From the cache: a read-only map of the shared file (index it; a write is a
    # segmentation fault, not an exception: in_memory() gives a writable copy)
    images: torch.Tensor
    labels: torch.Tensor  # int64, N
    classes: list[str]
    source_ids: torch.Tensor  # int64, N: which source image a sample came from (distortions share it)
    skipped: int = 0  # unreadable files left out (imagefolder)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.labels)

    def head(self, n: int) -> ImageSet:
        """The first ``n`` samples (views, no copy): smaller sets for tests and benchmarks."""
        return dataclasses.replace(self, images=self.images[:n], labels=self.labels[:n],
                                   source_ids=self.source_ids[:n])

    def in_memory(self) -> ImageSet:
        """A copy whose pixels are in this process's memory (not the shared map): for comparisons and sets
        written to."""
        return dataclasses.replace(self, images=self.images.clone())


def load_image_set(ref: str, image_size: int, cache_dir: str | Path, class_map: str | None = None,
                   subset: float | int | None = None, subset_seed: int = SUBSET_SEED, *,
                   workers: int | None = None, progress: bool | None = None, verify: bool = False,
                   decoder: str = "auto") -> ImageSet:
    """The set from the cache, decoding what is missing first.

    ``subset``: a class-stratified fraction or count of the set (data/sets.py ``subset_positions``); only its
    images are decoded. ``workers``: decode processes (default: every CPU this process may run on).
    ``progress``: a bar in images/s on stderr (default: when stderr is a terminal). ``verify``: check every
    shard's checksum and decode damaged ones again, even when the cache looks untouched.
    """
    key = image_set_key(ref, image_size, class_map, subset, subset_seed)
    folder = Path(cache_dir) / "images" / key
    opened = None if verify else cache.open_set(folder)
    if opened is None:
        with cache.locked(folder, say=lambda line: print(line, file=sys.stderr)):
            opened = None if verify else cache.open_set(folder)  # another process may have finished it
            if opened is None:
                source = _source(ref, image_size, class_map, subset, subset_seed, folder.with_suffix(".pt"))
                cache.build(folder, source, _workers(workers), _progress(progress), decoder, label=ref)
                folder.with_suffix(".pt").unlink(missing_ok=True)  # an old single-file cache, now converted
                opened = cache.open_set(folder)
    return _warn_skipped(_image_set(ref, opened))


def _image_set(ref: str, o: cache.Opened) -> ImageSet:
    with warnings.catch_warnings():  # read-only on purpose: the map is shared by every process on the node
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        images = torch.from_numpy(o.images)
    return ImageSet(ref, images, torch.from_numpy(o.labels.astype(np.int64)), list(o.classes),
                    torch.from_numpy(o.source_ids.astype(np.int64)), o.skipped)


def _workers(workers: int | None) -> int:
    return workers if workers else len(os.sched_getaffinity(0))


def _progress(progress: bool | None) -> bool:
    return sys.stderr.isatty() if progress is None else progress


def _source(ref: str, image_size: int, class_map: str | None, subset, subset_seed: int, old: Path) -> cache.Source:
    """What the set is made of: an old single-file cache of it (converted: no decode), the digits, or a folder's
    file list, narrowed to the subset."""
    kind, _, arg = ref.partition(":")
    if kind not in ("digits", "imagefolder"):
        raise UserError(f"unknown image set {ref!r}: use digits:eval, digits:transfer or imagefolder:PATH")
    src = _old_cache(old) if subset is None else None
    if src is not None:
        return src
    if kind == "digits":
        s = _digits(arg, image_size)
        src = cache.Source(s.classes, s.labels.numpy(), s.source_ids.numpy(), image_size, pixels=s.images.numpy())
    else:
        classes, files, labels = folder_items(Path(arg), class_map)
        src = cache.Source(classes, labels, np.arange(len(files)), image_size, files=[str(f) for f in files],
                           root=arg)
    if subset is None:
        return src
    keep = subset_positions(src.labels, subset, subset_seed, where=ref)
    return dataclasses.replace(src, labels=src.labels[keep], source_ids=src.source_ids[keep],
                               files=None if src.files is None else [src.files[i] for i in keep],
                               pixels=None if src.pixels is None else src.pixels[keep])


def _old_cache(path: Path) -> cache.Source | None:
    """The single ``.pt`` file earlier versions wrote, mapped rather than read (it may be large); None when
    absent or not such a file (then the set is decoded again).

    Read with ``weights_only``: tensors and plain containers only, never unpickled objects. The file lies in the
    results folder, which others may write to (a shared home); a pickle placed there would otherwise run its
    code here, in every process that loads the set."""
    if not path.is_file():
        return None
    try:
        d = torch.load(path, mmap=True, weights_only=True)
        images, labels, source_ids = d["images"], d["labels"], d["source_ids"]
        tensors = all(isinstance(t, torch.Tensor) for t in (images, labels, source_ids))
        if not tensors or images.dim() != 4 or images.dtype != torch.uint8:
            raise ValueError("not an image cache")
        return cache.Source([str(c) for c in d["classes"]], labels.numpy(), source_ids.numpy(),
                            int(images.shape[-1]), pixels=images.numpy(), skipped=int(d["skipped"]))
    except Exception:  # truncated by a killed run, or not what earlier versions wrote: decoded again
        path.unlink(missing_ok=True)
        return None


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
    below 100 %), which is what makes complementary knowledge visible. Computed in float64 with NumPy's
    elementwise arithmetic, which rounds the same on every processor (torch's vectorised kernels and its
    normal sampler do not): every machine decodes the same pixels, so the zoo rebuilds the same everywhere.
    """
    from sklearn.datasets import load_digits

    idx = digits_sources(split)
    X, y = load_digits(return_X_y=True)
    variants = DIGITS_VARIANTS[split]
    base = _upscale(X[idx].reshape(-1, 8, 8) / 16.0, image_size)
    rng = np.random.default_rng({"eval": 7, "val": 13, "transfer": 11}[split])
    out = [_distort(base, rng, strength=0.0 if v == 0 else 1.0) for v in range(variants)]
    pixels = np.floor(np.clip(np.concatenate(out), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    imgs = torch.from_numpy(np.ascontiguousarray(np.broadcast_to(pixels[:, None], (len(pixels), 3) + pixels.shape[1:])))
    labels = torch.tensor(y[idx], dtype=torch.int64).repeat(variants)
    source = torch.tensor(idx, dtype=torch.int64).repeat(variants)
    return ImageSet("", imgs, labels, [str(i) for i in range(10)], source)


def _upscale(x: np.ndarray, size: int) -> np.ndarray:
    """N x h x w -> N x size x size, bilinear with pixel centres aligned (torch's align_corners=False)."""
    def taps(n_in: int):
        src = np.maximum((np.arange(size) + 0.5) * (n_in / size) - 0.5, 0.0)
        lo = np.floor(src).astype(np.int64)
        return lo, np.minimum(lo + 1, n_in - 1), src - lo

    lo, hi, w = taps(x.shape[1])
    x = x[:, lo, :] * (1 - w)[None, :, None] + x[:, hi, :] * w[None, :, None]
    lo, hi, w = taps(x.shape[2])
    return x[:, :, lo] * (1 - w)[None, None, :] + x[:, :, hi] * w[None, None, :]


def _distort(x: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Random affine (rotation, scale, shear, shift), stroke noise and an occluding patch, seeded: N x S x S."""
    n, h, w = x.shape

    def u(lo, hi):
        return lo + (hi - lo) * rng.random(n)

    ang = u(-0.45, 0.45) * strength
    scale = 1 + u(-0.2, 0.15) * strength
    shear = u(-0.3, 0.3) * strength
    tx, ty = u(-0.15, 0.15) * strength, u(-0.15, 0.15) * strength
    cos = np.array([math.cos(a) for a in ang]) / scale  # the C library's, not a vectorised one
    sin = np.array([math.sin(a) for a in ang]) / scale
    # each output pixel's centre in [-1, 1], mapped by the affine, then back to input pixel coordinates
    gx = ((2 * np.arange(w) + 1) / w - 1)[None, None, :]
    gy = ((2 * np.arange(h) + 1) / h - 1)[None, :, None]
    c, s_, sh = cos[:, None, None], sin[:, None, None], shear[:, None, None]
    ix = ((c * gx + (sh - s_) * gy + tx[:, None, None]) + 1) * w / 2 - 0.5
    iy = ((s_ * gx + c * gy + ty[:, None, None]) + 1) * h / 2 - 0.5
    x = _sample(x, ix, iy)
    x = x + 0.18 * strength * rng.standard_normal(x.shape)
    if strength > 0:  # an occluding block in a third of the images
        ph = h // 3
        for i in np.nonzero(rng.random(n) < 0.35)[0]:
            r, col = rng.integers(0, h - ph, 2)
            x[i, r:r + ph, col:col + ph] = 0.0
    return x


def _sample(x: np.ndarray, ix: np.ndarray, iy: np.ndarray) -> np.ndarray:
    """Bilinear samples of each image at (iy, ix), zero outside it (torch's grid_sample, zeros padding)."""
    n, h, w = x.shape
    x0, y0 = np.floor(ix).astype(np.int64), np.floor(iy).astype(np.int64)
    fx, fy = ix - x0, iy - y0
    rows = np.arange(n)[:, None, None]
    out = np.zeros(ix.shape)
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            yy, xx = y0 + dy, x0 + dx
            inside = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
            out += np.where(inside, x[rows, np.clip(yy, 0, h - 1), np.clip(xx, 0, w - 1)], 0.0) * wy * wx
    return out


# ---------------------------------------------------------------- per-model transform, on the device
def model_input(batch: torch.Tensor, cfg: dict, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 N x 3 x S x S -> the model's normalised float input, following its timm data config."""
    x = batch.to(device, non_blocking=True).float().div_(255.0)
    size = cfg["input_size"][-1]
    crop_pct = cfg.get("crop_pct") or 1.0
    scale = int(math.floor(size / crop_pct))
    mode = {"bicubic": "bicubic", "bilinear": "bilinear",
            "nearest": "nearest"}.get(cfg.get("interpolation"), "bilinear")
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
