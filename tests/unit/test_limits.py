"""Limits on every value, and failures of the disk and the store, through the `zoo-sweep` command in-process:
one `error:` line, exit code 2 (1 from a launch that ran), the store unchanged (a full dump, or its bytes,
before and after). Values: every numeric key of a spec and of a checkpoint folder's config.json has a range,
every number is finite and every integer fits in 64 bits, a list entry counts once. Failures: a damaged,
read-only, full or unreachable store, a read-only home, a spec nested too deep. Warnings: weights holding NaN
and a std that multiplies the pixels by hundreds. docs/bad-input.md lists each case with its message."""

from __future__ import annotations

import dataclasses
import errno
import json
import shutil
import sqlite3
import struct
from pathlib import Path

import pytest
import timm
import torch  # imported at collection: its first import runs ldconfig, which the unit tier's process guard refuses
from cli_helpers import dump, invoke, one_error_line, plan_store
from conftest import micro_spec
from safetensors.torch import save_file

from zoo_sweep.config import params, spec
from zoo_sweep.config.schema import _parse_type
from zoo_sweep.storage import store as store_module
from zoo_sweep.zoo import weights as W

CNN = {"channels": [8, 16, 24, 32], "stem_width": 8}  # resnet10t at a tiny width: milliseconds to build
HALF = {"input_size": [3, 32, 32], "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "crop_pct": 1.0}


def with_line(text: str, section: str, line: str) -> str:
    """The spec ``text`` with a raw TOML ``line`` (nan, inf, integers beyond 64 bits) at the top of ``section``."""
    head = f"[{section}]\n"
    return text.replace(head, head + line + "\n") if head in text else text + head + line + "\n"


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    return plan_store(tmp_path_factory.mktemp("limits"), micro_spec(transfer={"methods": ["kl"]}))


# ---------------------------------------------------------------------- 1. values without limits
SPEC = micro_spec(transfer={"methods": ["kl"]})
VALUE_CASES = {  # (section, raw TOML line) -> the message
    ("transfer", "epochs = 1180591620717411303424"):
        "[transfer] epochs must fit in 64 bits (from -2**63 to 2**63 - 1), got an integer of 71 bits",
    ("transfer", "lr = 1e308"): "[transfer] lr must be <= 10, got 1e+308",
    ("transfer", "lr = nan"): "[transfer] lr must be a finite number, got nan",
    ("transfer", "momentum = -inf"): "[transfer] momentum must be a finite number, got -inf",
    ("transfer", "temperature = 1e-300"): "[transfer] temperature must be >= 0.01, got 1e-300",
    ("transfer", "top_k = 1000000"): "[transfer] top_k must be <= 100000, got 1000000",
    ("transfer", "seeds = [-1]"): "[transfer] seeds must be >= 0, got -1",
    ("transfer", "seeds = [0, 4294967296]"): "[transfer] seeds must be <= 2147483647, got 4294967296",
    ("transfer", "crd_negatives = 9223372036854775808"):
        "[transfer] crd_negatives must fit in 64 bits (from -2**63 to 2**63 - 1), got 9223372036854775808",
    ("data", "image_size = 1000000"): "[data] image_size must be <= 4096, got 1000000",
    ("data", "subset_seed = -5"): "[data] subset_seed must be >= 0, got -5",
    ("pairs", "seed = -1"): "[pairs] seed must be >= 0, got -1",
    ("pairs", "gap_bins = [-1000.0, 0.0, 100.0]"): "[pairs] gap_bins must be >= -100, got -1000.0",
    ("run", "predict_batch_size = 100000000"): 'run] predict_batch_size must be a positive integer or "auto", '
                                               "got 100000000",
    ("run", "max_retries = 1000000"): "[run] max_retries must be <= 100, got 1000000",
    ("zoo.defaults.data", "crop_pct = 1e-300"): "[zoo.defaults.data] crop_pct must be >= 0.05, got 1e-300",
    ("zoo.defaults.data", "std = [1e-9, 0.5, 0.5]"): "[zoo.defaults.data] std must be >= 0.001, got 1e-09",
    ("zoo.defaults.data", "mean = [123.7, 116.3, 103.5]"): "[zoo.defaults.data] mean must be <= 1, got 123.7",
    ("zoo.defaults.data", "input_size = [3, 100000, 100000]"):
        "[zoo.defaults.data] input_size must be <= 4096, got 100000",
    ("zoo.defaults.data", "input_size = [1, 32, 32]"):
        "[zoo.defaults.data] input_size must have 3 channels (images are fed to every model as RGB), got [1, 32, 32]",
    ("zoo.defaults.data", "input_size = [3, 4, 4]"):
        "[zoo.defaults.data] input_size height and width must be from 8 to 4096, got [3, 4, 4]",
    ("zoo.defaults.data", "input_size = [3, 4096, 4096]\ncrop_pct = 0.1"):
        "[zoo.defaults.data] input_size 4096 with crop_pct 0.1 resizes every image to 40960 px before the crop; "
        "at most 8192: raise crop_pct",
    ("zoo.defaults", "kwargs = { drop_rate = nan }"):
        "[zoo.defaults] kwargs drop_rate must be a finite number, got nan",
    ("zoo.defaults", "kwargs = { x = [1, { y = inf }] }"): "[zoo.defaults] kwargs x must be a finite number, got "
                                                         "[1, {'y': inf}]",
    ("zoo.defaults", "kwargs = { x = 1979-05-27 }"):  # a TOML date: nothing a constructor or the store takes
        "[zoo.defaults] kwargs x must be a number, a string, true or false, a list or a table (not a date or time), "
        "got datetime.date(1979, 5, 27)",
    ("zoo.defaults", "kwargs = { num_classes = 18446744073709551616 }"):
        "[zoo.defaults] kwargs num_classes must fit in 64 bits",
}
DUPLICATE_CASES = {
    ("transfer", 'methods = ["kl", "kl"]'): "[transfer] methods lists 'kl' twice; list each once",
    ("transfer", "seeds = [0, 1, 0]"): "[transfer] seeds lists 0 twice; list each once",
    ("transfer", 'controls = ["labels", "labels"]'): "[transfer] controls lists 'labels' twice; list each once",
    ("zoo", 'models = ["cnn_micro", "vit_micro", "cnn_micro"]'):
        "[zoo] models lists 'cnn_micro' twice; list each once",
}


def _case_spec(section: str, line: str) -> str:
    """The micro spec with ``line`` in ``section``, replacing the keys the micro spec sets there."""
    keys = {ln.split(" = ")[0] for ln in line.splitlines()}
    out, current = [], None
    for ln in SPEC.splitlines():
        if ln.startswith("["):
            current = ln.strip("[]")
        if not (current == section and ln.split(" = ")[0] in keys):
            out.append(ln)
    return with_line("\n".join(out) + "\n", section, line)


@pytest.mark.parametrize("case", list(VALUE_CASES) + list(DUPLICATE_CASES), ids=lambda c: c[1][:40])
def test_a_value_out_of_its_range_is_one_line_at_plan(planned, case):
    section, line = case
    bad = planned["root"] / "bad.toml"
    bad.write_text(_case_spec(section, line))
    before = dump(planned["db"])
    message = {**VALUE_CASES, **DUPLICATE_CASES}[case]
    for args in (["plan", str(bad)], ["plan", "--dry-run", str(bad)]):
        assert message in one_error_line(invoke(*planned["base"], *args)), args
    assert dump(planned["db"]) == before


def test_every_numeric_key_has_a_range_a_sweep_could_use():
    """Every int or float key of every section has a lower and an upper bound (docs/specs.md shows both)."""
    from zoo_sweep.config.schema import sections

    loose = []
    for top, cls in spec.SECTIONS.items():
        for where, section in sections(cls, top):
            for f in dataclasses.fields(section):
                kind, elem, _ = _parse_type(str(f.type))
                if not any(t in elem.split("|") for t in ("int", "float")):
                    continue
                m = f.metadata
                if (m.get("ge") is None and m.get("gt") is None) or (m.get("le") is None and m.get("lt") is None):
                    loose.append(f"[{where}] {f.name}")
    assert not loose, loose
    assert params.TransferParams.__dataclass_fields__["lr"].metadata["le"] == 10


def test_a_spec_nested_too_deep_or_with_a_huge_integer_is_one_line(planned):
    before = dump(planned["db"])
    deep = planned["root"] / "deep.toml"
    deep.write_text('name = "deep"\n[zoo]\nmodels = ' + "[" * 200_000 + "]" * 200_000 + "\n")
    assert "nests arrays or tables too deeply to read" in one_error_line(invoke(*planned["base"], "plan", str(deep)))
    huge = planned["root"] / "huge.toml"
    huge.write_text(_case_spec("transfer", "epochs = " + "9" * 5000))
    line = one_error_line(invoke(*planned["base"], "plan", str(huge)))
    assert "is not a usable spec: Exceeds the limit (4300 digits) for integer string conversion" in line
    assert dump(planned["db"]) == before


# ---------------------------------------------------------------------- own models: config.json, weights
def tiny_cnn(seed: int = 0):
    torch.manual_seed(seed)
    return timm.create_model("resnet10t", num_classes=10, **CNN).eval()


def image_folder(root: Path) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(10):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / f"c{c}" / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def own(tmp_path_factory):
    """An own zoo: a .pth of a tiny CNN, a timm folder (config.json + model.safetensors), an ImageFolder."""
    root = tmp_path_factory.mktemp("own")
    torch.save(tiny_cnn(1).state_dict(), root / "a.pth")
    folder = root / "hf"
    folder.mkdir()
    save_file(tiny_cnn(2).state_dict(), folder / "model.safetensors")
    config = {"architecture": "resnet10t", "num_classes": 10, "model_args": CNN,
              "pretrained_cfg": {**HALF, "interpolation": "bilinear"}}
    (folder / "config.json").write_text(json.dumps(config))
    data = image_folder(root / "val")
    return {"root": root, "folder": folder, "config": config, "data": data}


def own_spec(own, models: dict | None = None, data: dict | None = None) -> str:
    """The own zoo's spec: [zoo.defaults] with the tiny CNN and HALF (``data`` laid over it), ``models``."""
    models = models or {"a": {"checkpoint": str(own["root"] / "a.pth")}, "hf": {"checkpoint": str(own["folder"])}}
    lines = ['name = "own"', "[zoo.defaults]", 'arch = "resnet10t"', f"kwargs = {toml(CNN)}",
             f"data = {toml({**HALF, **(data or {})})}"]
    for name, table in models.items():
        lines += [f'[zoo.model."{name}"]'] + [f"{k} = {toml(v)}" for k, v in table.items()]
    lines += ["[data]", f'eval = "imagefolder:{own["data"]}"', f'transfer = "imagefolder:{own["data"]}"',
              "image_size = 32", "[transfer]", 'methods = ["kl"]']
    return "\n".join(lines) + "\n"


def toml(v) -> str:
    if isinstance(v, dict):
        return "{ " + ", ".join(f'"{k}" = {toml(x)}' for k, x in v.items()) + " }"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml(x) for x in v) + "]"
    return json.dumps(v)


