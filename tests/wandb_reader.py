"""Reads back a W&B offline run folder as W&B itself reads it for `wandb sync`: the run-*.wandb transaction log
(LevelDB's log format: a 7-byte W&B header, then 32 KiB blocks of checksummed chunks) holding one protobuf
``Record`` after another, parsed with W&B's own message classes. wandb has no Python reader of its own left
(its sync and viewer are in its Go core), so the framing is read here and checked chunk by chunk."""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

HEADER = b":W&B" + struct.pack("<HB", 0xBEE1, 0)  # ident, magic, version
BLOCK = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path):
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:len(HEADER)] == HEADER, f"{path}: not a W&B transaction log"
    pos, parts = len(HEADER), b""
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:  # a block's tail too short for a chunk header is padding
            pos += BLOCK - pos % BLOCK
            continue
        crc, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk = data[pos + 7:pos + 7 + n]
        assert zlib.crc32(chunk, zlib.crc32(bytes([kind]))) == crc, f"{path}: damaged chunk at {pos}"
        pos += 7 + n
        parts += chunk
        if kind in (FULL, LAST):
            rec = pb.Record()
            rec.ParseFromString(parts)
            yield rec
            parts = b""


@dataclass
class OfflineRun:
    run_id: str
    name: str
    group: str
    project: str
    job_type: str
    tags: list[str]
    config: dict
    history: dict[int, dict] = field(default_factory=dict)  # step -> the values logged at it
    exit_code: int | None = None


def read_run(folder: Path) -> OfflineRun:
    (log,) = folder.glob("run-*.wandb")
    run: OfflineRun | None = None
    for rec in records(log):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            r = rec.run
            config = {i.key: json.loads(i.value_json) for i in r.config.update}
            run = OfflineRun(r.run_id, r.display_name, r.run_group, r.project, r.job_type, list(r.tags), config)
        elif kind == "history":
            values = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item}
            run.history[int(rec.history.step.num)] = {k: v for k, v in values.items() if not k.startswith("_")}
        elif kind == "exit":
            run.exit_code = rec.exit.exit_code
    assert run is not None, f"{log}: no run record"
    return run
