"""Batch submission of a sweep to a cluster, from the same spec: a SLURM batch script or a Ray Job.

Ray stays the distributed engine; these functions only start it and hand it the same
``zoo-sweep launch SPEC`` a user runs locally, so resuming, retries and the store behave the same.

* :func:`render_sbatch` / :func:`write_sbatch` / :func:`submit_slurm`: an sbatch script that starts a
  Ray cluster across the allocation (``ray symmetric-run``, or ``ray start`` head/workers through
  ``srun``), runs the launch on the head node and stops the cluster; or, with ``array=K``, one array
  task per shard (``zoo-sweep launch SPEC --shard i/K``) against a shared store, no cross-node Ray.
* :func:`submit_ray_job` / :func:`ray_job_status` / :func:`ray_job_logs` / :func:`stop_ray_job`: the
  launch as a Ray Job on an existing cluster (needs the job server: ``pip install 'zoo-sweep[cluster]'``).

Ray token authentication is passed through and never printed or written to a file: SLURM scripts set
``RAY_AUTH_MODE=token`` and Ray reads the token itself; the Ray Jobs client sends it as a header.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence
from urllib.parse import urlparse

import typer

from . import UserError

if TYPE_CHECKING:
    from .spec import SweepSpec

SLURM_DIR = Path("jobs") / "slurm"
MODES = ("symmetric", "classic")
DEFAULT_PORT = 6379
JOBS_PORT = 8265
# Ray ports derived from --port BASE (multi-tenant nodes: every Ray port of this job is explicit)
HEAD_PORTS = {"ray-client-server-port": 1, "dashboard-port": 2}
NODE_PORTS = {"node-manager-port": 3, "object-manager-port": 4, "dashboard-agent-listen-port": 5,
              "dashboard-agent-grpc-port": 6, "runtime-env-agent-port": 7, "metrics-export-port": 8,
              "min-worker-port": 100, "max-worker-port": 999}
WORKING_DIR_EXCLUDES = [".git", ".venv", "venv", "results", "jobs/slurm", "**/__pycache__", ".pytest_cache",
                        "*.egg-info", "build", "dist"]


# ---------------------------------------------------------------------- checks shared by both targets
def _whole(value, option: str, minimum: int) -> int:
    """A whole number from an int or a CLI string; one clear line otherwise."""
    if isinstance(value, bool):
        raise UserError(f"{option} must be a whole number, got {value!r}")
    if isinstance(value, int):
        n = value
    else:
        text = str(value).strip()
        if not re.fullmatch(r"[+-]?\d+", text):
            raise UserError(f"{option} must be a whole number, got {value!r}")
        n = int(text)
    if n < minimum:
        raise UserError(f"{option} must be >= {minimum}, got {n}")
    return n


def _word(value: str | None, option: str) -> str | None:
    """Values that go into '#SBATCH --opt=VALUE' lines: no whitespace, no quotes."""
    if value is None:
        return None
    if not value or re.search(r"[\s'\"\\]", value):
        raise UserError(f"{option} must be one word without spaces or quotes, got {value!r}")
    return value


def cluster_store_url(db: str | None, multi_node: bool, where: str, cwd: Path | None = None) -> str:
    """The store URL a cluster job uses. A relative SQLite path means a different file (or a temporary
    one) on a multi-node run, so that is an error with the fix; on one node it is made absolute."""
    from sqlalchemy.engine import make_url

    from .store import resolve_url

    url = resolve_url(db)
    try:
        u = make_url(url)
    except Exception:
        raise UserError(f"not a database URL: {url!r} (e.g. postgresql://user@host/db)") from None
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:":
        if u.database == ":memory:":
            raise UserError("an in-memory SQLite store cannot outlive a cluster job; "
                            "use --db with a file or PostgreSQL")
        return url
    path = Path(u.database)
    if path.is_absolute():
        return url
    if multi_node:
        raise UserError(
            f"the store {url} is a relative SQLite path, which {where} cannot share: use a PostgreSQL URL "
            "(--db postgresql://user@host/db, reachable from the head node), or an absolute SQLite path on the "
            "head node's local disk (--db sqlite:////local/scratch/zoo.db) and `zoo-sweep export` at the end")
    return u.set(database=str((cwd or Path.cwd()) / path)).render_as_string(hide_password=False)


def _has_password(url: str) -> bool:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).password is not None
    except Exception:
        return False


def _is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def _spec(spec: str | Path | SweepSpec) -> tuple[SweepSpec, Path]:
    """(SweepSpec, its file, absolute) from a spec file or an already loaded spec that has one."""
    from .spec import SweepSpec, load_spec

    if isinstance(spec, SweepSpec):
        if spec.path is None:
            raise ValueError(f"spec {spec.name!r} was not read from a file, which the cluster job needs")
        return spec, Path(spec.path).resolve()
    s = load_spec(spec)  # a bad spec fails here, not on the cluster after hours in the queue
    return s, Path(spec).resolve()


# ---------------------------------------------------------------------- SLURM
def render_sbatch(spec: str | Path | SweepSpec, *, nodes: int | str = 1, gpus_per_node: int | str = 0,
                  partition: str | None = None, time: str | None = None, account: str | None = None,
                  cpus_per_node: int | str | None = None, mem: str | None = None,
                  setup: str | Sequence[str] = (), mode: str | None = None, port: int | str | None = None,
                  array: int | str | None = None, dashboard: bool = True, db: str | None = None,
                  home: str | None = None, launch_args: str | Sequence[str] = (),
                  log_dir: str | Path = SLURM_DIR, job_name: str | None = None,
                  warn=None) -> str:
    """The text of an sbatch script that runs the sweep on a SLURM allocation. ``spec``: its file, or the
    spec already loaded from one.

    Ray mode (default): one Ray node per SLURM node, each started with exactly the allocated CPUs and
    GPUs; ``zoo-sweep launch SPEC --address HEAD:PORT --gpus NODES*GPUS`` runs on the head (the first
    node). ``mode``: ``symmetric`` (``ray symmetric-run``; falls back to classic at run time when the
    cluster's Ray lacks it) or ``classic`` (``ray start`` head/workers through ``srun``, stopped by
    process at the end); default symmetric, or classic when ``port`` is given (symmetric-run ends with
    ``ray stop``, which also stops your other Ray clusters on those nodes).
    ``array=K``: K array tasks, task i runs ``zoo-sweep launch SPEC --shard i/K`` with a local Ray.
    ``db`` / ``home``: the store URL and results folder (default: ``ZOO_SWEEP_DB`` / ``ZOO_SWEEP_HOME``);
    ``warn``: called with one-line warnings (default: print to stderr).
    """
    warn = warn or (lambda m: print(f"warning: {m}", file=sys.stderr))
    s, spec_path = _spec(spec)
    n_nodes = _whole(nodes, "--nodes", 1)
    gpus = _whole(gpus_per_node, "--gpus-per-node", 0)
    cpus = _whole(cpus_per_node, "--cpus-per-node", 1) if cpus_per_node is not None else None
    k = _whole(array, "--array", 1) if array is not None else None
    base = _whole(port, "--port", 1024) if port is not None else None
    if base is not None and base + max(NODE_PORTS.values()) > 65535:
        raise UserError(f"--port {base}: Ray uses ports {base}..{base + 999}; pick a base <= {65535 - 999}")
    if mode is not None and mode not in MODES:
        raise UserError(f"--mode must be symmetric or classic, got {mode!r}")
    if k is not None and n_nodes > 1:
        raise UserError("--array runs one node per array task (no Ray across nodes); drop --nodes or use --nodes 1")
    for opt, v in (("--partition", partition), ("--time", time), ("--account", account), ("--mem", mem),
                   ("--job-name", job_name)):
        _word(v, opt)
    setup_lines = [ln for ln in (setup.splitlines() if isinstance(setup, str) else
                                 [x for item in setup for x in str(item).splitlines()]) if ln.strip()]
    extra = shlex.split(launch_args) if isinstance(launch_args, str) else list(launch_args)
    cwd = Path.cwd()
    multi = n_nodes > 1 or (k or 1) > 1
    where = (f"{k} array tasks on different nodes" if k and k > 1 else f"a {n_nodes}-node run")
    db_url = cluster_store_url(db, multi, where, cwd)
    if k and k > 1 and _is_sqlite(db_url):
        warn(f"{k} array tasks write one SQLite store at once: this needs a local or lock-safe filesystem "
             "(SQLite WAL does not work on NFS); a PostgreSQL URL is safer")
    from .paths import Paths

    home_dir = Paths.default(home).home  # absolute against the submit directory
    log_dir = Path(log_dir).absolute()
    for what, d in (("the submit directory", cwd), ("--out", log_dir)):
        if re.search(r"\s", str(d)):
            raise UserError(f"{what} {d} contains whitespace, which #SBATCH lines cannot carry; use another folder")
    name = job_name or f"zoo-sweep-{s.name}"
    if mode is None:
        mode = "classic" if base is not None else "symmetric"
    elif mode == "symmetric" and base is not None:
        warn("--mode symmetric with --port: ray symmetric-run ends with `ray stop`, which also stops your other "
             "Ray clusters on these nodes; --mode classic stops only what this job started")

    q = shlex.quote
    L: list[str] = ["#!/bin/bash"]
    add = L.append
    if k:
        add(f"# zoo-sweep: sweep {s.name!r} as {k} SLURM array task(s); task i runs shard i/{k} of every stage")
        add("# on its own node with a local Ray. Shards never take the same job; the store is shared.")
    else:
        add(f"# zoo-sweep: sweep {s.name!r} on a Ray cluster across {n_nodes} SLURM node(s), started with "
            f"`ray {'symmetric-run' if mode == 'symmetric' else 'start'}`;")
        add("# the launch runs on the head (first) node. Resubmitting resumes: finished jobs are skipped.")
    add(f"# Generated by `zoo-sweep submit slurm` from {spec_path}. Submit with: sbatch THIS_FILE")
    add(f"#SBATCH --job-name={name}")
    add(f"#SBATCH --nodes={1 if k else n_nodes}")
    add("#SBATCH --ntasks-per-node=1")
    if cpus:
        add(f"#SBATCH --cpus-per-task={cpus}")
    if gpus:
        add(f"#SBATCH --gres=gpu:{gpus}")
    for opt, v in (("mem", mem), ("partition", partition), ("time", time), ("account", account)):
        if v:
            add(f"#SBATCH --{opt}={v}")
    if k:
        add(f"#SBATCH --array=0-{k - 1}")
    add(f"#SBATCH --chdir={cwd}")
    add(f"#SBATCH --output={log_dir}/{s.name}-{'%A_%a' if k else '%j'}.out")
    add("")
    add("set -euo pipefail")
    add(f"export PATH={q(str(Path(sys.executable).parent))}:\"$PATH\"  # the environment zoo-sweep was submitted from")
    if setup_lines:
        add("# --setup")
        L.extend(setup_lines)
    add("")
    add("# The store (reachable from the launching node) and the results folder (on a filesystem every node sees).")
    if _has_password(db_url):
        add(': "${ZOO_SWEEP_DB:?the store URL has a password: it comes from the submitting environment, not this file}"')
        add("export ZOO_SWEEP_DB")
    else:
        add(f"export ZOO_SWEEP_DB={q(db_url)}")
    add(f"export ZOO_SWEEP_HOME={q(str(home_dir))}")
    add("export RAY_USAGE_STATS_ENABLED=0")
    add("")
    add("# Ray token authentication for the head, the workers and the driver alike. No token is written here:")
    add("# Ray reads $RAY_AUTH_TOKEN (exported by sbatch from your environment), $RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token.")
    add("export RAY_AUTH_MODE=token")
    add('if [[ -n "${RAY_AUTH_TOKEN_PATH:-}" && ! -s "$RAY_AUTH_TOKEN_PATH" ]]; then')
    add('    echo "error: RAY_AUTH_TOKEN_PATH=$RAY_AUTH_TOKEN_PATH is missing or empty" >&2; exit 2')
    add("fi")
    if k:
        # every task runs its own local Ray, so a task-private token will do; generating ~/.ray/auth_token
        # from K tasks at once would race
        add('if [[ -z "${RAY_AUTH_TOKEN:-}" && -z "${RAY_AUTH_TOKEN_PATH:-}" && ! -s "$HOME/.ray/auth_token" ]]; then')
        add('    token_dir=$(mktemp -d); trap \'rm -rf "$token_dir"\' EXIT')
        add('    (umask 077; od -An -tx1 -N32 /dev/urandom | tr -d " \\n" > "$token_dir/auth_token")')
        add('    export RAY_AUTH_TOKEN_PATH="$token_dir/auth_token"')
        add("fi")
    else:
        add('if [[ -z "${RAY_AUTH_TOKEN:-}" && -z "${RAY_AUTH_TOKEN_PATH:-}" && ! -s "$HOME/.ray/auth_token" ]]; then')
        add("    ray get-auth-token --generate >/dev/null  # writes ~/.ray/auth_token (a shared home reaches every node)")
        add("fi")
    add("")
    add('num_cpus="' + (str(cpus) if cpus else "${SLURM_CPUS_PER_TASK:-${SLURM_CPUS_ON_NODE:?}}") + '"')
    if k:
        launch = ["zoo-sweep", "launch", str(spec_path), "--shard", f"${{SLURM_ARRAY_TASK_ID:?}}/{k}",
                  "--gpus", str(gpus), "--cpus", "$num_cpus", "--no-progress", *extra]
        add(f"echo \"zoo-sweep: shard $SLURM_ARRAY_TASK_ID/{k} of {s.name} on $(hostname)\"")
        add(" ".join(_dq(a) for a in launch))
        return "\n".join(L) + "\n"

    ports = base or DEFAULT_PORT
    node_args = ["--num-cpus=$num_cpus", f"--num-gpus={gpus}", "--disable-usage-stats"]
    head_ports: list[str] = []
    if base is not None:
        node_args += [f"--{opt}={base + off}" for opt, off in NODE_PORTS.items()]
        head_ports += [f"--{opt}={base + off}" for opt, off in HEAD_PORTS.items()]
    head_args = head_ports + ([] if dashboard else ["--include-dashboard=false"])  # head-only flags
    if mode == "symmetric" and not dashboard:
        warn("--no-dashboard is ignored with --mode symmetric (symmetric-run passes the same flags to every node, "
             "and workers reject --include-dashboard)")
    add("nodes=($(scontrol show hostnames \"$SLURM_JOB_NODELIST\"))")
    add('head_node=${nodes[0]}')
    add("# the head's address: its first IPv4 address (the first address if it has none)")
    add('head_ips=($(srun --nodes=1 --ntasks=1 -w "$head_node" hostname --ip-address))')
    add('head_ip=${head_ips[0]}')
    add('for ip in "${head_ips[@]}"; do if [[ $ip == *.*.*.* ]]; then head_ip=$ip; break; fi; done')
    add(f"head_addr=\"$head_ip:{ports}\"")
    add("ray_node_args=(" + " ".join(_dq(a) for a in node_args) + ")  # every resource explicit: no over-claiming")
    add("launch=(" + " ".join(_dq(a) for a in ["zoo-sweep", "launch", str(spec_path), "--address", "$head_addr",
                                               "--gpus", str(n_nodes * gpus), "--no-progress", *extra]) + ")")
    add(f"echo \"zoo-sweep: Ray head at $head_addr on $head_node, {n_nodes} node(s) x {gpus} GPU(s) x $num_cpus CPU(s)\"")
    add("")
    add(f"mode={mode}")
    add('if [[ $mode == symmetric ]] && ! ray symmetric-run --help >/dev/null 2>&1; then')
    add('    echo "ray symmetric-run is not available (Ray < 2.49): starting head and workers with srun" >&2')
    add("    mode=classic")
    add("fi")
    add("rc=0")
    add('if [[ $mode == symmetric ]]; then')
    add("    # one task per node: the node whose address is head_addr starts the head and runs the launch, the")
    add("    # others join it; all stop when the launch ends")
    sym_extra = " ".join(_dq(a) for a in head_ports)  # workers ignore these; --port comes from --address
    add('    srun --nodes="$SLURM_JOB_NUM_NODES" --ntasks="$SLURM_JOB_NUM_NODES" --ntasks-per-node=1 \\')
    add('        ray symmetric-run --address "$head_addr" --min-nodes "$SLURM_JOB_NUM_NODES" "${ray_node_args[@]}" '
        + (sym_extra + " " if sym_extra else "") + '-- "${launch[@]}" || rc=$?')
    add("else")
    add("    ray_pids=()")
    add("    stop_ray() {  # stop only the Ray processes this job started (never a bare `ray stop`)")
    add('        if (( ${#ray_pids[@]} )); then')
    add('            kill -TERM "${ray_pids[@]}" 2>/dev/null || true; wait "${ray_pids[@]}" 2>/dev/null || true')
    add("        fi")
    add("        ray_pids=()")
    add("    }")
    add("    trap stop_ray EXIT")
    add('    srun --nodes=1 --ntasks=1 -w "$head_node" ray start --head --block --node-ip-address="$head_ip" '
        f'--port={ports} ' + (" ".join(_dq(a) for a in head_args) + " " if head_args else "")
        + '"${ray_node_args[@]}" &')
    add("    ray_pids+=($!)")
    add('    if (( ${#nodes[@]} > 1 )); then zoo-sweep submit wait-nodes "$head_addr" 0 --timeout 300; fi  # head up')
    add('    for node in "${nodes[@]:1}"; do')
    add('        srun --nodes=1 --ntasks=1 -w "$node" ray start --block --address="$head_addr" "${ray_node_args[@]}" &')
    add("        ray_pids+=($!)")
    add("    done")
    add('    zoo-sweep submit wait-nodes "$head_addr" "${#nodes[@]}" --timeout 300')
    add('    "${launch[@]}" || rc=$?')
    add("    stop_ray")
    add("fi")
    if _is_sqlite(db_url):
        add("# an SQLite store may live on the head's local disk: keep a Parquet copy in the shared results folder")
        add('zoo-sweep export --out "$ZOO_SWEEP_HOME/export/slurm-${SLURM_JOB_ID:-local}" || true')
    add('echo "zoo-sweep: launch exited with $rc"')
    add('exit "$rc"')
    return "\n".join(L) + "\n"


def _dq(arg: str) -> str:
    """Quote for bash, keeping $VAR / ${...} expansions of the script's own variables."""
    if "$" in arg:
        return '"' + arg.replace("\\", "\\\\").replace('"', '\\"').replace("`", "\\`") + '"'
    return shlex.quote(arg)


