"""Your own zoo: [zoo.model.NAME] tables, [zoo.defaults], timm checkpoint folders, the state-dict layouts
checkpoints come in, weights content hashes in job ids, and the chance-level warning. Real timm models
(tiny sizes) and real files throughout."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file

from zoo_sweep.config.schema import describe, sections
from zoo_sweep.config.spec import ZooSpec, parse_spec
from zoo_sweep.errors import UserError
from zoo_sweep.paths import Paths
from zoo_sweep.pipeline.plan import make_plan
from zoo_sweep.zoo import weights as W
from zoo_sweep.zoo.entry import chance_note
from zoo_sweep.zoo.models import create, data_config, param_counts, resolve_zoo

CNN = {"channels": (8, 16, 24, 32), "stem_width": 8}  # resnet10t at a tiny width: milliseconds to build
VIT = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2}
HALF = {"input_size": [3, 32, 32], "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "crop_pct": 1.0}


def cnn(seed=0, classes=10):
    torch.manual_seed(seed)
    return timm.create_model("resnet10t", num_classes=classes, **CNN).eval()


def zoo(doc: dict) -> ZooSpec:
    return parse_spec({"name": "own", "zoo": doc}).zoo


def same_outputs(entry, ref) -> bool:
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return torch.allclose(create(entry)(x), ref(x), atol=1e-6)


# ------------------------------------------------------------------ the spec
@pytest.mark.parametrize("doc, message", [
    ({"model": {"a": {"bogus": 1}}}, "unknown key(s) bogus in [zoo.model.a]; known: arch, checkpoint, kwargs, data"),
    ({"model": {"a": {"data": {"resize": 32}}}}, "unknown key(s) resize in [zoo.model.a.data]; known: input_size"),
    ({"model": {"a": {"data": {"crop_pct": 1.5}}}}, "[zoo.model.a.data] crop_pct must be <= 1, got 1.5"),
    ({"model": {"a": {"data": {"mean": "0.5"}}}}, "[zoo.model.a.data] mean must be a list of numbers"),
    ({"model": {"a": {"data": {"input_size": [3, 32, 24]}}}}, "input_size must be [channels, height, width] with"),
    ({"model": {"a": {"data": {"interpolation": "lanczos"}}}}, "interpolation must be one of 'bilinear'"),
    ({"model": {"a": {"data": {"input_size": [3, 32, 32], "std": [0.2, 0.2]}}}}, "std must have one value per"),
    ({"model": {"a": {"kwargs": [1]}}}, "[zoo.model.a] kwargs must be a table, got [1]"),
    ({"model": {"a": 3}}, "[zoo.model] a must be a table ([zoo.model.a] with its keys), got 3"),
    ({"model": ["a"]}, "[zoo] model must be a table of tables ([zoo.model.NAME])"),
    ({"model": {"a+b": {"arch": "resnet18"}}}, "the model name 'a+b' is not allowed"),
    ({"defaults": {"checkpoint": "/x.pth"}}, "[zoo.defaults] checkpoint: every model has its own weights"),
    ({"defaults": {"data": {"std": [0.0, 1.0, 1.0]}}}, "[zoo.defaults.data] std must be >= 0.001, got 0.0"),
])
def test_model_tables_are_checked_key_by_key(doc, message):
    with pytest.raises(UserError) as e:
        zoo(doc)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_nested_tables_parse_and_describe_themselves():
    z = zoo({"defaults": {"data": HALF}, "model": {"a": {"arch": "resnet18", "kwargs": {"drop_rate": 0.1},
                                                         "data": {"crop_pct": 0.875}}}})
    assert z.defaults.data.input_size == (3, 32, 32) and z.defaults.data.mean == (0.5, 0.5, 0.5)
    assert z.model["a"].data.given() == {"crop_pct": 0.875} and z.model["a"].kwargs == {"drop_rate": 0.1}
    paths = [p for p, _ in sections(ZooSpec, "zoo")]
    assert paths == ["zoo", "zoo.defaults", "zoo.defaults.data", "zoo.model.NAME", "zoo.model.NAME.data"]
    rows = {r["key"]: r for r in describe(ZooSpec, "zoo")}
    assert rows["model"]["type"] == "tables ([zoo.model.NAME])"
    assert rows["defaults"]["type"] == "a table ([zoo.defaults])"
    # the spec's identity covers the model tables: a changed preprocessing is a changed spec
    other = zoo({"defaults": {"data": HALF}, "model": {"a": {"arch": "resnet18", "data": {"crop_pct": 0.9}}}})
    assert parse_spec({"name": "x", "zoo": {"model": {"a": {"arch": "r"}}}}).digest != \
        parse_spec({"name": "x", "zoo": {"model": {"a": {"arch": "s"}}}}).digest
    assert other != z


# ------------------------------------------------------------------ resolving models
def test_aliases_name_two_fine_tunes_of_one_architecture(tmp_path):
    a, b = cnn(1), cnn(2)
    torch.save(a.state_dict(), tmp_path / "a.pth")
    torch.save(b.state_dict(), tmp_path / "b.pth")
    spec = zoo({"defaults": {"arch": "resnet10t", "kwargs": CNN, "data": HALF},
                "model": {"seed1": {"checkpoint": str(tmp_path / "a.pth")},
                          "seed2": {"checkpoint": str(tmp_path / "b.pth"), "data": {"crop_pct": 0.875}}}})
    e1, e2 = resolve_zoo(spec, tmp_path / "cache", num_classes=10, image_size=32)
    assert (e1.name, e2.name, e1.arch, e2.arch) == ("seed1", "seed2", "resnet10t", "resnet10t")
    assert e1.num_classes == 10 and e1.kwargs == CNN
    assert e1.data_cfg == {"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.5,) * 3, "crop_pct": 1.0}
    assert e2.data_cfg["crop_pct"] == 0.875  # the table wins over [zoo.defaults], key by key
    assert e1.weights_key == "sha256:" + W.file_sha256(tmp_path / "a.pth")
    assert same_outputs(e1, a) and same_outputs(e2, b)
    cfg = data_config(create(e2))  # what predict and transfer apply: the spec's, not timm's 224 px default
    assert cfg["input_size"] == (3, 32, 32) and cfg["crop_pct"] == 0.875 and tuple(cfg["mean"]) == (0.5,) * 3


def test_kwargs_reach_the_constructor_and_fail_in_one_line_when_it_refuses(tmp_path):
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", num_classes=10, **VIT).eval()
    save_file(vit.state_dict(), tmp_path / "vit.safetensors")
    ok = {"arch": "vit_tiny_patch16_224", "checkpoint": str(tmp_path / "vit.safetensors"), "kwargs": VIT,
          "data": {"input_size": [3, 32, 32]}}
    spec = zoo({"model": {"vit32": ok, "vit32b": ok}})
    e = resolve_zoo(spec, tmp_path, num_classes=10, image_size=32)[0]
    assert e.family == "transformer" and same_outputs(e, vit)
    # a constructor that rejects the kwargs: one line at plan time (parameter counts build every model)
    bad = zoo({"model": {"m": {"arch": "mixer_s16_224", "kwargs": {"patch_size": 4}}, "n": {"arch": "resnet10t"}},
               "allow_random_weights": True})
    with pytest.raises(UserError, match=r"\[zoo.model.m\]: timm.create_model\('mixer_s16_224', ...\) fails") as err:
        param_counts(resolve_zoo(bad, tmp_path, 10, 32))
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="'resnet10x' is not a timm architecture; did you mean resnet10t"):
        resolve_zoo(zoo({"model": {"m": {"arch": "resnet10x"}, "n": {"arch": "resnet10t"}}}), tmp_path, 10, 32)
    with pytest.raises(UserError, match=r"\[zoo.model.m\] needs arch"):
        resolve_zoo(zoo({"model": {"m": {}, "n": {"arch": "resnet10t"}}}), tmp_path, 10, 32)


def save_timm_folder(model, folder: Path, data: dict) -> None:
    """What a user of timm does to share a fine-tune: save_for_hf writes config.json and model.safetensors."""
    timm.models.save_for_hf(model, str(folder), safe_serialization=True, data_config=data)


def test_a_timm_checkpoint_folder_loads_with_its_own_architecture_and_preprocessing(tmp_path):
    ref = cnn(3)
    imagenet = {"input_size": (3, 28, 28), "crop_pct": 0.875, "interpolation": "bilinear",
                "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
    save_timm_folder(ref, tmp_path / "ckpt" / "cnn-hf", imagenet)
    save_timm_folder(cnn(4), tmp_path / "ckpt" / "other", imagenet)
    (tmp_path / "ckpt" / "notes.txt").write_text("a file, not a model")
    spec = zoo({"checkpoint_dirs": [str(tmp_path / "ckpt" / "*")], "defaults": {"data": HALF}})
    e, _ = resolve_zoo(spec, tmp_path, num_classes=10, image_size=32)
    assert (e.name, e.arch, e.num_classes) == ("cnn-hf", "resnet10t", 10)
    assert e.kwargs["channels"] == (8, 16, 24, 32) and "num_classes" not in e.kwargs
    # the folder's config.json wins over [zoo.defaults]: its preprocessing is what the weights were trained with
    assert e.data_cfg["input_size"] == (3, 28, 28) and e.data_cfg["mean"] == (0.485, 0.456, 0.406)
    assert same_outputs(e, ref)
    # the same as timm's own loader of such a folder
    theirs = timm.create_model(f"local-dir:{tmp_path / 'ckpt' / 'cnn-hf'}", pretrained=True).eval()
    cfg, their_cfg = data_config(create(e)), timm.data.resolve_model_data_config(theirs)
    assert all(tuple(np.atleast_1d(cfg[k])) == tuple(np.atleast_1d(their_cfg[k])) for k in cfg)
    assert same_outputs(e, theirs)
    # a table naming the folder says only what differs; its own keys win over config.json
    spec = zoo({"model": {"cnn-hf-32": {"checkpoint": str(tmp_path / "ckpt" / "cnn-hf"), "data": {"crop_pct": 1.0}},
                          "other": {"checkpoint": str(tmp_path / "ckpt" / "other")}}})
    e = resolve_zoo(spec, tmp_path, num_classes=10, image_size=32)[0]
    assert e.arch == "resnet10t" and e.data_cfg["crop_pct"] == 1.0 and e.data_cfg["input_size"] == (3, 28, 28)


def test_checkpoint_folder_mistakes_are_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    save_timm_folder(cnn(), tmp_path / "good", {})
    cases = [
        ({"checkpoint_dirs": [str(tmp_path / "nothing-*")]}, "matches no folder"),
        ({"checkpoint_dirs": [str(tmp_path / "empty"), str(tmp_path / "good")]}, "empty has no config.json"),
        ({"checkpoint_dirs": [str(tmp_path / "good")], "model": {"good": {"arch": "resnet10t"}}},
         "two models are named 'good'"),
        ({"model": {"m": {"arch": "resnet10t", "checkpoint": str(tmp_path / "gone.pth")}}}, "not found"),
    ]
    for doc, message in cases:
        with pytest.raises(UserError, match=message) as e:
            resolve_zoo(zoo({**doc, "allow_random_weights": True}), tmp_path, 10, 32)
        assert "\n" not in str(e.value)
    (tmp_path / "good" / "model.safetensors").unlink()
    with pytest.raises(UserError, match="has config.json but no model.safetensors"):
        resolve_zoo(zoo({"checkpoint_dirs": [str(tmp_path / "good")], "model": {"x": {"arch": "resnet10t"}}}),
                    tmp_path, 10, 32)


def test_own_models_replace_the_source_unless_models_names_some(tmp_path):
    torch.save(cnn().state_dict(), tmp_path / "a.pth")
    own = {"model": {"mine": {"arch": "resnet10t", "kwargs": CNN, "checkpoint": str(tmp_path / "a.pth")},
                     "mine2": {"arch": "resnet10t", "kwargs": CNN, "checkpoint": str(tmp_path / "a.pth")}}}
    names = [e.name for e in resolve_zoo(zoo(own), tmp_path, 10, 32)]  # source digits, models = []
    assert names == ["mine", "mine2"]
    names = [e.name for e in resolve_zoo(zoo({**own, "recipe": "micro", "models": ["cnn_*"]}), tmp_path, 10, 32)]
    assert names == ["cnn_micro", "mine", "mine2"]
    names = [e.name for e in resolve_zoo(zoo({**own, "recipe": "micro", "models": ["*"], "exclude": ["mine2", "vit*"]}),
                                         tmp_path, 10, 32)]
    assert names == ["cnn_micro", "mlp_micro", "mine"]  # exclude covers the source's and your own


# ------------------------------------------------------------------ state-dict layouts
def test_state_dict_layouts_all_load(tmp_path):
    ref = cnn(5)
    sd = ref.state_dict()
    layouts = {
        "plain.pth": sd,
        "wrapped.pth": {"state_dict": sd, "epoch": 7, "optimizer": {"lr": 0.1}},
        "ddp.pth": {"model": {f"module.{k}": v for k, v in sd.items()}},
        "compiled.pt": {f"_orig_mod.{k}": v for k, v in sd.items()},
        "lightning.ckpt.pth": {"state_dict": {f"model.{k}": v for k, v in sd.items()}},
    }
    for name, obj in layouts.items():
        torch.save(obj, tmp_path / name)
    save_file({f"module.{k}": v.contiguous() for k, v in sd.items()}, tmp_path / "ddp.safetensors")
    import argparse  # timm's train.py checkpoints carry their argparse.Namespace

    torch.save({"state_dict": sd, "args": argparse.Namespace(lr=0.1)}, tmp_path / "timm-train.pth.tar")
    files = [*layouts, "ddp.safetensors", "timm-train.pth.tar"]
    spec = zoo({"defaults": {"arch": "resnet10t", "kwargs": CNN},
                "model": {f"m{i}": {"checkpoint": str(tmp_path / f)} for i, f in enumerate(files)}})
    for e in resolve_zoo(spec, tmp_path, 10, 32):
        assert same_outputs(e, ref), e.weights


def test_a_mismatch_names_the_first_missing_and_unexpected_keys_and_shapes(tmp_path):
    torch.save(cnn().state_dict(), tmp_path / "narrow.pth")
    torch.save(cnn(classes=7).state_dict(), tmp_path / "seven.pth")
    spec = zoo({"model": {"wide": {"arch": "resnet10t", "checkpoint": str(tmp_path / "narrow.pth")},
                          "seven": {"arch": "resnet10t", "kwargs": CNN, "checkpoint": str(tmp_path / "seven.pth")}}})
    wide, seven = resolve_zoo(spec, tmp_path, 10, 32)
    with pytest.raises(UserError) as e:
        create(wide)
    msg = str(e.value)
    assert "\n" not in msg and f"weights {wide.weights} do not fit wide (resnet10t)" in msg
    assert "6 unexpected key(s), first layer1.0.downsample.1.weight" in msg
    assert "71 shape mismatch(es), first conv1.0.weight: [6, 3, 3, 3] in the file, [24, 3, 3, 3] in the model" in msg
    assert "check arch and kwargs" in msg
    with pytest.raises(UserError, match=r"the file's head has 7 outputs: set num_classes = 7 in kwargs"):
        create(seven)
    sd = {k: v for k, v in cnn().state_dict().items() if not k.startswith("fc.")}
    sd["extra.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "odd.pth")
    odd = resolve_zoo(zoo({"model": {"odd": {"arch": "resnet10t", "kwargs": CNN,
                                             "checkpoint": str(tmp_path / "odd.pth")},
                                     "x": {"arch": "resnet10t"}}, "allow_random_weights": True}), tmp_path, 10, 32)[0]
    with pytest.raises(UserError, match="2 missing key.s., first fc.weight; 1 unexpected key.s., first extra.weight"):
        create(odd)


def test_a_file_of_other_objects_says_to_save_the_state_dict(tmp_path):
    # what torch.save(model) or a pickled training object amounts to: a class the safe loader does not allow
    torch.save({"state_dict": cnn().state_dict(), "run_dir": Path("/runs/1")}, tmp_path / "obj.pth")
    e = resolve_zoo(zoo({"model": {"o": {"arch": "resnet10t", "kwargs": CNN, "checkpoint": str(tmp_path / "obj.pth")},
                                   "x": {"arch": "resnet10t"}}, "allow_random_weights": True}), tmp_path, 10, 32)[0]
    with pytest.raises(UserError, match="save model.state_dict.. alone") as err:
        create(e)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_truncated_user_checkpoints_fail_at_plan_time_in_one_line(tmp_path, suffix):
    path = tmp_path / f"m{suffix}"
    (torch.save if suffix == ".pth" else save_file)(cnn().state_dict(), path)
    assert W.check_whole(path) is None
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    spec = zoo({"model": {"m": {"arch": "resnet10t", "kwargs": CNN, "checkpoint": str(path)},
                          "n": {"arch": "resnet10t"}}, "allow_random_weights": True})
    with pytest.raises(UserError, match=r"cannot use the weights .* of \[zoo.model.m\]: truncated") as e:
        resolve_zoo(spec, tmp_path, 10, 32)
    assert "\n" not in str(e.value)
    (tmp_path / "text.pth").write_text("not weights")
    assert W.check_whole(tmp_path / "text.pth") == "not a torch.save or safetensors file"


# ------------------------------------------------------------------ identity: content hashes and job ids
def test_weights_are_hashed_once_per_file_version(tmp_path, monkeypatch):
    calls = []
    real = W.file_sha256
    monkeypatch.setattr(W, "file_sha256", lambda p: calls.append(p) or real(p))
    path = tmp_path / "w.pth"
    torch.save(cnn().state_dict(), path)
    first = W.HashCache(tmp_path / "cache").get(path)
    W.HashCache(tmp_path / "cache").get(path)  # not saved: hashed again
    cache = W.HashCache(tmp_path / "cache")
    cache.get(path)
    cache.save()
    assert W.HashCache(tmp_path / "cache").get(path) == first and len(calls) == 3  # from the saved cache
    data = bytearray(path.read_bytes())
    data[-200] ^= 0xFF  # altered in place, same size
    path.write_bytes(bytes(data))
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert W.HashCache(tmp_path / "cache").get(path) != first and len(calls) == 4


def image_folder(root: Path, classes: int = 10, per_class: int = 2) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / f"c{c}" / f"{i}.png")
    return root


def test_job_ids_follow_each_models_definition(tmp_path):
    """Changing one model's preprocessing, kwargs or weights content changes exactly its jobs' ids."""
    for i in range(3):
        torch.save(cnn(i).state_dict(), tmp_path / f"m{i}.pth")
    data = image_folder(tmp_path / "val")

    def plan(**change):
        models = {f"m{i}": {"checkpoint": str(tmp_path / f"m{i}.pth")} for i in range(3)}
        for name, table in change.items():
            models[name] = {**models[name], **table}
        doc = {"name": "own", "zoo": {"defaults": {"arch": "resnet10t", "kwargs": CNN, "data": HALF},
                                      "model": models},
               "data": {"eval": f"imagefolder:{data}", "transfer": f"imagefolder:{data}"},
               "transfer": {"methods": ["kl"]}}
        p = make_plan(parse_spec(doc), Paths(tmp_path / "home"))
        return {j.id: j for j in p.all_jobs}

    def touching(jobs, name):
        return {i for i, j in jobs.items() if j.kind != "compare"
                and name in {j.payload.to_dict().get(r, {}).get("name") for r in ("model", "student", "teacher")}}

    base = plan()
    assert len(base) == 3 + 1 + 6 + 3  # predict, compare, transfer, one labels control per student
    assert plan() == base  # planning again: the same ids
    for change in ({"data": {**HALF, "crop_pct": 0.875}}, {"kwargs": {"drop_rate": 0.1}}):
        new = plan(m1=change)
        gone = set(base) - set(new)
        compare = {i for i, j in base.items() if j.kind == "compare"}
        assert gone == touching(base, "m1") | compare  # m1's predict, 4 transfer and control jobs, the compare
        assert len(gone) == 1 + 4 + 1 + 1
    # same bytes under another file name: the same model; other bytes under the same name: another model
    (tmp_path / "copy.pth").write_bytes((tmp_path / "m1.pth").read_bytes())
    assert set(plan(m1={"checkpoint": str(tmp_path / "copy.pth")})) == set(base)
    torch.save(cnn(9).state_dict(), tmp_path / "m1.pth")
    assert set(base) - set(plan()) == touching(base, "m1") | {i for i, j in base.items() if j.kind == "compare"}


# ------------------------------------------------------------------ chance
def test_chance_level_is_flagged_as_a_warning():
    assert chance_note(10.0, 10) == "accuracy 10.0 % = chance for 10 classes: check its preprocessing"
    assert chance_note(10.9, 10, n=1000) .startswith("accuracy 10.9 % = chance")  # within 2 standard errors
    assert chance_note(9.83, 10, n=600).startswith("accuracy 9.8 % = chance")
    assert chance_note(14.0, 10, n=1000) is None and chance_note(79.2, 10, n=600) is None
    assert "classes are in the eval set's order" in chance_note(2.0, 10, n=1000)
    assert chance_note(0.1, 1000, n=50000).startswith("accuracy 0.1 % = chance for 1000 classes")


# ------------------------------------------------------------------ the docs' example
DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_the_documented_spec_is_the_example_scripts_and_parses():
    import importlib.util
    import re
    import tomllib

    from zoo_sweep.pipeline.plan import check_names

    text = (DOCS / "your-own-zoo.md").read_text()
    block = re.search(r"```toml\n(name = \"own-zoo\".*?)```", text, re.S).group(1)
    mod = importlib.util.spec_from_file_location("own_zoo_example", DOCS / "examples" / "own_zoo.py")
    example = importlib.util.module_from_spec(mod)
    mod.loader.exec_module(example)
    assert block == example.SPEC.format(root="/tmp/own-zoo")
    spec = check_names(parse_spec(tomllib.loads(block)))
    assert sorted(spec.zoo.model) == ["cnn-seed1", "cnn-seed2", "vit32"]
    assert spec.zoo.model["vit32"].kwargs["img_size"] == 32
    for path, cls in sections(ZooSpec, "zoo")[1:]:  # every key of the model tables is documented
        for row in describe(cls, path):
            assert f"| `{row['key']}` |" in text, (path, row["key"])
