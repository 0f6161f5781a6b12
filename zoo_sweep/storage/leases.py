"""Leases: how two launchers share one sweep without running a job twice.

A launcher claims a job with one compare-and-set UPDATE (pending -> running, only if still pending), which
names it the job's ``owner`` and sets ``lease_until``. While the job runs, a heartbeat thread pushes the
lease forward every third of its length. A job still 'running' after its lease ran out belongs to a
launcher that died (killed, its node lost): any launcher may put it back to pending and run it. On the
launcher's own host a dead owner is seen at once (its process is gone), so a relaunch after a kill on a
workstation does not wait for the lease.

The lease length is ``ZOO_SWEEP_LEASE_S`` seconds (default 60): long enough that a busy database or a
paused process does not lose its jobs, short enough that a dead launcher's jobs are taken over soon.
Hosts sharing a store should keep their clocks in step (NTP) to well within a lease.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from typing import Protocol

from zoo_sweep.errors import UserError

LEASE_ENV = "ZOO_SWEEP_LEASE_S"
DEFAULT_LEASE_S = 60.0


def env_seconds(name: str, default: float, *, zero_ok: bool = False) -> float:
    """A length of time from the environment variable ``name`` (seconds), else ``default``; anything but a finite
    number above 0 (or 0 itself where ``zero_ok``) is one clear error."""
    text = os.environ.get(name)
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (0 <= value if zero_ok else 0 < value) or value == float("inf") or value != value:
        least = "0 or more" if zero_ok else "above 0"
        raise UserError(f"{name} must be a number of seconds ({least}), got {text!r}")
    return value


def lease_seconds(value: float | None = None) -> float:
    """The lease length: ``value``, else $ZOO_SWEEP_LEASE_S, else the default."""
    if value is None:
        return env_seconds(LEASE_ENV, DEFAULT_LEASE_S)
    if not value > 0 or value == float("inf"):
        raise UserError(f"the lease length must be a positive number of seconds, got {value}")
    return float(value)


def new_owner() -> str:
    """host:pid:nonce. The nonce tells apart two runs whose process ids the system reused."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def owner_dead(owner: str | None) -> bool:
    """True only when ``owner`` ran on this host and its process is gone; another host's owner is never
    judged here (its lease decides)."""
    if not owner or owner.count(":") < 2:
        return False
    host, pid, _ = owner.rsplit(":", 2)
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


class LeaseStore(Protocol):
    """What a lease asks of the store (store.Store), named here since store.py imports this module."""

    def claim_job(self, job_id: str, owner: str, lease_until: float, worker: str | None = None) -> bool: ...

    def renew_leases(self, job_ids: list[str], owner: str, lease_until: float) -> int: ...


class Lease:
    """This launcher's claims: which jobs it holds, and the thread that renews them."""

    def __init__(self, store: LeaseStore, seconds: float | None = None):
        self.store = store
        self.seconds = lease_seconds(seconds)
        self.owner = new_owner()
        self._held: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None  # a failed renewal, for the main thread to report

    def until(self) -> float:
        return time.time() + self.seconds

    def claim(self, job_id: str, worker: str | None = None) -> bool:
        """Take a pending (or retryable failed) job; False when another launcher has it."""
        ok = self.store.claim_job(job_id, self.owner, self.until(), worker)
        if ok:
            with self._lock:
                self._held.add(job_id)
            self._start()
        return ok

    def holds(self, job_id: str) -> bool:
        with self._lock:
            return job_id in self._held

    def release(self, job_id: str) -> None:
        with self._lock:
            self._held.discard(job_id)

    def renew(self) -> None:
        with self._lock:
            held = sorted(self._held)
        if held:
            self.store.renew_leases(held, self.owner, self.until())

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._beat, name="zoo-sweep-lease", daemon=True)
            self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.seconds / 3):
            try:
                self.renew()
            except Exception as e:  # noqa: BLE001 - the main thread's next write reports the store's state
                self.error = e

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
