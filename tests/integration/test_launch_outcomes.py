"""What a launch does with a changed spec, a failed stage, another results folder or a resource it cannot get,
on the session's real Ray cluster, through the typer app in-process.

Each scenario has its own store and its own results folder holding a copy of the micro sweep's cache, so the
embedded zoo is not trained again and the micro sweep's own files are never touched.
"""

import hashlib
import json
import shutil

from conftest import micro_spec, sqlite_rows
from typer.testing import CliRunner

from zoo_sweep.cli.main import app

ALL = ["cnn_micro", "vit_micro", "mlp_micro"]


def spec_text(name, models=ALL):
    return micro_spec(name, zoo={"models": models}, transfer={"methods": ["kl"]}, run={"max_retries": 0})


def _setup(micro, tmp_path, name, models=ALL):
    home = tmp_path / "home"
    shutil.copytree(micro["paths"].cache / "zoo", home / "cache" / "zoo")
    spec = tmp_path / f"{name}.toml"
    spec.write_text(spec_text(name, models))
    return spec, tmp_path / "zoo.db", home


def _launch(micro, db, home, spec, *extra, command="launch"):
    return CliRunner().invoke(app, ["--db", f"sqlite:///{db}", "--home", str(home), command, str(spec),
                                    "--address", micro["address"], "--no-progress", *extra], catch_exceptions=False)


def test_a_model_added_to_the_spec_is_predicted_compared_and_transferred(micro, tmp_path):
    spec, db, home = _setup(micro, tmp_path, "grow", models=["cnn_micro", "vit_micro"])
    r = _launch(micro, db, home, spec)
    assert r.exit_code == 0, r.output
    old_pairs = sqlite_rows(db, "select student, teacher, rho_pos, agreement from pairs order by 1, 2")
    assert len(old_pairs) == 2
    spec.write_text(spec_text("grow"))
    r = _launch(micro, db, home, spec)
    assert r.exit_code == 0, r.output
    assert "ran 1 predict, 1 compare, 4 transfer" in r.stdout and "reused" in r.stdout
    assert sqlite_rows(db, "select count(*) from pairs") == [(6,)]
    assert sqlite_rows(db, "select kind, state, count(*) from jobs group by 1, 2 order by 1") == [
        ("compare", "done", 2), ("predict", "done", 3), ("transfer", "done", 6)]
    # the two pairs measured first are the same rows: same records, same metrics
    assert set(old_pairs) <= set(sqlite_rows(db, "select student, teacher, rho_pos, agreement from pairs"))
    assert sqlite_rows(db, "select count(*) from transfer_results where final") == [(6,)]


def test_a_failed_stage_fails_every_launch_until_it_is_fixed(micro, tmp_path):
    spec, db, home = _setup(micro, tmp_path, "broken")
    victim = sorted((home / "cache" / "zoo").glob("vit_micro-*.pth"))[0]
    good, junk = victim.read_bytes(), b"these are not weights"
    victim.write_bytes(junk)
    # ... and its recorded checksum says so, or the launch would rebuild the file from its recipe first
    info = victim.with_suffix(".json")
    good_info = info.read_text()
    info.write_text(json.dumps({**json.loads(good_info), "sha256": hashlib.sha256(junk).hexdigest()}))
    first = _launch(micro, db, home, spec)
    assert first.exit_code == 1, first.output
    for r in (first, _launch(micro, db, home, spec)):  # the second launch runs nothing and must not pass
        assert r.exit_code == 1, r.output
        assert "all done" not in r.stdout
        failed = next(ln for ln in r.stdout.splitlines() if ln.startswith("failed p-"))
        assert "predict vit_micro" in failed and "cannot read weights" in failed
        skipped = next(ln for ln in r.stdout.splitlines() if ln.startswith("skipped compare c-"))
        assert "vit_micro, failed" in skipped
    assert "failed in an earlier launch" in r.stdout
    victim.write_bytes(good)
    info.write_text(good_info)
    assert CliRunner().invoke(app, ["--db", f"sqlite:///{db}", "reset", str(spec)]).exit_code == 0
    r = _launch(micro, db, home, spec)
    assert r.exit_code == 0 and "ran 1 predict, 1 compare, 6 transfer" in r.stdout, r.output


def test_a_store_planned_with_another_home_runs_with_this_one(micro, tmp_path):
    spec, db, home = _setup(micro, tmp_path, "moved")
    r = CliRunner().invoke(app, ["--db", f"sqlite:///{db}", "--home", str(tmp_path / "elsewhere"), "plan", str(spec)])
    assert r.exit_code == 0, r.output
    assert not any(str(tmp_path) in p for (p,) in sqlite_rows(db, "select payload from jobs"))
    r = _launch(micro, db, home, spec, command="measure")
    assert r.exit_code == 0, r.output
    assert sqlite_rows(db, "select count(*) from models where accuracy > 25") == [(3,)]  # trained: chance is 10 %
    assert sqlite_rows(db, "select count(*) from pairs") == [(6,)]


def test_gpus_a_cluster_does_not_have_fail_before_anything_is_written(micro, tmp_path):
    spec, db, home = _setup(micro, tmp_path, "gpu")
    for gpus in ("0.5", "1"):
        r = _launch(micro, db, home, spec, "--gpus", gpus)
        assert r.exit_code == 2, r.output
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert lines == [f"error: asked for {gpus} GPU(s), Ray sees 0 in the cluster at {micro['address']}"]
        assert not db.exists()
