"""Stage 1: one forward pass of one model over one image set, kept as a compact prediction record.

A record holds, per sample, the predicted class, the true-class and max probabilities and the top-k
logits. Every pair metric of stage 2 comes from these records, so a zoo of N models costs N forward
passes, not N^2.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from .data import ImageSet, model_input

RECORD_FIELDS = ("pred", "p_true", "p_max", "topk_idx", "topk_logits")


@torch.no_grad()
def predict(model: torch.nn.Module, images: ImageSet, cfg: dict, batch_size: int = 256, topk: int = 5,
            device: str | torch.device = "cpu") -> dict[str, np.ndarray]:
    model.eval().to(device)
    k = min(topk, images.num_classes)
    parts: dict[str, list] = {f: [] for f in RECORD_FIELDS}
    for start in range(0, len(images), batch_size):
        x = model_input(images.images[start:start + batch_size], cfg, device)
        y = images.labels[start:start + batch_size].to(device)
        logits = model(x).float()
        prob = logits.softmax(dim=1)
        p_max, pred = prob.max(dim=1)
        top_logits, top_idx = logits.topk(k, dim=1)
        for f, v in zip(RECORD_FIELDS, (pred, prob.gather(1, y.view(-1, 1)).squeeze(1), p_max, top_idx, top_logits)):
            parts[f].append(v.cpu())
    rec = {f: torch.cat(v).numpy() for f, v in parts.items()}
    rec["pred"] = rec["pred"].astype(np.int32)
    rec["topk_idx"] = rec["topk_idx"].astype(np.int32)
    rec["p_true"] = rec["p_true"].astype(np.float32)
    return rec


def accuracy(record: dict[str, np.ndarray], labels) -> float:
    return float((record["pred"] == np.asarray(labels)).mean() * 100)


def record_bytes(record: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **record)
    return buf.getvalue()


def save_record(path: str | Path, record: dict[str, np.ndarray]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    tmp.write_bytes(record_bytes(record))
    tmp.replace(path)  # atomic: a killed run leaves no half record under the real name


def load_record(path: str | Path) -> dict[str, np.ndarray] | None:
    """The record, or None when it is missing or unreadable (then the predict job runs again)."""
    try:
        with np.load(path) as z:
            rec = {f: z[f] for f in RECORD_FIELDS}
    except Exception:
        return None
    return rec
