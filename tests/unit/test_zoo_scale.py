"""Issue 3 at zoo scale: timm registry selection, dry-run plans away from the data, plan-time head checks,
parameter-count caching, checksummed prediction records, bad eval folders, and the concentration panel."""

from __future__ import annotations

import fnmatch
import warnings
import zipfile

import numpy as np
import pytest
from PIL import Image

from zoo_sweep.config.spec import ZooSpec
from zoo_sweep.errors import UserError
from zoo_sweep.paths import Paths

FLIPS = """
name = "flips"
[zoo]
source = "timm"
models = {models}
num_classes = 1000
[data]
eval = "imagefolder:{eval}"
transfer = "imagefolder:{eval}"
image_size = 64
[transfer]
methods = []
"""


def spec_and_path(tmp_path, models=("resnet10t.c3_in1k", "resnet14t.c3_in1k"), eval_dir=None):
    text = FLIPS.format(models=list(models).__repr__().replace("'", '"'), eval=eval_dir or tmp_path / "no-such-val")
    path = tmp_path / "flips.toml"
    path.write_text(text)
    from zoo_sweep.config.spec import load_spec

    return load_spec(path), path


def test_measure_only_spec_plans_no_transfer_jobs_away_from_the_data(tmp_path):
    from zoo_sweep.pipeline.plan import make_plan

    spec, _ = spec_and_path(tmp_path)
    assert spec.transfer.methods == ()
    plan = make_plan(spec, Paths(tmp_path / "home"), dry_run=True)
    assert plan.num_classes == 1000 and plan.transfer_jobs == []
    assert len(plan.predict_jobs) == 2 and all(v > 1e6 for v in plan.params.values())
    with pytest.raises(UserError, match="image folder not found"):  # a real plan (or launch) needs the data
        make_plan(spec, Paths(tmp_path / "home"))


def test_cli_dry_run_of_the_zoo_flip_spec_summarises_by_family(tmp_path, capsys):
    from zoo_sweep.cli.main import main

    _, path = spec_and_path(tmp_path, models=("resnet1*t.c3_in1k", "vit_tiny_patch16_224.augreg_in21k_ft_in1k",
                                      "resmlp_12_224.fb_in1k"))
    try:
        rc = main(["--home", str(tmp_path / "home"), "--db", f"sqlite:///{tmp_path / 'zoo.db'}", "plan", str(path),
                   "--dry-run"])
    except SystemExit as e:  # typer's standalone mode
        rc = e.code
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "measure-only spec: [transfer] methods = []" in text and "not reachable" in text
    assert "dry run: nothing written" in text and "ordered pairs measured: 12" in text  # 4 models
    assert not (tmp_path / "zoo.db").exists()


def test_the_shipped_flip_study_spec_is_valid_and_selects_the_in1k_tags():
    import timm

    from zoo_sweep.config.spec import load_spec
    from zoo_sweep.zoo.models import select_names

    spec = load_spec("jobs/imagenet-zoo-flips.toml")
    assert spec.transfer.methods == () and spec.zoo.num_classes == 1000 and spec.pairs.policy == "all"
    names = select_names(sorted(timm.list_models(pretrained=True)), spec.zoo.models, spec.zoo.exclude)
    assert len(names) > 1200 and all(n.endswith("in1k") and not n.startswith("test_") for n in names)


def test_misspelled_timm_pattern_suggests_close_names(tmp_path):
    from zoo_sweep.zoo.models import resolve_zoo

    with pytest.raises(UserError, match=r"unknown model 'resnet50\.a1_in1kk'.*did you mean .*resnet50\.a1_in1k"):
        resolve_zoo(ZooSpec(source="timm", models=("resnet50.a1_in1kk", "resnet18.a1_in1k")), tmp_path, 1000, 224)


def test_head_sizes_come_from_the_pretrained_tags(tmp_path):
    from zoo_sweep.zoo.models import head_classes

    spec = ZooSpec(source="timm")
    assert head_classes("resnet50.a1_in1k", spec, 10) == 1000
    assert head_classes("resnet50", spec, 10) == 10  # a bare architecture: local or random weights
    assert head_classes("resnet50.a1_in1k", ZooSpec(source="timm", num_classes=7), 10) == 7


