"""A whole sweep against a real PostgreSQL server (started by the test session). The store's own semantics
run on PostgreSQL through test_store.py, whose store fixture covers both backends."""

import json

from conftest import run_cli


def test_a_sweep_runs_against_postgres(micro, postgres_url):
    r = run_cli("--db", postgres_url, "--home", micro["home"], "launch", str(micro["spec_path"]),
                "--address", micro["address"], "--no-progress", "--limit", "2")
    assert r.returncode == 0, r.stdout + r.stderr
    r = run_cli("--db", postgres_url, "query", "select count(*) as n from pairs", "-f", "json")
    assert json.loads(r.stdout) == [{"n": 6}]
    r = run_cli("--db", postgres_url, "query", "select count(*) as n from transfer_results r join sweep_jobs sj "
                "on sj.job_id = r.job_id where sj.sweep = 'micro' and r.final", "-f", "json")
    assert json.loads(r.stdout) == [{"n": 2}]  # --limit 2: two transfer jobs this time, the rest pending
