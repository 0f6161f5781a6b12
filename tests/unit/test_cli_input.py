"""Bad input to the plan/launch/measure/reset/cancel/export/report commands, through the typer app in-process:
one `error:` line on stderr, exit code 2, the store unchanged (a full dump before and after). No Ray here:
every case fails before a cluster is needed. docs/bad-input.md lists each case with its message."""

import json

import pytest
import torch  # imported at collection: its first import runs ldconfig, which the unit tier's process guard refuses
from cli_helpers import dump, invoke, one_error_line, plan_store
from conftest import micro_spec

SPEC = micro_spec(transfer={"methods": ["kl"]})


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    return plan_store(tmp_path_factory.mktemp("cli"), SPEC)


def _no_gpu():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the no-GPU cases do not apply")


LAUNCH_CASES = {
    "--gpus 0.5": "asked for 0.5 GPU, Ray sees 0",
    "--gpus 1": "asked for 1 GPU, Ray sees 0",
    "--gpus -1": "--gpus must be a number >= 0, got -1",
    "--gpus nan": "--gpus must be a number >= 0, got nan",
    "--gpus inf": "--gpus must be a number >= 0, got inf",
    "--cpus -1": "--cpus must be >= 1, got -1",
    "--cpus 0": "--cpus must be >= 1, got 0",
    "--gpus-per-job 0": "--gpus-per-job must be a number > 0, got 0",
    "--gpus-per-job fast": "--gpus-per-job must be a number > 0 or \"auto\", got 'fast'",
    "--gpus-per-job -0.5": "--gpus-per-job must be a number > 0, got -0.5",
    "--cpus-per-job 0": "--cpus-per-job must be >= 1, got 0",
    "--cpus 1 --cpus-per-job 2": "--cpus-per-job 2 is more than --cpus 1",
    "--cpus-per-job 100000": "--cpus-per-job 100000 is more than the",
    "--max-retries -1": "--max-retries must be >= 0, got -1",
    "--limit -1": "--limit must be >= 0, got -1",
    "--shard 4/2": "--shard 4/2: need K >= 1 and 0 <= i < K",
    "--shard half": "--shard must look like i/K",
}


@pytest.mark.parametrize("command", ["launch", "measure"])
@pytest.mark.parametrize("flags", list(LAUNCH_CASES))
def test_bad_launch_flags_are_one_line_and_write_nothing(planned, command, flags):
    if flags in ("--gpus 0.5", "--gpus 1"):
        _no_gpu()
    before = dump(planned["db"])
    r = invoke(*planned["base"], command, planned["spec"], *flags.split(), "--no-progress")
    assert LAUNCH_CASES[flags] in one_error_line(r)
    assert dump(planned["db"]) == before


def test_gpus_without_gpus_fail_before_a_new_store_exists(planned, tmp_path):
    _no_gpu()
    db = tmp_path / "new.db"
    r = invoke("--db", f"sqlite:///{db}", "--home", str(planned["root"] / "home"), "launch", planned["spec"],
               "--gpus", "1", "--no-progress")
    assert "asked for 1 GPU, Ray sees 0" in one_error_line(r)
    assert not db.exists()


def test_export_and_report_out_that_cannot_be_a_folder(planned):
    afile = planned["root"] / "a-file"
    afile.write_text("x")
    before = dump(planned["db"])
    cases = [(["export", "--out", str(afile)], "is a file, not a folder"),
             (["export", "--out", str(afile / "sub")], "cannot create the folder"),
             (["report", planned["spec"], "--out", str(afile)], "is a file, not a folder"),
             (["report", planned["spec"], "--out", "/sys/zoo-sweep-report"], "cannot create the folder")]
    for args, message in cases:
        assert message in one_error_line(invoke(*planned["base"], *args)), args
    assert afile.read_text() == "x" and dump(planned["db"]) == before


CONTROL_CASES = {
    'controls = ["labels", ""]': "[transfer] controls has an empty entry; known controls: labels, self_dist",
    'controls = ["labelz"]': "unknown control 'labelz' in [transfer] controls; known: labels, self_dist",
    'controls = ["kl"]': "unknown control 'kl' in [transfer] controls; known: labels, self_dist",
    'methods = ["kl", "self_dist"]': "'self_dist' is a control, run once per student and seed: list it under "
                                     "[transfer] controls",
}


@pytest.mark.parametrize("line", list(CONTROL_CASES))
@pytest.mark.parametrize("command", ["plan", "launch"])
def test_a_bad_control_is_one_line_and_writes_nothing(planned, line, command):
    bad = planned["root"] / "bad-control.toml"
    key, value = line.split(" = ")
    bad.write_text(micro_spec(transfer={"methods": ["kl"], key: json.loads(value)}))
    before = dump(planned["db"])
    assert one_error_line(invoke(*planned["base"], command, str(bad))) == f"error: {CONTROL_CASES[line]}"
    assert dump(planned["db"]) == before


def test_markup_in_messages_prints_as_written(planned):
    """Brackets in errors are text, never rich markup: '[zoo.checkpoints]' and '[transfer]' stay whole."""
    from zoo_sweep.storage.store import Store

    bad = planned["root"] / "ghost.toml"
    bad.write_text(SPEC.replace('methods = ["kl"]', 'methods = ["kl"]\nmulti_teacher = ["soup"]\n'
                                'multi_students = ["cnn_micro"]\nteachers = ["ghost"]'))
    line = one_error_line(invoke(*planned["base"], "plan", str(bad)))
    assert "[transfer] teachers names ghost" in line
    store = Store(f"sqlite:///{planned['db']}")
    job = next(iter(store.job_states("micro", "predict")))
    error = "UserError: no weights for x: list the file under [zoo.checkpoints] [bold]"
    store.finish_job(job, "failed", error=error)
    try:
        r = invoke(*planned["base"], "status", "micro")
        assert r.exit_code == 0, r.output
        assert "list the file under [zoo.checkpoints] [bold]" in r.stdout
    finally:
        store.set_state([job], "pending", error=None)


