"""Transfer methods, registered by name (as timm registers models).

A method turns one batch of logits into a loss. All per-sample choices are masks and ``torch.where``:
no Python loop over samples. Definitions follow ../shared/METRICS.md ("Methods").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Method:
    name: str
    loss: Callable  # (z_student, z_teacher, z_s0, labels, params) -> (loss, share of samples routed to teacher)
    needs_s0: bool
    description: str


METHODS: dict[str, Method] = {}


def register(name: str, needs_s0: bool, description: str):
    def deco(fn):
        METHODS[name] = Method(name, fn, needs_s0, description)
        return fn
    return deco


def kl_to_target(z_s: torch.Tensor, target: torch.Tensor, T: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """T^2 * KL(target || softmax(z_s / T)), averaged over the batch (masked-out samples count as zero)."""
    log_p = F.log_softmax(z_s / T, dim=1)
    per_sample = (target * (torch.log(target.clamp_min(1e-12)) - log_p)).sum(dim=1)
    if mask is not None:
        per_sample = per_sample * mask
    return per_sample.mean() * T * T


def dp_teacher_mask(z_t: torch.Tensor, z_s0: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """Data partitioning: True where the teacher, not the frozen student, provides the target.

    Supervised (labels given): the teacher's true-class probability beats the frozen student's.
    Unsupervised (labels None): the teacher's max probability beats the frozen student's.
    """
    p_t, p_s0 = F.softmax(z_t, dim=1), F.softmax(z_s0, dim=1)
    if labels is None:
        return p_t.max(dim=1).values > p_s0.max(dim=1).values
    idx = labels.view(-1, 1)
    return p_t.gather(1, idx).squeeze(1) > p_s0.gather(1, idx).squeeze(1)


def dp_target(z_t, z_s0, labels, T: float):
    """Per-sample target distribution for KL-Dist + DP and the teacher mask that chose it."""
    mask = dp_teacher_mask(z_t, z_s0, labels)
    target = torch.where(mask.unsqueeze(1), F.softmax(z_t / T, dim=1), F.softmax(z_s0 / T, dim=1))
    return target, mask


@register("kl", needs_s0=False, description="KL-Dist: match the teacher on every sample")
def _kl(z_s, z_t, z_s0, y, p):
    return kl_to_target(z_s, F.softmax(z_t / p.temperature, dim=1), p.temperature), 1.0


@register("xekl", needs_s0=False, description="XE-KL-Dist: alpha * KL + (1 - alpha) * cross-entropy with labels")
def _xekl(z_s, z_t, z_s0, y, p):
    kl = kl_to_target(z_s, F.softmax(z_t / p.temperature, dim=1), p.temperature)
    return p.alpha * kl + (1 - p.alpha) * F.cross_entropy(z_s, y), 1.0


@register("kl_dp", needs_s0=True, description="KL-Dist + DP (supervised): teacher where it is surer of the label")
def _kl_dp(z_s, z_t, z_s0, y, p):
    target, mask = dp_target(z_t, z_s0, y, p.temperature)
    return kl_to_target(z_s, target, p.temperature), mask.float().mean().item()


@register("kl_dp_unsup", needs_s0=True, description="KL-Dist + DP (unsupervised): teacher where it is more confident")
def _kl_dp_unsup(z_s, z_t, z_s0, y, p):
    target, mask = dp_target(z_t, z_s0, None, p.temperature)
    return kl_to_target(z_s, target, p.temperature), mask.float().mean().item()


@register("self_dist", needs_s0=True, description="Self-distillation: always the frozen student (a control)")
def _self_dist(z_s, z_t, z_s0, y, p):
    return kl_to_target(z_s, F.softmax(z_s0 / p.temperature, dim=1), p.temperature), 0.0
