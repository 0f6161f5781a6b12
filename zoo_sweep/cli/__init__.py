"""The `zoo-sweep` command: typer commands only, each a thin layer over functions a notebook can call."""

from zoo_sweep.cli.main import app, main  # noqa: F401
