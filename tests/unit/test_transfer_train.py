"""The transfer training loop on real (tiny) timm models and a slice of the digits data, no Ray.

For every method and control of the registry: delta = gain - loss on real runs, and resume from an epoch
checkpoint ends with the same metrics as an uninterrupted run. An exploding learning rate ends as Diverged,
MCL keeps its slow weights, and the multi-teacher modes train and number their epochs.
"""

import dataclasses

import numpy as np
import pytest
import torch
from tiny import CFG, assert_same_rows, cnn, correct, digits_slices, mlp, one_thread  # noqa: F401  (one_thread: autouse)

from zoo_sweep.config.params import with_plugins
from zoo_sweep.transfer.catalog import controls, single_teacher
from zoo_sweep.transfer.multi import MultiJob, run_multi
from zoo_sweep.transfer.train import (
    Diverged,
    RunOptions,
    TransferJob,
    TransferParams,
    run_transfer,
)

# every method and control a spec can name, from the registry (an installed plugin's too: single_teacher loads
# the entry points): a method declared there is trained here too
SPEC_METHODS = single_teacher() + controls()
HP = with_plugins(TransferParams)(epochs=2, batch_size=32, lr=0.05, mcl_top_k=0, tau=0.9,
                                  crd_negatives=64)  # a plugin's own keys at their defaults


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return digits_slices(tmp_path_factory.mktemp("cache"), 128, 96)


def _run(method, data, ckpt_dir=None, on_epoch=None, hp=HP, student=None):
    tr, ev = data
    student = student or cnn()
    teacher = mlp()
    job = TransferJob(student, teacher, method, hp, 0, tr, ev, CFG, CFG, correct(cnn(), ev), correct(teacher, ev))
    rows = run_transfer(job, ckpt_dir=ckpt_dir, on_epoch=on_epoch)
    return rows, student


@pytest.mark.parametrize("method", SPEC_METHODS)
def test_delta_is_gain_minus_loss_on_real_runs(method, data):
    rows, student = _run(method, data)
    assert [r["epoch"] for r in rows] == [1, 2]
    for r in rows:
        assert r["delta"] == pytest.approx(r["knowledge_gain"] - r["knowledge_loss"])
        assert r["rho_pos_change"] == pytest.approx(r["rho_pos_after"] - r["rho_pos_before"])
        assert np.isfinite(r["train_loss"]) and 0 <= r["teacher_share"] <= 100
    # the last row describes the student the run leaves behind
    assert rows[-1]["student_acc"] == pytest.approx(correct(student, data[1]).mean() * 100)


class Killed(Exception):
    pass


@pytest.mark.parametrize("method", SPEC_METHODS)
def test_resume_from_an_epoch_checkpoint_gives_the_same_result(method, data, tmp_path):
    straight, s1 = _run(method, data)

    def kill_after_first(epoch, rows):
        if epoch == 1:
            raise Killed

    ckpt = tmp_path / "ckpt"
    with pytest.raises(Killed):
        _run(method, data, ckpt_dir=ckpt, on_epoch=kill_after_first)
    assert (ckpt / "last.pt").is_file()
    trained = []
    resumed, s2 = _run(method, data, ckpt_dir=ckpt, on_epoch=lambda e, rows: trained.append(e))  # a fresh student
    assert trained == [2]  # really resumed: epoch 1 came from the checkpoint
    assert [r["epoch"] for r in resumed] == [1, 2]
    assert_same_rows(straight, resumed, rel=1e-5, abs=1e-6)
    for (k, v1), v2 in zip(s1.state_dict().items(), s2.state_dict().values()):
        assert torch.allclose(v1.float(), v2.float(), atol=1e-5), k
    assert not ckpt.exists()  # removed when the job finished