def test_families_cover_the_registry():
    import timm

    from zoo_sweep.zoo.models import FAMILIES, family_of

    tags = [n for n in timm.list_models(pretrained=True) if fnmatch.fnmatchcase(n, "*.*in1k")]
    fams = {n: family_of(n) for n in tags}
    assert set(fams.values()) == set(FAMILIES)
    counts = {f: sum(v == f for v in fams.values()) for f in FAMILIES}
    assert min(counts.values()) >= 20, counts
    for name, fam in {"efficientvit_b0.r224_in1k": "transformer", "caformer_s18.sail_in1k": "transformer",
                      "convformer_s18.sail_in1k": "cnn", "repvit_m1.dist_in1k": "cnn", "gmixer_24_224.ra3_in1k": "mlp",
                      "convmixer_768_32.in1k": "cnn", "resnet50.a1_in1k": "cnn", "mambaout_tiny.in1k": "cnn",
                      "deit_small_patch16_224.fb_in1k": "transformer", "resmlp_12_224.fb_in1k": "mlp",
                      "convnext_large_mlp.clip_laion2b_augreg_ft_in1k_384": "cnn",
                      "maxvit_rmlp_nano_rw_256.sw_in1k": "transformer", "poolformer_s12.sail_in1k": "mlp",
                      "vit_base_patch16_224.augreg_in21k_ft_in1k": "transformer", "mixer_b16_224": "mlp",
                      "tiny_resmlp": "mlp", "convnext_tiny": "cnn"}.items():
        assert fams.get(name, family_of(name)) == fam, name
    # every name that says ViT / former / MLP / Mixer is not filed as a CNN unless it is a known look-alike
    for n, f in fams.items():
        base = n.split(".")[0]
        if any(p in base for p in ("vit", "former", "mixer")) and not base.startswith(
                ("repvit", "convformer", "convmixer")):
            assert f != "cnn", n


def test_param_counts_use_the_table_then_a_disk_cache(tmp_path, monkeypatch):
    from zoo_sweep.zoo import models as zoo
    from zoo_sweep.zoo.models import ModelEntry, count_params, param_counts

    tag = ModelEntry("resnet10t.c3_in1k", "resnet10t.c3_in1k", "cnn", "hub", num_classes=1000)
    odd = ModelEntry("resnet10t", "resnet10t", "cnn", None, kwargs={"drop_rate": 0.1}, num_classes=7)
    want = {tag.name: count_params(tag), odd.name: count_params(odd)}
    assert param_counts([tag, odd], tmp_path) == want
    assert list((tmp_path / "params").glob("timm-*.json"))  # the odd one was built once and cached

    def no_builds(entry):
        raise AssertionError(f"built {entry.name} again")

    monkeypatch.setattr(zoo, "count_params", no_builds)
    assert param_counts([tag, odd], tmp_path) == want
    (next((tmp_path / "params").glob("timm-*.json"))).write_text("{not json")  # a damaged cache is rebuilt
    monkeypatch.undo()
    assert param_counts([odd], tmp_path) == {odd.name: want[odd.name]}


def _record(n=50, k=5, seed=0):
    rng = np.random.default_rng(seed)
    return {"pred": rng.integers(0, 10, n).astype(np.int32), "p_true": rng.random(n).astype(np.float32),
            "p_max": rng.random(n).astype(np.float32), "topk_idx": rng.integers(0, 10, (n, k)).astype(np.int32),
            "topk_logits": rng.normal(size=(n, k)).astype(np.float32)}


def test_records_are_checksummed_and_damage_is_detected(tmp_path):
    from zoo_sweep.science.records import (
        RECORD_FIELDS,
        load_record,
        record_checksum,
        save_record,
    )

    rec = _record()
    path = tmp_path / "r.npz"
    save_record(path, rec)
    back = load_record(path)
    assert back is not None and all(np.array_equal(back[f], rec[f]) for f in RECORD_FIELDS)

    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])  # truncated (a full disk, a killed copy)
    assert load_record(path) is None

    # consistent zip, wrong content: an array changed but the stored checksum is the old one
    bad = dict(rec, pred=rec["pred"].copy())
    bad["pred"][3] += 1
    np.savez_compressed(path, **bad, checksum=np.array(record_checksum(rec)))
    assert load_record(path) is None
    np.savez_compressed(path, **rec)  # written without a checksum (older code): not trusted, recomputed
    assert load_record(path) is None
    save_record(path, rec)
    with zipfile.ZipFile(path) as z:
        assert "checksum.npy" in z.namelist()
    assert load_record(tmp_path / "missing.npz") is None


def test_unreadable_images_are_counted_and_reported(tmp_path):
    from zoo_sweep.data.images import load_image_set

    root = tmp_path / "val"
    for c in ("n01", "n02"):
        (root / c).mkdir(parents=True)
        Image.fromarray(np.full((20, 20, 3), 50, np.uint8)).save(root / c / "ok.png")
    (root / "n01" / "bad.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    (root / "n02" / "empty.png").write_bytes(b"")
    with pytest.warns(UserWarning, match="2 unreadable image file"):
        s = load_image_set(f"imagefolder:{root}", 16, tmp_path / "cache")
    assert s.skipped == 2 and len(s) == 2
    with warnings.catch_warnings(record=True) as caught:  # from the cache too (the launcher's compare stage)
        warnings.simplefilter("always")
        load_image_set(f"imagefolder:{root}", 16, tmp_path / "cache")
    assert any("2 unreadable" in str(w.message) for w in caught)


def test_eval_folders_without_images_fail_at_plan_time(tmp_path):
    from zoo_sweep.data.sets import num_classes_of

    root = tmp_path / "val"
    root.mkdir()
    with pytest.raises(UserError, match="no class sub-folders"):
        num_classes_of(f"imagefolder:{root}", None)
    (root / "n01").mkdir()
    (root / "n01" / "notes.txt").write_text("no images here")
    with pytest.raises(UserError, match="no images under"):
        num_classes_of(f"imagefolder:{root}", None)
