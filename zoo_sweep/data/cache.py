"""The decode cache of one image set: a folder named by the set's key, memory-mapped by every process that uses
the set, so the processes of one node share one copy in the page cache.

    images.u8          every sample's uint8 3 x S x S pixels, row after row (no header: index.json has the shape)
    build.json         what is being built: items, row shape, rows per shard, which file list
    files.txt          the decode list, relative to the image folder, one per line (digits: absent)
    items.npz          per item of the decode list: label and source id
    shards/NNNNN.json  one per finished shard: where its rows are, how many, which items were unreadable, crc32
    index.json         written last: the finished set (sample count, shard table, stamp of images.u8)
    samples.npz        per sample: label and source id

Shard i decodes items [i*K, (i+1)*K) into rows starting at i*K; when some items are unreadable the shards are
moved down afterwards (in order, so each move only overwrites rows already moved or free), leaving one
contiguous array. Every write goes through ``pwrite``: a killed decode leaves finished shards intact, and the
next build resumes at the shards without a marker. A shard's marker is written after its rows, and the build
checks every marked shard's crc32 before trusting it, so a shard damaged since (or mid-move when a build was
killed) is decoded again. Readers trust a finished set while images.u8 has the size and mtime stamped in
index.json; any other write to it makes the next reader verify and repair it.

This module never imports torch: decode workers and planning code use it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import sys
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from zoo_sweep.data.decode import DECODERS, decode_file, init_worker
from zoo_sweep.errors import UserError
from zoo_sweep.paths import write_atomic

FORMAT = 1  # bump when the layout changes: a folder built by another format is rebuilt
SHARD_BYTES = 64 << 20  # decoded bytes per shard: a worker's unit of work and of resume
POOL_MIN_ITEMS = 512  # fewer items decode in-process: starting worker processes would cost more
MOVE_BYTES = 64 << 20  # chunk of a compaction move


@dataclass
class Source:
    """What a set is made of before decoding: per-item labels and source ids, and either files to decode or
    pixels already decoded (the digits, an old single-file cache)."""
    classes: list[str]
    labels: np.ndarray
    source_ids: np.ndarray
    size: int
    files: list[str] | None = None  # absolute paths
    root: str | None = None  # the image folder (files.txt is relative to it)
    pixels: Any = None  # uint8 N x 3 x S x S, anything numpy can slice
    skipped: int = 0  # unreadable files already left out of ``pixels``

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def row_shape(self) -> tuple[int, int, int]:
        return (3, self.size, self.size)


@dataclass
class Opened:
    """A finished set: ``images`` is a read-only memory map of images.u8."""
    images: np.ndarray
    labels: np.ndarray
    source_ids: np.ndarray
    classes: list[str]
    skipped: int
    unreadable: list[str] = field(default_factory=list)


def rows_per_shard(row_bytes: int) -> int:
    return max(1, SHARD_BYTES // row_bytes)


# ---------------------------------------------------------------- reading
def open_set(folder: Path) -> Opened | None:
    """The finished set, or None when it is missing, unfinished, or images.u8 was written since it was stamped."""
    index = _read_json(folder / "index.json")
    data = folder / "images.u8"
    if index is None or index.get("format") != FORMAT or not data.is_file():
        return None
    if _stamp(data) != index["stamp"]:
        return None
    try:
        with np.load(folder / "samples.npz") as s:
            labels, source_ids = s["labels"], s["source_ids"]
    except (OSError, ValueError, KeyError):
        return None
    shape = (index["samples"], *index["row_shape"])
    images = np.memmap(data, dtype=np.uint8, mode="r", shape=shape)
    return Opened(images, labels, source_ids, index["classes"], index["skipped"], index.get("unreadable", []))


@contextlib.contextmanager
def locked(folder: Path, say: Callable[[str], None] | None = None):
    """One builder per set at a time (across processes); the others wait, then find it finished."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if say:
                say(f"waiting for another process decoding into {folder}")
            fcntl.flock(f, fcntl.LOCK_EX)
        except OSError:  # a file system without locks (some NFS mounts): decoders of one set may then collide
            if say:
                say(f"no file locks on {folder}: decode each image set from one process first")
            yield
            return
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# ---------------------------------------------------------------- building
def build(folder: Path, source: Source, workers: int = 1, progress: bool = False, decoder: str = "auto",
          label: str = "decode") -> dict:
    """Decode into ``folder`` whatever is missing or damaged, then finish the set. Call under ``locked``.
    Returns what was done: shards decoded, shards found damaged, images decoded, seconds."""
    if decoder not in DECODERS:
        raise ValueError(f"unknown decoder {decoder!r}: {', '.join(DECODERS)}")
    row_bytes = int(np.prod(source.row_shape))
    k = rows_per_shard(row_bytes)
    meta = {"format": FORMAT, "items": len(source), "row_shape": list(source.row_shape), "shard_rows": k,
            "list": _list_id(source)}
    _start(folder, source, meta)
    data = folder / "images.u8"
    bounds = [(a, min(a + k, len(source))) for a in range(0, len(source), k)]
    markers = _markers(folder, len(bounds))
    damaged = [i for i, m in markers.items() if not _intact(data, row_bytes, m)]
    todo = [(i, markers[i]["first"] if i in markers else bounds[i][0]) for i in range(len(bounds))
            if i not in markers or i in damaged]
    t0 = time.perf_counter()
    done = _run(folder, source, bounds, todo, row_bytes, workers, progress, decoder, label)
    if any(i in markers and done[i]["count"] != markers[i]["count"] for i in done):
        # a file that decoded before no longer does (or the reverse): the shard table is void, start again
        shutil.rmtree(folder / "shards")
        return build(folder, source, workers, progress, decoder, label)
    markers.update(done)
    _compact(folder, data, row_bytes, markers)
    _finish(folder, source, bounds, markers, row_bytes)
    n = sum(bounds[i][1] - bounds[i][0] for i in done)
    return {"shards": len(done), "damaged": len(damaged), "images": n, "seconds": time.perf_counter() - t0}


