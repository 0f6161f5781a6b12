"""`zoo-sweep submit slurm|ray`: thin commands over zoo_sweep.submit."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Optional

import typer

from zoo_sweep.cli import output
from zoo_sweep.errors import UserError
from zoo_sweep.submit.common import spec_and_path
from zoo_sweep.submit.rayjobs import (
    follow_ray_job,
    jobs_url,
    ray_job_logs,
    ray_job_status,
    stop_ray_job,
    submit_ray_job,
)
from zoo_sweep.submit.slurm import (
    SLURM_DIR,
    render_sbatch,
    submit_slurm,
    wait_for_nodes,
    write_sbatch,
)
from zoo_sweep.urls import mask_url

# ---------------------------------------------------------------------- CLI: zoo-sweep submit ...
submit_app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                         help="Submit a sweep to a cluster: a SLURM batch job or a Ray Job.")


def _root_obj(ctx: typer.Context):
    """--db / --home given to `zoo-sweep` itself (None: ZOO_SWEEP_DB / ZOO_SWEEP_HOME or the defaults)."""
    return getattr(ctx.obj, "db", None), getattr(ctx.obj, "home", None)


def _say(text: str) -> None:
    print(text, file=output.stdout, flush=True)  # masked, as every line the CLI prints


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
                                                        help="Shell line run first on every node (module load ...); "
                                                             "repeatable."),
              mode: Optional[str] = typer.Option(None, "--mode",
                                                 help="symmetric (ray symmetric-run) or classic (srun ray start); "
                                                      "default symmetric, classic with --port."),
              port: Optional[str] = typer.Option(None, "--port",
                                                 help="Base of this job's Ray ports (PORT..PORT+999), "
                                                      "for shared nodes."),
              array: Optional[str] = typer.Option(None, "--array",
                                                  help="K: K array tasks, task i runs --shard i/K; "
                                                       "no Ray across nodes."),
              dashboard: bool = typer.Option(True, "--dashboard/--no-dashboard",
                                             help="Start the Ray dashboard on the head."),
              launch_args: str = typer.Option("", "--launch-args", help="Extra options for `zoo-sweep launch`."),
              out_dir: str = typer.Option(str(SLURM_DIR), "--out", help="Folder for the script and its log."),
              dry_run: bool = typer.Option(False, "--dry-run", help="Write the script; do not submit it.")):
    """Write an sbatch script that runs the sweep on a SLURM allocation, and submit it."""
    db, home = _root_obj(ctx)
    if not dry_run and not shutil.which("sbatch"):
        raise UserError("sbatch not found on PATH: run this on a SLURM login node, or add --dry-run to only "
                        "write the script")
    s, _ = spec_and_path(spec)
    text = render_sbatch(s, nodes=nodes, gpus_per_node=gpus_per_node, partition=partition, time=time_limit,
                         account=account, cpus_per_node=cpus_per_node, mem=mem, setup=setup or (), mode=mode,
                         port=port, array=array, dashboard=dashboard, db=db, home=home, launch_args=launch_args,
                         log_dir=out_dir)
    name = s.name + ("-array" if array else "")
    path = write_sbatch(text, name, out_dir)  # checks the folder ('' is refused, not taken for the current one)
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
            follow: bool = typer.Option(False, "--follow",
                                        help="Stream the logs until the job ends; exit 1 unless it succeeded."),
            gpus: str = typer.Option("0", "--gpus", help="GPUs the launch uses on the cluster (0: CPU)."),
            working_dir: Optional[Path] = typer.Option(None, "--working-dir",
                                                       help="Folder shipped as the job's working dir "
                                                            "(must hold the spec)."),
            python: str = typer.Option("python", "--python",
                                       help="The cluster's Python that has zoo-sweep's dependencies."),
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
            status = follow_ray_job(address, logs, out=output.stdout)
        else:
            output.stdout.write(ray_job_logs(address, logs))
            status = ray_job_status(address, logs)
        _say(f"Ray Job {logs}: {status}")
        raise typer.Exit(1 if follow and status != "SUCCEEDED" else 0)
    job = submit_ray_job(spec, address, db=db, home=home, gpus=gpus, working_dir=working_dir, python=python,
                         launch_args=launch_args)
    url = jobs_url(address)
    _say(f"submitted Ray Job {job} to {mask_url(url)}")
    if not follow:
        _say(f"logs: zoo-sweep submit ray --logs {job} --address {mask_url(url)} [--follow]")
        return
    status = follow_ray_job(url, job, out=output.stdout)
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
