"""How a launch runs: its options, checked before anything is written, and its shard of the jobs."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from zoo_sweep.errors import UserError

STAGES = ("predict", "compare", "transfer")


@dataclass
class LaunchOptions:
    gpus: float = 0
    cpus: int | None = None  # local cluster size; default: all cores
    address: str | None = None  # existing Ray cluster (or $RAY_ADDRESS)
    gpus_per_job: float | str | None = None  # fractions put several small jobs on one GPU; "auto" measures;
    # None: the spec's [run] gpus_per_job
    cpus_per_job: int = 1
    max_retries: int | None = None  # default: the spec's [run] max_retries
    until: str = "transfer"  # last stage to run: "compare" measures only
    progress: bool = True
    only_failed: bool = False  # rerun failed jobs only (with a fresh retry budget)
    limit: int | None = None  # at most this many transfer jobs (earlier stages always complete: they feed it)
    shard: tuple[int, int] | None = None  # (i, K): run only the jobs of shard i of K (array jobs)
    wait_s: float = 6 * 3600  # sharded runs: how long to wait for other shards' predict jobs
    lease_s: float | None = None  # how long a claim on a job holds without renewal; default $ZOO_SWEEP_LEASE_S or 60

    def check(self) -> LaunchOptions:
        """Every value in range (one line naming the flag otherwise); no cluster is asked here."""
        _number("--gpus", self.gpus, lo=0)
        if isinstance(self.gpus_per_job, str):
            self.gpus_per_job = parse_share(self.gpus_per_job)
        if self.gpus_per_job not in (None, "auto"):
            _number("--gpus-per-job", self.gpus_per_job, lo=0, strict=True)
        for flag, v, lo in (("--cpus", self.cpus, 1), ("--cpus-per-job", self.cpus_per_job, 1),
                            ("--max-retries", self.max_retries, 0), ("--limit", self.limit, 0)):
            if v is not None and v < lo:
                raise UserError(f"{flag} must be >= {lo}, got {v}")
        if self.until not in STAGES:
            raise UserError(f"--until must be one of {', '.join(STAGES)}")
        if self.cpus is not None and self.cpus_per_job > self.cpus:
            raise UserError(f"--cpus-per-job {self.cpus_per_job} is more than --cpus {self.cpus}")
        return self


def parse_share(text: str) -> float | str:
    """``--gpus-per-job``: "auto" or a number (checked for range by ``LaunchOptions.check``)."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return float(text)
    except ValueError:
        raise UserError(f'--gpus-per-job must be a number > 0 or "auto", got {text!r}') from None


def _number(flag: str, v: float, lo: float, strict: bool = False) -> None:
    if not math.isfinite(v) or v < lo or (strict and v == lo):
        raise UserError(f"{flag} must be a number {'>' if strict else '>='} {lo:g}, got {v:g}")


def check_local_resources(opts: LaunchOptions, local_gpus) -> None:
    """A local cluster gets what this machine has: asking for more would wait for ever. ``local_gpus``:
    a function giving the GPU count (it imports torch, so only when GPUs are asked for)."""
    if opts.gpus > 0:
        have = local_gpus()
        if opts.gpus > have:
            fix = (f"use --gpus {have} or fewer" if have else "use --gpus 0 to run on the CPU") + \
                " or --address to use a cluster with GPUs"
            raise UserError(f"asked for {opts.gpus:g} GPU{'s' if opts.gpus > 1 else ''}, Ray sees {have} on this "
                            f"machine; {fix}")
    cores = os.cpu_count() or 1
    if opts.cpus is None and opts.cpus_per_job > cores:
        raise UserError(f"--cpus-per-job {opts.cpus_per_job} is more than the {cores} CPU(s) of this machine")


def parse_shard(text: str) -> tuple[int, int]:
    """'i/K' -> (i, K) with 0 <= i < K."""
    try:
        i, k = (int(x) for x in text.split("/"))
    except ValueError:
        raise UserError(f"--shard must look like i/K (e.g. 0/4), got {text!r}") from None
    if k < 1 or not 0 <= i < k:
        raise UserError(f"--shard {text}: need K >= 1 and 0 <= i < K")
    return i, k


def in_shard(job_id: str, shard: tuple[int, int] | None) -> bool:
    """Job ids are hashes, so taking them modulo K splits every stage evenly and disjointly."""
    return shard is None or int(job_id.split("-", 1)[-1], 16) % shard[1] == shard[0]
