"""The hyper-parameters of one transfer job, with the paper's defaults (METRICS.md, "Methods").

One definition serves both the spec's [transfer] table (``spec.TransferSpec`` extends it with what a sweep
adds: methods, seeds, multi-teacher lists) and the training loop. No torch import here: specs are parsed
by commands that never train.
"""

from __future__ import annotations

from dataclasses import dataclass, fields


def used_rows(n: int, batch_size: int) -> int:
    """Samples of an n-sample transfer set one epoch trains on: whole batches only (BatchNorm needs more than
    one sample in a batch), or the whole set when it is smaller than a batch. The training loop and the
    logit cache's files both follow this count."""
    return n - n % batch_size if n > batch_size else n


@dataclass(frozen=True)
class TransferParams:
    epochs: int = 2
    batch_size: int = 128
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    temperature: float = 1.0
    alpha: float = 0.5  # xekl: weight of KL against cross-entropy
    augment: bool = True
    top_k: int = 0  # KL over the teacher's top-k classes only; 0 = all classes
    # XE-KL-Dist + MCL (paper: alpha 0.68, top-k 100, tau 0.9999, every 2 steps, lr 0.01)
    mcl_alpha: float = 0.68
    mcl_top_k: int = 100
    tau: float = 0.9999
    mcl_every: int = 2
    mcl_lr: float = 0.01
    # contrastive baselines (paper: CD weight 10, XE 0.1; CRD 128-d, 4096 negatives, weight 0.8, XE 1)
    cd_weight: float = 10.0
    cd_xe: float = 0.1
    crd_weight: float = 0.8
    crd_xe: float = 1.0
    crd_dim: int = 128
    crd_negatives: int = 4096  # capped at the transfer set's size
    crd_temperature: float = 0.07  # temperature of CRD's contrastive softmax (CRD's nce_t)

    @classmethod
    def from_dict(cls, d: dict) -> "TransferParams":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
