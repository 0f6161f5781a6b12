"""The launch as a Ray Job on an existing cluster (needs the job server: ``pip install 'zoo-sweep[cluster]'``).

The Ray Jobs client sends the cluster's auth token as a header; it is never printed or written to a file.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlparse

from zoo_sweep.errors import UserError
from zoo_sweep.submit.common import cluster_store_url, has_password, spec_and_path
from zoo_sweep.urls import mask_url, passwords, redact

JOBS_PORT = 8265
WORKING_DIR_EXCLUDES = [".git", ".venv", "venv", "results", "jobs/slurm", "**/__pycache__", ".pytest_cache",
                        "*.egg-info", "build", "dist"]





# ---------------------------------------------------------------------- Ray Jobs
def jobs_url(address: str | None) -> str:
    """The Ray Jobs (dashboard) address as http(s)://HOST:PORT; HOST alone gets port 8265."""
    if not address:
        raise UserError("--address is required: the Ray dashboard of the cluster, e.g. http://HEAD:8265 "
                        "(or set RAY_API_SERVER_ADDRESS)")
    a = address.strip().rstrip("/")
    if a.startswith("ray://"):
        raise UserError(f"{mask_url(address)} is a Ray Client address; Ray Jobs use the dashboard: http://HEAD:8265")
    if "://" not in a:
        a = f"http://{a}" if ":" in a else f"http://{a}:{JOBS_PORT}"
    u = urlparse(a)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise UserError(f"not a Ray Jobs address: {mask_url(address)!r} (use http://HEAD:8265)")
    try:
        _ = u.port  # read for its check only: raises ValueError on a port out of range or not a number
    except ValueError:
        raise UserError(f"not a Ray Jobs address: {mask_url(address)!r} (use http://HEAD:8265)") from None
    return a


def jobs_client(address: str | None):
    """A JobSubmissionClient for the cluster, failing fast and in one line; it sends the Ray token when
    one is configured (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token), as a header only."""
    url = jobs_url(address)
    try:
        import aiohttp  # noqa: F401  (the client silently degrades without it)
        import requests  # noqa: F401
        from ray.job_submission import JobSubmissionClient
    except ImportError as e:
        raise UserError(f"Ray Jobs need ray[default] ({e.name} is missing): pip install 'zoo-sweep[cluster]'") from None
    from zoo_sweep.pipeline.cluster import probe, send_token_if_available

    u = urlparse(url)
    probe(u.hostname, u.port or (443 if u.scheme == "https" else 80), 3.0,
          f"cannot reach a Ray Jobs server at {mask_url(url)}",
          "start the cluster's head with the dashboard (pip install 'ray[default]'; `ray start --head`, port 8265)")
    send_token_if_available()
    try:
        return JobSubmissionClient(url)
    except Exception as e:
        raise _jobs_error(e, url) from None


def _jobs_error(e: Exception, url: str, job_id: str | None = None) -> UserError:
    text, url = redact(str(e).strip(), passwords(url)), mask_url(url)
    first = text.splitlines()[0] if text else type(e).__name__
    if type(e).__name__ == "AuthenticationError" or "status code 401" in text or "status code 403" in text:
        return UserError(f"the Ray Jobs server at {url} refused the request ({first.rstrip(':')}): set the "
                         "cluster's token in RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH (or ~/.ray/auth_token)")
    if job_id and ("404" in text or "does not exist" in text):
        return UserError(f"no Ray Job {job_id!r} at {url}")
    return UserError(f"Ray Jobs server at {url}: {first}")


def _project_root() -> Path | None:
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() and (root / "zoo_sweep").is_dir() else None


