"""The hyper-parameters of one transfer job, with the paper's defaults.

One definition serves both the spec's [transfer] table (``spec.TransferSpec`` extends it with what a sweep
adds: methods, seeds, multi-teacher lists) and the training loop. No torch import here: specs are parsed
by commands that never train.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Any

from zoo_sweep.config.schema import key
from zoo_sweep.errors import UserError

# The allowed values of the option keys below. For each, the authors' code (the paper's published numbers)
# has one form and zoo-sweep's textbook form the other; docs/methods.md says which is which.
CHOICES: dict[str, tuple[str, ...]] = {
    "augment": ("paper", "shift", "none"),
    "inputs": ("own", "student"),
    "lr_scaling": ("none", "linear"),
    "xe_on": ("logits", "probs"),
    "mcl_kl_mean": ("batch", "kept"),
    "mcl_schedule": ("steps", "reference"),
    "mcl_reset": ("none", "reference"),
    "flip_avg_neutral": ("s0_probs", "student_logits"),
    "cd_form": ("standard", "reference"),
    "crd_form": ("infonce", "reference"),
    "teacher_bn": ("eval", "train"),
}

# What a job did before each option existed. A job's hyper-parameters leave out an option at this value, so the
# ids of jobs planned before the option was added stay the same (and their results are reused); a payload that
# lacks the key reads back as this value, whatever the default becomes. Never change these.
LEGACY = {"inputs": "own", "lr_scaling": "none", "xe_on": "logits", "mcl_kl_mean": "batch",
          "mcl_schedule": "steps", "mcl_reset": "none", "flip_avg_neutral": "s0_probs", "cd_form": "standard",
          "crd_form": "infonce", "teacher_bn": "eval"}
# augment was a bool before it named its kind: "shift" and "none" are stored as true and false
LEGACY_AUGMENT = {"shift": True, "none": False}


def used_rows(n: int, batch_size: int) -> int:
    """Samples of an n-sample transfer set one epoch trains on: whole batches only (BatchNorm needs more than
    one sample in a batch), or the whole set when it is smaller than a batch. The training loop and the
    logit cache's files both follow this count."""
    return n - n % batch_size if n > batch_size else n