def write_sbatch(text: str, name: str, out_dir: str | Path = SLURM_DIR) -> Path:
    """Write a rendered script as OUT_DIR/NAME-YYYYmmdd-HHMMSS.sh (never overwriting one)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path, i = out / f"{name}-{stamp}.sh", 1
    while path.exists():
        path, i = out / f"{name}-{stamp}-{i}.sh", i + 1
    path.write_text(text)
    path.chmod(0o755)
    return path


def submit_slurm(script: str | Path, env: dict | None = None) -> str:
    """`sbatch --parsable SCRIPT`; returns the SLURM job id."""
    sbatch = shutil.which("sbatch", path=(env or os.environ).get("PATH"))
    if not sbatch:
        raise UserError("sbatch not found on PATH: run this on a SLURM login node, or use --dry-run to only "
                        "write the script")
    r = subprocess.run([sbatch, "--parsable", str(script)], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        msg = (r.stderr.strip() or r.stdout.strip() or f"exit code {r.returncode}").splitlines()[-1]
        raise UserError(f"sbatch rejected {script}: {msg}")
    job = r.stdout.strip().splitlines()[-1].split(";")[0] if r.stdout.strip() else ""
    if not job:
        raise UserError(f"sbatch printed no job id for {script}")
    return job


def wait_for_nodes(address: str, nodes: int, timeout: float = 300.0) -> int:
    """Block until the Ray cluster at HOST:PORT answers and has ``nodes`` alive nodes; returns that count."""
    from .cluster import check_reachable, connect, shutdown

    deadline = time.time() + timeout
    while True:
        try:
            check_reachable(address, timeout=2.0)
            break
        except UserError:
            if time.time() > deadline:
                raise UserError(f"no Ray head answered at {address} within {timeout:.0f} s") from None
            time.sleep(1.0)
    if nodes <= 0:
        return 0
    import ray

    opened = not ray.is_initialized()  # a caller's own session stays theirs: joined, not shut down
    connect(address)
    try:
        while True:
            alive = sum(1 for n in ray.nodes() if n.get("Alive"))
            if alive >= nodes:
                return alive
            if time.time() > deadline:
                raise UserError(f"only {alive} of {nodes} Ray node(s) joined {address} within {timeout:.0f} s")
            time.sleep(2.0)
    finally:
        if opened:
            shutdown()


# ---------------------------------------------------------------------- Ray Jobs
def jobs_url(address: str | None) -> str:
    """The Ray Jobs (dashboard) address as http(s)://HOST:PORT; HOST alone gets port 8265."""
    if not address:
        raise UserError("--address is required: the Ray dashboard of the cluster, e.g. http://HEAD:8265 "
                        "(or set RAY_API_SERVER_ADDRESS)")
    a = address.strip().rstrip("/")
    if a.startswith("ray://"):
        raise UserError(f"{address} is a Ray Client address; Ray Jobs use the dashboard: http://HEAD:8265")
    if "://" not in a:
        a = f"http://{a}" if ":" in a else f"http://{a}:{JOBS_PORT}"
    u = urlparse(a)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise UserError(f"not a Ray Jobs address: {address!r} (use http://HEAD:8265)")
    try:
        u.port
    except ValueError:
        raise UserError(f"not a Ray Jobs address: {address!r} (use http://HEAD:8265)") from None
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
    from .cluster import probe, send_token_if_available

    u = urlparse(url)
    probe(u.hostname, u.port or (443 if u.scheme == "https" else 80), 3.0, f"cannot reach a Ray Jobs server at {url}",
          "start the cluster's head with the dashboard (pip install 'ray[default]'; `ray start --head`, port 8265)")
    send_token_if_available()
    try:
        return JobSubmissionClient(url)
    except Exception as e:
        raise _jobs_error(e, url) from None


