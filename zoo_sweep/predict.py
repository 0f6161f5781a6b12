"""Stage 1: one forward pass of one model over one image set, kept as a compact prediction record.

A record holds, per sample, the predicted class, the true-class and max probabilities and the top-k
logits. Every pair metric of stage 2 comes from these records, so a zoo of N models costs N forward
passes, not N^2.
"""

from __future__ import annotations

import hashlib
import io
import os
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


def record_checksum(record: dict[str, np.ndarray]) -> str:
    """sha256 over every field's name, dtype, shape and bytes: what a record file must still hold."""
    h = hashlib.sha256()
    for f in RECORD_FIELDS:
        a = np.ascontiguousarray(record[f])
        h.update(f"{f}:{a.dtype.str}:{a.shape};".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def record_bytes(record: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **{f: record[f] for f in RECORD_FIELDS}, checksum=np.array(record_checksum(record)))
    return buf.getvalue()


def save_record(path: str | Path, record: dict[str, np.ndarray]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}.npz")
    tmp.write_bytes(record_bytes(record))
    tmp.replace(path)  # atomic: a killed run leaves no half record under the real name


def load_record(path: str | Path) -> dict[str, np.ndarray] | None:
    """The record, or None when it is missing, unreadable, truncated or does not match its checksum (then the
    predict job runs again). A record written without a checksum is not trusted either."""
    try:
        with np.load(path, allow_pickle=False) as z:
            rec = {f: z[f] for f in RECORD_FIELDS}
            stored = str(z["checksum"])
    except Exception:
        return None
    n = len(rec["pred"])
    if any(len(v) != n for v in rec.values()) or record_checksum(rec) != stored:
        return None
    return rec
