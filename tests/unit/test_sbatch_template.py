"""The sbatch script template: a fixed input gives the committed script byte for byte, and every value
reaches the script as one shell-quoted word, however hostile. (Running the scripts on a real SLURM
cluster is tests/integration/test_cluster.py.)"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from zoo_sweep.errors import UserError
from zoo_sweep.submit.slurm import SbatchContext, render, render_sbatch

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).parent / "golden"

FIXED = SbatchContext(
    sweep="imagenet-zoo", spec="/shared/zoo/jobs/imagenet zoo.toml", job_name="zoo-sweep-imagenet-zoo",
    chdir="/shared/zoo", log_dir="/shared/zoo/jobs/slurm", zoo_bin="/shared/venvs/zoo/bin", home="/shared/zoo/results",
    store="postgresql://me@dbhost/zoo", mode="classic", nodes=4, gpus_per_node=8, cpus_per_node=64, port=23000,
    dashboard=False, partition="gpu", time="24:00:00", account="lab", mem="480G", setup=("module load cuda/12.4",),
    launch_args=("--gpus-per-job", "0.5"))
FIXED_ARRAY = SbatchContext(
    sweep="digits-demo", spec="/home/me/zoo/jobs/digits-demo.toml", job_name="zoo-sweep-digits-demo",
    chdir="/home/me/zoo", log_dir="/home/me/zoo/jobs/slurm", zoo_bin="/home/me/zoo/.venv/bin",
    home="/home/me/zoo/results", store="", mode="array", array=4, cpus_per_node=8)

HOSTILE = ["$(touch PWNED)", "`touch PWNED`", "a'b\"c", "x; touch PWNED", "${HOME}", "%j %x", "-- --help", "é ∞"]


def values(text: str) -> dict:
    """The script's value block as the shell would read it: NAME=WORD or NAME=(WORDS...)."""
    block = text.split("# What `zoo-sweep submit slurm` was given, each value shell-quoted.\n", 1)[1].split("\n\n")[0]
    out = {}
    for line in block.splitlines():
        name, rhs = line.split("=", 1)
        if rhs.startswith("(") and rhs.endswith(")"):
            out[name] = shlex.split(rhs[1:-1])
        else:
            words = shlex.split(rhs)
            assert len(words) <= 1, line  # one word, or the empty string
            out[name] = words[0] if words else ""
    return out


def directives(text: str) -> dict:
    return {m[1]: shlex.split(m[2])[0] for m in re.finditer(r"^#SBATCH --([a-z-]+)=(.*)$", text, re.M)}


@pytest.mark.parametrize("ctx, golden", [(FIXED, "sbatch-classic.sh"), (FIXED_ARRAY, "sbatch-array.sh")])
def test_golden_scripts(ctx, golden):
    """A change to the template or the context shows up here as a diff of a whole script: read it, then
    update the files with `cd tests/unit && python -c 'import test_sbatch_template as t; t.regenerate()'`."""
    assert render(ctx) == (GOLDEN / golden).read_text()


def regenerate():  # pragma: no cover  (a maintenance helper)
    for ctx, name in ((FIXED, "sbatch-classic.sh"), (FIXED_ARRAY, "sbatch-array.sh")):
        (GOLDEN / name).write_text(render(ctx))


def test_golden_values_and_directives():
    text = render(FIXED)
    v = values(text)
    assert v["spec"] == "/shared/zoo/jobs/imagenet zoo.toml" and v["mode"] == "classic" and v["launch_gpus"] == "32"
    assert v["launch_args"] == ["--gpus-per-job", "0.5"] and "--include-dashboard=false" in v["ray_head_args"]
    assert v["ray_port"] == "23000" and "--min-worker-port=23100" in v["ray_port_args"]
    d = directives(text)
    assert d == {"job-name": "zoo-sweep-imagenet-zoo", "nodes": "4", "ntasks-per-node": "1", "cpus-per-task": "64",
                 "gres": "gpu:8", "mem": "480G", "partition": "gpu", "time": "24:00:00", "account": "lab",
                 "chdir": "/shared/zoo", "output": "/shared/zoo/jobs/slurm/imagenet-zoo-%j.out"}
    assert "module load cuda/12.4" in text.splitlines()  # --setup is shell code, as written


@pytest.fixture
def spec_in(tmp_path):
    def make(folder: str) -> Path:
        d = tmp_path / folder
        d.mkdir(parents=True)
        p = d / "tiny.toml"
        p.write_text((ROOT / "jobs" / "digits-demo.toml").read_text())
        return p
    return make


@pytest.mark.parametrize("hostile", HOSTILE)
def test_hostile_values_stay_one_word(hostile, spec_in, tmp_path, monkeypatch):
    """Paths, store URL and --launch-args with shell syntax in them reach the script as the exact strings
    given, each one word; sbatch reads #SBATCH values with the same quoting."""
    monkeypatch.chdir(tmp_path)
    spec = spec_in(f"specs {hostile}")
    log_dir = tmp_path / f"logs {hostile}"
    db = f"sqlite:///{tmp_path}/db {hostile}/zoo.db"
    home = str(tmp_path / f"home {hostile}")
    text = render_sbatch(spec, nodes=2, db=db, home=home, log_dir=log_dir,
                         launch_args=["--limit", hostile], setup=["echo setup"])
    v = values(text)
    assert v["spec"] == str(spec) and v["store"] == db and v["home"] == home
    assert v["launch_args"] == ["--limit", hostile]
    d = directives(text)
    assert d["output"] == f"{log_dir}".replace("%", "%%") + "/digits-demo-%j.out"
    assert d["chdir"] == str(tmp_path)
    # nothing hostile outside the quoted value block and the #SBATCH lines
    body = text.split("\n\n", 1)[1].split("# What `zoo-sweep submit slurm` was given")[0] + text.split(
        "export PATH=", 1)[1]
    assert hostile not in body


