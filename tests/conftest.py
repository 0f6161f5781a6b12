"""Session fixtures: one real Ray cluster (started like a user's head node) and one micro sweep on it.

Two tiers: tests/unit (no Ray, no subprocess, no server: `make test-fast`) and tests/integration (Ray, the CLI
in real processes, PostgreSQL, Chromium, SLURM). Each test is marked by its folder, and a unit test that starts
a process fails, so the fast tier stays fast.

The micro zoo is the embedded digits zoo's "micro" recipe set: three tiny timm models (CNN, transformer,
MLP) trained for one epoch inside the session, so nothing is downloaded and nothing is faked.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from real_cluster import free_port, ray_head

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

MICRO = {
    "zoo": {"source": "digits", "recipe": "micro"},
    "data": {"eval": "digits:eval", "transfer": "digits:transfer", "image_size": 32},
    "pairs": {"policy": "all"},
    # no controls: the tests that need them ask for them (test_side_by_side.py), the rest stay small
    "transfer": {"methods": ["kl", "kl_dp"], "epochs": 1, "batch_size": 256, "controls": []},
    "run": {"max_retries": 1},
}


def micro_spec(name: str = "micro", **sections: dict) -> str:
    """The micro sweep's spec as TOML, each given section's keys laid over the micro sweep's, e.g.
    ``micro_spec("kill", pairs={"policy": "top_ck", "max_pairs": 5}, transfer={"seeds": [0, 1]})``."""
    lines = [f"name = {json.dumps(name)}"]
    for section, keys in MICRO.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in {**keys, **sections.pop(section, {})}.items()]
    assert not sections, f"not a section of a spec: {', '.join(sections)}"
    return "\n".join(lines) + "\n"


def pytest_collection_modifyitems(config, items):
    for item in items:
        tier = "unit" if "unit" in Path(str(item.fspath)).parts else "integration"
        item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture(autouse=True)
def _unit_tests_start_no_processes(request, monkeypatch):
    if request.node.get_closest_marker("unit") is None:
        return

    def refuse(*args, **kwargs):
        raise AssertionError("a unit test started a process: move it to tests/integration")

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)


@pytest.fixture(scope="session")
def ray_address(tmp_path_factory):
    """A real local Ray head (2 CPUs, ``real_cluster.ray_head``) that every test and CLI call joins with
    --address. Without token authentication, as `ray start` makes a head where no token file exists yet,
    whatever this machine holds: every local cluster a test starts writes ~/.ray/auth_token, and launches must
    still join this head (test_cluster.py runs clusters with tokens).
    """
    with ray_head(tmp_path_factory.mktemp("ray") / "head.log") as address:
        yield address
        import ray

        ray.shutdown()


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def micro(tmp_path_factory, ray_address):
    """The micro sweep, planned and launched once on the session cluster."""
    from zoo_sweep.config.spec import load_spec
    from zoo_sweep.paths import Paths
    from zoo_sweep.pipeline.launch import LaunchOptions, launch_sweep
    from zoo_sweep.storage.store import Store

    root = tmp_path_factory.mktemp("micro")
    spec_path = root / "micro.toml"
    spec_path.write_text(micro_spec())
    spec = load_spec(spec_path)
    paths = Paths(root / "results")
    store = Store(f"sqlite:///{root / 'zoo.db'}")
    report = launch_sweep(spec, store, paths, LaunchOptions(address=ray_address, progress=False))
    return {"spec": spec, "spec_path": spec_path, "paths": paths, "store": store, "report": report,
            "db": store.url, "home": str(paths.home), "address": ray_address}


def _pg_binary(name: str) -> str | None:
    import glob
    import shutil

    found = shutil.which(name) or sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found if isinstance(found, str) else (found[-1] if found else None)


@pytest.fixture(scope="session")
def postgres_url():
    """A throwaway PostgreSQL server on loopback for the session (Debian's postgresql package; .ci/run
    installs it). Skips, saying why, where the server or the psycopg driver is missing."""
    import shutil
    import tempfile

    initdb, postgres = _pg_binary("initdb"), _pg_binary("postgres")
    if not (initdb and postgres):
        pytest.skip("PostgreSQL server not installed (apt-get install postgresql)")
    pytest.importorskip("psycopg", reason="psycopg driver not installed (pip install 'psycopg[binary]')")
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []  # postgres refuses root
    root = Path(tempfile.mkdtemp(prefix="zoo-pg-", dir="/tmp"))
    if as_user:
        shutil.chown(root, "postgres", "postgres")
    data = root / "data"
    subprocess.run([*as_user, initdb, "-D", str(data), "-A", "trust", "-U", "zoo"], check=True, capture_output=True)
    port = free_port()
    server = subprocess.Popen([*as_user, postgres, "-D", str(data), "-p", str(port), "-h", "127.0.0.1",
                               "-k", str(root)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    deadline = time.time() + 30
    while not _listening(port):
        if server.poll() is not None or time.time() > deadline:
            pytest.fail("PostgreSQL did not start")
        time.sleep(0.2)
    time.sleep(0.5)  # accepting connections a moment after the port opens
    yield f"postgresql+psycopg://zoo@127.0.0.1:{port}/postgres"
    os.killpg(server.pid, signal.SIGTERM)
    server.wait(timeout=30)
    shutil.rmtree(root, ignore_errors=True)


def new_pg_database(postgres_url: str) -> str:
    """A new empty database on the session's PostgreSQL server, as a store URL: tests never see each other's
    rows."""
    import uuid

    import sqlalchemy as sa

    server = sa.engine.make_url(postgres_url)
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'create database "{name}"'))
    admin.dispose()
    return server.set(database=name).render_as_string(hide_password=False)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    """The URL of a store not created yet, on each backend (PostgreSQL: a new database on the session's
    server; skipped, saying why, where none can be started)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'zoo.db'}"
    return new_pg_database(request.getfixturevalue("postgres_url"))


def run_cli(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "zoo-sweep"), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=ROOT)


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """The command line in this process (no fresh interpreter): exit code, stdout, stderr."""
    from zoo_sweep.cli.main import main

    try:
        rc = main(list(args))
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def sqlite_rows(db: Path, sql: str) -> list[tuple]:
    """A query on a SQLite store file, read beside the launcher that writes it."""
    with sqlite3.connect(db) as c:
        return c.execute(sql).fetchall()


def sqlite_rows_so_far(db: Path, sql: str) -> list[tuple]:
    """sqlite_rows while a launcher may still be creating the store: its file exists from the first connect,
    its tables only once the creating transaction commits (no rows until then)."""
    if not db.exists():
        return []
    try:
        return sqlite_rows(db, sql)
    except sqlite3.OperationalError as e:
        if "no such table" not in str(e):
            raise
        return []


def assert_png(path: Path) -> None:
    """A PNG that decodes and shows a drawing, not a blank canvas."""
    from PIL import Image

    assert path.is_file() and path.stat().st_size > 0, path
    with Image.open(path) as im:
        im.load()  # decodes
        assert im.size[0] > 100 and im.size[1] > 100
        assert len(set(im.convert("L").getdata())) > 10, f"{path.name} looks blank"
