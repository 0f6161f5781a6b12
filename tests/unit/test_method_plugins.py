"""A transfer method of your own, in one file: the example of docs/methods.md ("Add your own method") written to
a folder of its own, loaded from a spec's [transfer] plugins or an entry point, planned with its own keys
(without moving any other job's id), trained by the training loop, and each mistake in such a file one line.
The registry is put back as it was after each test."""

from __future__ import annotations

import importlib.metadata
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cli_helpers import dump, invoke, one_error_line, plan_store
from conftest import micro_spec
from tiny import CFG, cnn, correct, digits_slices, mlp, one_thread  # noqa: F401  (one_thread: autouse)

from zoo_sweep.config import methods as registry
from zoo_sweep.config.params import COMMON_HP, TransferParams, with_plugins
from zoo_sweep.config.spec import parse_spec
from zoo_sweep.errors import UserError
from zoo_sweep.paths import Paths
from zoo_sweep.pipeline.plan import check_names, load_sweep, make_plan, method_hp
from zoo_sweep.transfer.methods import METHODS
from zoo_sweep.transfer.train import TransferJob, run_transfer

DOCS = Path(__file__).resolve().parents[2] / "docs" / "methods.md"


def example() -> str:
    """The plugin file docs/methods.md shows: the first Python block of "Add your own method"."""
    section = DOCS.read_text().split("## Add your own method", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture
def registry_restored(monkeypatch):
    """The method registry, the plugin modules and the entry points as they were before the test."""
    saved = [(d, dict(d)) for d in (registry.CATALOG, registry.LOSSES, registry.PLUGINS)]
    modules = set(sys.modules)
    yield
    for d, before in saved:
        d.clear()
        d.update(before)
    for name in set(sys.modules) - modules:
        if name.startswith(("toy_", "broken_")):
            del sys.modules[name]


@pytest.fixture
def folder(tmp_path, monkeypatch, registry_restored):
    """A folder on sys.path where a test writes its plugin modules."""
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def _spec(folder, name="toy", **transfer):
    path = folder / f"{name}.toml"
    path.write_text(micro_spec(name, transfer=transfer))
    return path


def test_a_method_in_one_file_is_planned_with_its_own_keys_and_moves_no_other_id(folder):
    before = make_plan(load_sweep(_spec(folder, "before")), Paths(folder / "home"))
    (folder / "toy_kl.py").write_text(example())
    spec = load_sweep(_spec(folder, plugins=["toy_kl"], methods=["kl", "kl_dp", "toy_kl"], toy_temperature=3.0))
    assert spec.transfer.toy_temperature == 3.0 and "toy_kl" in registry.single_teacher()
    plan = make_plan(spec, Paths(folder / "home"))
    toy = [j for j in plan.transfer_jobs if j.payload.method == "toy_kl"]
    assert len(toy) == 6 and {tuple(sorted(j.payload.hp)) for j in toy} == {tuple(sorted(
        ["toy_temperature", *(k for k in COMMON_HP if k not in ("inputs", "lr_scaling"))]))}
    assert all(j.payload.hp["toy_temperature"] == 3.0 for j in toy)
    # the built-in methods' jobs are the jobs the spec without the plugin plans: same ids, same payloads
    others = {j.id: j.to_row(plan.home) for j in plan.all_jobs if j.payload.kind != "transfer"
              or j.payload.method != "toy_kl"}
    assert others == {j.id: j.to_row(before.home) for j in before.all_jobs}
    # its key reaches its own jobs only, and a changed value gives them new ids
    hotter = load_sweep(_spec(folder, "hotter", plugins=["toy_kl"], methods=["kl", "toy_kl"], toy_temperature=4.0))
    assert "toy_temperature" not in method_hp(hotter.transfer, "kl")
    assert method_hp(hotter.transfer, "kl") == method_hp(spec.transfer, "kl")
    assert method_hp(hotter.transfer, "toy_kl") != method_hp(spec.transfer, "toy_kl")
    # the stored spec of a sweep that sets no plugin key is what it was before plugins existed
    assert parse_spec({"name": "x"}).to_dict()["transfer"].keys() == {
        f for f in TransferParams.__dataclass_fields__} | {"methods", "seeds", "controls", "multi_teacher",
                                                           "multi_students", "teachers", "multi_method",
                                                           "teacher_cache", "teacher_cache_max_gb"}


def test_parameters_with_a_plugin_s_keys_pickle_and_come_back_the_same(folder):
    import pickle

    (folder / "toy_kl.py").write_text(example())
    t = parse_spec({"name": "x", "transfer": {"plugins": ["toy_kl"], "toy_temperature": 3.0, "epochs": 5}}).transfer
    back = pickle.loads(pickle.dumps(t))
    assert back == t and type(back) is type(t) and back.toy_temperature == 3.0
    plain = TransferParams(epochs=3)
    assert pickle.loads(pickle.dumps(plain)) == plain


def test_its_keys_are_checked_as_every_key_and_unknown_without_it(folder):
    (folder / "toy_kl.py").write_text(example())
    with pytest.raises(UserError, match=r"\[transfer\] toy_temperature must be >= 0.01, got 0.0"):
        parse_spec({"name": "x", "transfer": {"plugins": ["toy_kl"], "toy_temperature": 0.0}})
    with pytest.raises(UserError, match=r"\[transfer\] toy_temperature must be a number"):
        parse_spec({"name": "x", "transfer": {"plugins": ["toy_kl"], "toy_temperature": "hot"}})
    registry._forget("toy_kl")
    with pytest.raises(UserError, match=r"unknown key\(s\) toy_temperature in \[transfer\]"):
        parse_spec({"name": "x", "transfer": {"toy_temperature": 2.0}})
    with pytest.raises(UserError, match="unknown method 'toy_kl' in \\[transfer\\] methods"):
        check_names(parse_spec({"name": "x", "transfer": {"methods": ["toy_kl"]}}))


def test_its_loss_is_kl_at_its_temperature_and_the_training_loop_runs_it(folder, tmp_path_factory):
    (folder / "toy_kl.py").write_text(example())
    registry.load_plugins(["toy_kl"])
    hp = TransferParams.from_dict({"epochs": 2, "batch_size": 32, "lr": 0.05, "toy_temperature": 2.0})
    assert hp.toy_temperature == 2.0 and type(hp) is not TransferParams  # its group composed in
    assert type(TransferParams.from_dict({"epochs": 2})) is TransferParams  # a built-in job's: unchanged
    g = torch.Generator().manual_seed(0)
    z_s, z_t = torch.randn(8, 10, generator=g), torch.randn(8, 10, generator=g)
    loss, share = METHODS["toy_kl"].loss(z_s, z_t, None, None, hp)
    p_t = F.softmax(z_t / 2, dim=1)
    by_hand = (p_t * (p_t.log() - F.log_softmax(z_s / 2, dim=1))).sum(dim=1).mean() * 4
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-5) and share == 1.0
    tr, ev = digits_slices(tmp_path_factory.mktemp("cache"), 64, 48)
    teacher = mlp()
    job = TransferJob(cnn(), teacher, "toy_kl", hp, 0, tr, ev, CFG, CFG, correct(cnn(), ev), correct(teacher, ev))
    rows = run_transfer(job)
    assert [r["epoch"] for r in rows] == [1, 2] and all(np.isfinite(r["train_loss"]) for r in rows)
    assert rows[-1]["teacher_share"] == 100