def plan_own(own, tmp_path, text: str, *more: str, home: str | None = None):
    path = tmp_path / "own.toml"
    path.write_text(text)
    db = tmp_path / "zoo.db"
    r = invoke("--db", f"sqlite:///{db}", "--home", home or str(tmp_path / "home"), "plan", str(path), *more)
    return r, db


def test_the_own_zoo_helper_plans(own, tmp_path):
    r, db = plan_own(own, tmp_path, own_spec(own))
    assert r.exit_code == 0, r.output
    assert "warning" not in r.stderr and db.exists()


CONFIG_CASES = {  # a change to config.json -> the message: the checks the same keys get in a spec
    "input_size is a string": ({"pretrained_cfg": {"input_size": "big"}},
                               "config.json pretrained_cfg] input_size must be a list of integers, got 'big'"),
    "input_size too large": ({"pretrained_cfg": {"input_size": [3, 100000, 100000]}},
                             "config.json pretrained_cfg] input_size must be <= 4096, got 100000"),
    "crop_pct tiny": ({"pretrained_cfg": {"crop_pct": 1e-300}},
                      "config.json pretrained_cfg] crop_pct must be >= 0.05, got 1e-300"),
    "std NaN": ({"pretrained_cfg": {"std": [float("nan")] * 3}},
                "config.json pretrained_cfg] std must be a finite number, got [nan, nan, nan]"),
    "mean is a table": ({"pretrained_cfg": {"mean": {"r": 0.5}}},
                        "config.json pretrained_cfg] mean must be a list of numbers, got {'r': 0.5}"),
    "model_args NaN": ({"model_args": {**CNN, "drop_rate": float("inf")}},
                       "config.json model_args] kwargs drop_rate must be a finite number, got inf"),
    "num_classes a string": ({"num_classes": "ten"}, "config.json] num_classes must be an integer, got 'ten'"),
    "num_classes beyond 64 bits": ({"num_classes": 2**70}, "config.json] num_classes must fit in 64 bits"),
    "num_classes huge": ({"num_classes": 10**9}, "config.json] num_classes must be <= 100000, got 1000000000"),
    "img_size a string": ({"model_args": {**CNN, "img_size": "big"}, "pretrained_cfg": {"fixed_input_size": True}},
                          None),  # not an input size: left to the constructor, which refuses it at plan
}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_config_json_values_get_the_checks_of_a_spec(own, tmp_path, case):
    change, message = CONFIG_CASES[case]
    folder = tmp_path / "hf"
    shutil.copytree(own["folder"], folder)
    config = {**own["config"], **{k: v for k, v in change.items() if k != "pretrained_cfg"}}
    config["pretrained_cfg"] = {**own["config"]["pretrained_cfg"], **change.get("pretrained_cfg", {})}
    (folder / "config.json").write_text(json.dumps(config))
    models = {"a": {"checkpoint": str(own["root"] / "a.pth")}, "hf": {"checkpoint": str(folder)}}
    r, db = plan_own(own, tmp_path, own_spec(own, models))
    line = one_error_line(r)
    assert str(folder / "config.json") in line or "hf" in line
    if message:
        assert message in line
    assert not db.exists()  # nothing written: the store was never created


