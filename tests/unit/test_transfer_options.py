"""The recipe options of the training loop against the reference code's behaviour, on real tiny timm models:
what a frozen model sees under inputs = "student" (the reference's ``norm_batch`` on the student's crop), the
teacher's BatchNorm under teacher_bn = "train", the learning rate under lr_scaling = "linear", and which
transfer-rate columns a run's rows carry."""

import copy
import dataclasses

import numpy as np
import pytest
import timm
import torch
from tiny import CFG, cnn, correct, digits_slices, mlp, one_thread  # noqa: F401  (one_thread: autouse)
from torchvision import transforms

from zoo_sweep.data.images import model_input
from zoo_sweep.transfer.result_metrics import TRANSFER_METRICS
from zoo_sweep.transfer.train import (
    RunOptions,
    TransferJob,
    TransferParams,
    TransferRun,
    _Frozen,
    input_cfg,
    run_transfer,
    student_geometry,
)

HP = TransferParams(epochs=1, batch_size=32, lr=0.05)
# a teacher with its own resolution, crop and normalisation
T_CFG = dict(input_size=(3, 24, 24), mean=(0.4, 0.3, 0.2), std=(0.2, 0.25, 0.3), crop_pct=0.875,
             interpolation="bicubic")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return digits_slices(tmp_path_factory.mktemp("cache"), 64, 48)


def make_run(data, method="kl", hp=HP, teacher=None, t_cfg=CFG, **opts):
    tr, ev = data
    teacher = teacher if teacher is not None else mlp()
    job = TransferJob(cnn(), teacher, method, hp, 0, tr, ev, CFG, t_cfg, correct(cnn(), ev),
                      np.ones(len(ev), dtype=bool))
    return TransferRun(job, RunOptions(**opts))


def ref_norm_batch(batch, cfg):  # dist_utils.norm_batch
    norm = transforms.Normalize(mean=np.array(cfg["mean"]), std=np.array(cfg["std"]))
    return norm(torch.div(batch, 255))


class Recording(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model, self.seen = model, []

    def forward(self, x):
        self.seen.append(x)
        return self.model(x)


def test_student_inputs_give_every_model_the_students_crop_with_its_own_mean_and_std(data):
    teacher = Recording(cnn(3))
    hp = dataclasses.replace(HP, inputs="student", augment="none")
    run = make_run(data, teacher=teacher, t_cfg=T_CFG, hp=hp)
    b = torch.arange(8)
    x = run.batch_images(b, b)
    assert x.dtype == torch.uint8 and x.shape[-1] == CFG["input_size"][-1]  # decoded at the student's size
    assert torch.equal(x, student_geometry(data[0].images[b], CFG, "cpu"))
    run.frozen_logits(x, slice(0, 8), _Frozen(None, None), _Frozen(None, None))
    assert torch.allclose(teacher.seen[-1], ref_norm_batch(x.float(), T_CFG), atol=1e-6)
    # "own": the teacher's own resolution and crop from the cached images
    own = make_run(data, teacher=Recording(cnn(3)), t_cfg=T_CFG, hp=dataclasses.replace(hp, inputs="own"))
    x = own.batch_images(b, b)
    own.frozen_logits(x, slice(0, 8), _Frozen(None, None), _Frozen(None, None))
    assert own.teachers[0].seen[-1].shape[-1] == 24


def test_student_inputs_refuse_a_teacher_of_fixed_size_with_one_line(data):
    from zoo_sweep.errors import UserError

    fixed = timm.create_model("tiny_mixer", num_classes=10, patch_size=4, embed_dim=16, num_blocks=1, img_size=24)
    run = make_run(data, teacher=fixed, t_cfg=T_CFG, hp=dataclasses.replace(HP, inputs="student"))
    with pytest.raises(UserError, match='inputs = "own"'):
        run.run()


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_teacher_batchnorm_mode_for_cd(data, mode):
    teacher = cnn(4)
    run = make_run(data, method="cd", teacher=teacher, hp=dataclasses.replace(HP, teacher_bn=mode))
    assert teacher.training == (mode == "train") and not run.job.student.training
    x = run.batch_images(torch.arange(16), torch.arange(16))
    twin = copy.deepcopy(teacher)
    inp = model_input(x, input_cfg(run.hp.inputs, CFG, x))
    with torch.no_grad():
        expected = twin.forward_head(twin.forward_features(inp), pre_logits=True)
        eval_twin = copy.deepcopy(teacher).eval()
        in_eval = eval_twin.forward_head(eval_twin.forward_features(inp), pre_logits=True)
    before = copy.deepcopy(teacher.state_dict())
    _, f_t, _ = run.frozen_logits(x, slice(0, 16), _Frozen(None, None), _Frozen(None, None))
    assert torch.allclose(f_t, expected, atol=1e-6)
    assert torch.allclose(f_t, in_eval, atol=1e-6) == (mode == "eval")
    moved = any(not torch.equal(before[k], v) for k, v in teacher.state_dict().items() if "running" in k)
    assert moved == (mode == "train")  # train mode also moves the running statistics, as the reference's did


@pytest.mark.parametrize("method, field", [("kl", "lr"), ("xekl_mcl", "mcl_lr")])
def test_linear_lr_scaling_multiplies_by_batch_over_256(data, method, field):
    for scaling, factor in (("linear", 32 / 256), ("none", 1.0)):
        run = make_run(data, method=method, hp=dataclasses.replace(HP, lr_scaling=scaling))
        assert run.opt.param_groups[0]["lr"] == pytest.approx(getattr(HP, field) * factor)


def test_rows_carry_every_column_of_the_store(data):
    tr, ev = data
    teacher = mlp()
    job = TransferJob(cnn(), teacher, "kl", HP, 0, tr, ev, CFG, CFG, correct(cnn(), ev), correct(teacher, ev))
    rows = run_transfer(job)
    assert set(rows[0]) == {*TRANSFER_METRICS, "epoch"}


def test_the_speed_options_reach_the_optimizer_and_the_forward_pass(data):
    """[run] fused_optimizer and compile as a run gets them (their numerics: integration/test_transfer_speed.py)."""
    from zoo_sweep.transfer.train import _logits, forward_pass

    assert make_run(data, fused=True).opt.defaults["fused"] is True
    assert not make_run(data).opt.defaults["fused"]
    assert forward_pass(False, False) is _logits
    compiled = forward_pass(False, True)  # made, not called: calling it would build C++ kernels
    assert compiled is not _logits and compiled is forward_pass(False, True)  # one per process: graphs are shared
    assert forward_pass(True, True) is not compiled
