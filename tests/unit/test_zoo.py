"""Zoo selection and weights: names and patterns, families, and real timm loading from local files."""

import dataclasses
import json

import pytest
import torch

from zoo_sweep.config.spec import ZooSpec
from zoo_sweep.errors import UserError
from zoo_sweep.zoo.models import create, resolve_zoo, select_names


def test_patterns_and_close_names():
    names = ["resnet_a", "resnet_b", "vit_a"]
    assert select_names(names, ("resnet_*",), ()) == ["resnet_a", "resnet_b"]
    assert select_names(names, (), ("vit*",)) == ["resnet_a", "resnet_b"]
    with pytest.raises(UserError, match="did you mean .*resnet_a"):
        select_names(names, ("resnet_x",), ())


def test_timm_models_load_from_a_checkpoint_and_a_weights_folder(tmp_path):
    import timm

    ref = timm.create_model("resnet10t", num_classes=5)
    torch.save({"state_dict": ref.state_dict()}, tmp_path / "ck.pth")  # a training checkpoint layout
    wdir = tmp_path / "weights"
    wdir.mkdir()
    from safetensors.torch import save_file

    save_file(ref.state_dict(), wdir / "resnet14t.safetensors")
    torch.save(timm.create_model("resnet14t", num_classes=5).state_dict(), wdir / "resnet14t.pth")
    spec = ZooSpec(source="timm", models=("resnet10t", "resnet14t"),
                   checkpoints={"resnet10t": str(tmp_path / "ck.pth")}, weights_dir=str(wdir))
    entries = {e.name: e for e in resolve_zoo(spec, tmp_path, num_classes=5, image_size=32)}
    assert entries["resnet10t"].weights.endswith("ck.pth")
    assert entries["resnet14t"].weights.endswith(".safetensors")
    m = create(entries["resnet10t"])
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(m(x), ref.eval()(x))
    # the safetensors file holds resnet10t weights: a clear error, not random weights
    with pytest.raises(UserError, match="do not fit resnet14t"):
        create(entries["resnet14t"])