def test_a_config_json_nested_too_deep_is_one_line(own, tmp_path):
    folder = tmp_path / "hf"
    shutil.copytree(own["folder"], folder)
    (folder / "config.json").write_text('{"architecture": "resnet10t", "pretrained_cfg": ' + "[" * 100_000
                                        + "]" * 100_000 + "}")
    models = {"a": {"checkpoint": str(own["root"] / "a.pth")}, "hf": {"checkpoint": str(folder)}}
    r, db = plan_own(own, tmp_path, own_spec(own, models))
    assert "nests lists or objects too deeply to read" in one_error_line(r) and not db.exists()


@pytest.mark.parametrize("header, message", [
    (b"[]", "its header is a JSON list, not an object"),
    (b'"text"', "its header is a JSON str, not an object"),
    (b'{"w": 5}', "tensor 'w' has no valid data_offsets"),
    (b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}', "tensor 'w' has no valid data_offsets"),
    (b"[" * 100_000 + b"]" * 100_000, "its header is not JSON"),  # nested too deep for the parser
    (b"{not json", "its header is not JSON"),
])
def test_a_safetensors_header_that_is_not_an_object_is_one_line(own, tmp_path, header, message):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(struct.pack("<Q", len(header)) + header)
    models = {"a": {"checkpoint": str(own["root"] / "a.pth")}, "b": {"checkpoint": str(bad)}}
    r, db = plan_own(own, tmp_path, own_spec(own, models))
    assert message in one_error_line(r) and not db.exists()


