"""Your own zoo, end to end, as a researcher brings it: an ImageFolder of 32 x 32 PNGs and checkpoints fine-tuned
on it (in this session, seconds each on the CPU) at their own preprocessing, in the layouts people save them:

- cnn-seed1, cnn-seed2: one architecture, two seeds (a plain state dict; a DDP {"model": {"module.*"}} wrapper)
- vit32: a ViT built with img_size=32 / patch_size=8 (constructor kwargs), ImageNet mean/std (safetensors)
- cnn-hf: a folder written by timm's save_for_hf (config.json + model.safetensors) at 28 px with crop_pct
  0.875, found through checkpoint_dirs with no table at all
- cnn-seed1-badprep: cnn-seed1's weights under a preprocessing that destroys the input: chance level

The zoo is built by docs/examples/own_zoo.py, the script the docs give users (plain torch and timm, no zoo-sweep).
plan -> launch -> report run through the CLI on the session's Ray cluster; the stored accuracies must equal an
evaluation written without the tool, with each model's training preprocessing.
"""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from conftest import ROOT, run_cli

CLASSES = 10


def _example():
    spec = importlib.util.spec_from_file_location("own_zoo_example", ROOT / "docs" / "examples" / "own_zoo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


EXAMPLE = _example()


def accuracy(model, prep, x, y) -> float:
    with torch.no_grad():
        return float((model(EXAMPLE.preprocess(x, **prep)).argmax(1) == y).double().mean() * 100)


SPEC = """
name = "own-zoo"

[zoo]
checkpoint_dirs = ["{ckpt}/folders/*"]

[zoo.defaults]
arch = "resnet10t"
data = {{ input_size = [3, 32, 32], mean = [0.5, 0.5, 0.5], std = [0.5, 0.5, 0.5], crop_pct = 1.0 }}

[zoo.model.cnn-seed1]
checkpoint = "{ckpt}/cnn-seed1.pth"
kwargs = {{ channels = [8, 16, 24, 32], stem_width = 8 }}

[zoo.model.cnn-seed2]
checkpoint = "{ckpt}/cnn-seed2.pth"
kwargs = {{ channels = [8, 16, 24, 32], stem_width = 8 }}

[zoo.model.vit32]
arch = "vit_tiny_patch16_224"
checkpoint = "{ckpt}/vit32.safetensors"
kwargs = {{ img_size = 32, patch_size = 8, embed_dim = 64, depth = 2, num_heads = 2 }}
data = {{ mean = [0.485, 0.456, 0.406], std = [0.229, 0.224, 0.225] }}

[zoo.model.cnn-seed1-badprep]
checkpoint = "{ckpt}/cnn-seed1.pth"
kwargs = {{ channels = [8, 16, 24, 32], stem_width = 8 }}
data = {{ mean = [1.0, 1.0, 1.0], std = [10.0, 10.0, 10.0] }}

[data]
eval = "imagefolder:{data}/val"
transfer = "imagefolder:{data}/train"
image_size = 32

[pairs]
policy = "explicit"
students = ["cnn-seed2"]
teachers = ["vit32"]

[transfer]
methods = ["kl_dp"]
controls = []
epochs = 1
batch_size = 128

[run]
max_retries = 0
"""


@pytest.fixture(scope="module")
def own_zoo(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two threads on two busy cores spin against each other and Ray: 10x slower
    try:
        return _build_own_zoo(tmp_path_factory.mktemp("own-zoo"))
    finally:
        torch.set_num_threads(threads)


def _build_own_zoo(root):
    data, ckpt = root / "data", root / "ckpt"
    models = EXAMPLE.build(root)
    vx, vy = EXAMPLE.read_split(data / "val")
    spec = root / "own-zoo.toml"
    spec.write_text(SPEC.format(ckpt=ckpt, data=data))
    expected = {name: accuracy(m, prep, vx, vy) for name, (m, prep) in models.items()}
    return {"spec": spec, "db": f"sqlite:///{root / 'zoo.db'}", "home": str(root / "home"), "root": root,
            "expected": expected}


def test_plan_launch_report_store_each_models_own_accuracy(own_zoo, ray_address):
    z = own_zoo
    cli = ("--db", z["db"], "--home", z["home"])
    r = run_cli(*cli, "plan", str(z["spec"]))
    assert r.returncode == 0, r.stderr
    r = run_cli(*cli, "launch", str(z["spec"]), "--address", ray_address, "--no-progress", timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ran 5 predict, 1 compare, 1 transfer" in r.stdout
    # the warning names the model and says what to check; the sweep still ran
    assert "warning: cnn-seed1-badprep: accuracy 10.0 % = chance for 10 classes: check its preprocessing" in r.stderr
    assert "chance" not in r.stderr.replace("cnn-seed1-badprep: accuracy 10.0 % = chance", "")

    from zoo_sweep.storage.store import Store

    store = Store(z["db"])
    models = store.table("models").set_index("name")
    assert sorted(models.index) == sorted([*z["expected"], "cnn-seed1-badprep"])
    for name, want in z["expected"].items():
        assert want > 50, (name, want)  # fine-tuned for real: far above chance
        assert models.loc[name, "accuracy"] == pytest.approx(want, abs=0.1), name
    assert models.loc["cnn-seed1-badprep", "accuracy"] == pytest.approx(100 / CLASSES, abs=1e-9)
    assert models.loc["vit32", "family"] == "transformer" and models.loc["cnn-hf", "arch"] == "resnet10t"
    pairs = store.table("pairs")
    assert len(pairs) == 5 * 4 and {"cnn-seed1", "cnn-seed2"} <= set(pairs["student"])  # aliases everywhere
    res = store.table("transfer_results")
    final = res[res["final"]]
    assert list(zip(final["student"], final["teacher"])) == [("cnn-seed2", "vit32")]
    assert final["s0_acc"].iloc[0] == pytest.approx(z["expected"]["cnn-seed2"], abs=0.1)

    out = z["root"] / "report"
    r = run_cli(*cli, "report", str(z["spec"]), "--out", str(out))
    assert r.returncode == 0, r.stderr
    line = "Check cnn-seed1-badprep: accuracy 10.0 % = chance for 10 classes: check its preprocessing."
    assert line in r.stdout and line in (out / "summary.md").read_text()
    assert "cnn-seed1-badprep" in (out / "report.html").read_text()


def test_changing_one_models_preprocessing_reruns_exactly_its_jobs(own_zoo, ray_address):
    """The same zoo with one alias's preprocessing fixed, as a second sweep on the same store: job ids carry
    each model's full definition, so only the changed model's predict job (and the compare) run, and the
    launch warns that the name's results in the store change."""
    z = own_zoo
    cli = ("--db", z["db"], "--home", z["home"])
    spec = z["spec"].read_text().replace('name = "own-zoo"', 'name = "own-zoo-fixed"')
    spec = spec.replace("data = { mean = [1.0, 1.0, 1.0], std = [10.0, 10.0, 10.0] }",
                        "data = { std = [0.5, 0.5, 0.5] }")
    changed = z["root"] / "own-zoo-fixed.toml"
    changed.write_text(spec)
    r = run_cli(*cli, "launch", str(changed), "--address", ray_address, "--no-progress", timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ran 1 predict, 1 compare in" in r.stdout and "reused 4 prediction records, 1 transfer jobs" in r.stdout
    assert "chance" not in r.stderr
    # the name now stands for another model than the store measured: said once, before anything is written
    assert r.stderr.count("warning: cnn-seed1-badprep: the store holds this name on imagefolder:") == 1
    from zoo_sweep.storage.store import Store

    acc = Store(z["db"]).table("models").set_index("name")["accuracy"]
    assert acc["cnn-seed1-badprep"] == pytest.approx(z["expected"]["cnn-seed1"], abs=0.1)  # cnn-seed1 again
    jobs = json.loads(run_cli(*cli, "query", "select count(*) as n from jobs where kind = 'predict'",
                              "-f", "json").stdout)
    assert jobs == [{"n": 6}]  # the alias's old and new definitions each keep their own job


def test_a_truncated_checkpoint_stops_the_launch_in_one_line_before_anything_is_written(own_zoo, ray_address):
    z = own_zoo
    cut = z["root"] / "ckpt" / "cut.pth"
    data = (z["root"] / "ckpt" / "cnn-seed2.pth").read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    spec = z["spec"].read_text().replace('name = "own-zoo"', 'name = "own-zoo-cut"')
    spec = spec.replace("cnn-seed2.pth", "cut.pth")
    path = z["root"] / "own-zoo-cut.toml"
    path.write_text(spec)
    db = z["root"] / "cut.db"
    r = run_cli("--db", f"sqlite:///{db}", "--home", z["home"], "launch", str(path), "--address", ray_address,
                "--no-progress")
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot use the weights ") and "truncated" in lines[0]
    assert "[zoo.model.cnn-seed2]" in lines[0]  # names the table to fix
    assert not db.exists() or "own-zoo-cut" not in db.read_bytes().decode("latin-1")