def _jobs_error(e: Exception, url: str, job_id: str | None = None) -> UserError:
    text = str(e).strip()
    first = text.splitlines()[0] if text else type(e).__name__
    if type(e).__name__ == "AuthenticationError" or "status code 401" in text or "status code 403" in text:
        return UserError(f"the Ray Jobs server at {url} refused the request ({first.rstrip(':')}): set the "
                         "cluster's token in RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH (or ~/.ray/auth_token)")
    if job_id and ("404" in text or "does not exist" in text):
        return UserError(f"no Ray Job {job_id!r} at {url}")
    return UserError(f"Ray Jobs server at {url}: {first}")


def _project_root() -> Path | None:
    root = Path(__file__).resolve().parents[1]
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
    s, spec_path = _spec(spec)
    try:
        n_gpus = float(gpus)
    except (TypeError, ValueError):
        raise UserError(f"--gpus must be a number, got {gpus!r}") from None
    if n_gpus < 0:
        raise UserError(f"--gpus must be >= 0, got {gpus}")
    url = jobs_url(address)
    db_url = cluster_store_url(db, True, "a Ray Job (it runs in a temporary working dir on the cluster)")
    env_vars = {"ZOO_SWEEP_DB": db_url}
    if _has_password(db_url):
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
        runtime_env["py_modules"] = [str(Path(__file__).resolve().parent)]
    entry = [python, "-m", "zoo_sweep.cli", "launch", target.relative_to(wd).as_posix(), "--address", "auto",
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


# ---------------------------------------------------------------------- CLI: zoo-sweep submit ...
submit_app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                         help="Submit a sweep to a cluster: a SLURM batch job or a Ray Job.")


