"""Connecting to Ray: a local cluster started for the sweep, or an existing one (``--address``)."""

from __future__ import annotations

import logging
import math
import os
import socket
from dataclasses import dataclass
from urllib.parse import urlparse

from zoo_sweep.errors import UserError
from zoo_sweep.urls import mask_url


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
        raise UserError(f"not a Ray address: {mask_url(address)!r} (use HOST:PORT, e.g. 10.0.0.1:6379, or auto)")
    probe(host, port, timeout, f"cannot reach a Ray cluster at {mask_url(address)}",
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
            match_cluster_auth(address)
            try:
                ray.init(address=address, **opts)
            except Exception as e:
                why = (str(e).strip() or type(e).__name__).splitlines()[0]  # some Ray errors have no message
                raise UserError(f"cannot join the Ray cluster at {mask_url(address)}: {why}") from None
        else:
            have = local_gpus()
            if gpus > have:
                raise UserError(f"asked for {gpus:g} GPU(s), Ray sees {have} on this machine; use --gpus {have} "
                                "(0 runs on the CPU) or --address to use a cluster")
            if not _users_choice():
                _set_auth_mode(None)  # a new local cluster: Ray's default (token authentication)
            # "local" always starts a fresh cluster; a bare ray.init() would join whatever cluster
            # /tmp/ray/ray_current_cluster names, which may be stale or someone else's
            ray.init(address="local", num_cpus=cpus or os.cpu_count(), num_gpus=math.ceil(gpus), **opts)
    res = ray.cluster_resources()
    info = ClusterInfo(address, float(res.get("CPU", 0)), float(res.get("GPU", 0)))
    if gpus > info.gpus:
        where = f"in the cluster at {mask_url(address)}" if address else "on this machine"
        raise UserError(f"asked for {gpus:g} GPU(s), Ray sees {info.gpus:g} {where}")
    return info


def send_token_if_available() -> None:
    """Send the Ray token when one is configured (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token) and
    RAY_AUTH_MODE leaves the choice to us. For a client that runs no Ray node of its own (the Ray Jobs HTTP
    client); a driver must follow its cluster (``match_cluster_auth``)."""
    if not _users_choice() and token_configured():
        _set_auth_mode("token")


def token_configured() -> bool:
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token")
    return bool(os.environ.get("RAY_AUTH_TOKEN")) or os.path.isfile(path)


def match_cluster_auth(address: str) -> None:
    """Token authentication on exactly when the cluster at ``address`` uses it (unless RAY_AUTH_MODE says).

    Token mode works both ways: a driver in token mode also refuses the cluster's calls that carry no token,
    among them the GCS asking whether the driver still holds the actors it creates; the GCS takes the refusal
    for the driver's death and cancels every one of them. A token file alone says nothing about a cluster:
    every local ``ray.init()`` writes ~/.ray/auth_token, while a cluster started by ``ray start`` before that
    file existed has no authentication. So the cluster is asked, and the mode follows its answer."""
    if _users_choice():
        return
    needs = cluster_needs_token(address)
    if needs is None:  # cannot tell (a Ray Client address): send the token when there is one
        send_token_if_available()
    elif needs and not token_configured():
        raise UserError(f"the Ray cluster at {mask_url(address)} requires an authentication token: copy the head "
                        "node's ~/.ray/auth_token here, or set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH")
    elif needs:
        _set_auth_mode("token")
    else:  # Ray's own guess for "auto" turns token mode on wherever a token file exists
        _set_auth_mode("disabled" if address == "auto" else None)


def cluster_needs_token(address: str, timeout: float = 3.0) -> bool | None:
    """Whether the cluster's GCS (``address``: HOST:PORT, or auto) refuses a call without a token; None when
    that cannot be told (a Ray Client address, no GCS answer)."""
    if address == "auto":
        try:
            from ray._private.services import canonicalize_bootstrap_address

            address = canonicalize_bootstrap_address("auto", None) or ""
        except Exception:
            return None
    if not address or "://" in address:
        return None
    try:
        import grpc
        from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc
    except ImportError:
        return None
    channel = grpc.insecure_channel(address)
    try:
        gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel).GetClusterId(gcs_service_pb2.GetClusterIdRequest(),
                                                                          timeout=timeout)
        return False
    except grpc.RpcError as e:
        return True if e.code() == grpc.StatusCode.UNAUTHENTICATED else None
    finally:
        channel.close()


AUTH_MODE = "RAY_AUTH_MODE"
_auto_mode: dict[str, str] = {}  # the value this process set, which a later connection may change


def _users_choice() -> bool:
    """RAY_AUTH_MODE was set by the user (not by this process): it is followed as it is."""
    return os.environ.get(AUTH_MODE) not in (None, _auto_mode.get("value"))


def _set_auth_mode(mode: str | None) -> None:
    """RAY_AUTH_MODE for this process and the Ray processes it starts (None: unset, Ray's default)."""
    if os.environ.get(AUTH_MODE) == mode:
        return
    if mode is None:
        os.environ.pop(AUTH_MODE, None)
        _auto_mode.pop("value", None)
    else:
        os.environ[AUTH_MODE] = _auto_mode["value"] = mode
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
