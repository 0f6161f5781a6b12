"""Build a small "own zoo" to try zoo-sweep on: an ImageFolder eval set and four fine-tuned checkpoints saved the
ways people save them, plus the sweep spec that lists them. About two minutes on a laptop CPU.

    python docs/examples/own_zoo.py /tmp/own-zoo
    zoo-sweep launch /tmp/own-zoo/own-zoo.toml
    zoo-sweep report /tmp/own-zoo/own-zoo.toml

What it writes under the folder you give:

    data/train/digit0..digit9/*.png    32 x 32 RGB renderings of scikit-learn's handwritten digits
    data/val/digit0..digit9/*.png      50 per class: the eval set
    ckpt/cnn-seed1.pth                 resnet10t (narrow), seed 1: a plain state dict
    ckpt/cnn-seed2.pth                 the same architecture, seed 2: {"model": {"module.*": ...}} as DDP saves it
    ckpt/vit32.safetensors             a ViT built with img_size=32, patch_size=8 and ImageNet mean/std
    ckpt/folders/cnn-hf/               timm's save_for_hf: config.json + model.safetensors, trained at 28 px
    own-zoo.toml                       the spec (docs/your-own-zoo.md explains every key)

Only torch, timm, scikit-learn and Pillow are used: this is how your own training code would save models.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F

HALF = {"crop": 32, "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
CNN = {"channels": (8, 16, 24, 32), "stem_width": 8}
CNN_HF = {"channels": (8, 16, 32, 48), "stem_width": 8}
VIT = {"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 2}

SPEC = """\
name = "own-zoo"
description = "Four fine-tunes of timm models on 32 px digits, each with its own preprocessing"

[zoo]
# every folder here that holds timm's config.json + model.safetensors is one model, named by the folder
checkpoint_dirs = ["{root}/ckpt/folders/*"]

[zoo.defaults]
# what a model gets unless its checkpoint's config.json or its own table says otherwise
arch = "resnet10t"
data = {{ input_size = [3, 32, 32], mean = [0.5, 0.5, 0.5], std = [0.5, 0.5, 0.5], \
crop_pct = 1.0, interpolation = "bilinear" }}

[zoo.model.cnn-seed1]
checkpoint = "{root}/ckpt/cnn-seed1.pth"
kwargs = {{ channels = [8, 16, 24, 32], stem_width = 8 }}

[zoo.model.cnn-seed2]
checkpoint = "{root}/ckpt/cnn-seed2.pth"
kwargs = {{ channels = [8, 16, 24, 32], stem_width = 8 }}

[zoo.model.vit32]
arch = "vit_tiny_patch16_224"
checkpoint = "{root}/ckpt/vit32.safetensors"
kwargs = {{ img_size = 32, patch_size = 8, embed_dim = 64, depth = 2, num_heads = 2 }}
data = {{ mean = [0.485, 0.456, 0.406], std = [0.229, 0.224, 0.225] }}

[data]
eval = "imagefolder:{root}/data/val"
transfer = "imagefolder:{root}/data/train"
image_size = 32

[pairs]
policy = "all"

[transfer]
methods = ["kl_dp"]
epochs = 2
batch_size = 128
"""


def write_image_folder(root: Path, val_per_class: int = 50) -> None:
    from PIL import Image
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    seen = dict.fromkeys(range(10), 0)
    for i, (x, label) in enumerate(zip(X, y)):
        split = "val" if seen[label] < val_per_class else "train"
        seen[label] += 1
        im = Image.fromarray((x.reshape(8, 8) * 255 / 16).astype(np.uint8)).resize((32, 32), Image.BILINEAR)
        folder = root / split / f"digit{label}"
        folder.mkdir(parents=True, exist_ok=True)
        im.convert("RGB").save(folder / f"{i:04d}.png")


def read_split(folder: Path):
    from PIL import Image

    xs, ys = [], []
    for label, cls in enumerate(sorted(p.name for p in folder.iterdir())):
        for f in sorted((folder / cls).glob("*.png")):
            xs.append(np.asarray(Image.open(f).convert("RGB")))
            ys.append(label)
    return torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2), torch.tensor(ys)


def preprocess(x, crop, mean, std):
    """Scale to [0, 1], centre-crop, normalise: what timm's eval transform does at crop_pct = crop / 32."""
    x = x.float() / 255
    off = (x.shape[-1] - crop) // 2
    x = x[..., off:off + crop, off:off + crop]
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def fine_tune(arch, kwargs, prep, x, y, seed, epochs):
    torch.manual_seed(seed)
    model = timm.create_model(arch, num_classes=10, **kwargs)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    inputs = preprocess(x, **prep)
    model.train()
    for _ in range(epochs):
        for b in torch.randperm(len(y), generator=g).split(64):
            loss = F.cross_entropy(model(inputs[b]), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def build(root: Path) -> dict:
    """Write the ImageFolder under root/data and the four checkpoints under root/ckpt; return each model with
    the preprocessing it was trained with (``{name: (model, prep)}``)."""
    from safetensors.torch import save_file

    write_image_folder(root / "data")
    x, y = read_split(root / "data" / "train")
    ckpt = root / "ckpt"
    ckpt.mkdir(parents=True, exist_ok=True)
    vit = {"crop": 32, **IMAGENET}
    hf = {"crop": 28, **IMAGENET}  # the centre 28 px: timm's crop_pct 0.875 of 32 px, no resampling
    models = {
        "cnn-seed1": (fine_tune("resnet10t", CNN, HALF, x, y, seed=1, epochs=3), HALF),
        "cnn-seed2": (fine_tune("resnet10t", CNN, HALF, x, y, seed=2, epochs=2), HALF),
        "vit32": (fine_tune("vit_tiny_patch16_224", VIT, vit, x, y, seed=3, epochs=8), vit),
        "cnn-hf": (fine_tune("resnet10t", CNN_HF, hf, x, y, seed=4, epochs=2), hf),
    }
    torch.save(models["cnn-seed1"][0].state_dict(), ckpt / "cnn-seed1.pth")
    torch.save({"model": {f"module.{k}": v for k, v in models["cnn-seed2"][0].state_dict().items()}, "epoch": 2},
               ckpt / "cnn-seed2.pth")  # as DDP training scripts save it
    save_file(models["vit32"][0].state_dict(), ckpt / "vit32.safetensors")
    # save_for_hf records the architecture, its constructor arguments and this preprocessing in config.json
    timm.models.save_for_hf(models["cnn-hf"][0], str(ckpt / "folders" / "cnn-hf"), safe_serialization=True,
                            data_config={"input_size": (3, 28, 28), "crop_pct": 0.875, "interpolation": "bilinear",
                                         **IMAGENET})
    return models


def main(root: Path) -> None:
    root = root.expanduser().resolve()
    build(root)
    (root / "own-zoo.toml").write_text(SPEC.format(root=root))
    print(f"wrote {root / 'data'}, {root / 'ckpt'} and {root / 'own-zoo.toml'}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python docs/examples/own_zoo.py FOLDER")
    torch.set_num_threads(min(4, torch.get_num_threads()))
    main(Path(sys.argv[1]))
