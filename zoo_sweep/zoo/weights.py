"""Weights files: their content hash (part of every job id that uses them), a cheap check that a file is whole,
and loading the state-dict layouts training scripts write.

Hashing and the whole-file check need no torch, so planning (and dry runs) can do them; a hash is cached by
(path, size, mtime), so a zoo of large files is read once, not at every plan.
"""

from __future__ import annotations

import hashlib
import json
import struct
import sys
import zipfile
from pathlib import Path

from zoo_sweep.errors import UserError
from zoo_sweep.paths import write_atomic

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
# wrappers of a state dict, tried in this order: timm's and most training scripts' checkpoints
# ({"state_dict": ..., "optimizer": ...}), then {"model": ...} (DeiT, torchvision references, many others)
WRAPPER_KEYS = ("state_dict", "model")
# prefixes every key carries when a model was saved from inside a wrapper: DistributedDataParallel,
# torch.compile, and a Lightning module holding the timm model as ``self.model``
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.")


class HashCache:
    """sha256 of weights files, remembered per (resolved path, size, mtime) in ``CACHE/weights/sha256.json``."""

    def __init__(self, cache_dir: str | Path | None):
        self.path = Path(cache_dir) / "weights" / "sha256.json" if cache_dir else None
        self._known: dict[str, list] = {}
        if self.path is not None and self.path.is_file():
            try:
                self._known = dict(json.loads(self.path.read_text()))
            except (ValueError, OSError, TypeError):
                self._known = {}  # a damaged cache is rebuilt
        self._dirty = False

    def get(self, path: str | Path) -> str:
        p = Path(path).resolve()
        st = p.stat()
        stamp = [st.st_size, st.st_mtime_ns]
        hit = self._known.get(str(p))
        if hit and hit[:2] == stamp:
            return hit[2]
        digest = file_sha256(p)
        self._known[str(p)] = [*stamp, digest]
        self._dirty = True
        return digest

    def nonfinite(self, path: str | Path) -> tuple[int, int] | None:
        """(NaN or infinite values, floating-point values) in a weights file's state dict, remembered beside its
        hash for the same file version; None where this machine cannot tell (a torch.save file without torch)."""
        p = Path(path).resolve()
        self.get(p)  # the entry of this file version, hashed if it is new
        hit = self._known[str(p)]
        if len(hit) >= 5:
            return hit[3], hit[4]
        counts = count_nonfinite(p)
        if counts is not None:
            self._known[str(p)] = [*hit[:3], *counts]
            self._dirty = True
        return counts

    def save(self) -> None:
        if self._dirty and self.path is not None:
            known = self._known
            write_atomic(self.path, lambda tmp: tmp.write_text(json.dumps(known, sort_keys=True)))
            self._dirty = False


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _safetensors_layout(f, size: int) -> tuple[int, dict] | str:
    """(header length, tensors: name -> {dtype, shape, data_offsets}) of an open safetensors file, or why it
    is not one. The header is JSON written by anyone: every part of it is checked before it is used."""
    head = f.read(8)
    if len(head) < 8:
        return f"{size} bytes, shorter than a safetensors header"
    (n,) = struct.unpack("<Q", head)
    if n > size - 8:
        return f"truncated: its header needs {n} bytes, the file has {size - 8} after the length"
    try:
        meta = json.loads(f.read(n))
    except (ValueError, RecursionError):
        return "not a safetensors file: its header is not JSON"
    if not isinstance(meta, dict):
        return f"not a safetensors file: its header is a JSON {type(meta).__name__}, not an object"
    tensors = {k: v for k, v in meta.items() if k != "__metadata__"}
    for k, v in tensors.items():
        offsets = v.get("data_offsets") if isinstance(v, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)
                and 0 <= offsets[0] <= offsets[1]):
            return f"not a safetensors file: tensor {str(k)[:60]!r} has no valid data_offsets"
    return n, tensors


