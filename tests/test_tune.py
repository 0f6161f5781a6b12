"""Ray Tune search on the micro zoo: trials run real transfer jobs, land in the store, and the best
configuration can be written back into the spec."""

import tomllib

from conftest import run_cli


def test_tune_stores_trials_and_writes_back(micro, tmp_path):
    spec = tmp_path / "micro.toml"
    spec.write_text(micro["spec_path"].read_text())
    r = run_cli("--db", micro["db"], "--home", micro["home"], "tune", str(spec), "--method", "kl_dp",
                "--samples", "2", "--pairs", "1", "--address", micro["address"], "--no-progress", "--write",
                timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "best:" in r.stdout
    tuned = tomllib.loads(spec.read_text())["transfer"]
    assert set(tuned) >= {"lr", "temperature"} and tuned["methods"] == ["kl", "kl_dp"]
    r = run_cli("--db", micro["db"], "query", "select count(*) as n from sweep_jobs where sweep = 'micro.tune.kl_dp'",
                "-f", "json")
    assert '"n":2' in r.stdout.replace(" ", "")  # 2 configurations x 1 calibration pair, each a stored job


def test_write_back_keeps_comments_and_other_tables(tmp_path):
    from zoo_sweep.tune import write_back

    p = tmp_path / "s.toml"
    p.write_text('name = "x"\n[transfer]\nlr = 0.1  # paper\nepochs = 2\n[run]\ntopk = 5\n')
    write_back(p, {"lr": 0.003, "temperature": 2.0})
    doc = tomllib.loads(p.read_text())
    assert doc["transfer"] == {"lr": 0.003, "epochs": 2, "temperature": 2.0} and doc["run"] == {"topk": 5}
    assert "# paper" in p.read_text()