# ---------------------------------------------------------------------- 3. warnings of their own
def warnings_of(r) -> list[str]:
    return [ln for ln in r.stderr.splitlines() if ln.startswith("warning: ")]


def test_weights_with_nan_or_inf_are_a_warning_of_their_own(own, tmp_path, monkeypatch):
    nan = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
           for k, v in tiny_cnn(3).state_dict().items()}
    torch.save({"state_dict": nan, "epoch": 3}, tmp_path / "nan.pth")
    some = tiny_cnn(4).state_dict()
    some["conv1.0.weight"][0, 0, 0, :2] = torch.tensor([float("inf"), float("-inf")])
    save_file(some, tmp_path / "inf.safetensors")
    half = {k: v.half() if v.is_floating_point() else v for k, v in tiny_cnn(5).state_dict().items()}
    half["fc.bias"][3] = float("nan")
    save_file(half, tmp_path / "half.safetensors")
    models = {"a": {"checkpoint": str(own["root"] / "a.pth")}, "nan": {"checkpoint": str(tmp_path / "nan.pth")},
              "inf": {"checkpoint": str(tmp_path / "inf.safetensors")},
              "half": {"checkpoint": str(tmp_path / "half.safetensors")}}
    for args in ([], ["--dry-run"]):
        r, _ = plan_own(own, tmp_path, own_spec(own, models), *args)
        assert r.exit_code == 0, r.output
        found = warnings_of(r)
        total = sum(v.numel() for v in nan.values() if v.is_floating_point())
        assert found == [
            f"warning: nan: all {total:,} floating-point weights in {tmp_path / 'nan.pth'} are NaN or infinite: the "
            "model outputs NaN, so it always answers one class (chance-level accuracy) and every transfer job with "
            "it diverges; use weights saved before training diverged",
            f"warning: inf: 2 of the {total:,} floating-point weights in {tmp_path / 'inf.safetensors'} are NaN or "
            "infinite: the model outputs NaN, so it always answers one class (chance-level accuracy) and every "
            "transfer job with it diverges; use weights saved before training diverged",
            f"warning: half: 1 of the {total:,} floating-point weights in {tmp_path / 'half.safetensors'} are NaN "
            "or infinite: the model outputs NaN, so it always answers one class (chance-level accuracy) and every "
            "transfer job with it diverges; use weights saved before training diverged",
        ], r.stderr
        assert "chance for" not in r.stderr  # not the chance-level note: that one says to check preprocessing
    # counted once per file version, beside its hash: the next plan reads no weights again
    calls = []
    monkeypatch.setattr(W, "count_nonfinite", lambda p: calls.append(p))
    r, _ = plan_own(own, tmp_path, own_spec(own, models))
    assert r.exit_code == 0 and len(warnings_of(r)) == 3 and calls == []


