"""Tiny real timm models and digits slices for the training-loop tests (no Ray, one thread)."""

import pytest
import timm
import torch

from zoo_sweep.data.images import load_image_set
from zoo_sweep.science.records import predict
from zoo_sweep.zoo import tiny_archs  # noqa: F401  (registers tiny_mixer)

CFG = dict(input_size=(3, 16, 16), mean=(0.5,) * 3, std=(0.5,) * 3, crop_pct=1.0, interpolation="bilinear")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # tiny models: thread start-up costs more than it saves, and on a shared 2-core machine two threads per
    # test process oversubscribe the cores (a 0.4 s run took 10 s)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def digits_slices(cache, n_transfer: int, n_eval: int):
    """The first samples of the digits transfer and eval splits."""
    return (load_image_set("digits:transfer", 32, cache).head(n_transfer),
            load_image_set("digits:eval", 32, cache).head(n_eval))


def cnn(seed=1):
    torch.manual_seed(seed)
    return timm.create_model("resnet10t", num_classes=10, channels=(8, 16, 24, 32), stem_width=8).eval()


def mlp(seed=2):
    torch.manual_seed(seed)
    return timm.create_model("tiny_mixer", num_classes=10, patch_size=4, embed_dim=16, num_blocks=1,
                             img_size=16).eval()


def correct(model, ev):
    return predict(model, ev, CFG, topk=1)["pred"] == ev.labels.numpy()


def assert_same_rows(a: list[dict], b: list[dict], rel: float = 1e-6, abs: float = 1e-7) -> None:
    """Every metric of every epoch row of two transfer runs (NaN equals NaN): a run that ends with the same
    student may still number its epochs wrongly or measure against the wrong reference (s0, teacher)."""
    assert [r["epoch"] for r in a] == [r["epoch"] for r in b]
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys()
        for k in ra:
            assert ra[k] == pytest.approx(rb[k], rel=rel, abs=abs, nan_ok=True), (ra["epoch"], k, ra[k], rb[k])
