"""Issue 3 at zoo scale: timm registry selection, dry-run plans away from the data, plan-time head checks,
parameter-count caching, checksummed prediction records, bad eval folders, and the concentration panel."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from zoo_sweep.config.spec import parse_spec
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


def test_a_head_that_does_not_fit_the_eval_classes_is_rejected_at_plan_time(tmp_path):
    from zoo_sweep.pipeline.plan import make_plan

    spec = parse_spec({"name": "x", "zoo": {"source": "timm", "models": ["resnet10t.c3_in1k", "resnet14t.c3_in1k"]},
                       "data": {"eval": "digits:eval", "transfer": "digits:transfer"}, "transfer": {"methods": []}})
    with pytest.raises(UserError, match=r"resnet10t\.c3_in1k \(1000 classes\).*10 classes of digits:eval"):
        make_plan(spec, Paths(tmp_path))
    # the digits zoo always has 10 outputs: an image folder with 3 classes does not fit it
    root = tmp_path / "val"
    for c in ("a", "b", "c"):
        (root / c).mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / c / "0.png")
    spec = parse_spec({"name": "y", "zoo": {"source": "digits", "recipe": "micro"},
                       "data": {"eval": f"imagefolder:{root}", "transfer": f"imagefolder:{root}"}})
    with pytest.raises(UserError, match=r"\(10 classes\).*the 3 classes of imagefolder:"):
        make_plan(spec, Paths(tmp_path))