class _Planted:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_pickle_planted_as_a_checkpoint_never_runs_and_the_job_starts_over(data, tmp_path):
    """Checkpoint paths are predictable (the job id): a file placed there is read without unpickling objects,
    and the run starts from epoch 1."""
    ckpt, marker = tmp_path / "ckpt", tmp_path / "ran"
    ckpt.mkdir()
    torch.save({"key": "x", "rows": _Planted(marker)}, ckpt / "last.pt")
    trained = []
    rows, _ = _run("kl", data, ckpt_dir=ckpt, on_epoch=lambda e, r: trained.append(e))
    assert not marker.exists() and trained == [1, 2] and [r["epoch"] for r in rows] == [1, 2]


def test_exploding_learning_rate_diverges_and_leaves_no_checkpoint(data, tmp_path):
    ckpt = tmp_path / "ckpt"
    with pytest.raises(Diverged, match="loss became"):
        _run("kl", data, ckpt_dir=ckpt, hp=dataclasses.replace(HP, lr=1e12, epochs=3))
    assert not ckpt.exists()


def test_mcl_evaluates_and_keeps_the_slow_weights(data):
    # tau close to 1: the slow weights barely leave s0, while the fast student trained at a high rate moves
    hp = dataclasses.replace(HP, epochs=1, tau=0.999, mcl_lr=0.5)
    rows, student = _run("xekl_mcl", data, hp=hp)
    start = cnn()
    drift = max((a - b).abs().max().item() for a, b in zip(student.state_dict().values(), start.state_dict().values())
                if a.is_floating_point())  # integer buffers (BatchNorm batch counters) are copied, not averaged
    assert 0 < drift < 0.05  # the slow weights did move, a little
    assert rows[-1]["student_acc"] == pytest.approx(correct(student, data[1]).mean() * 100)


@pytest.mark.parametrize("mode, n_rows", [("parallel", 2), ("parallel_unsup", 2), ("sequential_desc", 4),
                                          ("sequential_asc_matched", 4), ("soup", 1)])
def test_multi_teacher_modes(mode, n_rows, data, tmp_path):
    tr, ev = data
    student = cnn()
    teachers = [mlp(2), mlp(3)]
    corrects = [correct(t, ev) for t in teachers]
    ckpt = tmp_path / "multi"
    job = MultiJob(student, teachers, [c.mean() for c in corrects], HP, 0, tr, ev, CFG, [CFG, CFG],
                   correct(cnn(), ev), corrects)
    rows = run_multi(mode, job, ckpt_dir=ckpt)
    assert [r["epoch"] for r in rows] == list(range(1, n_rows + 1))
    union = np.logical_or(*corrects)
    s0 = correct(cnn(), ev)
    assert rows[0]["rho_pos_before"] == pytest.approx((~s0 & union).mean() * 100)  # against the union
    assert rows[-1]["student_acc"] == pytest.approx(correct(student, ev).mean() * 100)
    assert not ckpt.exists()


def test_sequential_resumes_after_a_finished_stage(data, tmp_path):
    tr, ev = data
    teachers = [mlp(2), mlp(3)]
    corrects = [correct(t, ev) for t in teachers]
    args = ([c.mean() for c in corrects], HP, 0, tr, ev, CFG, [CFG, CFG], correct(cnn(), ev), corrects)
    straight = run_multi("sequential_asc", MultiJob(cnn(), teachers, *args))
    ckpt = tmp_path / "seq"
    calls = []

    def kill_in_stage_two(epoch, rows):
        calls.append(epoch)
        if len(calls) == 3:
            raise Killed

    from zoo_sweep.transfer import multi

    with pytest.raises(Killed):
        multi.sequential(MultiJob(cnn(), teachers, *args), RunOptions(ckpt_dir=ckpt, on_epoch=kill_in_stage_two),
                         order="asc")
    assert (ckpt / "stage0.pt").is_file()
    resumed = run_multi("sequential_asc", MultiJob(cnn(), teachers, *args), ckpt_dir=ckpt)
    assert_same_rows(straight, resumed, rel=1e-5, abs=1e-6)
