"""Image sets: the digits split, the decode-once cache, ImageFolder loading, and the per-model transform."""

import numpy as np
import pytest
import torch
from PIL import Image

from zoo_sweep.data.images import augment, load_image_set, model_input
from zoo_sweep.data.sets import count_images
from zoo_sweep.errors import UserError


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return cache, load_image_set("digits:eval", 32, cache), load_image_set("digits:transfer", 32, cache)


def test_digits_split_by_source_image(digits, tmp_path):
    _, ev, tr = digits
    val = load_image_set("digits:val", 32, tmp_path)
    sources = [set(s.source_ids.tolist()) for s in (ev, val, tr)]
    for i in range(3):
        for j in range(i + 1, 3):
            assert sources[i].isdisjoint(sources[j])  # no source digit in two splits
    assert len(set().union(*sources)) == 1797
    assert [len(s) for s in sources] == [719, 180, 898]  # 40 %, 10 %, the rest
    for ref, s in (("digits:eval", ev), ("digits:val", val), ("digits:transfer", tr)):
        assert len(s) == count_images(ref, 32)
    with pytest.raises(UserError, match="splits 'eval', 'val', 'transfer'"):
        load_image_set("digits:test", 32, tmp_path)
    assert ev.images.dtype == torch.uint8 and ev.images.shape[1:] == (3, 32, 32)
    assert sorted(set(ev.labels.tolist())) == list(range(10))


def test_cache_is_reused_and_survives_truncation(digits, monkeypatch):
    from zoo_sweep.data import cache as image_cache

    cache, ev, _ = digits
    folders = [p for p in (cache / "images").iterdir() if p.is_dir()]
    assert len(folders) == 2 and not list((cache / "images").glob("*.pt"))
    built = []
    real_build = image_cache.build
    monkeypatch.setattr(image_cache, "build", lambda *a, **k: built.append(1) or real_build(*a, **k))
    again = load_image_set("digits:eval", 32, cache)
    assert torch.equal(again.images, ev.images) and not built  # mapped, not decoded
    target = next(f for f in folders if np.load(f / "samples.npz")["labels"].shape[0] == len(ev))
    data = target / "images.u8"
    data.write_bytes(data.read_bytes()[:100])  # a run killed while writing
    assert torch.equal(load_image_set("digits:eval", 32, cache).images, ev.images) and built


def test_model_input_follows_the_timm_data_config():
    import timm
    from timm.data import create_transform

    img = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
    cfg = {"input_size": (3, 28, 28), "crop_pct": 0.875, "interpolation": "bilinear",
           "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
    ours = model_input(torch.from_numpy(img).permute(2, 0, 1)[None], cfg)[0]
    ref = create_transform(**cfg, is_training=False)(Image.fromarray(img))
    assert ours.shape == ref.shape == (3, 28, 28)
    # 32 -> resize 32 (no-op) -> centre crop 28 -> normalise: the same pixels as timm's own eval transform
    assert torch.allclose(ours, ref, atol=1e-5)
    assert timm is not None


def test_augment_shifts_without_changing_content():
    x = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
    x[:, :, 3:5, 3:5] = 200
    y = augment(x, torch.Generator().manual_seed(0), max_shift=2)
    assert y.shape == x.shape and y.dtype == torch.uint8
    assert (y.sum(dim=(1, 2, 3)) == x.sum(dim=(1, 2, 3))).all()  # the blob moved, none of it lost
    # each image is its input shifted by at most max_shift in each direction, and some image did move
    moved = 0
    for xi, yi in zip(x, y):
        shifts = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                  if torch.equal(torch.roll(xi, (dy, dx), dims=(1, 2)), yi)]
        assert shifts, "not a shift of the input"
        moved += (0, 0) not in shifts
    assert moved > 0


def test_image_folder_skips_corrupt_files(tmp_path):
    root = tmp_path / "val"
    for c in ("n01", "n02"):
        (root / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((40, 50, 3), 60 * i, np.uint8)).save(root / c / f"{i}.png")
    (root / "n02" / "broken.png").write_bytes(b"not an image")
    with pytest.warns(UserWarning, match="1 unreadable image file"):
        s = load_image_set(f"imagefolder:{root}", 16, tmp_path / "cache")
    assert len(s) == 6 and s.skipped == 1 and s.classes == ["n01", "n02"]
    assert s.images.shape == (6, 3, 16, 16)


def test_empty_image_folder_is_an_error(tmp_path):
    (tmp_path / "val" / "a").mkdir(parents=True)
    (tmp_path / "val" / "a" / "x.png").write_bytes(b"junk")
    with pytest.raises(UserError, match="no readable images"):
        load_image_set(f"imagefolder:{tmp_path / 'val'}", 16, tmp_path / "cache")
