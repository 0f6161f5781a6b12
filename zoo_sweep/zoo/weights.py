"""Weights files: their content hash (part of every job id that uses them), a cheap check that a file is whole,
and loading the state-dict layouts training scripts write.

Hashing and the whole-file check need no torch, so planning (and dry runs) can do them; a hash is cached by
(path, size, mtime), so a zoo of large files is read once, not at every plan.
"""

from __future__ import annotations

import hashlib
import json
import struct
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


def check_whole(path: str | Path) -> str | None:
    """Why a weights file cannot be whole (truncated, or not a weights file), or None. Reads only headers:
    safetensors states its data length, and torch.save writes a zip whose directory sits at the end."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if p.suffix == ".safetensors":
            with open(p, "rb") as f:
                head = f.read(8)
                if len(head) < 8:
                    return f"{size} bytes, shorter than a safetensors header"
                (n,) = struct.unpack("<Q", head)
                if n > size - 8:
                    return f"truncated: its header needs {n} bytes, the file has {size - 8} after the length"
                meta = json.loads(f.read(n))
            end = max((v["data_offsets"][1] for k, v in meta.items() if k != "__metadata__"), default=0)
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
    import argparse

    import torch

    try:
        if str(path).endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            with torch.serialization.safe_globals([argparse.Namespace]):  # timm's train.py stores its args
                state = torch.load(path, map_location="cpu", weights_only=True)
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