def _start(folder: Path, source: Source, meta: dict) -> None:
    """A folder built for something else (another format, file list or shard size) starts empty; the decode
    list and per-item labels are written before any pixel."""
    if _read_json(folder / "build.json") != meta:
        for name in ("index.json", "images.u8", "samples.npz", "items.npz", "files.txt", "build.json"):
            (folder / name).unlink(missing_ok=True)
        shutil.rmtree(folder / "shards", ignore_errors=True)
        if source.files is not None:
            rel = [os.path.relpath(f, source.root) for f in source.files]
            write_atomic(folder / "files.txt", lambda t: t.write_text("\n".join(rel) + "\n"))
        write_atomic(folder / "items.npz", lambda t: _savez(t, labels=source.labels, source_ids=source.source_ids))
        write_atomic(folder / "build.json", lambda t: t.write_text(json.dumps(meta)))
    (folder / "index.json").unlink(missing_ok=True)  # unfinished from here on: readers wait for the lock
    (folder / "shards").mkdir(exist_ok=True)
    data = folder / "images.u8"
    if data.is_symlink():  # no build makes one: pixels are never written through a link placed there
        data.unlink()
    fd = os.open(data, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o644)  # never truncated: finished rows stay
    os.close(fd)


def _markers(folder: Path, n_shards: int) -> dict[int, dict]:
    out = {}
    for i in range(n_shards):
        m = _read_json(_marker_path(folder, i))
        if m is not None:
            out[i] = m
    return out


def _intact(data: Path, row_bytes: int, m: dict) -> bool:
    return _crc(data, m["first"] * row_bytes, m["count"] * row_bytes) == m["crc32"]


def _crc(path: Path, offset: int, length: int) -> int | None:
    """crc32 of a byte range, or None when the file is shorter than that."""
    crc, left = 0, length
    with open(path, "rb") as f:
        f.seek(offset)
        while left:
            chunk = f.read(min(left, MOVE_BYTES))
            if not chunk:
                return None
            crc, left = zlib.crc32(chunk, crc), left - len(chunk)
    return crc


