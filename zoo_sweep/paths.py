"""Where files go: one results folder (default ``results/``, or ``$ZOO_SWEEP_HOME``) holds caches,
prediction records, reports and exports; the store is separate (``--db`` / ``$ZOO_SWEEP_DB``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from zoo_sweep.errors import UserError


def write_atomic(path: str | Path, write: Callable[[Path], object]) -> None:
    """``write(tmp)`` to a temporary file beside ``path``, then rename it over ``path``: a reader, or a run
    killed mid-write, sees the old file or the new one, never half of one. The temporary name carries the
    process id, so concurrent writers of one path never share it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(tmp)
    tmp.replace(path)


@dataclass(frozen=True)
class Paths:
    home: Path

    @classmethod
    def default(cls, home: str | Path | None = None) -> "Paths":
        return cls(Path(home or os.environ.get("ZOO_SWEEP_HOME") or "results").absolute())

    @property
    def cache(self) -> Path:  # decoded image sets and the embedded zoo's weights
        return self.home / "cache"

    @property
    def records(self) -> Path:  # stage-1 prediction records, one file per (model, eval set)
        return self.home / "records"

    @property
    def checkpoints(self) -> Path:  # per-epoch transfer checkpoints, one folder per job, removed when it ends
        return self.cache / "transfer_ckpt"

    @property
    def logits(self) -> Path:  # teacher / s0 logits shared by a sweep's transfer jobs (logit_cache.py)
        return self.cache / "logits"

    def report(self, sweep: str) -> Path:
        return self.home / "reports" / sweep

    def export(self) -> Path:
        return self.home / "export" / "all"


def writable_dir(path: Path, flag: str) -> Path:
    """A folder that exists or is created now, and is writable; one line naming ``flag`` otherwise."""
    p = Path(path).absolute()
    if p.exists() and not p.is_dir():
        raise UserError(f"{flag} {path} is a file, not a folder; give a folder (it is created if missing)")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{flag} {path}: cannot create the folder ({e.strerror or e}); choose another") from None
    if not os.access(p, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path}: cannot write in the folder (permission denied); choose another")
    return p