@dataclass(frozen=True)
class TransferParams:
    epochs: int = key(2, "passes over the transfer set", ge=1, le=10_000)
    batch_size: int = key(128, "samples per optimizer step", ge=1, le=65_536)
    lr: float = key(0.01, "SGD learning rate", gt=0, le=10)
    momentum: float = key(0.9, "SGD momentum", ge=0, lt=1)
    weight_decay: float = key(1e-4, "SGD weight decay", ge=0, le=1)
    temperature: float = key(1.0, "distillation temperature T (KL is T^2 * KL(target || softmax(z_s / T)))",
                              ge=0.01, le=100)
    alpha: float = key(0.5, "xekl: weight of KL against cross-entropy", ge=0, le=1)
    augment: str | bool = key("shift", "train-time augmentation, drawn from the job's seeded stream on the device: "
                              '"paper" (flip p 0.5, colour distortion p 0.8, grayscale p 0.2, as the authors\' '
                              'code), "shift" (random +-2 px shifts), "none"',
                              expect='"paper", "shift" or "none" (true and false, as older specs say: "shift" '
                                     'and "none")')
    inputs: str = key("own", '"own": every model its own timm data config; "student": every model sees the '
                             "student's resolution and crop, only mean/std per model (the authors' code)")
    lr_scaling: str = key("none", '"linear": the learning rate (lr, mcl_lr) times batch_size / 256 (the authors\' '
                                  'code); "none": as given')
    xe_on: str = key("logits", 'xekl, xekl_mcl: cross-entropy on the student\'s "logits", or on its softmax '
                               '"probs" (the authors\' code: a far weaker label term)')
    top_k: int = key(0, "KL over the teacher's top-k classes only; 0 = all classes", ge=0, le=100_000)
    # XE-KL-Dist + MCL (paper: alpha 0.68, top-k 100, tau 0.9999, every 2 steps, lr 0.01)
    mcl_alpha: float = key(0.68, "xekl_mcl: weight of KL against cross-entropy", ge=0, le=1)
    mcl_top_k: int = key(100, "xekl_mcl: KL over the teacher's top-k classes; 0 = all", ge=0,
                        le=100_000)
    tau: float = key(0.9999, "xekl_mcl: slow-weight momentum", gt=0, lt=1)
    mcl_every: int = key(2, "xekl_mcl: optimizer steps between slow-weight updates (mcl_schedule "
                            '"reference": at batch 256, scaled by 256 / batch_size)', ge=1,
                    le=10_000)
    mcl_lr: float = key(0.01, "xekl_mcl: learning rate", gt=0, le=10)
    mcl_kl_mean: str = key("batch", 'xekl_mcl: the masked KL averaged over the whole "batch", or over the '
                                    '"kept" samples only (the authors\' code)')
    mcl_schedule: str = key("steps", 'xekl_mcl: "steps": slow weights updated every mcl_every optimizer steps; '
                                     '"reference": after batch j of each epoch (from 0) when j % (mcl_every * 256 '
                                     '/ batch_size) == 0, starting from the weights after the first step')
    mcl_reset: str = key("none", 'xekl_mcl: the trained (fast) weights after each epoch\'s evaluation: "none": '
                                 'they go on from where they are; "reference": they are set to the slow weights '
                                 'just evaluated (the authors\' code)')
    flip_avg_neutral: str = key("s0_probs", 'flip_avg: target where neither model flips: "s0_probs" (mean of '
                                            'the teacher\'s and s0\'s probabilities) or "student_logits" (softmax '
                                            'of the mean of the teacher\'s and the current student\'s logits, '
                                            'gradient included: the authors\' code)')
    # contrastive baselines (paper: CD weight 10, XE 0.1; CRD 128-d, 4096 negatives, weight 0.8, XE 1)
    cd_weight: float = key(10.0, "cd: weight of the batch-similarity KL", ge=0, le=1000)
    cd_xe: float = key(0.1, "cd: weight of cross-entropy", ge=0, le=1000)
    cd_form: str = key("standard", 'cd: "standard" (cosine similarities / 0.1, self-pairs left out, KL per row '
                                   'averaged) or "reference" (/ 1, self-pairs kept, KL summed over the B x B matrix)')
    crd_weight: float = key(0.8, "crd: weight of the contrastive loss", ge=0, le=1000)
    crd_xe: float = key(1.0, "crd: weight of cross-entropy", ge=0, le=1000)
    crd_dim: int = key(128, "crd: embedding width", ge=1, le=65_536)
    crd_negatives: int = key(4096, "crd: negatives per sample (infonce: capped at the other samples of the set; "
                                   "reference: drawn with replacement)", ge=1,
                              le=1_000_000)
    crd_temperature: float = key(0.07, "crd: temperature of the contrastive softmax",
                                  ge=0.001, le=100)
    crd_form: str = key("infonce", 'crd: "infonce" (InfoNCE against uniform negatives) or "reference" (CRD\'s '
                                   'NCE loss with its memory-bank positives, fixed Z and negatives drawn from '
                                   'other classes)')
    teacher_bn: str = key("eval", 'cd, crd: the teacher in "eval" mode, or in "train" mode (BatchNorm on '
                                  'batch statistics, as the authors\' code leaves it)')

    def __post_init__(self) -> None:
        if isinstance(self.augment, bool):  # older specs and job payloads: augment = true / false
            object.__setattr__(self, "augment", "shift" if self.augment else "none")
        for name, allowed in CHOICES.items():
            value = getattr(self, name)
            if value not in allowed:
                raise UserError(f"[transfer] {name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")

    def lr_of(self, field: str) -> float:
        """The learning rate the optimizer uses: ``field`` (lr or mcl_lr) after lr_scaling."""
        lr: float = getattr(self, field)
        return lr * self.batch_size / 256 if self.lr_scaling == "linear" else lr

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TransferParams:
        """Parameters from a job payload's ``hp`` (see ``job_hp``): options it leaves out read as LEGACY."""
        names = {f.name for f in fields(cls)}
        return cls(**{**{k: v for k, v in LEGACY.items() if k in names}, **{k: v for k, v in d.items() if k in names}})


def job_hp(params: TransferParams, names: Iterable[str]) -> dict[str, Any]:
    """The hyper-parameters ``names`` of a job, as its payload (and so its id) carries them: options at their
    LEGACY value are left out and augment "shift" / "none" is written true / false, so a spec that uses none
    of the newer options plans the very jobs it planned before they existed."""
    out = {}
    for k in names:
        v = getattr(params, k)
        if k in LEGACY and v == LEGACY[k]:
            continue
        out[k] = LEGACY_AUGMENT.get(v, v) if k == "augment" else v
    return out