def test_an_installed_package_s_entry_point_declares_its_method_for_every_spec(folder, monkeypatch):
    (folder / "toy_kl.py").write_text(example())
    point = importlib.metadata.EntryPoint("toy_kl", "toy_kl", registry.ENTRY_POINTS)
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda group=None: [point] if group == registry.ENTRY_POINTS else [])
    monkeypatch.setattr(registry, "_entry_points_loaded", False)
    assert "toy_kl" in registry.single_teacher()  # what the training tests parametrise over
    spec = check_names(parse_spec({"name": "x", "transfer": {"methods": ["toy_kl"], "toy_temperature": 5.0}}))
    assert method_hp(spec.transfer, "toy_kl")["toy_temperature"] == 5.0
    assert registry.plugin_sources() == {"toy_kl": str(folder)}  # what the launch hands its workers


def test_a_worker_imports_the_driver_s_plugins_from_their_folder(tmp_path, registry_restored):
    """A worker started where the module is not on the path finds it in the folder the driver found it in."""
    from zoo_sweep.pipeline.worker import Worker

    (tmp_path / "toy_kl.py").write_text(example())
    assert "toy_kl" not in registry.CATALOG and str(tmp_path) not in sys.path
    try:
        Worker(str(tmp_path / "home"), plugins={"toy_kl": str(tmp_path)})
        assert "toy_kl" in METHODS and registry.PLUGINS["toy_kl"] == str(tmp_path)
    finally:
        sys.path.remove(str(tmp_path))


def _broken(folder, name: str, body: str) -> str:
    (folder / f"{name}.py").write_text("from zoo_sweep.transfer.catalog import declare, key, loss\n"
                                       "from dataclasses import dataclass\n\n" + body)
    return name