def test_missing_weights_name_the_three_ways(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    spec = ZooSpec(source="timm", models=("resnet10t.c3_in1k", "resnet14t.c3_in1k"))
    entry = resolve_zoo(spec, tmp_path, num_classes=1000, image_size=224)[0]
    assert entry.weights == "hub"
    with pytest.raises(UserError) as e:
        create(entry)
    msg = str(e.value)
    assert "resnet10t.c3_in1k" in msg and "hub cache" in msg and "weights_dir" in msg and "checkpoints" in msg


def test_hub_weights_come_from_the_local_cache_without_network(tmp_path, monkeypatch):
    """A Hugging Face cache laid out as hf_hub_download leaves it; HF_HUB_OFFLINE proves no download."""
    import huggingface_hub.constants as hf
    import timm
    from safetensors.torch import save_file

    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tag = "resnet10t.c3_in1k"
    ref = timm.create_model("resnet10t", num_classes=1000).eval()
    repo = tmp_path / "hub" / "models--timm--resnet10t.c3_in1k"
    snap = repo / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    save_file(ref.state_dict(), snap / "model.safetensors")
    spec = ZooSpec(source="timm", models=(tag, "resnet14t.c3_in1k"))
    entry = resolve_zoo(spec, tmp_path, num_classes=1000, image_size=224)[0]
    x = torch.randn(1, 3, 64, 64)
    assert torch.allclose(create(entry)(x), ref(x))


def test_embedded_zoo_weights_that_changed_are_rebuilt(tmp_path):
    """The recipe key names embedded-zoo weights in job ids; the sha256 recorded when a file is built guards
    it, so a truncated or altered file is removed and rebuilt rather than used (or a rebuild skipped)."""
    import json
    import os

    import timm

    from zoo_sweep.zoo import tiny_archs  # noqa: F401
    from zoo_sweep.zoo.digits import (
        digits_entries,
        recipes,
        save_trained,
        to_build,
        weights_path,
    )

    entries = digits_entries("micro", tmp_path, 32)
    first = recipes("micro")[0]
    assert to_build(entries, "micro", tmp_path, 32) == (recipes("micro"), 3)  # nothing built yet
    state = timm.create_model(first.arch, num_classes=10, **first.model_kwargs()).state_dict()
    path = save_trained(first, tmp_path, 32, state, {"seconds": 0})
    assert json.loads(path.with_suffix(".json").read_text())["sha256"]
    assert to_build(entries, "micro", tmp_path, 32)[0] == recipes("micro")[1:]
    assert to_build(entries[1:], "micro", tmp_path, 32) == (recipes("micro")[1:], 2)  # only the plan's models

    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # altered in place: same size
    path.write_bytes(bytes(data))
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert to_build(entries, "micro", tmp_path, 32)[0][0] == first and not path.exists()

    save_trained(first, tmp_path, 32, state, {})
    path.write_bytes(path.read_bytes()[:1000])  # truncated, as by a full disk or a killed copy
    assert to_build(entries, "micro", tmp_path, 32)[0][0] == first and not path.exists()

    # a file built before checksums were recorded: used if whole (its checksum recorded now), else rebuilt
    save_trained(first, tmp_path, 32, state, {})
    path.with_suffix(".json").write_text("{}")
    assert first not in to_build(entries, "micro", tmp_path, 32)[0]
    assert json.loads(path.with_suffix(".json").read_text())["sha256"]
    path.with_suffix(".json").write_text("{}")
    path.write_bytes(path.read_bytes()[:1000])
    assert first in to_build(entries, "micro", tmp_path, 32)[0]
    assert weights_path(first, tmp_path, 32) == path and not path.exists()


def test_random_weights_are_the_same_network_in_every_process_and_differ_between_models(tmp_path):
    """allow_random_weights: a worker builds a model from its entry alone, in whatever order its jobs come; the
    predict record of a model and its teacher role in a transfer job (often another worker), or a CPU and a GPU
    run of one sweep, must see one network. Building never moves the caller's random stream."""
    spec = ZooSpec(source="timm", models=("resnet10t", "resnet14t"), allow_random_weights=True)
    a, b = resolve_zoo(spec, tmp_path, num_classes=5, image_size=32)
    assert a.weights is None and b.weights is None
    torch.manual_seed(0)
    first = create(a).state_dict()
    torch.manual_seed(1)  # another process, another history of draws
    create(b)
    again = create(a).state_dict()
    assert all(torch.equal(first[k], again[k]) for k in first)
    torch.manual_seed(2)
    before = torch.rand(3)
    torch.manual_seed(2)
    create(a)
    assert torch.equal(torch.rand(3), before)
    # two models of one architecture (two names in the zoo) are two networks
    other = dataclasses.replace(a, name="resnet10t-b")
    assert not torch.equal(create(other).state_dict()["conv1.0.weight"], first["conv1.0.weight"])


def test_shipped_weights_are_installed_instead_of_trained(tmp_path, monkeypatch):
    """The package's shipped weights of a recipe (same recipe key) land in the cache instead of a training run;
    a shipped file that does not match the checksum recorded beside it is trained again, not used."""
    import timm

    from zoo_sweep.zoo import digits, tiny_archs  # noqa: F401

    shipped, cache = tmp_path / "shipped", tmp_path / "cache"
    first, second = digits.recipes("micro")[:2]
    state = timm.create_model(first.arch, num_classes=10, **first.model_kwargs()).state_dict()
    built = digits.save_trained(first, tmp_path / "build", 32, state, {"eval_accuracy": 50.0})
    shipped.mkdir()
    for p in (built, built.with_suffix(".json")):
        (shipped / p.name).write_bytes(p.read_bytes())
    monkeypatch.setattr(digits, "SHIPPED", shipped)
    entries = digits.digits_entries("micro", cache, 32)[:2]
    todo, embedded = digits.to_build(entries, "micro", cache, 32)
    assert todo == [second] and embedded == 2
    assert digits.weights_path(first, cache, 32).read_bytes() == built.read_bytes()

    damaged = bytearray(built.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    (shipped / built.name).write_bytes(bytes(damaged))
    digits.weights_path(first, cache, 32).unlink()
    assert digits.to_build(entries, "micro", cache, 32)[0] == [first, second]


@pytest.mark.parametrize("cap, patience, drops, expect", [
    (8, 2, 1, {"epochs": 5, "stopped": "plateau", "lr_drops": 1}),  # 2 epochs flat, drop, 2 more flat: stop
    (3, 5, 2, {"epochs": 3, "stopped": "cap", "lr_drops": 0}),
])
def test_training_to_a_plateau_stops_by_its_rule(tmp_path, cap, patience, drops, expect):
    """A model that cannot improve (learning rate 0, no batch statistics) has its best validation loss after the
    first epoch: the rule then counts `patience` flat epochs before each drop and before it stops."""

    from zoo_sweep.zoo.digits import recipes, train_recipe

    vit = next(r for r in recipes("micro") if r.arch.startswith("vit"))
    frozen = dataclasses.replace(vit, lr=0.0, epochs=cap, patience=patience, lr_drops=drops)
    state, info = train_recipe(frozen, str(tmp_path), 32)
    assert {k: info[k] for k in expect} == expect and info["best_epoch"] == 1
    assert 0 < info["val_accuracy"] < 100
    assert len(info["epoch_sha256"]) == info["epochs"]


def test_a_build_records_each_epochs_weights_and_a_shorter_one_retraces_them(tmp_path):
    """The digests a rebuild check compares: one per epoch, and stopping early changes none of the earlier ones."""
    from zoo_sweep.zoo.digits import recipes, state_digest, train_recipe

    cnn = dataclasses.replace(recipes("micro")[0], train_fraction=0.1)  # a tenth of the images: quick
    state, info = train_recipe(cnn, str(tmp_path), 16)
    assert len(info["epoch_sha256"]) == info["epochs"] == cnn.epochs == 2
    assert state_digest(state) == info["epoch_sha256"][-1] != info["epoch_sha256"][0]
    _, first = train_recipe(cnn, str(tmp_path), 16, epochs=1)
    assert first["epoch_sha256"] == info["epoch_sha256"][:1] and first["epochs"] == 1


def test_the_shipped_zoo_check_names_an_unknown_model_and_builds_nothing(capsys):
    from zoo_sweep.zoo.build_shipped import main

    with pytest.raises(SystemExit) as exit_:
        main(["--check", "--only", "resnet_z"])
    assert exit_.value.code == 2 and "unknown model(s) resnet_z; known: resnet_a" in capsys.readouterr().out


def test_every_default_recipe_ships_weights_made_from_it():
    """A recipe edited without `make digits-weights` would install stale weights under a new name: never."""
    from zoo_sweep.data.sets import DIGITS_VERSION
    from zoo_sweep.zoo.digits import SHIPPED, recipes

    for r in recipes("default"):
        files = sorted(SHIPPED.glob(f"{r.name}-*.pth"))
        assert len(files) == 1, f"{r.name}: {len(files)} shipped weights files"
        info = json.loads(files[0].with_suffix(".json").read_text())
        assert info["recipe"] == json.loads(json.dumps(dataclasses.asdict(r)))
        assert info["digits_version"] == DIGITS_VERSION and 0 < info["eval_accuracy"] <= 100


def test_shipping_the_same_weights_again_leaves_the_shipped_file_as_it_is(tmp_path, monkeypatch):
    """A rebuild that gives the same bits changes only the sidecar; other weights replace the file."""
    from zoo_sweep.paths import write_atomic
    from zoo_sweep.zoo import build_shipped
    from zoo_sweep.zoo.weights import file_sha256

    monkeypatch.setattr(build_shipped, "SHIPPED", tmp_path / "shipped")
    (tmp_path / "shipped").mkdir()
    state = {"w": torch.arange(6.0).reshape(2, 3), "n": torch.tensor(3)}

    def build(state: dict, note: str):
        built = tmp_path / "cache" / "m-0123.pth"
        built.parent.mkdir(exist_ok=True)
        write_atomic(built, lambda tmp: torch.save(state, tmp))  # each save: another archive name and id
        built.with_suffix(".json").write_text(json.dumps({"note": note, "sha256": file_sha256(built)}))
        build_shipped.ship(built, state)
        shipped = tmp_path / "shipped" / built.name
        return shipped.read_bytes(), json.loads(shipped.with_suffix(".json").read_text()), file_sha256(shipped)

    first, info, sha = build(state, "first")
    again, info2, sha2 = build({k: v.clone() for k, v in state.items()}, "second")
    assert again == first and info2 == {"note": "second", "sha256": sha} and sha2 == sha
    other, info3, sha3 = build({**state, "w": state["w"] + 1}, "third")
    assert other != first and info3["sha256"] == sha3 != sha
