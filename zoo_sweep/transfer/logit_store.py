"""Teacher-output reuse across a sweep (FKD-style): a model's logits on the transfer stream, computed once.

Every transfer job draws its batches and their augmentation from a generator seeded by the job's seed alone,
never touched by the student or the method. So two jobs with the same transfer set, seed, batch size and
augmentation feed a given model exactly the same inputs, and that model (a teacher, or a student's frozen
copy s0, both in eval mode) produces the same logits in both. The first job to run an epoch stores them;
the others read them back instead of running the model. The stream belongs to the model, not to its role:
a teacher's logits serve every student it teaches, a student's s0 logits every teacher it learns from, and
a model that teaches in one job and learns in another shares one stream.

What is stored is exactly what the forward pass gave (float32 on the CPU; bf16 values under CUDA autocast,
stored as bf16, which is lossless), so a job that reads the cache sees the very numbers it would have
computed: its results equal the uncached run's, up to the GPU's own nondeterminism.

Layout: ``CACHE/logits/STREAM/DEVICE_KIND/e{epoch}.pt``, one file per epoch, written atomically; a missing,
truncated or mis-shaped file is recomputed. The launcher decides which streams are worth caching
(``plan_streams``: used by two or more of the jobs it is about to run, small enough, logits-only method) and
removes a stream's folder when its last job has ended.
"""

from __future__ import annotations

import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from zoo_sweep.ids import content_id
from zoo_sweep.paths import write_atomic
from zoo_sweep.transfer.catalog import CATALOG

STREAM_VERSION = 1  # bump when the order or augmentation of the transfer stream changes


def stream_key(model: dict, job: dict, transfer_key: str) -> str:
    """Identity of one model's logits on one job's transfer stream (``job``: a transfer job's payload).

    With inputs = "student" every model sees the batch at the student's geometry, so the stream depends on the
    student too (named by its entry: coarser than its geometry, never wrong)."""
    hp = job["hp"]
    ident = {"v": STREAM_VERSION, "model": model, "transfer": transfer_key, "image_size": job["image_size"],
             "seed": job["seed"], "batch_size": hp["batch_size"], "augment": hp["augment"]}
    if hp.get("inputs", "own") == "student":
        ident["geometry_of"] = job["student"]
    return content_id(ident)


def cacheable_roles(method: str) -> tuple[str, ...]:
    """The roles whose logits a method's jobs may read from the cache: none for multi-teacher and
    feature-based methods (they always compute their teachers), else the teacher, and s0 where it runs."""
    m = CATALOG.get(method)
    if m is None or m.multi or m.needs_features:
        return ()
    return ("teacher", "s0") if m.needs_s0 else ("teacher",)


def job_streams(job: dict, transfer_key: str) -> dict[str, str]:
    """The streams a single-teacher job could read from the cache: {"teacher": key, "s0": key} at most."""
    if "teachers" in job:  # a multi-teacher stage
        return {}
    model = {"teacher": job["teacher"], "s0": job["student"]}
    return {role: stream_key(model[role], job, transfer_key) for role in cacheable_roles(job["method"])}


def stream_bytes(n_transfer: int, num_classes: int, hp: dict, bytes_per_logit: int = 4) -> int:
    """Disk size of one stream over all epochs (whole batches only, as the training loop uses them)."""
    from zoo_sweep.config.params import used_rows

    return used_rows(n_transfer, hp["batch_size"]) * num_classes * bytes_per_logit * hp["epochs"]


@dataclass
class StreamPlan:
    streams: dict[str, dict[str, str]]  # job id -> the roles it caches -> stream key
    uses: Counter  # stream key -> jobs (of this launch) that read or write it
    skipped_large: int = 0  # streams used twice or more but over the size cap

    def order(self, jobs: list[dict]) -> list[dict]:
        """Jobs reordered so the first wave computes each shared stream once and the rest read it: first jobs
        whose streams are all new (they run side by side without computing the same stream twice), then
        jobs that bring at least one new stream, then jobs that only read."""
        keys = {j["id"]: set(self.streams.get(j["id"], {}).values()) for j in jobs}
        computed: set[str] = set()
        first, later = [], []
        for j in jobs:
            k = keys[j["id"]]
            if k and not k & computed:
                first.append(j)
                computed |= k
            else:
                later.append(j)
        bring, read = [], []
        for j in later:
            (bring if keys[j["id"]] - computed else read).append(j)
            computed |= keys[j["id"]]
        return first + bring + read

    def release(self, job_id: str, root: Path) -> None:
        """One job of this launch has ended (done or final failure): drop streams no other job needs."""
        for key in self.streams.get(job_id, {}).values():
            self.uses[key] -= 1
            if self.uses[key] <= 0:
                shutil.rmtree(root / key, ignore_errors=True)


def plan_streams(jobs: list[tuple[str, dict]], policy: str, transfer_key: str, n_transfer: int, num_classes: int,
                 max_bytes: float) -> StreamPlan:
    """Which (job, role) pairs use the logit cache. ``jobs``: (job id, payload) of the jobs about to run.

    "auto" caches a stream when at least two of these jobs feed it (one computes, the others read) and its
    files stay under ``max_bytes``; "off" caches nothing.
    """
    if policy == "off":
        return StreamPlan({}, Counter())
    per_job = {jid: job_streams(p, transfer_key) for jid, p in jobs}
    counts = Counter(k for s in per_job.values() for k in s.values())
    hp_of = {k: p["hp"] for jid, p in jobs for k in per_job[jid].values()}
    shared = {k for k, c in counts.items() if c >= 2}
    small = {k for k in shared if stream_bytes(n_transfer, num_classes, hp_of[k]) <= max_bytes}
    streams = {jid: {role: k for role, k in s.items() if k in small} for jid, s in per_job.items()}
    streams = {jid: s for jid, s in streams.items() if s}
    return StreamPlan(streams, Counter({k: counts[k] for k in small}), len(shared) - len(small))


class LogitCache:
    """One stream's per-epoch logits on one kind of device (the worker side)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.reads = 0
        self.writes = 0

    def _path(self, epoch: int) -> Path:
        return self.folder / f"e{epoch}.pt"

    def load(self, epoch: int, rows: int, device):
        """The epoch's logits (rows x C) or None when missing, unreadable or of another length."""
        import torch

        try:
            z = torch.load(self._path(epoch), map_location=device, weights_only=True)
        except Exception:
            return None
        if not torch.is_tensor(z) or z.dim() != 2 or z.shape[0] != rows:
            return None
        self.reads += 1
        return z

    def save(self, epoch: int, logits) -> None:
        import torch

        # concurrent writers of one stream write the same numbers: whichever rename comes last is as good
        write_atomic(self._path(epoch), lambda tmp: torch.save(logits, tmp))
        self.writes += 1


def device_kind(device) -> str:
    """Logits from different devices or precisions differ slightly: each kind has its own files."""
    return "cuda-bf16" if str(device).startswith("cuda") else "cpu-fp32"