def submit_ray_job(spec: str | Path, address: str | None, *, db: str | None = None, home: str | None = None,
                   gpus: float | str = 0, working_dir: str | Path | None = None, python: str = "python",
                   launch_args: str | Sequence[str] = (), submission_id: str | None = None, warn=None) -> str:
    """Submit ``zoo-sweep launch SPEC --address auto`` as a Ray Job; returns the submission id.

    The job's working dir is ``working_dir`` (default: this project when the spec lies in it, otherwise a
    folder holding only the spec); the package travels in the runtime env when the working dir lacks it.
    The store URL and results folder go into the job's environment and must be valid on the cluster.
    """
    warn = warn or (lambda m: print(f"warning: {m}", file=sys.stderr))
    s, spec_path = spec_and_path(spec)
    try:
        n_gpus = float(gpus)
    except (TypeError, ValueError):
        raise UserError(f"--gpus must be a number, got {gpus!r}") from None
    if n_gpus < 0:
        raise UserError(f"--gpus must be >= 0, got {gpus}")
    url = jobs_url(address)
    db_url = cluster_store_url(db, True, "a Ray Job (it runs in a temporary working dir on the cluster)")
    env_vars = {"ZOO_SWEEP_DB": db_url}
    if has_password(db_url):
        warn("the store URL's password is visible in the job's runtime env on the Ray dashboard; prefer a "
             "password file (~/.pgpass) and a URL without it")
    home = home or os.environ.get("ZOO_SWEEP_HOME")
    if home:
        if not Path(home).is_absolute():
            raise UserError(f"--home {home} is relative, which would resolve inside the job's temporary working "
                            "dir on the cluster: give an absolute path on the cluster's shared filesystem")
        env_vars["ZOO_SWEEP_HOME"] = home
    else:
        warn("no --home / ZOO_SWEEP_HOME: caches and prediction records go to the job's temporary working dir "
             "on the cluster and are recomputed by the next job; give an absolute path on shared storage")
    extra = shlex.split(launch_args) if isinstance(launch_args, str) else list(launch_args)

    with tempfile.TemporaryDirectory(prefix="zoo-sweep-job-") as staging:
        entry, runtime_env = ray_job_request(spec_path, staging=Path(staging), working_dir=working_dir,
                                             python=python, gpus=n_gpus, launch_args=extra, env_vars=env_vars)
        client = jobs_client(url)
        try:
            return client.submit_job(entrypoint=entry, runtime_env=runtime_env, submission_id=submission_id,
                                     metadata={"zoo_sweep_sweep": s.name})
        except Exception as e:
            raise _jobs_error(e, url) from None


def ray_job_request(spec_path: Path, *, staging: Path, working_dir: str | Path | None = None,
                    python: str = "python", gpus: float = 0, launch_args: Sequence[str] = (),
                    env_vars: dict | None = None) -> tuple[str, dict]:
    """The entrypoint and runtime env of the Ray Job. Working dir: ``working_dir``, else this project when
    the spec lies in it, else ``staging`` with a copy of the spec. The package is added as a py_module when
    the working dir does not hold it."""
    spec_path = Path(spec_path).resolve()
    root = _project_root()
    if working_dir is not None:
        wd = Path(working_dir).resolve()
        if not wd.is_dir():
            raise UserError(f"--working-dir {working_dir} is not a folder")
        target = spec_path
    elif root is not None and spec_path.is_relative_to(root):
        wd, target = root, spec_path
    else:
        wd, target = staging, staging / spec_path.name
        shutil.copy2(spec_path, target)
    if not target.is_relative_to(wd):
        raise UserError(f"the spec {spec_path} is not inside --working-dir {wd}, so the job could not read it")
    runtime_env: dict = {"working_dir": str(wd), "excludes": WORKING_DIR_EXCLUDES, "env_vars": dict(env_vars or {})}
    if not (wd / "zoo_sweep" / "__init__.py").is_file():
        runtime_env["py_modules"] = [str(Path(__file__).resolve().parents[1])]
    entry = [python, "-m", "zoo_sweep", "launch", target.relative_to(wd).as_posix(), "--address", "auto",
             "--gpus", f"{gpus:g}", "--no-progress", *launch_args]
    return shlex.join(entry), runtime_env


def ray_job_status(address: str | None, job_id: str) -> str:
    client = jobs_client(address)
    try:
        return str(client.get_job_status(job_id).value)
    except Exception as e:
        raise _jobs_error(e, jobs_url(address), job_id) from None


def ray_job_logs(address: str | None, job_id: str) -> str:
    """Everything the job printed so far."""
    client = jobs_client(address)
    try:
        return client.get_job_logs(job_id)
    except Exception as e:
        raise _jobs_error(e, jobs_url(address), job_id) from None


def follow_ray_job(address: str | None, job_id: str, out=sys.stdout) -> str:
    """Stream the job's logs until it ends; returns its final status."""
    import asyncio

    client = jobs_client(address)

    async def tail():
        async for chunk in client.tail_job_logs(job_id):
            out.write(chunk)
            out.flush()

    try:
        asyncio.run(tail())
        status = str(client.get_job_status(job_id).value)
        while status in ("PENDING", "RUNNING"):  # the log stream may close just before the status settles
            time.sleep(1.0)
            status = str(client.get_job_status(job_id).value)
        return status
    except Exception as e:
        raise _jobs_error(e, jobs_url(address), job_id) from None


def stop_ray_job(address: str | None, job_id: str) -> bool:
    """Ask the cluster to stop the job; False when it had already ended."""
    client = jobs_client(address)
    try:
        return bool(client.stop_job(job_id))
    except Exception as e:
        raise _jobs_error(e, jobs_url(address), job_id) from None
