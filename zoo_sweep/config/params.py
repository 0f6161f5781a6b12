"""The hyper-parameters of one transfer job, with the paper's defaults.

One definition serves both the spec's [transfer] table (``spec.TransferSpec`` extends it with what a sweep
adds: methods, seeds, multi-teacher lists) and the training loop. No torch import here: specs are parsed
by commands that never train.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from zoo_sweep.config.schema import key


def used_rows(n: int, batch_size: int) -> int:
    """Samples of an n-sample transfer set one epoch trains on: whole batches only (BatchNorm needs more than
    one sample in a batch), or the whole set when it is smaller than a batch. The training loop and the
    logit cache's files both follow this count."""
    return n - n % batch_size if n > batch_size else n


@dataclass(frozen=True)
class TransferParams:
    epochs: int = key(2, "passes over the transfer set", ge=1)
    batch_size: int = key(128, "samples per optimizer step", ge=1)
    lr: float = key(0.01, "SGD learning rate", gt=0)
    momentum: float = key(0.9, "SGD momentum", ge=0, lt=1)
    weight_decay: float = key(1e-4, "SGD weight decay", ge=0)
    temperature: float = key(1.0, "distillation temperature T (KL is T^2 * KL(target || softmax(z_s / T)))", gt=0)
    alpha: float = key(0.5, "xekl: weight of KL against cross-entropy", ge=0, le=1)
    augment: bool = key(True, "random +-2 px shifts of the transfer images, drawn from the job's seed")
    top_k: int = key(0, "KL over the teacher's top-k classes only; 0 = all classes", ge=0)
    # XE-KL-Dist + MCL (paper: alpha 0.68, top-k 100, tau 0.9999, every 2 steps, lr 0.01)
    mcl_alpha: float = key(0.68, "xekl_mcl: weight of KL against cross-entropy", ge=0, le=1)
    mcl_top_k: int = key(100, "xekl_mcl: KL over the teacher's top-k classes; 0 = all", ge=0)
    tau: float = key(0.9999, "xekl_mcl: slow-weight momentum", gt=0, lt=1)
    mcl_every: int = key(2, "xekl_mcl: optimizer steps between slow-weight updates", ge=1)
    mcl_lr: float = key(0.01, "xekl_mcl: learning rate", gt=0)
    # contrastive baselines (paper: CD weight 10, XE 0.1; CRD 128-d, 4096 negatives, weight 0.8, XE 1)
    cd_weight: float = key(10.0, "cd: weight of the batch-similarity KL", ge=0)
    cd_xe: float = key(0.1, "cd: weight of cross-entropy", ge=0)
    crd_weight: float = key(0.8, "crd: weight of the contrastive loss", ge=0)
    crd_xe: float = key(1.0, "crd: weight of cross-entropy", ge=0)
    crd_dim: int = key(128, "crd: embedding width", ge=1)
    crd_negatives: int = key(4096, "crd: negatives per sample (capped at the transfer set's size)", ge=1)
    crd_temperature: float = key(0.07, "crd: temperature of the contrastive softmax", gt=0)

    @classmethod
    def from_dict(cls, d: dict) -> "TransferParams":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
