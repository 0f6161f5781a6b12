"""Batch submission of a sweep to a SLURM cluster: an sbatch script that runs ``zoo-sweep launch``.

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
import time
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from zoo_sweep.errors import UserError
from zoo_sweep.submit.common import (
    cluster_store_url,
    has_password,
    is_sqlite,
    one_word,
    spec_and_path,
    whole_number,
)

if TYPE_CHECKING:
    from zoo_sweep.config.spec import SweepSpec

SLURM_DIR = Path("jobs") / "slurm"
MODES = ("symmetric", "classic")
DEFAULT_PORT = 6379
# Ray ports derived from --port BASE (multi-tenant nodes: every Ray port of this job is explicit)
HEAD_PORTS = {"ray-client-server-port": 1, "dashboard-port": 2}
NODE_PORTS = {"node-manager-port": 3, "object-manager-port": 4, "dashboard-agent-listen-port": 5,
              "dashboard-agent-grpc-port": 6, "runtime-env-agent-port": 7, "metrics-export-port": 8,
              "min-worker-port": 100, "max-worker-port": 999}





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
    s, spec_path = spec_and_path(spec)
    n_nodes = whole_number(nodes, "--nodes", 1)
    gpus = whole_number(gpus_per_node, "--gpus-per-node", 0)
    cpus = whole_number(cpus_per_node, "--cpus-per-node", 1) if cpus_per_node is not None else None
    k = whole_number(array, "--array", 1) if array is not None else None
    base = whole_number(port, "--port", 1024) if port is not None else None
    if base is not None and base + max(NODE_PORTS.values()) > 65535:
        raise UserError(f"--port {base}: Ray uses ports {base}..{base + 999}; pick a base <= {65535 - 999}")
    if mode is not None and mode not in MODES:
        raise UserError(f"--mode must be symmetric or classic, got {mode!r}")
    if k is not None and n_nodes > 1:
        raise UserError("--array runs one node per array task (no Ray across nodes); drop --nodes or use --nodes 1")
    for opt, v in (("--partition", partition), ("--time", time), ("--account", account), ("--mem", mem),
                   ("--job-name", job_name)):
        one_word(v, opt)
    setup_lines = [ln for ln in (setup.splitlines() if isinstance(setup, str) else
                                 [x for item in setup for x in str(item).splitlines()]) if ln.strip()]
    extra = shlex.split(launch_args) if isinstance(launch_args, str) else list(launch_args)
    cwd = Path.cwd()
    multi = n_nodes > 1 or (k or 1) > 1
    where = (f"{k} array tasks on different nodes" if k and k > 1 else f"a {n_nodes}-node run")
    db_url = cluster_store_url(db, multi, where, cwd)
    if k and k > 1 and is_sqlite(db_url):
        warn(f"{k} array tasks write one SQLite store at once: this needs a local or lock-safe filesystem "
             "(SQLite WAL does not work on NFS); a PostgreSQL URL is safer")
    from zoo_sweep.paths import Paths

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
    if has_password(db_url):
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
    if is_sqlite(db_url):
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
    from zoo_sweep.pipeline.cluster import check_reachable, connect, shutdown

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
