"""Where files go: one results folder (default ``results/``, or ``$ZOO_SWEEP_HOME``) holds caches,
prediction records, reports and exports; the store is separate (``--db`` / ``$ZOO_SWEEP_DB``)."""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from zoo_sweep.errors import UserError


def write_atomic(path: str | Path, write: Callable[[Path], object], *, mode: int | None = None,
                 flag: str | None = None) -> Path:
    """``write(tmp)`` to a new temporary file beside ``path``, then rename it over ``path``: a reader, or a run
    killed mid-write, sees the old file or the new one, never half of one. The rename replaces whatever holds the
    name, a symbolic link included: nothing is ever written through a link already there (its target stays as
    it was). The temporary name carries the process id and a random part, so concurrent writers never share it
    and nobody can plant a link at it beforehand. ``mode``: the file's permissions (default: the umask's).
    ``flag``: the option that chose the folder (a command's output); a failure is then one line naming it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(6)}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.open("xb").close()  # ours alone (O_EXCL), and a folder we cannot write in fails here, plainly
        write(tmp)
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if flag is not None and isinstance(e, OSError):
            raise UserError(_cannot_write(flag, path, e)) from None
        raise
    return path


def _cannot_write(flag: str, path: Path, e: OSError) -> str:
    return (f"{flag} {path.parent}: cannot write {path.name} ({e.strerror or type(e).__name__}); "
            "choose another folder")


def refuse_folders(folder: Path, names: list[str], flag: str) -> None:
    """One line when a file to be written in ``folder`` has the name of a folder there (a link is fine: it is
    replaced): refused before the first file is written, not halfway through."""
    for name in names:
        p = Path(folder) / name
        if p.is_dir() and not p.is_symlink():
            raise UserError(_cannot_write(flag, p, IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))))


@contextlib.contextmanager
def staged_dir(folder: str | Path, flag: str) -> Iterator[Path]:
    """A new private folder inside ``folder`` for a writer that names its own files (the report). When the
    block ends without an error, each file written there is renamed over its name in ``folder``, as
    ``write_atomic`` does: a link already in ``folder`` is replaced, never written through. A name in ``folder``
    that is a folder stops it with one line before any file is moved; the private folder is always removed."""
    folder = Path(folder)
    try:
        stage = Path(tempfile.mkdtemp(prefix=".staging-", dir=folder))
    except OSError as e:
        raise UserError(f"{flag} {folder}: cannot write in the folder ({e.strerror or e}); choose another") from None
    try:
        yield stage
        files = sorted(p for p in stage.iterdir() if p.is_file())
        refuse_folders(folder, [f.name for f in files], flag)
        for f in files:
            try:
                os.replace(f, folder / f.name)
            except OSError as e:
                raise UserError(_cannot_write(flag, folder / f.name, e)) from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)


@dataclass(frozen=True)
class Paths:
    home: Path

    @classmethod
    def default(cls, home: str | Path | None = None) -> Paths:
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


def writable_dir(path: str | Path, flag: str) -> Path:
    """A folder that exists or is created now, and is writable; one line naming ``flag`` otherwise. An empty
    name is refused: as a path it would mean the current folder, which nobody asks for by giving nothing."""
    if not str(path).strip():
        raise UserError(f"{flag} is empty: give a folder (it is created if missing)")
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