def _root_obj(ctx: typer.Context):
    """--db / --home given to `zoo-sweep` itself (None: ZOO_SWEEP_DB / ZOO_SWEEP_HOME or the defaults)."""
    return getattr(ctx.obj, "db", None), getattr(ctx.obj, "home", None)


def _say(text: str) -> None:
    print(text, flush=True)


@submit_app.command("slurm")
def slurm_cmd(ctx: typer.Context,
              spec: Path = typer.Argument(..., help="Sweep spec (TOML)."),
              nodes: str = typer.Option("1", "--nodes", help="SLURM nodes; one Ray node each."),
              gpus_per_node: str = typer.Option("0", "--gpus-per-node", help="GPUs per node (whole number)."),
              partition: Optional[str] = typer.Option(None, "--partition"),
              time_limit: Optional[str] = typer.Option(None, "--time", help="SLURM time limit, e.g. 12:00:00."),
              account: Optional[str] = typer.Option(None, "--account"),
              cpus_per_node: Optional[str] = typer.Option(None, "--cpus-per-node",
                                                          help="CPUs per node (default: what SLURM allocates)."),
              mem: Optional[str] = typer.Option(None, "--mem", help="Memory per node, e.g. 64G."),
              setup: Optional[list[str]] = typer.Option(None, "--setup",
                                                        help="Shell line run first on every node (module load ...); repeatable."),
              mode: Optional[str] = typer.Option(None, "--mode",
                                                 help="symmetric (ray symmetric-run) or classic (srun ray start); "
                                                      "default symmetric, classic with --port."),
              port: Optional[str] = typer.Option(None, "--port",
                                                 help="Base of this job's Ray ports (PORT..PORT+999), for shared nodes."),
              array: Optional[str] = typer.Option(None, "--array",
                                                  help="K: K array tasks, task i runs --shard i/K; no Ray across nodes."),
              dashboard: bool = typer.Option(True, "--dashboard/--no-dashboard", help="Start the Ray dashboard on the head."),
              launch_args: str = typer.Option("", "--launch-args", help="Extra options for `zoo-sweep launch`."),
              out_dir: Path = typer.Option(SLURM_DIR, "--out", help="Folder for the script and its log."),
              dry_run: bool = typer.Option(False, "--dry-run", help="Write the script; do not submit it.")):
    """Write an sbatch script that runs the sweep on a SLURM allocation, and submit it."""
    db, home = _root_obj(ctx)
    if not dry_run and not shutil.which("sbatch"):
        raise UserError("sbatch not found on PATH: run this on a SLURM login node, or add --dry-run to only "
                        "write the script")
    s, _ = _spec(spec)
    text = render_sbatch(s, nodes=nodes, gpus_per_node=gpus_per_node, partition=partition, time=time_limit,
                         account=account, cpus_per_node=cpus_per_node, mem=mem, setup=setup or (), mode=mode,
                         port=port, array=array, dashboard=dashboard, db=db, home=home, launch_args=launch_args,
                         log_dir=out_dir)
    name = s.name + ("-array" if array else "")
    path = write_sbatch(text, name, out_dir)
    _say(f"wrote {path}")
    if dry_run:
        _say(f"dry run: not submitted; submit with: sbatch {path}")
        return
    env = dict(os.environ)
    if db:  # a password-bearing URL is not in the script: the job reads it from the submitting environment
        env["ZOO_SWEEP_DB"] = db
    job = submit_slurm(path, env=env)
    suffix = "_*" if array else ""
    _say(f"submitted SLURM job {job}; log: {Path(out_dir).absolute()}/"
         f"{name.removesuffix('-array')}-{job}{suffix}.out")


