"""A transfer method of your own, in one file outside the package, from plan to report on the micro zoo with the
session's Ray cluster: the file docs/methods.md shows ("Add your own method"), in a folder only this process
has on its path. The launch's workers, started by the cluster without that folder, import it from there."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import cli, micro_spec
from test_login_node import _assert_torch_free

from zoo_sweep.config import methods as registry
from zoo_sweep.pipeline.launch import LaunchOptions, launch_sweep
from zoo_sweep.pipeline.plan import load_sweep
from zoo_sweep.storage.store import Store

DOCS = Path(__file__).resolve().parents[2] / "docs" / "methods.md"


@pytest.fixture
def plugin_folder(tmp_path, monkeypatch):
    """The example plugin as toy_kl_e2e.py in a folder on this process's path; the registry put back after."""
    section = DOCS.read_text().split("## Add your own method", 1)[1]
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "toy_kl_e2e.py").write_text(re.search(r"```python\n(.*?)```", section, re.S).group(1))
    monkeypatch.syspath_prepend(str(folder))
    saved = [(d, dict(d)) for d in (registry.CATALOG, registry.LOSSES, registry.PLUGINS)]
    yield folder
    for d, before in saved:
        d.clear()
        d.update(before)
    sys.modules.pop("toy_kl_e2e", None)


def test_a_method_in_one_file_goes_from_plan_to_report(micro, plugin_folder, tmp_path, capsys):
    spec_path = tmp_path / "toy.toml"
    spec_path.write_text(micro_spec("micro-toy", pairs={"max_pairs": 2},
                                    transfer={"plugins": ["toy_kl_e2e"], "methods": ["toy_kl"],
                                              "controls": ["labels"], "toy_temperature": 2.0}))
    db = f"sqlite:///{tmp_path / 'toy.db'}"
    base = ("--db", db, "--home", micro["home"])
    rc, out, err = cli(capsys, *base, "plan", str(spec_path))
    assert rc == 0, err
    rep = launch_sweep(load_sweep(spec_path), Store(db), micro["paths"],
                       LaunchOptions(address=micro["address"], progress=False))
    assert rep.ok, rep.failed
    assert rep.ran["transfer"] == 2 + 2  # two pairs, and the labels control of each of their students
    res = Store(db).table("transfer_results")
    final = res[res["final"]]
    toy = final[final["method"] == "toy_kl"]
    assert len(toy) == 2 and (toy["teacher_share"] == 100).all()
    assert ((toy["delta"] - (toy["knowledge_gain"] - toy["knowledge_loss"])).abs() < 1e-9).all()
    jobs = Store(db).table("jobs")
    assert jobs["payload"].str.contains('"toy_temperature": 2.0').sum() == 2  # its key, in its own jobs only
    rc, out, err = cli(capsys, *base, "report", str(spec_path), "--out", str(tmp_path / "rep"))
    assert rc == 0, err
    methods = pd.read_csv(tmp_path / "rep" / "methods.csv")
    assert "toy_kl" in set(methods["method"]) and (methods.loc[methods["method"] == "toy_kl", "pairs"] == 2).all()


def test_a_dry_run_with_a_method_of_your_own_never_imports_torch(plugin_folder, tmp_path, monkeypatch):
    """A login node reads the plugin file too: its loss imports torch only when it runs."""
    monkeypatch.setenv("PYTHONPATH", str(plugin_folder))
    spec = tmp_path / "toy.toml"
    spec.write_text(micro_spec("micro-toy", transfer={"plugins": ["toy_kl_e2e"], "methods": ["kl_dp", "toy_kl"]}))
    _assert_torch_free(["plan", "--dry-run", str(spec)], tmp_path)