@pytest.mark.parametrize("body, message", [
    ('declare("broken_kl", "declared, never given a loss")\n',
     "transfer methods out of step: declared without a loss: broken_kl; a loss without a declaration: none"),
    ('@loss("broken_kl")\ndef f(*a):\n    pass\n', "a loss for 'broken_kl' (broken_mod), which is not declared"),
    ('declare("kl", "a second kl")\n', "method 'kl' (broken_mod): the name is taken (by zoo_sweep.config.methods)"),
    ('declare("soup", "a soup")\n', "the name is taken (by a multi-teacher mode)"),
    ('declare("Broken", "capitals")\n', "method name 'Broken' (broken_mod) is not allowed"),
    ('@dataclass(frozen=True)\nclass P:\n    top_k: int = key(3, "mine")\n\ndeclare("broken_kl", "x", params=[P])\n',
     "its key top_k is already a key of TopKParams"),
    ('@dataclass(frozen=True)\nclass P:\n    lr: float = key(3.0, "mine", gt=0, le=10)\n\n'
     'declare("broken_kl", "x", params=[P])\n', "its key lr is already a key of TrainingParams"),
    ('@dataclass\nclass P:\n    x: int = key(3, "mine")\n\ndeclare("broken_kl", "x", params=[P])\n',
     "parameters must be frozen dataclasses of keys"),
    ('raise RuntimeError("no GPU here")\n', "importing broken_mod failed: RuntimeError: no GPU here"),
])
def test_a_mistake_in_a_plugin_is_one_line_when_the_spec_is_read_and_leaves_nothing_behind(folder, body, message):
    _broken(folder, "broken_mod", body)
    with pytest.raises(UserError) as e:
        parse_spec({"name": "x", "transfer": {"plugins": ["broken_mod"]}})
    assert message in str(e.value) and "\n" not in str(e.value)
    assert str(e.value).startswith("[transfer] plugins: ")
    assert "broken_kl" not in registry.CATALOG and "broken_kl" not in registry.LOSSES
    assert "broken_mod" not in registry.PLUGINS and "broken_mod" not in sys.modules


def test_a_plugin_key_that_is_a_key_of_the_sweep_is_refused(folder):
    _broken(folder, "broken_seeds", '@dataclass(frozen=True)\nclass P:\n    seeds: int = key(3, "mine", ge=0, le=9)\n\n'
                                    'declare("broken_kl", "x", params=[P])\n@loss("broken_kl")\ndef f(*a):\n    pass\n')
    with pytest.raises(UserError, match="seeds: a key of broken_seeds.P is already a key of TransferSpec"):
        parse_spec({"name": "x", "transfer": {"plugins": ["broken_seeds"]}})


def test_a_module_that_is_nowhere_is_one_line(registry_restored):
    with pytest.raises(UserError, match="no module 'toy_nowhere' here; install its package, or put its folder on "
                                        "PYTHONPATH"):
        parse_spec({"name": "x", "transfer": {"plugins": ["toy_nowhere"]}})
    with pytest.raises(UserError, match=r"\[transfer\] plugins must be a list of strings"):
        parse_spec({"name": "x", "transfer": {"plugins": "toy_kl"}})


def test_a_zoo_check_of_a_plugin_runs_at_plan_time(folder):
    (folder / "toy_topk.py").write_text(
        "from zoo_sweep.config.methods import TopKParams\n"
        "from zoo_sweep.transfer.catalog import declare, loss, top_k_fits\n\n"
        'declare("toy_topk", "KL-Dist over the top-k", params=[TopKParams], check=top_k_fits)\n\n\n'
        '@loss("toy_topk")\ndef f(*a):\n    pass\n')
    spec = load_sweep(_spec(folder, plugins=["toy_topk"], methods=["toy_topk"], top_k=11))
    with pytest.raises(UserError, match="top_k = 11 is larger than the 10 classes of digits:eval"):
        make_plan(spec, Paths(folder / "home"))
    assert with_plugins(TransferParams) is TransferParams  # it reads a built-in key: no group of its own


@pytest.mark.parametrize("case, message", [
    ("no loss", "[transfer] plugins: broken_cli: transfer methods out of step: declared without a loss: broken_kl"),
    ("nowhere", "[transfer] plugins: no module 'broken_nowhere' here"),
    ("bad key", "[transfer] toy_temperature must be >= 0.01, got -1.0"),
])
def test_a_bad_plugin_through_the_command_line_is_one_line_and_the_store_unchanged(folder, case, message):
    planned = plan_store(folder, micro_spec(transfer={"methods": ["kl"]}))
    (folder / "toy_kl.py").write_text(example())
    _broken(folder, "broken_cli", 'declare("broken_kl", "declared, never given a loss")\n')
    transfer = {"no loss": {"plugins": ["broken_cli"]}, "nowhere": {"plugins": ["broken_nowhere"]},
                "bad key": {"plugins": ["toy_kl"], "methods": ["toy_kl"], "toy_temperature": -1.0}}[case]
    bad = folder / "bad.toml"
    bad.write_text(micro_spec(transfer=transfer))
    before = dump(planned["db"])
    for args in (["plan", str(bad)], ["plan", "--dry-run", str(bad)], ["launch", str(bad), "--no-progress"]):
        assert message in one_error_line(invoke(*planned["base"], *args)), args
    assert dump(planned["db"]) == before