def test_launch_args_as_one_string_are_split_like_a_shell(spec_in, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = render_sbatch(spec_in("s"), db=f"sqlite:///{tmp_path}/z.db", log_dir=tmp_path,
                         launch_args="--gpus-per-job 0.5 '$(touch PWNED)'")
    assert values(text)["launch_args"] == ["--gpus-per-job", "0.5", "$(touch PWNED)"]


@pytest.mark.parametrize("option, value, message", [
    ("setup", ["echo 'unterminated"], "not a complete shell line"),
    ("launch_args", ["--limit", "1\ntouch PWNED"], "line break"),
    ("log_dir", "logs\n#SBATCH --nodes=99", "line break"),
    ("partition", "gpu\n#SBATCH --nodes=99", "one word"),
    ("job_name", "x y", "one word"),
    ("db", "sqlite:////tmp/a\nb.db", "line break"),
])
def test_values_that_would_break_lines_are_refused(option, value, message, spec_in, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    opts = {"db": f"sqlite:///{tmp_path}/z.db", "log_dir": tmp_path, option: value}
    with pytest.raises(UserError, match=message):
        render_sbatch(spec_in("s"), **opts)


def test_password_never_in_the_script(spec_in, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = render_sbatch(spec_in("s"), db="postgresql://me:hunter2@db/zoo", log_dir=tmp_path)
    assert "hunter2" not in text and values(text)["store"] == "" and "${ZOO_SWEEP_DB:?" in text


def test_every_resource_reaches_slurm_and_ray(spec_in, tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_TOKEN", "zz-not-a-real-token")
    monkeypatch.chdir(tmp_path)
    db = f"sqlite:///{tmp_path / 'zoo.db'}"
    for mode in ("symmetric", "classic"):
        text = render_sbatch(spec_in(mode), nodes="3", gpus_per_node="4", partition="gpu", time="1:00:00",
                             account="lab", cpus_per_node=8, mem="32G", setup="module load cuda/12", mode=mode,
                             db=db, home=str(tmp_path / "res"), log_dir=tmp_path)
        assert directives(text) == {
            "job-name": "zoo-sweep-digits-demo", "nodes": "3", "ntasks-per-node": "1", "cpus-per-task": "8",
            "gres": "gpu:4", "mem": "32G", "partition": "gpu", "time": "1:00:00", "account": "lab",
            "chdir": str(tmp_path), "output": f"{tmp_path}/digits-demo-%j.out"}
        v = values(text)
        assert (v["mode"], v["gpus_per_node"], v["launch_gpus"], v["cpus_per_node"]) == (mode, "4", "12", "8")
        assert (v["store"], v["home"], v["export_store"]) == (db, str(tmp_path / "res"), "1")
        assert "module load cuda/12" in text.splitlines() and "export RAY_AUTH_MODE=token" in text
        assert "zz-not-a-real-token" not in text and "RAY_AUTH_TOKEN=" not in text
        assert re.search(r"^\s*ray stop", text, re.M) is None  # never stop every Ray cluster on a node
    assert 'ray symmetric-run --address "$head_addr" --min-nodes "$SLURM_JOB_NUM_NODES"' in text
    assert "ray start --head --block" in text and 'kill -TERM "${ray_pids[@]}"' in text


def test_ports_and_defaults(spec_in, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = render_sbatch(spec_in("s"), nodes=2, port=23000, dashboard=False, db="postgresql://me@db.example/zoo",
                         log_dir=tmp_path)
    v = values(text)
    assert v["mode"] == "classic"  # --port means shared nodes: symmetric-run's final `ray stop` is unsafe there
    assert v["ray_port"] == "23000" and v["ray_head_args"] == [
        "--ray-client-server-port=23001", "--dashboard-port=23002", "--include-dashboard=false"]
    assert v["ray_port_args"][:2] == ["--node-manager-port=23003", "--object-manager-port=23004"]
    assert v["ray_port_args"][-2:] == ["--min-worker-port=23100", "--max-worker-port=23999"]
    assert v["cpus_per_node"] == "" and "${SLURM_CPUS_PER_TASK:-${SLURM_CPUS_ON_NODE:?}}" in text
    assert "gres" not in directives(text) and v["export_store"] == "0"  # PostgreSQL: no export needed
    v = values(render_sbatch(spec_in("t"), nodes=2, db="postgresql://me@db.example/zoo", log_dir=tmp_path))
    assert v["mode"] == "symmetric" and v["ray_port"] == "6379" and v["ray_port_args"] == []


def test_array_mode(spec_in, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    warnings = []
    text = render_sbatch(spec_in("s"), array=4, gpus_per_node=1, cpus_per_node=4, db=f"sqlite:///{tmp_path}/z.db",
                         log_dir=tmp_path, warn=warnings.append)
    d, v = directives(text), values(text)
    assert (d["array"], d["nodes"], d["gres"]) == ("0-3", "1", "gpu:1")
    assert d["output"] == f"{tmp_path}/digits-demo-%A_%a.out"
    assert (v["mode"], v["array_tasks"], v["export_store"]) == ("array", "4", "0")
    assert '--shard "${SLURM_ARRAY_TASK_ID:?}/$array_tasks"' in text
    assert warnings and "SQLite" in warnings[0]
