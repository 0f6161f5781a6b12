"""A store URL with a password, on a real PostgreSQL server (trust authentication: the password is carried but
not checked): no command prints it, and no file a command writes holds it."""

import pytest
import sqlalchemy as sa
from conftest import micro_spec
from typer.testing import CliRunner

from zoo_sweep.cli.main import app

SECRET = "SECRETPW"
SPEC = micro_spec("secret", transfer={"methods": []})


@pytest.fixture
def secret_store(postgres_url, tmp_path):
    """A fresh database on the session's server, its URL with a password, and a spec planned into it."""
    name = f"zoo_secret_{tmp_path.name[-12:].replace('-', '_').lower()}"
    admin = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f'create database "{name}"'))
    admin.dispose()
    url = postgres_url.replace("://zoo@", f"://zoo:{SECRET}@").rsplit("/", 1)[0] + f"/{name}"
    spec = tmp_path / "secret.toml"
    spec.write_text(SPEC)
    base = ["--db", url, "--home", str(tmp_path / "home")]
    r = CliRunner().invoke(app, [*base, "plan", str(spec)], catch_exceptions=False)
    assert SECRET not in r.stdout + r.stderr
    assert r.exit_code == 0, r.output
    assert f"planned secret in {url.replace(SECRET, '***')}: 4 new job(s)" in r.stdout
    return {"url": url, "base": base, "spec": str(spec), "out": tmp_path}


def _invoke(store, *args):
    r = CliRunner().invoke(app, [*store["base"], *args], catch_exceptions=False)
    assert SECRET not in r.stdout + r.stderr, (args, r.stdout, r.stderr)
    return r


def _files_without_the_secret(root):
    files = [p for p in root.rglob("*") if p.is_file()]
    assert not [p for p in files if SECRET.encode() in p.read_bytes()]
    return files


def test_no_command_prints_or_writes_the_password(secret_store):
    s, out = secret_store, secret_store["out"]
    for args in (["status"], ["cancel", "secret", "--kind", "predict"], ["reset", "secret", "--state", "cancelled"],
                 ["export", "--out", str(out / "export")]):
        _invoke(s, *args)
    r = _invoke(s, "query", "select name from sweeps")
    assert r.exit_code == 0 and "secret" in r.stdout
    r = _invoke(s, "submit", "slurm", s["spec"], "--dry-run", "--out", str(out / "slurm"))
    assert r.exit_code == 0, r.output
    files = _files_without_the_secret(out)
    assert any(p.suffix == ".sh" for p in files) and any(p.suffix == ".parquet" for p in files)


def test_a_report_names_the_store_masked(secret_store):
    s = secret_store
    r = _invoke(s, "report", s["spec"], "--out", str(s["out"] / "report"))
    assert r.exit_code == 0, r.output
    html = s["out"] / "report" / "report.html"
    assert s["url"].replace(SECRET, "***") in html.read_text()
    _files_without_the_secret(s["out"])