@submit_app.command("ray")
def ray_cmd(ctx: typer.Context,
            spec: Optional[Path] = typer.Argument(None, help="Sweep spec (TOML) to submit."),
            address: Optional[str] = typer.Option(None, "--address", envvar="RAY_API_SERVER_ADDRESS",
                                                  help="The cluster's Ray Jobs address, e.g. http://HEAD:8265."),
            logs: Optional[str] = typer.Option(None, "--logs", metavar="ID", help="Print a submitted job's logs."),
            stop: Optional[str] = typer.Option(None, "--stop", metavar="ID", help="Stop a submitted job."),
            follow: bool = typer.Option(False, "--follow", help="Stream the logs until the job ends; exit 1 unless it succeeded."),
            gpus: str = typer.Option("0", "--gpus", help="GPUs the launch uses on the cluster (0: CPU)."),
            working_dir: Optional[Path] = typer.Option(None, "--working-dir",
                                                       help="Folder shipped as the job's working dir (must hold the spec)."),
            python: str = typer.Option("python", "--python", help="The cluster's Python that has zoo-sweep's dependencies."),
            launch_args: str = typer.Option("", "--launch-args", help="Extra options for `zoo-sweep launch`.")):
    """Submit the sweep as a Ray Job on an existing cluster, or show (--logs ID) / stop (--stop ID) one."""
    db, home = _root_obj(ctx)
    if sum(x is not None for x in (spec, logs, stop)) != 1:
        raise UserError("give exactly one of SPEC (submit), --logs ID or --stop ID")
    if stop:
        stopped = stop_ray_job(address, stop)
        _say(f"stopping Ray Job {stop}" if stopped else f"Ray Job {stop} had already ended "
             f"({ray_job_status(address, stop)})")
        return
    if logs:
        if follow:
            status = follow_ray_job(address, logs)
        else:
            sys.stdout.write(ray_job_logs(address, logs))
            status = ray_job_status(address, logs)
        _say(f"Ray Job {logs}: {status}")
        raise typer.Exit(1 if follow and status != "SUCCEEDED" else 0)
    job = submit_ray_job(spec, address, db=db, home=home, gpus=gpus, working_dir=working_dir, python=python,
                         launch_args=launch_args)
    url = jobs_url(address)
    _say(f"submitted Ray Job {job} to {url}")
    if not follow:
        _say(f"logs: zoo-sweep submit ray --logs {job} --address {url} [--follow]")
        return
    status = follow_ray_job(url, job)
    _say(f"Ray Job {job}: {status}")
    raise typer.Exit(0 if status == "SUCCEEDED" else 1)


@submit_app.command("wait-nodes", hidden=True)
def wait_nodes_cmd(address: str = typer.Argument(..., help="HOST:PORT of the Ray head."),
                   nodes: int = typer.Argument(..., help="Alive nodes to wait for (0: only the head's answer)."),
                   timeout: float = typer.Option(300.0, "--timeout")):
    """Used by generated sbatch scripts: wait until the Ray cluster has NODES nodes."""
    n = wait_for_nodes(address, nodes, timeout)
    if nodes:
        _say(f"zoo-sweep: {n} Ray node(s) up at {address}")
