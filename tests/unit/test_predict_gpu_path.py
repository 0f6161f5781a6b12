"""The predict stage's batch size: "auto" in specs, the out-of-memory search, and unchanged CPU records.

There is no GPU here: a test double that raises torch.cuda.OutOfMemoryError above some batch size stands in for
one, which is all the search sees of a GPU. No Ray.
"""

import json

import numpy as np
import pytest
import torch
from tiny import cnn, one_thread  # noqa: F401  (one_thread: autouse)

from zoo_sweep.config.spec import load_spec, parse_spec
from zoo_sweep.data.images import ImageSet, model_input
from zoo_sweep.errors import UserError
from zoo_sweep.science.records import RECORD_FIELDS, fit_batch_size, predict

CFG = dict(input_size=(3, 16, 16), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), crop_pct=0.9,
           interpolation="bicubic")


class FakeGpu:
    """Stands in for a GPU (none exists here): a batch larger than `fits` raises CUDA out-of-memory."""

    def __init__(self, fits: int):
        self.fits, self.tried = fits, []

    def __call__(self, size: int):
        self.tried.append(size)
        if size > self.fits:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory (batch {size})")
        return f"ran at {size}"


# ---------------------------------------------------------------- the search
def test_halves_until_it_fits_and_returns_the_run():
    gpu = FakeGpu(fits=200)
    assert fit_batch_size(gpu, 1024) == (128, "ran at 128")
    assert gpu.tried == [1024, 512, 256, 128]  # the largest power of two that fits


def test_a_start_that_fits_runs_once_and_writes_nothing(tmp_path):
    gpu, memo = FakeGpu(fits=4096), tmp_path / "sizes.json"
    assert fit_batch_size(gpu, 1024, memo, "m|H100|224") == (1024, "ran at 1024")
    assert gpu.tried == [1024]
    assert not memo.exists()  # nothing learnt: the next call starts at the top anyway


def test_out_of_memory_at_batch_one_is_raised():
    with pytest.raises(torch.cuda.OutOfMemoryError):
        fit_batch_size(FakeGpu(fits=0), 8)


def test_remembers_and_reuses_per_key(tmp_path):
    memo = tmp_path / "cache" / "predict_batch_sizes.json"
    fit_batch_size(FakeGpu(fits=300), 1024, memo, "resnet50|H100|224")
    assert json.loads(memo.read_text()) == {"resnet50|H100|224": 256}

    again = FakeGpu(fits=300)
    assert fit_batch_size(again, 1024, memo, "resnet50|H100|224")[0] == 256
    assert again.tried == [256]  # used directly, no search

    other = FakeGpu(fits=100)  # another model (or GPU type, or input size) has its own entry
    assert fit_batch_size(other, 1024, memo, "vit_base|H100|224")[0] == 64
    assert other.tried == [1024, 512, 256, 128, 64]
    assert json.loads(memo.read_text()) == {"resnet50|H100|224": 256, "vit_base|H100|224": 64}


def test_a_remembered_size_that_now_fails_is_halved_and_updated(tmp_path):
    memo = tmp_path / "sizes.json"
    memo.write_text(json.dumps({"resnet50|H100|224": 256, "other|A100|224": 32}))
    gpu = FakeGpu(fits=100)  # another process took memory since
    assert fit_batch_size(gpu, 1024, memo, "resnet50|H100|224")[0] == 64
    assert gpu.tried == [256, 128, 64]
    assert json.loads(memo.read_text()) == {"resnet50|H100|224": 64, "other|A100|224": 32}
    assert not list(tmp_path.glob("*.tmp*"))  # written atomically through a temporary file


def test_a_small_start_caps_the_remembered_size_without_lowering_it(tmp_path):
    memo = tmp_path / "sizes.json"
    memo.write_text(json.dumps({"m|H100|224": 512}))
    gpu = FakeGpu(fits=4096)
    assert fit_batch_size(gpu, 16, memo, "m|H100|224")[0] == 16  # a set of 10 images: one batch of 16 at most
    assert json.loads(memo.read_text()) == {"m|H100|224": 512}


def test_an_unreadable_memo_is_ignored_and_replaced(tmp_path):
    memo = tmp_path / "sizes.json"
    memo.write_text("{half a file")
    assert fit_batch_size(FakeGpu(fits=600), 1024, memo, "m|H100|224")[0] == 512
    assert json.loads(memo.read_text()) == {"m|H100|224": 512}


