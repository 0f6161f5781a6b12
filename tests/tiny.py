"""Tiny real timm models and digits slices for the training-loop tests (no Ray, one thread)."""

import dataclasses

import pytest
import timm
import torch

from zoo_sweep import tiny_archs  # noqa: F401  (registers tiny_mixer)
from zoo_sweep.data import load_image_set
from zoo_sweep.predict import predict

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
    def cut(s, n):
        return dataclasses.replace(s, images=s.images[:n], labels=s.labels[:n], source_ids=s.source_ids[:n])

    return (cut(load_image_set("digits:transfer", 32, cache), n_transfer),
            cut(load_image_set("digits:eval", 32, cache), n_eval))


def cnn(seed=1):
    torch.manual_seed(seed)
    return timm.create_model("resnet10t", num_classes=10, channels=(8, 16, 24, 32), stem_width=8).eval()


def mlp(seed=2):
    torch.manual_seed(seed)
    return timm.create_model("tiny_mixer", num_classes=10, patch_size=4, embed_dim=16, num_blocks=1,
                             img_size=16).eval()


def correct(model, ev):
    return predict(model, ev, CFG, topk=1)["pred"] == ev.labels.numpy()