def test_a_std_near_zero_is_a_warning_of_its_own(own, tmp_path):
    r, _ = plan_own(own, tmp_path, own_spec(own, data={"std": [0.002, 0.5, 0.5]}))
    assert r.exit_code == 0, r.output
    assert warnings_of(r) == [
        f"warning: {name}: std 0.002 multiplies the pixels by 500: timm's std is on pixels scaled to [0, 1] "
        "(ImageNet's: 0.229, 0.224, 0.225); check that the model was trained with it" for name in ("a",)], r.stderr
    # the folder's config.json keeps its own std (0.5): no warning for hf


# ---------------------------------------------------------------------- 2. the disk and the store
def test_a_store_with_damaged_pages_is_one_line_and_stays_as_it_was(planned, tmp_path):
    damaged = tmp_path / "damaged.db"
    shutil.copy(planned["db"], damaged)
    data = bytearray(damaged.read_bytes())
    for page in range(2, len(data) // 4096):  # every page but the first (the header and the table list)
        data[page * 4096:page * 4096 + 2000] = b"\xde\xad" * 1000
    damaged.write_bytes(bytes(data))
    base = ["--db", f"sqlite:///{damaged}", "--home", str(tmp_path / "home")]
    for args in (["plan", planned["spec"]], ["status"], ["report", "micro"], ["db", "upgrade"]):
        line = one_error_line(invoke(*base, *args))
        assert str(damaged) in line and "database disk image is malformed" in line, args
        assert damaged.read_bytes() == bytes(data)


def test_a_store_whose_version_table_was_dropped_is_one_line(planned, tmp_path):
    db = tmp_path / "noversion.db"
    shutil.copy(planned["db"], db)
    with sqlite3.connect(db) as c:
        c.execute("drop table schema_version")
    before = dump(db)
    base = ["--db", f"sqlite:///{db}", "--home", str(tmp_path / "home")]
    for args in (["db", "upgrade"], ["db", "version"], ["plan", planned["spec"]], ["status"]):
        line = one_error_line(invoke(*base, *args))
        assert line == (f"error: {db} has the tables of a zoo-sweep store after version 1 but no schema_version "
                        "table (it was dropped or changed outside zoo-sweep), so its version is unknown: restore the "
                        "store from a copy, or start a new one"), args
    assert dump(db) == before


def _sqlite_as(monkeypatch, pragma: str | None = None, mode: str | None = None):
    """Every connection a store opens from now on is read-only (``mode`` ro: what SQLite does with a file it
    cannot write), or runs ``pragma`` first (max_page_count: a disk that is full)."""
    real = store_module.sqlite3_connect

    def connect(path, m):
        conn = real(path, mode or m)
        if pragma:
            pages = conn.execute("pragma page_count").fetchone()[0]
            conn.execute(pragma.format(pages=pages))
        return conn

    monkeypatch.setattr(store_module, "sqlite3_connect", connect)


def test_a_read_only_store_is_one_line(planned, tmp_path, monkeypatch):
    db = tmp_path / "ro.db"
    shutil.copy(planned["db"], db)
    before = dump(db)
    other = tmp_path / "other.toml"
    other.write_text(SPEC.replace('name = "micro"', 'name = "other"'))
    _sqlite_as(monkeypatch, mode="ro")
    line = one_error_line(invoke("--db", f"sqlite:///{db}", "--home", str(tmp_path / "home"), "plan", str(other)))
    assert f"{db}" in line and "attempt to write a readonly database" in line
    monkeypatch.undo()
    assert dump(db) == before


def test_a_full_disk_under_the_store_is_one_line(planned, tmp_path, monkeypatch):
    db = tmp_path / "full.db"
    shutil.copy(planned["db"], db)
    before = dump(db)
    other = tmp_path / "other.toml"
    other.write_text(SPEC.replace('name = "micro"', 'name = "other"').replace('methods = ["kl"]',
                                                                             'methods = ["kl", "kl_dp"]'))
    _sqlite_as(monkeypatch, pragma="pragma max_page_count = {pages}")
    line = one_error_line(invoke("--db", f"sqlite:///{db}", "--home", str(tmp_path / "home"), "plan", str(other)))
    assert line == (f"error: cannot write the store {db} (database or disk is full); free some space, or use a store "
                    "elsewhere (--db)")
    monkeypatch.undo()
    assert dump(db) == before


def test_a_full_disk_under_the_home_is_one_line(own, tmp_path, monkeypatch):
    def full(path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(W, "write_atomic", full)  # the weights hash cache, written at plan
    r, db = plan_own(own, tmp_path, own_spec(own))
    line = one_error_line(r)
    assert line.startswith(f"error: {tmp_path / 'home'}") and line.endswith(
        ": No space left on device; free some space, or give --home / --db a place that has it")
    assert not db.exists()


def test_a_read_only_home_is_one_line(own, tmp_path):
    r, db = plan_own(own, tmp_path, own_spec(own), home="/sys/kernel")
    line = one_error_line(r)
    assert line.startswith("error: /sys/kernel/") and "Operation not permitted; give --home (or ZOO_SWEEP_HOME)" in line
    assert not db.exists()


def test_a_launch_whose_disk_fails_midway_exits_1_and_says_what_is_kept(capsys):
    """A launch that ran jobs: the failure line, exit 1 (as a launch with failed jobs), finished jobs kept."""
    import typer

    from zoo_sweep.cli.main import Ctx, _launch_failures

    class Obj:
        obj = Ctx("sqlite:////tmp/x.db", None)

    with pytest.raises(typer.Exit) as e, _launch_failures(Obj):
        raise OSError(errno.ENOSPC, "No space left on device", "/home/records/x.npz")
    assert e.value.exit_code == 1
    err = capsys.readouterr().err
    assert err.strip() == ("error: /home/records/x.npz: No space left on device; free some space, or give --home / "
                           "--db a place that has it; the jobs that finished are kept: launch again to go on")
    with pytest.raises(ZeroDivisionError), _launch_failures(Obj):  # a bug keeps its traceback
        raise ZeroDivisionError


@pytest.mark.parametrize("command", [["db", "version"], ["db", "upgrade"]])
def test_db_commands_against_an_unreachable_server_are_one_line(command):
    pytest.importorskip("psycopg")
    line = one_error_line(invoke("--db", "postgresql+psycopg://u@127.0.0.1:1/x", *command))
    assert line.startswith("error: cannot open the store postgresql+psycopg://u@127.0.0.1:1/x: connection")


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:", "sqlite:///", "sqlite:///file::memory:?uri=true"])
def test_an_in_memory_store_is_refused(planned, url):
    for args in (["plan", planned["spec"]], ["status"], ["db", "version"]):
        line = one_error_line(invoke("--db", url, "--home", str(planned["root"] / "home"), *args))
        assert line == (f"error: the store {url} (--db or ZOO_SWEEP_DB) is an in-memory database: nothing written "
                        "there would outlast this command; give a file (sqlite:///results/zoo.db) or a server URL")
    r = invoke("--home", str(planned["root"] / "home"), "status", env={"ZOO_SWEEP_DB": url})
    assert "is an in-memory database" in one_error_line(r)


def test_report_of_a_sweep_not_in_the_store_names_those_that_are(planned, tmp_path):
    before = dump(planned["db"])
    line = one_error_line(invoke(*planned["base"], "report", "nosuch", "--out", str(tmp_path / "rep")))
    assert line == "error: no sweep named 'nosuch' in the store (sweeps: micro)"
    assert not (tmp_path / "rep").exists() and dump(planned["db"]) == before
    r = invoke(*planned["base"], "report", "micro", "--out", str(tmp_path / "rep"))  # by name: the stored sweep
    assert r.exit_code == 0, r.output
    assert (tmp_path / "rep" / "report.html").is_file()
