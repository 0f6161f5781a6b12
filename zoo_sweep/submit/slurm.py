"""Batch submission of a sweep to a SLURM cluster: an sbatch script that runs ``zoo-sweep launch``.

Ray stays the distributed engine; these functions only start it and hand it the same
``zoo-sweep launch SPEC`` a user runs locally, so resuming, retries and the store behave the same.

* :func:`render_sbatch` / :func:`write_sbatch` / :func:`submit_slurm`: an sbatch script (the template
  ``templates/sbatch.sh.tmpl`` filled with shell-quoted values) that starts a Ray cluster across the
  allocation (``ray symmetric-run``, or ``ray start`` head/workers through ``srun``), runs the launch on
  the head node and stops the cluster; or, with ``array=K``, one array task per shard
  (``zoo-sweep launch SPEC --shard i/K``) against a shared store, no cross-node Ray.
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
from collections.abc import Sequence
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path
from string import Template
from typing import TYPE_CHECKING

from zoo_sweep.errors import UserError
from zoo_sweep.paths import writable_dir, write_atomic
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
TEMPLATE = "sbatch.sh.tmpl"


@dataclass(frozen=True)
class SbatchContext:
    """Everything a generated sbatch script depends on, checked. Every value reaches the script shell-quoted
    (``#SBATCH`` lines included: sbatch reads quotes there as the shell does); only ``setup`` is shell code,
    by design."""

    sweep: str
    spec: str  # absolute path of the spec file
    job_name: str
    chdir: str  # the submit directory
    log_dir: str
    zoo_bin: str  # the folder of the zoo-sweep and ray commands of the submitting environment
    home: str
    store: str  # the store URL; "" when it has a password (the job reads ZOO_SWEEP_DB from the environment)
    mode: str  # symmetric | classic | array
    nodes: int = 1
    gpus_per_node: int = 0
    cpus_per_node: int | None = None
    array: int | None = None
    port: int | None = None  # base of every Ray port of the job; None: Ray's defaults
    dashboard: bool = True
    partition: str | None = None
    time: str | None = None
    account: str | None = None
    mem: str | None = None
    setup: tuple[str, ...] = ()
    launch_args: tuple[str, ...] = ()
    export_store: bool = False  # SQLite: a Parquet copy into the results folder at the end


def sbatch_context(spec: str | Path | SweepSpec, *, nodes: int | str = 1, gpus_per_node: int | str = 0,
                   partition: str | None = None, time: str | None = None, account: str | None = None,
                   cpus_per_node: int | str | None = None, mem: str | None = None,
                   setup: str | Sequence[str] = (), mode: str | None = None, port: int | str | None = None,
                   array: int | str | None = None, dashboard: bool = True, db: str | None = None,
                   home: str | None = None, launch_args: str | Sequence[str] = (),
                   log_dir: str | Path = SLURM_DIR, job_name: str | None = None, warn=None) -> SbatchContext:
    """The checked inputs of :func:`render_sbatch` (same arguments); one clear line on bad input."""
    from zoo_sweep.config.spec import check_name
    from zoo_sweep.paths import Paths

    warn = warn or (lambda m: print(f"warning: {m}", file=sys.stderr))
    s, spec_path = spec_and_path(spec)
    check_name(s.name)  # it names the log file: never a path of its own
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
    setup_lines = tuple(_setup_lines(setup))
    extra = tuple(shlex.split(launch_args) if isinstance(launch_args, str) else map(str, launch_args))
    cwd = Path.cwd()
    db_url = _store_url(db, n_nodes, k, cwd, warn)
    mode = _mode(mode, base, k, dashboard, warn)
    ctx = SbatchContext(
        sweep=s.name, spec=str(spec_path), job_name=job_name or f"zoo-sweep-{s.name}", chdir=str(cwd),
        log_dir=str(Path(log_dir).absolute()), zoo_bin=str(Path(sys.executable).parent),
        home=str(Paths.default(home).home), store="" if has_password(db_url) else db_url, mode=mode,
        nodes=1 if k else n_nodes, gpus_per_node=gpus, cpus_per_node=cpus, array=k, port=base,
        dashboard=dashboard, partition=partition, time=time, account=account, mem=mem, setup=setup_lines,
        launch_args=extra, export_store=is_sqlite(db_url) and not k)
    _single_lines(ctx)
    return ctx


def _store_url(db: str | None, n_nodes: int, k: int | None, cwd: Path, warn) -> str:
    multi = n_nodes > 1 or (k or 1) > 1
    where = f"{k} array tasks on different nodes" if k and k > 1 else f"a {n_nodes}-node run"
    url = cluster_store_url(db, multi, where, cwd)
    if k and k > 1 and is_sqlite(url):
        warn(f"{k} array tasks write one SQLite store at once: this needs a local or lock-safe filesystem "
             "(SQLite WAL does not work on NFS); a PostgreSQL URL is safer")
    return url


def _mode(mode: str | None, base: int | None, k: int | None, dashboard: bool, warn) -> str:
    """array, or how Ray starts: symmetric by default, classic with --port (shared nodes)."""
    if k:
        return "array"
    if mode is None:
        mode = "classic" if base is not None else "symmetric"
    elif mode == "symmetric" and base is not None:
        warn("--mode symmetric with --port: ray symmetric-run ends with `ray stop`, which also stops your other "
             "Ray clusters on these nodes; --mode classic stops only what this job started")
    if mode == "symmetric" and not dashboard:
        warn("--no-dashboard is ignored with --mode symmetric (symmetric-run passes the same flags to every node, "
             "and workers reject --include-dashboard)")
    return mode


def _setup_lines(setup: str | Sequence[str]) -> list[str]:
    """--setup lines, each a complete shell line: an open quote would swallow the rest of the script."""
    items = [setup] if isinstance(setup, str) else [str(x) for x in setup]
    lines = [ln for item in items for ln in item.splitlines() if ln.strip()]
    for ln in lines:
        try:
            shlex.split(ln, comments=True)
        except ValueError as e:
            raise UserError(f"--setup line {ln!r} is not a complete shell line ({e})") from None
    return lines


_WHAT = {"spec": "the spec path", "chdir": "the submit directory", "log_dir": "--out", "zoo_bin": "the Python folder",
         "home": "--home", "store": "the store URL", "launch_args": "--launch-args"}


def _single_lines(ctx: SbatchContext) -> None:
    """Quoting keeps a value one shell word; a line break or control character would still end an
    #SBATCH line or a comment, so no value carries one."""
    for f in fields(ctx):
        if f.name == "setup":
            continue
        value = getattr(ctx, f.name)
        for v in (value if isinstance(value, tuple) else (value,)):
            if isinstance(v, str) and re.search(r"[\x00-\x1f\x7f]", v):
                what = _WHAT.get(f.name, f"--{f.name.replace('_', '-')}")
                raise UserError(f"{what} {v!r} holds a line break or control character")


def render_sbatch(spec: str | Path | SweepSpec, **options) -> str:
    """The text of an sbatch script that runs the sweep on a SLURM allocation. ``spec``: its file, or the
    spec already loaded from one; ``options``: those of :func:`sbatch_context`.

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
    return render(sbatch_context(spec, **options))


class _ScriptTemplate(Template):
    """``{{name}}`` placeholders: ``$`` belongs to the shell script."""

    delimiter = "{{"
    pattern = r"""\{\{(?:
        (?P<escaped>(?!))|
        (?P<named>[a-z_]+)\}\}|
        (?P<braced>(?!))|
        (?P<invalid>)
    )"""


def render(ctx: SbatchContext) -> str:
    """The script for a checked context: the template file filled with quoted values."""
    text = resources.files("zoo_sweep.submit").joinpath("templates", TEMPLATE).read_text()
    return _ScriptTemplate(text).substitute(summary=_summary(ctx), directives="\n".join(_directives(ctx)),
                                            values="\n".join(_values(ctx)), setup=_setup_block(ctx.setup))


def _setup_block(lines: tuple[str, ...]) -> str:
    return "\n".join(("# --setup lines, run as written", *lines)) if lines else "# (no --setup lines)"


def _summary(ctx: SbatchContext) -> str:
    if ctx.mode == "array":
        return (f"sweep {ctx.sweep} as {ctx.array} SLURM array task(s); task i runs shard i/{ctx.array} of "
                "every stage\n# on its own node with a local Ray; the store is shared.")
    return (f"sweep {ctx.sweep} on a Ray cluster across {ctx.nodes} SLURM node(s), started with "
            f"`ray {'symmetric-run' if ctx.mode == 'symmetric' else 'start'}`;\n# the launch runs on the first node.")


def _directives(ctx: SbatchContext) -> list[str]:
    q = shlex.quote
    out = [("job-name", ctx.job_name), ("nodes", ctx.nodes), ("ntasks-per-node", 1)]
    if ctx.cpus_per_node:
        out.append(("cpus-per-task", ctx.cpus_per_node))
    if ctx.gpus_per_node:
        out.append(("gres", f"gpu:{ctx.gpus_per_node}"))
    out += [(opt, v) for opt, v in (("mem", ctx.mem), ("partition", ctx.partition), ("time", ctx.time),
                                    ("account", ctx.account)) if v]
    if ctx.array:
        out.append(("array", f"0-{ctx.array - 1}"))
    # a literal % in a folder name would be read as one of sbatch's file-name patterns
    log = f"{ctx.log_dir.replace('%', '%%')}/{ctx.sweep}-{'%A_%a' if ctx.array else '%j'}.out"
    out += [("chdir", ctx.chdir), ("output", log)]
    return [f"#SBATCH --{opt}={q(str(v))}" for opt, v in out]


def _values(ctx: SbatchContext) -> list[str]:
    q = shlex.quote
    head_args: list[str] = []
    port_args: list[str] = []
    if ctx.port is not None:
        port_args = [f"--{opt}={ctx.port + off}" for opt, off in NODE_PORTS.items()]
        head_args = [f"--{opt}={ctx.port + off}" for opt, off in HEAD_PORTS.items()]
    if not ctx.dashboard and ctx.mode == "classic":
        head_args.append("--include-dashboard=false")  # a head-only flag: symmetric-run gives every node the same
    scalars = {"sweep": ctx.sweep, "spec": ctx.spec, "zoo_bin": ctx.zoo_bin, "home": ctx.home, "store": ctx.store,
               "mode": ctx.mode, "gpus_per_node": ctx.gpus_per_node, "launch_gpus": ctx.nodes * ctx.gpus_per_node,
               "cpus_per_node": ctx.cpus_per_node or "", "array_tasks": ctx.array or "",
               "ray_port": ctx.port if ctx.port is not None else DEFAULT_PORT, "export_store": int(ctx.export_store)}
    arrays = {"launch_args": ctx.launch_args, "ray_head_args": head_args, "ray_port_args": port_args}
    return ([f"{k}={q(str(v))}" for k, v in scalars.items()]
            + [f"{k}=({' '.join(q(a) for a in v)})" for k, v in arrays.items()])


def write_sbatch(text: str, name: str, out_dir: str | Path = SLURM_DIR) -> Path:
    """Write a rendered script as OUT_DIR/NAME-YYYYmmdd-HHMMSS.sh (never overwriting one). A name already taken,
    by a file or by a link (even one to nothing), is skipped, and the script is renamed into place, so it is
    never written through a link."""
    out = writable_dir(out_dir, "--out")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path, i = out / f"{name}-{stamp}.sh", 1
    while os.path.lexists(path):
        path, i = out / f"{name}-{stamp}-{i}.sh", i + 1
    return write_atomic(path, lambda tmp: tmp.write_text(text), mode=0o755, flag="--out")


def submit_slurm(script: str | Path, env: dict | None = None) -> str:
    """`sbatch --parsable SCRIPT`; returns the SLURM job id."""
    sbatch = shutil.which("sbatch", path=(env or os.environ).get("PATH"))
    if not sbatch:
        raise UserError("sbatch not found on PATH: run this on a SLURM login node, or use --dry-run to only "
                        "write the script")
    r = subprocess.run([sbatch, "--parsable", str(script)], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        msg = (r.stderr.strip() or r.stdout.strip() or f"exit code {r.returncode}").splitlines()[-1]
        if "gres" in msg.lower():
            msg += " (--gpus-per-node asks for --gres=gpu:G: use a partition with GPUs, or --gpus-per-node 0)"
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
