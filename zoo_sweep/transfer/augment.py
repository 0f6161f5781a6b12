"""Train-time augmentation of the transfer stream, by name ([transfer] augment), batched on the device.

Every draw comes from the job's data generator (a CPU ``torch.Generator`` seeded by the job's seed and used
for nothing but the batch order and augmentation), a fixed number of draws per batch whatever the images
hold. So two jobs with the same transfer set, seed, batch size and augmentation feed their models the very
same pixels, which is what lets a teacher's logits be computed once and read back (logit_store.py).

- ``shift``: a random +-2 px shift per image (zoo-sweep's own; the digits must not be flipped).
- ``paper``: the reference code's ImageNet pipeline (ffcv): horizontal flip with p 0.5, then colour
  distortion with p 0.8 at strength 1 (brightness, contrast and saturation factors in [0.2, 1.8], hue
  rotation in [-0.2, 0.2] turns, in that fixed order), then grayscale with p 0.2. The arithmetic follows the
  reference operation for operation in float64, including where it truncates to uint8, so the same draws
  give the same pixels (tests/unit/test_reference_forms.py holds it to a transcription).
- ``none``: the images as decoded.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from zoo_sweep.config.params import CHOICES
from zoo_sweep.data.images import augment as shift

# ITU-R 601 luma weights as the reference writes them
LUMA = (0.2989, 0.5870, 0.1140)
FLIP_P, JITTER_P, GRAY_P = 0.5, 0.8, 0.2
STRENGTH = 1.0  # brightness, contrast, saturation: 0.8 * strength around 1; hue: 0.2 * strength around 0


def draw_paper(n: int, gen: torch.Generator) -> dict[str, np.ndarray]:
    """The random choices of the "paper" augmentation for ``n`` images: seven draws per image, always."""
    u = torch.rand(7, n, generator=gen, dtype=torch.float64).numpy()
    lo, hi = max(0.0, 1 - 0.8 * STRENGTH), 1 + 0.8 * STRENGTH
    return {"flip": u[0] < FLIP_P, "jitter": u[1] < JITTER_P,
            "brightness": lo + (hi - lo) * u[2], "contrast": lo + (hi - lo) * u[3],
            "saturation": lo + (hi - lo) * u[4], "hue": 0.2 * STRENGTH * (2 * u[5] - 1), "gray": u[6] < GRAY_P}


def hue_matrices(hue: np.ndarray) -> np.ndarray:
    """The reference's RGB-space hue rotation, one 3 x 3 matrix per image (numpy, as the reference computes it:
    a different cosine would move pixels that sit on a rounding edge)."""
    out = np.empty((len(hue), 3, 3))
    third, root = 1.0 / 3.0, np.sqrt(1.0 / 3.0)
    for i, h in enumerate(hue):
        rad = h * 2.0 * np.pi
        c, s = np.cos(rad), np.sin(rad)
        out[i] = [[c + (1.0 - c) / 3.0, third * (1.0 - c) - root * s, third * (1.0 - c) + root * s],
                  [third * (1.0 - c) + root * s, c + third * (1.0 - c), third * (1.0 - c) - root * s],
                  [third * (1.0 - c) - root * s, third * (1.0 - c) + root * s, c + third * (1.0 - c)]]
    return out


def _luma(img: torch.Tensor) -> torch.Tensor:
    """0.2989 R + 0.587 G + 0.114 B per pixel (N x 1 x H x W), summed left to right as the reference does."""
    return LUMA[0] * img[:, 0:1] + LUMA[1] * img[:, 1:2] + LUMA[2] * img[:, 2:3]


def _col(v: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(v, dtype=torch.float64).to(like.device, non_blocking=True).view(-1, 1, 1, 1)


def colour_distort(x: torch.Tensor, d: dict) -> torch.Tensor:
    """Brightness, contrast, saturation and hue of every image (uint8 in, uint8 out); the caller keeps the
    images that were not drawn for distortion."""
    img = x.double()
    img = (_col(d["brightness"], img) * img).clamp_(0, 255)
    c = _col(d["contrast"], img)
    img = (c * img + (1.0 - c) * _luma(img).mean(dim=(1, 2, 3), keepdim=True)).clamp_(0, 255)
    gray = _luma(img).trunc()  # the reference writes it into a uint8 buffer before blending
    s = _col(d["saturation"], img)
    img = (s * img + (1.0 - s) * gray).clamp_(0, 255)
    img = img / 255.0
    m = torch.as_tensor(hue_matrices(d["hue"])).to(img.device, non_blocking=True)
    r, g, b = img[:, 0:1], img[:, 1:2], img[:, 2:3]
    rows = [r * m[:, i, 0].view(-1, 1, 1, 1) + g * m[:, i, 1].view(-1, 1, 1, 1) + b * m[:, i, 2].view(-1, 1, 1, 1)
            for i in range(3)]
    return (torch.cat(rows, dim=1) * 255.0).clamp_(0, 255).to(torch.uint8)  # the cast truncates, as numpy's


def apply_paper(x: torch.Tensor, d: dict) -> torch.Tensor:
    """The "paper" augmentation with given draws (``draw_paper``) on a uint8 N x 3 x H x W batch."""
    def where(mask, a, b):
        return torch.where(torch.as_tensor(mask).to(x.device, non_blocking=True).view(-1, 1, 1, 1), a, b)

    x = where(d["flip"], x.flip(-1), x)
    x = where(d["jitter"], colour_distort(x, d), x)
    gray = _luma(x.double()).to(torch.uint8).expand_as(x)  # uint8 cast: truncation
    return where(d["gray"], gray, x)


def paper(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return apply_paper(x, draw_paper(len(x), gen))


# [transfer] augment -> (uint8 batch, data generator) -> uint8 batch; None: unchanged
AUGMENTS: dict[str, Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None] = {
    "paper": paper, "shift": shift, "none": None}
assert tuple(AUGMENTS) == CHOICES["augment"]


def augment_batch(kind: str, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    fn = AUGMENTS[kind]
    return x if fn is None else fn(x, gen)
