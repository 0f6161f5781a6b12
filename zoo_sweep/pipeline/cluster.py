"""Connecting to Ray: a local cluster started for the sweep, or an existing one (``--address``)."""

from __future__ import annotations

import logging
import math
import os
import socket
from dataclasses import dataclass
from urllib.parse import urlparse

from zoo_sweep.errors import UserError


@dataclass(frozen=True)
class ClusterInfo:
    address: str | None  # None: a local cluster this process started
    cpus: float
    gpus: float


def check_reachable(address: str, timeout: float = 3.0) -> None:
    """Fail fast with one clear line; ray.init would otherwise retry for a long time."""
    if address in ("auto", "local"):  # Ray finds the cluster itself and fails fast when there is none
        return
    parsed = urlparse(address if "://" in address else f"tcp://{address}")
    host, port = parsed.hostname, parsed.port
    if not host or not port:
        raise UserError(f"not a Ray address: {address!r} (use HOST:PORT, e.g. 10.0.0.1:6379, or auto)")
    probe(host, port, timeout, f"cannot reach a Ray cluster at {address}",
          "start one with `ray start --head` or leave out --address to run locally")


def probe(host: str, port: int, timeout: float, failure: str, fix: str) -> None:
    """Open and close a TCP connection; when nothing answers, one line: ``failure (reason); fix``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as e:
        raise UserError(f"{failure} ({e.strerror or e}); {fix}") from None


def resolve_address(address: str | None) -> str | None:
    return address or os.environ.get("RAY_ADDRESS") or None


def connect(address: str | None = None, cpus: int | None = None, gpus: float = 0) -> ClusterInfo:
    """Start or join a Ray cluster (idempotent within a process). ``gpus`` may be a fraction (a share of
    one GPU); a local cluster then gets the whole GPU."""
    import ray

    address = resolve_address(address)
    if not ray.is_initialized():
        os.environ.setdefault("RAY_DEDUP_LOGS", "0")
        opts = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
                    configure_logging=True)
        if address:
            check_reachable(address)
            send_token_if_available()
            try:
                ray.init(address=address, **opts)
            except Exception as e:
                why = (str(e).strip() or type(e).__name__).splitlines()[0]  # some Ray errors have no message
                raise UserError(f"cannot join the Ray cluster at {address}: {why}") from None
        else:
            have = local_gpus()
            if gpus > have:
                raise UserError(f"asked for {gpus:g} GPU(s), Ray sees {have} on this machine; use --gpus {have} "
                                "(0 runs on the CPU) or --address to use a cluster")
            # "local" always starts a fresh cluster; a bare ray.init() would join whatever cluster
            # /tmp/ray/ray_current_cluster names, which may be stale or someone else's
            ray.init(address="local", num_cpus=cpus or os.cpu_count(), num_gpus=math.ceil(gpus), **opts)
    res = ray.cluster_resources()
    info = ClusterInfo(address, float(res.get("CPU", 0)), float(res.get("GPU", 0)))
    if gpus > info.gpus:
        where = f"in the cluster at {address}" if address else "on this machine"
        raise UserError(f"asked for {gpus:g} GPU(s), Ray sees {info.gpus:g} {where}")
    return info


def send_token_if_available() -> None:
    """Ray clusters started by `ray start` require a token, but Ray 2.60 enables token mode for a client
    only when it finds the cluster itself, never for an explicit --address. Sending the token to a cluster
    without authentication is harmless, so send it whenever one is configured. It is never printed."""
    if os.environ.get("RAY_AUTH_MODE"):
        return
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token")
    if os.environ.get("RAY_AUTH_TOKEN") or os.path.isfile(path):
        os.environ["RAY_AUTH_MODE"] = "token"
        try:  # Ray caches its config at import; refresh it the way Ray's own token setup does
            from ray._raylet import Config

            Config.initialize("")
        except Exception:
            pass


def local_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def shutdown() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
