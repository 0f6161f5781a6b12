"""Hostile input, through the typer app in-process where a command is involved: output folders holding links or
folders at the names written, empty and unwritable --out, a pickle where an old image cache was, passwords in
addresses and in a driver's message, a named pipe named like an image, and transfer sets whose classes are not
the eval set's. docs/bad-input.md lists each case with its message."""

import os
import pickle
import time
import types
from pathlib import Path

import pandas as pd
import pytest
import torch  # imported at collection: its first import runs ldconfig, which the unit tier's process guard refuses
from cli_helpers import invoke, one_error_line
from conftest import micro_spec
from PIL import Image

from zoo_sweep.cli.main import main
from zoo_sweep.data.decode import decode_file
from zoo_sweep.data.images import load_image_set
from zoo_sweep.data.sets import check_same_classes, image_set_key
from zoo_sweep.errors import UserError
from zoo_sweep.storage.store import Store
from zoo_sweep.urls import redact

SECRET = "Secr3tPw"


@pytest.fixture
def store(tmp_path):
    db = tmp_path / "zoo.db"
    Store(f"sqlite:///{db}")  # an empty store: every table, no rows
    spec = tmp_path / "micro.toml"
    spec.write_text(micro_spec(transfer={"methods": ["kl"]}))
    return {"base": ["--db", f"sqlite:///{db}", "--home", str(tmp_path / "home")], "spec": str(spec)}


def _victim(tmp_path: Path) -> Path:
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    return victim