# ---------------------------------------------------------------- the spec
@pytest.mark.parametrize("value", ["auto", 1, 64, 1000])
def test_predict_batch_size_accepts_auto_and_positive_ints(value):
    assert parse_spec({"name": "x", "run": {"predict_batch_size": value}}).run.predict_batch_size == value


def test_predict_batch_size_defaults_to_auto(tmp_path):
    assert parse_spec({"name": "x"}).run.predict_batch_size == "auto"
    f = tmp_path / "s.toml"
    f.write_text('name = "s"\n[run]\npredict_batch_size = "auto"\n')
    assert load_spec(f).run.predict_batch_size == "auto"
    f.write_text('name = "s"\n[run]\npredict_batch_size = 128\n')
    assert load_spec(f).run.predict_batch_size == 128


@pytest.mark.parametrize("value", [0, -8, 1.5, "big", "AUTO", True, [256]])
def test_predict_batch_size_rejects_anything_else(value):
    with pytest.raises(UserError) as e:
        parse_spec({"name": "x", "run": {"predict_batch_size": value}})
    msg = str(e.value)
    assert "predict_batch_size" in msg and "auto" in msg and "\n" not in msg


# ---------------------------------------------------------------- predict on the CPU
@pytest.fixture(scope="module")
def tiny():
    model = cnn(0)
    g = torch.Generator().manual_seed(1)
    n = 300  # more than one batch of 256
    images = ImageSet("random", torch.randint(0, 256, (n, 3, 20, 20), dtype=torch.uint8, generator=g),
                      torch.randint(0, 10, (n,), generator=g), [str(i) for i in range(10)], torch.arange(n))
    return model, images


@torch.no_grad()
def reference(model, images, cfg, batch_size, topk):
    """The plain loop predict ran before the GPU path: float32, one .cpu() per batch."""
    parts = {f: [] for f in RECORD_FIELDS}
    for s in range(0, len(images), batch_size):
        x = model_input(images.images[s:s + batch_size], cfg, "cpu")
        y = images.labels[s:s + batch_size]
        logits = model(x).float()
        prob = logits.softmax(dim=1)
        p_max, pred = prob.max(dim=1)
        top_logits, top_idx = logits.topk(topk, dim=1)
        for f, v in zip(RECORD_FIELDS, (pred, prob.gather(1, y.view(-1, 1)).squeeze(1), p_max, top_idx, top_logits)):
            parts[f].append(v.cpu())
    rec = {f: torch.cat(v).numpy() for f, v in parts.items()}
    return {**rec, "pred": rec["pred"].astype(np.int32), "topk_idx": rec["topk_idx"].astype(np.int32),
            "p_true": rec["p_true"].astype(np.float32)}


def assert_same_record(a, b):
    for f in RECORD_FIELDS:
        assert a[f].dtype == b[f].dtype and a[f].shape == b[f].shape, f
        np.testing.assert_array_equal(a[f], b[f], err_msg=f)  # bit-identical, not merely close


@pytest.mark.parametrize("batch_size, batches", [("auto", [256, 44]), (256, [256, 44]), (64, [64] * 4 + [44])])
def test_cpu_record_is_unchanged(tiny, tmp_path, batch_size, batches):
    model, images = tiny
    memo = tmp_path / "sizes.json"
    seen = []
    hook = model.register_forward_hook(lambda _m, args, _out: seen.append(args[0].shape[0]))
    try:
        rec = predict(model, images, CFG, batch_size, 5, "cpu", memo=memo, name="tiny")
    finally:
        hook.remove()
    assert seen == batches  # "auto" on the CPU means 256
    assert_same_record(rec, reference(model, images, CFG, 256, 5))
    assert rec["pred"].shape == (300,) and rec["topk_logits"].shape == (300, 5)
    assert next(model.parameters()).dtype == torch.float32
    assert not memo.exists()  # "auto" on the CPU is 256: no search, nothing remembered


def test_a_run_restarted_after_out_of_memory_gives_the_same_record(tiny):
    model, images = tiny

    class FitsUpTo64(torch.nn.Module):  # stands in for a model on a GPU that runs out of memory above 64
        def forward(self, x):
            if x.shape[0] > 64:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory")
            return model(x)

    size, rec = fit_batch_size(lambda bs: predict(FitsUpTo64(), images, CFG, bs, 3, "cpu"), 512)
    assert size == 64
    assert_same_record(rec, reference(model, images, CFG, 64, 3))


@pytest.mark.parametrize("bad", [0, -1, "max", 2.0])
def test_predict_rejects_a_bad_batch_size(tiny, bad):
    model, images = tiny
    with pytest.raises(ValueError, match="batch_size"):
        predict(model, images, CFG, bad)