def _run(folder: Path, source: Source, bounds: list, todo: list[tuple[int, int]], row_bytes: int, workers: int,
         progress: bool, decoder: str, label: str) -> dict[int, dict]:
    """Decode the shards in ``todo`` ((shard, first row) pairs); each marker is written as its shard ends."""
    data = str(folder / "images.u8")
    tasks = [(i, first, *bounds[i]) for i, first in todo]
    n_items = sum(b - a for _, _, a, b in tasks)
    if source.files is None:  # pixels in memory: copied in this process
        with _Bar(None, n_items, False) as bar:
            return _collect(folder, (_copy_shard(data, row_bytes, i, first, source.pixels[a:b])
                                     for i, first, a, b in tasks), bar)
    jobs = [(data, row_bytes, i, first, source.files[a:b], source.size, decoder) for i, first, a, b in tasks]
    workers = max(1, min(workers, len(jobs)))
    with _Bar(label, n_items, progress) as bar:  # from here: the rate includes starting the workers
        if workers == 1 or n_items < POOL_MIN_ITEMS:
            with _single_thread():
                return _collect(folder, map(decode_shard, jobs), bar)
        from concurrent.futures import ProcessPoolExecutor, as_completed

        # a dead worker (out of memory, killed) fails the build with BrokenProcessPool; the next build resumes
        with ProcessPoolExecutor(workers, mp_context=_worker_context(), initializer=init_worker,
                                 initargs=(os.getpid(),)) as pool:
            futures = [pool.submit(decode_shard, job) for job in jobs]
            try:
                return _collect(folder, (f.result() for f in as_completed(futures)), bar)
            except BaseException:
                for f in futures:
                    f.cancel()
                raise


def _worker_context():
    """Workers forked from a fork server that has imported the decoders (torch, torchvision) once: they start in
    milliseconds and share those pages, where spawned workers would each import torch (seconds of CPU and
    ~0.4 GiB each, 64 times over on a 64-core node). The server is a clean, single-threaded process, so the
    fork is safe even when the caller (a Ray actor, a training process) runs threads."""
    import multiprocessing

    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["zoo_sweep.data.cache", "torch", "torchvision.io"])  # missing ones are skipped
    return ctx


def _collect(folder: Path, results: Iterable[dict], bar: _Bar) -> dict[int, dict]:
    """Markers of the shards in ``results``, written as they come."""
    done = {}
    for r in results:
        i, items = r.pop("shard"), r.pop("items")
        write_atomic(_marker_path(folder, i), lambda t, r=r: t.write_text(json.dumps(r)))
        done[i] = r
        bar.advance(items)
    return done


def decode_shard(job: tuple) -> dict:
    """Worker entry: decode one shard's files into its rows (unreadable files leave no row)."""
    data, row_bytes, shard, first, files, size, decoder = job
    rows = ((None if (x := decode_file(f, size, decoder)) is None else x[None]) for f in files)
    return {"shard": shard, **write_rows(data, row_bytes, first, rows), "items": len(files)}


def _copy_shard(data: str, row_bytes: int, shard: int, first: int, pixels) -> dict:
    return {"shard": shard, **write_rows(data, row_bytes, first, [np.asarray(pixels)]), "items": len(pixels)}


def write_rows(data: str, row_bytes: int, first: int, chunks: Iterable[np.ndarray | None]) -> dict:
    """Write row chunks (k x row arrays; None: one unreadable item) one after another from row ``first``.
    Returns the shard marker: first row, rows written, unreadable item offsets, crc32 of the rows."""
    fd = os.open(data, os.O_WRONLY | os.O_NOFOLLOW)
    crc, count, item, bad = 0, 0, 0, []
    try:
        for chunk in chunks:
            if chunk is None:
                bad.append(item)
                item += 1
                continue
            buf = np.ascontiguousarray(chunk, dtype=np.uint8).reshape(-1)
            _pwrite_all(fd, memoryview(buf), (first + count) * row_bytes)
            crc = zlib.crc32(buf, crc)
            k = buf.size // row_bytes
            count, item = count + k, item + k
    finally:
        os.close(fd)
    return {"first": first, "count": count, "unreadable": bad, "crc32": crc}


def _pwrite_all(fd: int, buf: memoryview, offset: int) -> None:
    while buf.nbytes:
        n = os.pwrite(fd, buf, offset)
        buf, offset = buf[n:], offset + n