def check_whole(path: str | Path) -> str | None:
    """Why a weights file cannot be whole (truncated, or not a weights file), or None. Reads only headers:
    safetensors states its data length, and torch.save writes a zip whose directory sits at the end."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if p.suffix == ".safetensors":
            with open(p, "rb") as f:
                layout = _safetensors_layout(f, size)
            if isinstance(layout, str):
                return layout
            n, tensors = layout
            end = max((v["data_offsets"][1] for v in tensors.values()), default=0)
            if 8 + n + end != size:
                return f"truncated: the header describes {8 + n + end} bytes, the file has {size}"
            return None
        if zipfile.is_zipfile(p):
            with zipfile.ZipFile(p) as z:
                z.infolist()
            return None
        with open(p, "rb") as f:
            magic = f.read(2)
        if magic == b"PK":
            return "truncated: a torch.save zip without its directory"
        if magic[:1] == b"\x80":
            return None  # a legacy (pre-1.6) torch.save pickle: checked when it is loaded
        return "not a torch.save or safetensors file"
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile, struct.error) as e:
        return f"unreadable: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": ")


# the exponent bits of each floating-point format: all set means NaN or infinite, whatever the other bits
_EXPONENT = {"F64": ("<u8", 0x7FF0000000000000), "F32": ("<u4", 0x7F800000), "F16": ("<u2", 0x7C00),
             "BF16": ("<u2", 0x7F80)}


def count_nonfinite(path: str | Path) -> tuple[int, int] | None:
    """(NaN or infinite values, floating-point values) of a weights file's state dict (a training checkpoint's
    optimizer state is not counted); None where it cannot be told here: a torch.save file in a process that has
    not loaded torch, or a file torch cannot read (loading it at launch says why). A model with such weights
    computes NaN, so its accuracy is that of always answering one class: worth its own warning at plan, not the
    chance-level one."""
    import numpy as np

    p = Path(path)
    if p.suffix == ".safetensors":
        with open(p, "rb") as f:
            layout = _safetensors_layout(f, p.stat().st_size)
        if isinstance(layout, str):
            return None
        n, tensors = layout
        data = np.memmap(p, dtype=np.uint8, mode="r", offset=8 + n) if p.stat().st_size > 8 + n else None
        bad = total = 0
        for v in tensors.values():
            if v.get("dtype") not in _EXPONENT or data is None:
                continue
            kind, mask = _EXPONENT[v["dtype"]]
            values = data[v["data_offsets"][0]:v["data_offsets"][1]]
            values = values[:len(values) - len(values) % np.dtype(kind).itemsize].view(kind)
            for i in range(0, len(values), 1 << 24):  # bounded temporaries for a tensor of gigabytes
                part = values[i:i + (1 << 24)]
                bad += int(np.count_nonzero((part & mask) == mask))
            total += len(values)
        return bad, total
    torch = sys.modules.get("torch")
    if torch is None:  # a plan that has not loaded torch (a dry run on a login node) does not load it for this
        return None
    try:
        state = _torch_load(p, mmap=zipfile.is_zipfile(p))
        state = unwrap(state, str(p))
    except Exception:
        return None
    bad = total = 0
    for t in state.values():
        if isinstance(t, torch.Tensor) and t.is_floating_point():
            try:
                finite = int(torch.isfinite(t).sum())
            except RuntimeError:  # a dtype without isfinite (float8): counted in float32
                finite = int(torch.isfinite(t.float()).sum())
            bad += t.numel() - finite
            total += t.numel()
    return bad, total


def _torch_load(path, mmap: bool = False):
    """torch.load of tensors, plain containers and argparse.Namespace only: nothing unpickled can run code."""
    import argparse

    import torch

    with torch.serialization.safe_globals([argparse.Namespace]):  # timm's train.py stores its args
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)


def require_whole(path: str | Path, who: str) -> None:
    if not Path(path).is_file():
        raise UserError(f"the weights {path} of {who} are not there (no such file)")
    problem = check_whole(path)
    if problem:
        raise UserError(f"cannot use the weights {path} of {who}: {problem}; save them again "
                        "(torch.save(model.state_dict(), ...) or safetensors)")


def load_state(path: str) -> dict:
    """A state dict from any of the layouts in WRAPPER_KEYS, from torch.save files (tensors, plain containers
    and argparse.Namespace only: nothing is unpickled that could run code) or safetensors."""
    try:
        if str(path).endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = _torch_load(path)
    except Exception as e:  # truncated, or objects other than tensors: say which file, not pickle internals
        first = (str(e).strip().splitlines() or [""])[0]
        hint = ("; it holds objects other than tensors: save model.state_dict() alone"
                if "weights_only" in str(e) or "Unsupported global" in str(e) else "")
        raise UserError(f"cannot read weights {path}: {type(e).__name__}: {first}{hint}") from None
    return unwrap(state, path)


def unwrap(state, path: str = "") -> dict:
    if isinstance(state, dict):
        for key in WRAPPER_KEYS:
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not state:
        raise UserError(f"{path} holds no state dict (a dict of tensors, or one under "
                        f"{' or '.join(repr(k) for k in WRAPPER_KEYS)})")
    return state


def strip_prefixes(state: dict, expected) -> dict:
    """Keys without a wrapper prefix that every key carries and no key of the model has."""
    expected = list(expected)
    for prefix in WRAPPER_PREFIXES:
        if all(k.startswith(prefix) for k in state) and not any(k.startswith(prefix) for k in expected):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def fit_state(model, state: dict, path: str, who: str) -> dict:
    """``state`` with its keys matched to ``model``'s, or a one-line UserError naming the first missing and
    unexpected keys and shape mismatches."""
    expected = model.state_dict()
    state = strip_prefixes(state, expected)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [(k, list(state[k].shape), list(expected[k].shape)) for k in expected
              if k in state and hasattr(state[k], "shape") and state[k].shape != expected[k].shape]
    if not (missing or unexpected or shapes):
        return state
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s), first {missing[0]}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s), first {unexpected[0]}")
    if shapes:
        k, got, want = shapes[0]
        parts.append(f"{len(shapes)} shape mismatch(es), first {k}: {got} in the file, {want} in the model")
    head = (getattr(model, "pretrained_cfg", None) or {}).get("classifier")
    heads = isinstance(head, str) and shapes and not missing and not unexpected and \
        all(k.startswith(head) for k, _, _ in shapes)
    hint = (f"; the file's head has {shapes[0][1][0]} outputs: set num_classes = {shapes[0][1][0]} in kwargs"
            if heads else "; check arch and kwargs (they must build the model the weights were trained as)")
    raise UserError(f"weights {path} do not fit {who}: " + "; ".join(parts) + hint)
