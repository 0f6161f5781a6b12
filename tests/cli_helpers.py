"""The command line in this process, for the unit tier's bad-input tests: run it, dump a store, read its one
error line, and plan a store to run commands against."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from typer.testing import CliRunner

from zoo_sweep.cli.main import app


def invoke(*args: str, env: dict | None = None):
    return CliRunner(env=env).invoke(app, list(args), catch_exceptions=False)


def dump(db) -> str:
    """Every row of a SQLite store as SQL: equal before and after means the store is unchanged."""
    if not Path(db).exists():
        return "(no store)"
    with sqlite3.connect(db) as c:
        return "\n".join(c.iterdump())


def one_error_line(r, code: int = 2, warnings: bool = False) -> str:
    """The one `error:` line (``warnings``: `warning:` lines before it are allowed)."""
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and not (warnings and ln.startswith("warning: "))]
    assert r.exit_code == code, (r.exit_code, r.stdout, r.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


def plan_store(root: Path, spec_text: str) -> dict:
    """``spec_text`` planned into a SQLite store under ``root``: its spec path, store and CLI base arguments."""
    spec = root / "micro.toml"
    spec.write_text(spec_text)
    db = root / "zoo.db"
    base = ["--db", f"sqlite:///{db}", "--home", str(root / "home")]
    r = invoke(*base, "plan", str(spec))
    assert r.exit_code == 0, r.output
    return {"root": root, "spec": str(spec), "db": db, "base": base}