def _compact(folder: Path, data: Path, row_bytes: int, markers: dict[int, dict]) -> None:
    """Move shards down over the rows unreadable items left free, in shard order; each marker is rewritten after
    its move, so a build killed mid-move finds that shard damaged and decodes it again."""
    cursor = 0
    for i in sorted(markers):
        m = markers[i]
        if m["first"] != cursor and m["count"]:
            _move(data, m["first"] * row_bytes, cursor * row_bytes, m["count"] * row_bytes)
        if m["first"] != cursor:
            m["first"] = cursor
            write_atomic(_marker_path(folder, i), lambda t, m=m: t.write_text(json.dumps(m)))
        cursor += m["count"]
    os.truncate(data, cursor * row_bytes)


def _move(data: Path, src: int, dst: int, length: int) -> None:
    """Copy a byte range to a lower offset, front to back (safe when the ranges overlap)."""
    fd = os.open(data, os.O_RDWR | os.O_NOFOLLOW)
    try:
        done = 0
        while done < length:
            chunk = os.pread(fd, min(MOVE_BYTES, length - done), src + done)
            _pwrite_all(fd, memoryview(chunk), dst + done)
            done += len(chunk)
    finally:
        os.close(fd)


def _finish(folder: Path, source: Source, bounds: list, markers: dict[int, dict], row_bytes: int) -> None:
    keep = np.ones(len(source), dtype=bool)
    for i, m in markers.items():
        keep[[bounds[i][0] + j for j in m["unreadable"]]] = False
    n = int(keep.sum())
    if n == 0:
        raise UserError(f"no readable images under {source.root} ({len(source)} unreadable)")
    names = [os.path.relpath(f, source.root) for f, ok in zip(source.files or [], keep) if not ok]
    write_atomic(folder / "samples.npz",
                 lambda t: _savez(t, labels=source.labels[keep], source_ids=source.source_ids[keep]))
    data = folder / "images.u8"
    index = {"format": FORMAT, "samples": n, "row_shape": list(source.row_shape), "classes": source.classes,
             "skipped": int(len(source) - n) + source.skipped, "unreadable": names[:100],
             "shards": [[markers[i]["first"], markers[i]["count"], markers[i]["crc32"]] for i in sorted(markers)],
             "stamp": _stamp(data)}
    write_atomic(folder / "index.json", lambda t: t.write_text(json.dumps(index)))


# ---------------------------------------------------------------- helpers
def _marker_path(folder: Path, i: int) -> Path:
    return folder / "shards" / f"{i:05d}.json"


def _stamp(path: Path) -> list[int]:
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns]


def _read_json(path: Path) -> dict | None:
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) else None


def _savez(path: Path, **arrays) -> None:
    with open(path, "wb") as f:  # np.savez would append .npz to a temporary name
        np.savez(f, **arrays)


def _list_id(source: Source) -> str:
    from zoo_sweep.ids import content_id

    if source.files is None:
        return content_id({"pixels": list(np.shape(source.pixels)), "labels": source.labels.tolist()})
    return content_id([os.path.relpath(f, source.root) for f in source.files])


@contextlib.contextmanager
def _single_thread():
    """An in-process decode is one worker: torch's intra-op threads (if torch is loaded) would blur that."""
    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch else None
    if torch:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if torch:
            torch.set_num_threads(before)


class _Bar:
    """A progress bar in images/s on stderr (when asked), and one summary line per decode either way (``label``
    None: neither, for sets copied from memory)."""

    def __init__(self, label: str, total: int, show: bool):
        self.label, self.total, self.show, self.n = label, total, show and total > 0 and label is not None, 0

    def __enter__(self):
        self.t0 = time.perf_counter()
        if self.show:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     _RateColumn(), TimeRemainingColumn(), console=Console(stderr=True))
            self.progress.start()
            self.task = self.progress.add_task(self.label, total=self.total)
        return self

    def advance(self, n: int) -> None:
        self.n += n
        if self.show:
            self.progress.advance(self.task, n)

    def __exit__(self, *exc):
        if self.show:
            self.progress.stop()
        dt = time.perf_counter() - self.t0
        if self.n and exc[0] is None and self.label is not None:
            print(f"{self.label}: {self.n} images in {dt:.1f} s ({self.n / max(dt, 1e-9):.0f} images/s)",
                  file=sys.stderr)
        return False


def _RateColumn():
    from rich.progress import ProgressColumn
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task):
            return Text(f"{task.speed:,.0f} images/s" if task.speed else "- images/s")

    return RateColumn()
