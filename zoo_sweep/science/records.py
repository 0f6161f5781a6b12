"""Stage 1: one forward pass of one model over one image set, kept as a compact prediction record.

A record holds, per sample, the predicted class, the true-class and max probabilities and the top-k
logits. Every pair metric of stage 2 comes from these records, so a zoo of N models costs N forward
passes, not N^2.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from zoo_sweep.data.images import ImageSet, model_input
from zoo_sweep.paths import write_atomic

RECORD_FIELDS = ("pred", "p_true", "p_max", "topk_idx", "topk_logits")
AUTO_BATCH_CPU = 256  # batch_size "auto" on the CPU
AUTO_BATCH_MAX = 1024  # batch_size "auto" on CUDA: the first size tried when none is remembered
BATCH_MEMO = "predict_batch_sizes.json"  # in the cache folder: remembered sizes, per model, GPU type and input size


@torch.no_grad()
def predict(model: torch.nn.Module, images: ImageSet, cfg: dict, batch_size: int | str = "auto", topk: int = 5,
            device: str | torch.device = "cpu", *, memo: str | Path | None = None,
            name: str | None = None) -> dict[str, np.ndarray]:
    """The prediction record of ``model`` on ``images``.

    On the CPU everything is float32, in batches of 256 for ``batch_size="auto"``. On CUDA the forward pass runs
    in bf16 autocast with channels-last tensors; each next uint8 batch is copied from pinned memory and
    transformed on a side stream while the current one computes, and the outputs stay on the GPU until the end.
    ``"auto"`` there is the largest power of two up to 1024 that fits (halving on out-of-memory); with ``memo``
    (a JSON file) and the model's ``name`` the size found is remembered per model, GPU type and input size.
    """
    if batch_size != "auto" and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive int or 'auto', got {batch_size!r}")
    cuda = torch.device(device).type == "cuda"
    if batch_size != "auto" or not cuda:
        return _predict(model, images, cfg, AUTO_BATCH_CPU if batch_size == "auto" else batch_size, topk, device)
    start = min(AUTO_BATCH_MAX, 1 << max(len(images) - 1, 0).bit_length())  # the set's size, rounded up
    key = f"{name}|{torch.cuda.get_device_name(device)}|{cfg['input_size'][-1]}" if memo and name else None
    return fit_batch_size(lambda bs: _predict(model, images, cfg, bs, topk, device), start, memo, key)[1]


@torch.no_grad()
def _predict(model, images: ImageSet, cfg: dict, batch_size: int, topk: int, device) -> dict[str, np.ndarray]:
    cuda = torch.device(device).type == "cuda"
    if cuda:
        model.eval().to(device, memory_format=torch.channels_last)
    else:
        model.eval().to(device)
    k = min(topk, images.num_classes)
    parts: dict[str, list] = {f: [] for f in RECORD_FIELDS}
    for x, y in (_cuda_batches if cuda else _cpu_batches)(images, cfg, batch_size, device):
        with torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext():
            logits = model(x).float()
        prob = logits.softmax(dim=1)
        p_max, pred = prob.max(dim=1)
        top_logits, top_idx = logits.topk(k, dim=1)
        for f, v in zip(RECORD_FIELDS, (pred, prob.gather(1, y.view(-1, 1)).squeeze(1), p_max, top_idx, top_logits)):
            parts[f].append(v)  # stays on the device: one copy to the CPU at the end, no sync per batch
    rec = {f: torch.cat(v).cpu().numpy() for f, v in parts.items()}
    rec["pred"] = rec["pred"].astype(np.int32)
    rec["topk_idx"] = rec["topk_idx"].astype(np.int32)
    rec["p_true"] = rec["p_true"].astype(np.float32)
    return rec


def _cpu_batches(images: ImageSet, cfg: dict, batch_size: int, device):
    for start in range(0, len(images), batch_size):
        yield (model_input(images.images[start:start + batch_size], cfg, device),
               images.labels[start:start + batch_size].to(device))


def _cuda_batches(images: ImageSet, cfg: dict, batch_size: int, device):
    """(input, labels) per batch. The next batch is pinned, copied (non-blocking) and transformed on a side stream
    while the caller computes on the current stream, which waits for it before use. The host waits only for the
    batch before the current one (whose successor is already queued, so the GPU never idles on it): at most two
    inputs are in flight, however far ahead the host could run."""
    main = torch.cuda.current_stream(device)
    side = torch.cuda.Stream(device)
    labels = images.labels.to(device)

    def load(start: int) -> torch.Tensor:
        with torch.cuda.stream(side):
            x = model_input(images.images[start:start + batch_size].pin_memory(), cfg, device)
            return x.contiguous(memory_format=torch.channels_last)

    nxt, done = load(0), None
    for start in range(0, len(images), batch_size):
        main.wait_stream(side)
        x = nxt
        x.record_stream(main)  # allocated on the side stream: not reused until the main stream is done with it
        yield x, labels[start:start + batch_size]  # the caller queues this batch's forward pass ...
        if done is not None:
            done.synchronize()  # the previous batch has finished
        done = main.record_event()
        if start + batch_size < len(images):
            nxt = load(start + batch_size)  # ... while the next batch is prepared


def fit_batch_size(try_batch: Callable[[int], object], start: int, memo: str | Path | None = None,
                   key: str | None = None) -> tuple[int, object]:
    """``(size, try_batch(size))`` for the first size that runs without CUDA out-of-memory, halving from ``start``,
    or from the size remembered for ``key`` in the JSON file ``memo`` when that is smaller. A size found by
    halving is remembered (written atomically: several workers may share the file), so the next call with the
    same key starts there, and halves again (and updates it) when it no longer fits."""
    remembered = _read_memo(memo).get(key) if memo and key else None
    size = min(start, remembered) if remembered else start
    halved = False
    while True:
        try:
            out = try_batch(size)
            break
        except torch.cuda.OutOfMemoryError:
            if size <= 1:
                raise
        # outside the except block: the traceback, and the tensors its frames hold, are gone
        size, halved = size // 2, True
        torch.cuda.empty_cache()
    if halved and memo and key:
        _remember(memo, key, size)
    return size, out


def _read_memo(path: str | Path | None) -> dict[str, int]:
    try:
        d = json.loads(Path(path).read_text())
    except (OSError, ValueError, TypeError):
        return {}
    return {k: v for k, v in d.items() if type(v) is int and v > 0} if isinstance(d, dict) else {}


def _remember(path: str | Path, key: str, size: int) -> None:
    sizes = {**_read_memo(path), key: size}
    write_atomic(path, lambda tmp: tmp.write_text(json.dumps(sizes, indent=1, sort_keys=True)))


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
    write_atomic(path, lambda tmp: tmp.write_bytes(record_bytes(record)))


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