def test_a_model_name_the_store_holds_for_another_model_is_a_warning(planned, tmp_path):
    """Results are kept by model name: a sweep that gives a stored name to a different model (here: the micro
    zoo's recipes at 24 px, other weights), or the same model on other eval data, says, in one warning line
    per plan, that its results will replace the stored ones; the same models under another sweep name plan
    without one."""
    db = tmp_path / "copy.db"
    db.write_bytes(planned["db"].read_bytes())
    base = ["--db", f"sqlite:///{db}", "--home", str(planned["root"] / "home")]
    same = tmp_path / "same.toml"
    same.write_text(SPEC.replace('name = "micro"', 'name = "micro-again"'))
    r = invoke(*base, "plan", str(same))
    assert r.exit_code == 0 and "warning" not in r.stderr, r.output
    other = tmp_path / "small.toml"
    other.write_text(micro_spec("small", transfer={"methods": ["kl"]}, data={"image_size": 24}))
    r = invoke(*base, "plan", str(other))
    warnings = [ln for ln in r.stderr.splitlines() if ln.startswith("warning: ")]
    assert r.exit_code == 0 and len(warnings) == 1, r.output
    assert "the store holds these names on digits:eval for another model" in warnings[0]
    r = invoke(*base, "plan", str(other))  # the store now holds this definition: no warning the second time
    assert r.exit_code == 0 and "warning" not in r.stderr, r.output
    # the same models (same weights) measured on other eval data under the same eval set name: replaced too
    part = tmp_path / "part.toml"
    part.write_text(micro_spec("part", transfer={"methods": ["kl"]}, data={"image_size": 24, "eval_subset": 0.5}))
    r = invoke(*base, "plan", str(part))
    warnings = [ln for ln in r.stderr.splitlines() if ln.startswith("warning: ")]
    assert r.exit_code == 0 and len(warnings) == 1, r.output
    assert "another model (architecture, weights or preprocessing) or for other eval data" in " ".join(r.stderr.split())


def test_reset_and_cancel_bad_input(planned):
    before = dump(planned["db"])
    cases = [(["reset", "nosuch"], "no sweep named 'nosuch'"),
             (["reset", "micro", "--state", "done"], "--state must be failed, diverged, cancelled or interrupted"),
             (["cancel", "nosuch"], "no sweep named 'nosuch'"),
             (["track", "nosuch", "--tracking", "sqlite:///unused.db"], "no sweep named 'nosuch'"),
             (["track", "micro", "--tracking", "localhost:5000"], "--tracking 'localhost:5000' is not an MLflow")]
    for args, message in cases:
        assert message in one_error_line(invoke(*planned["base"], *args)), args
    assert dump(planned["db"]) == before


SECRET = "SECRETPW"
BAD_URLS = {"unreachable": f"postgresql+psycopg://u:{SECRET}@127.0.0.1:1/zoo",
            "no driver": f"postgresql://u:{SECRET}@127.0.0.1:1/zoo",
            "malformed": f"postgresql://u:{SECRET}@host:abc/db"}


@pytest.mark.parametrize("url", list(BAD_URLS))
def test_no_command_prints_a_store_password(planned, tmp_path, url):
    """Every command given a password URL (by --db or ZOO_SWEEP_DB) that it cannot open: one masked error line,
    and no output or written file holds the password."""
    spec, home = planned["spec"], str(tmp_path / "home")
    commands = [["plan", spec], ["plan", spec, "--dry-run"], ["launch", spec, "--no-progress"],
                ["measure", spec, "--no-progress"], ["status"], ["reset", "micro"], ["cancel", "micro"],
                ["track", "micro", "--tracking", "sqlite:///unused.db"], ["query", "select 1"],
                ["export", "--out", str(tmp_path / "export")],
                ["report", spec, "--out", str(tmp_path / "report")], ["tune", spec, "--method", "kl"],
                ["demo", "--spec", spec, "--no-progress"],
                ["submit", "slurm", spec, "--dry-run", "--out", str(tmp_path / "slurm")],
                ["submit", "slurm", spec, "--dry-run", "--nodes", "2", "--out", str(tmp_path / "slurm")],
                ["submit", "ray", spec, "--address", "http://127.0.0.1:1"]]
    for args in commands:
        for how in ("flag", "env") if args[0] in ("plan", "status", "submit") else ("flag",):
            db = ["--db", BAD_URLS[url]] if how == "flag" else []
            env = {"ZOO_SWEEP_DB": BAD_URLS[url]} if how == "env" else None
            r = invoke("--home", home, *db, *args, env=env)
            assert SECRET not in r.stdout + r.stderr, (args, how, r.stdout, r.stderr)
            if r.exit_code != 0:  # the dry runs need no store; everything else cannot open it
                line = one_error_line(r, warnings=args[0] == "submit")
                if args[0] in ("plan", "status", "query") and url != "no driver":
                    assert "u:***@" in line, line  # the URL is named, masked
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert all(SECRET not in p.read_text(errors="replace") for p in written), written
    if url != "malformed":  # a URL that does not parse is refused before any script is written
        assert list((tmp_path / "slurm").glob("*.sh")), "submit slurm --dry-run wrote no script"