# ---------------------------------------------------------------------- output folders
def test_export_replaces_links_in_the_folder_and_never_writes_through_them(store, tmp_path):
    out, victim = tmp_path / "out", _victim(tmp_path)
    out.mkdir()
    (out / "jobs.parquet").symlink_to(victim)
    (out / "models.parquet").symlink_to(tmp_path / "nowhere")  # a link to nothing: following it would create it
    r = invoke(*store["base"], "export", "--out", str(out))
    assert r.exit_code == 0, r.output
    assert victim.read_text() == "keep me" and not (tmp_path / "nowhere").exists()
    for name in ("jobs", "models"):
        assert not (out / f"{name}.parquet").is_symlink()
        assert list(pd.read_parquet(out / f"{name}.parquet").columns)  # the export itself, in place of the link
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_export_to_an_empty_out_is_refused_not_the_current_folder(store, tmp_path, monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    line = one_error_line(invoke(*store["base"], "export", "--out", ""))
    assert line == "error: --out is empty: give a folder (it is created if missing)"
    assert not list(cwd.iterdir())


def test_export_where_a_file_name_is_a_folder_writes_nothing(store, tmp_path):
    out = tmp_path / "out"
    (out / "jobs.parquet").mkdir(parents=True)
    line = one_error_line(invoke(*store["base"], "export", "--out", str(out)))
    assert line == f"error: --out {out}: cannot write jobs.parquet (Is a directory); choose another folder"
    assert [p.name for p in out.iterdir()] == ["jobs.parquet"]  # no other table written before the refusal


@pytest.mark.parametrize("target", ["/sys/zoo-sweep-export", "/sys/kernel", "/proc/self"])
def test_export_to_a_folder_that_takes_no_files_is_one_line(store, target):
    if not Path("/sys/kernel").is_dir():
        pytest.skip("no /sys here")
    line = one_error_line(invoke(*store["base"], "export", "--out", target))
    assert line.startswith(f"error: --out {target}") and "choose another" in line, line


def test_report_replaces_links_and_refuses_a_folder_at_a_file_name(store, tmp_path):
    out, victim = tmp_path / "report", _victim(tmp_path)
    out.mkdir()
    (out / "report.html").symlink_to(victim)
    (out / "summary.md").symlink_to(tmp_path / "nowhere")
    r = invoke(*store["base"], "report", store["spec"], "--out", str(out))
    assert r.exit_code == 0, r.output
    assert victim.read_text() == "keep me" and not (tmp_path / "nowhere").exists()
    assert "<html" in (out / "report.html").read_text()[:200].lower() and not (out / "report.html").is_symlink()
    assert f"report: {out / 'report.html'}" in r.stdout
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # the private staging folder is gone

    blocked = tmp_path / "blocked"
    (blocked / "summary.md").mkdir(parents=True)
    line = one_error_line(invoke(*store["base"], "report", store["spec"], "--out", str(blocked)))
    assert line == f"error: --out {blocked}: cannot write summary.md (Is a directory); choose another folder"
    assert [p.name for p in blocked.iterdir()] == ["summary.md"]  # nothing moved in before the refusal

    assert one_error_line(invoke(*store["base"], "report", store["spec"], "--out", "")) == \
        "error: --out is empty: give a folder (it is created if missing)"


def test_sbatch_script_skips_a_link_at_its_name_and_refuses_an_empty_out(store, tmp_path, monkeypatch):
    from zoo_sweep.submit import slurm

    fixed = types.SimpleNamespace(**{n: getattr(time, n) for n in dir(time) if not n.startswith("_")})
    fixed.strftime = lambda fmt, *a: "20260101-000000"
    monkeypatch.setattr(slurm, "time", fixed)
    out, victim = tmp_path / "slurm", _victim(tmp_path)
    out.mkdir()
    (out / "micro-20260101-000000.sh").symlink_to(victim)
    (out / "micro-20260101-000000-1.sh").symlink_to(tmp_path / "nowhere")
    r = invoke(*store["base"], "submit", "slurm", store["spec"], "--dry-run", "--out", str(out))
    assert r.exit_code == 0, r.output
    script = out / "micro-20260101-000000-2.sh"
    assert f"wrote {script}" in r.stdout and script.read_text().startswith("#!")
    assert os.access(script, os.X_OK) and not script.is_symlink()
    assert victim.read_text() == "keep me" and not (tmp_path / "nowhere").exists()
    line = one_error_line(invoke(*store["base"], "submit", "slurm", store["spec"], "--dry-run", "--out", ""))
    assert line == "error: --out is empty: give a folder (it is created if missing)"


# ---------------------------------------------------------------------- nothing on disk is unpickled
class _MakesMarker:
    """Unpickling this creates the marker file: the code a pickle placed in the cache would run."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("how", ["torch.save", "pickle"])
def test_a_pickle_where_an_old_image_cache_was_is_never_run(tmp_path, how):
    marker = tmp_path / "marker"
    key = image_set_key("digits:eval", 8)
    old = tmp_path / "images" / f"{key}.pt"
    old.parent.mkdir()
    planted = {"images": _MakesMarker(marker), "labels": torch.zeros(3), "classes": ["0"], "source_ids": torch.zeros(3),
               "skipped": 0}
    if how == "torch.save":
        torch.save(planted, old)
    else:
        old.write_bytes(pickle.dumps(planted))
    s = load_image_set("digits:eval", 8, tmp_path)
    assert not marker.exists()
    assert len(s) == 2157 and s.images.shape[1:] == (3, 8, 8)  # decoded again from the digits
    assert not old.exists()


def test_the_decode_cache_never_writes_pixels_through_a_link(tmp_path):
    first = load_image_set("digits:eval", 8, tmp_path)
    folder = tmp_path / "images" / image_set_key("digits:eval", 8)
    victim = _victim(tmp_path)
    (folder / "images.u8").unlink()
    (folder / "images.u8").symlink_to(victim)
    (folder / "index.json").unlink()  # unfinished: the next load builds again, in the same folder
    again = load_image_set("digits:eval", 8, tmp_path)
    assert victim.read_text() == "keep me" and not (folder / "images.u8").is_symlink()
    assert torch.equal(again.images, first.images)


# ---------------------------------------------------------------------- secrets
def test_a_driver_that_quotes_part_of_a_password_with_an_at_sign_shows_none_of_it():
    pw = "p@ssw0rd"  # psycopg takes 'ssw0rd@127.0.0.1' for the host and says it cannot resolve it
    for args, env in [(["--db", f"postgresql+psycopg://u:{pw}@127.0.0.1:1/zoo", "status"], None),
                      (["status"], {"ZOO_SWEEP_DB": f"postgresql+psycopg://u:{pw}@127.0.0.1:1/zoo"})]:
        r = invoke(*args, env=env)
        line = one_error_line(r)
        assert "ssw0rd" not in r.stdout + r.stderr and pw not in r.stdout + r.stderr, line
        assert "u:***@127.0.0.1:1/zoo" in line


@pytest.mark.parametrize("address", [f"u:{SECRET}@127.0.0.1:1", f"ray://u:{SECRET}@127.0.0.1:1",
                                     f"http://u:{SECRET}@127.0.0.1:1"])
def test_a_password_in_an_address_is_masked(store, address):
    for args in (["launch", store["spec"], "--address", address, "--no-progress"],
                 ["measure", store["spec"], "--address", address, "--no-progress"],
                 ["submit", "ray", store["spec"], "--address", address]):
        r = invoke(*store["base"], *args)
        line = one_error_line(r)
        assert SECRET not in r.stdout + r.stderr and ":***@127.0.0.1" in line, line
    r = invoke(*store["base"], "launch", store["spec"], "--no-progress", env={"RAY_ADDRESS": address})
    assert SECRET not in r.stdout + r.stderr and ":***@127.0.0.1" in one_error_line(r)


def test_usage_errors_and_crashes_are_masked_too(monkeypatch, capsys):
    r = invoke(f"postgresql://u:{SECRET}@h/db", "status")  # a URL given where the command goes
    assert r.exit_code == 2 and "No such command 'postgresql://u:***@h/db'" in r.stderr, r.stderr
    assert SECRET not in r.stdout + r.stderr

    def crash(*a, **k):
        raise RuntimeError(f"could not talk to postgresql://u:{SECRET}@h/db (driver said {SECRET})")

    monkeypatch.setattr(Store, "__init__", crash)
    assert main(["--db", f"postgresql://u:{SECRET}@h/db", "status"]) == 1
    err = capsys.readouterr().err
    assert "RuntimeError: could not talk to postgresql://u:***@h/db (driver said ***)" in err and SECRET not in err


@pytest.mark.parametrize("text, secrets, shown", [
    (f"cannot reach u:{SECRET}@10.0.0.1:6379 (refused)", [], "cannot reach u:***@10.0.0.1:6379 (refused)"),
    (f"at 'ray://u:{SECRET}@h:10001'", [], "at 'ray://u:***@h:10001'"),
    ("postgresql://u:p@ss@h/db failed", [], "postgresql://u:***@h/db failed"),
    ("failed to resolve host 'ss@127.0.0.1'", ["p@ss", "ss", "p"], "failed to resolve host '***@127.0.0.1'"),
    (f"password authentication failed ({SECRET})", [SECRET], "password authentication failed (***)"),
    ("https://h/x?token=1&password=hunter2", [], "https://h/x?token=1&password=***"),
    ("10:30 at user@host, time 12:00:00, [zoo.checkpoints]", ["a"],
     "10:30 at user@host, time 12:00:00, [zoo.checkpoints]"),
    ("store postgresql+psycopg://zoo@127.0.0.1:5432/db", [], "store postgresql+psycopg://zoo@127.0.0.1:5432/db"),
])
def test_redact(text, secrets, shown):
    assert redact(text, secrets) == shown


# ---------------------------------------------------------------------- a named pipe among the images
@pytest.mark.timeout(60, method="signal")  # before the fix the decode waited for a writer for ever
def test_a_named_pipe_named_like_an_image_is_skipped_as_unreadable(tmp_path):
    root = tmp_path / "val"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (10, 12), (40 * i, 80, 120)).save(root / c / f"{i}.png")
    os.mkfifo(root / "a" / "pipe.png")
    assert decode_file(str(root / "a" / "pipe.png"), 8) is None
    with pytest.warns(UserWarning, match="1 unreadable image file"):
        s = load_image_set(f"imagefolder:{root}", 8, tmp_path / "cache", workers=1)
    assert len(s) == 6 and s.skipped == 1 and s.labels.tolist() == [0, 0, 0, 1, 1, 1]
    index = (tmp_path / "cache" / "images" / image_set_key(f"imagefolder:{root}", 8) / "index.json").read_text()
    assert '"a/pipe.png"' in index  # named with the unreadable files


# ---------------------------------------------------------------------- transfer classes
def _folder(root: Path, classes: list[str]) -> str:
    for c in classes:
        (root / c).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(root / c / "0.png")
    return f"imagefolder:{root}"


def test_transfer_classes_must_be_the_eval_classes(tmp_path):
    ev = _folder(tmp_path / "val", ["cat", "dog", "fox"])
    check_same_classes(ev, _folder(tmp_path / "same", ["cat", "dog", "fox"]))
    check_same_classes(ev, ev)
    check_same_classes(ev, "imagefolder:/not/here")  # a dry run away from the data: checked where decoded
    check_same_classes("digits:eval", "digits:transfer")
    check_same_classes("digits:eval", _folder(tmp_path / "digits", [str(i) for i in range(10)]))

    renamed = _folder(tmp_path / "renamed", ["cat", "dog", "wolf"])
    with pytest.raises(UserError) as e:
        check_same_classes(ev, renamed)
    assert str(e.value) == (f"the transfer set {renamed} and the eval set {ev} have different classes (only in the "
                            "transfer set: 'wolf'; only in the eval set: 'fox'): give both the same class folders, "
                            "or list every class in [data] class_map")
    extra = _folder(tmp_path / "extra", ["cat", "dog", "fox", "owl"])
    with pytest.raises(UserError, match="only in the transfer set: 'owl'; only in the eval set: none"):
        check_same_classes(ev, extra)
    with pytest.raises(UserError, match="only in the transfer set: '0', '1', '2', '3', '4' and 5 more"):
        check_same_classes(ev, "digits:transfer")


def test_a_class_map_honours_sets_with_different_folders(tmp_path):
    ev = _folder(tmp_path / "val", ["cat", "dog"])
    tr = _folder(tmp_path / "train", ["cat", "dog", "fox"])
    cmap = tmp_path / "classes.txt"
    cmap.write_text("fox\ncat\ndog\n")
    check_same_classes(ev, tr, str(cmap))  # every folder has its position in the map
    cmap.write_text("cat\ndog\n")
    with pytest.raises(UserError, match=f"the transfer set {tr} has class folders not in the class map {cmap}: 'fox'"):
        check_same_classes(ev, tr, str(cmap))
    with pytest.raises(UserError, match="class map not found"):
        check_same_classes(ev, tr, str(tmp_path / "missing.txt"))


def test_plan_refuses_a_transfer_set_with_other_classes_and_writes_nothing(tmp_path):
    """Through the command: one line before anything is written (no store file), unless the spec only measures."""
    ev = _folder(tmp_path / "val", ["cat", "dog", "fox"])
    tr = _folder(tmp_path / "train", ["cat", "dog", "wolf"])
    spec = tmp_path / "own.toml"
    zoo = '[zoo]\nsource = "timm"\nmodels = ["resnet10t", "resnet14t"]\nallow_random_weights = true\n'
    spec.write_text(f'name = "own"\n{zoo}[data]\neval = "{ev}"\ntransfer = "{tr}"\n[transfer]\nmethods = ["kl"]\n')
    db = tmp_path / "zoo.db"
    line = one_error_line(invoke("--db", f"sqlite:///{db}", "--home", str(tmp_path / "home"), "plan", str(spec)))
    assert "only in the transfer set: 'wolf'; only in the eval set: 'fox'" in line and not db.exists()
    spec.write_text(spec.read_text().replace('methods = ["kl"]', "methods = []"))
    r = invoke("--db", f"sqlite:///{db}", "--home", str(tmp_path / "home"), "plan", str(spec), "--dry-run")
    assert r.exit_code == 0 and "measure-only" in r.stdout, r.output
