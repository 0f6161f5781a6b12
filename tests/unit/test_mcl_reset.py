"""MCL's mcl_reset in the training loop, on real (tiny) timm models and a slice of the digits data: with
"reference" the student goes on from the slow weights after every epoch's evaluation (the checkpoint holds
them, so a resumed run ends as an uninterrupted one); with "none" it goes on from its own weights. The reset
itself is held to the reference code in test_reference_forms.py."""

import dataclasses

import pytest
import torch
from tiny import CFG, assert_same_rows, cnn, correct, digits_slices, mlp, one_thread  # noqa: F401  (one_thread: autouse)

from zoo_sweep.transfer.train import RunOptions, TransferJob, TransferParams, TransferRun

HP = TransferParams(epochs=2, batch_size=32, mcl_lr=0.05, mcl_top_k=0, tau=0.9, mcl_schedule="reference")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return digits_slices(tmp_path_factory.mktemp("cache"), 128, 96)


def _run(data, reset, **opts):
    tr, ev = data
    teacher = mlp()
    job = TransferJob(cnn(), teacher, "xekl_mcl", dataclasses.replace(HP, mcl_reset=reset), 0, tr, ev, CFG, CFG,
                      correct(cnn(), ev), correct(teacher, ev))
    return TransferRun(job, RunOptions(**opts))


def _floats(model) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items() if v.is_floating_point()}


@pytest.mark.parametrize("reset", ["none", "reference"])
def test_after_each_epoch_the_student_goes_on_from_the_slow_weights_only_with_reset(data, reset):
    seen = []
    run = _run(data, reset, on_epoch=lambda epoch, rows: seen.append(
        (_floats(run.job.student), _floats(run.state.slow))))
    run.run()
    assert len(seen) == 2
    for fast, slow in seen:
        same = all(torch.equal(fast[k], slow[k]) for k in fast)
        assert same == (reset == "reference")


class Killed(Exception):
    pass


def test_resume_after_a_reset_gives_the_same_result(data, tmp_path):
    straight = _run(data, "reference")
    rows = straight.run()

    def kill_after_first(epoch, rows):
        if epoch == 1:
            raise Killed

    ckpt = tmp_path / "ckpt"
    with pytest.raises(Killed):
        _run(data, "reference", ckpt_dir=ckpt, on_epoch=kill_after_first).run()
    resumed = _run(data, "reference", ckpt_dir=ckpt)  # a fresh student, as a retried job gets
    assert_same_rows(rows, resumed.run(), rel=1e-5, abs=1e-6)
    for k, v in _floats(straight.job.student).items():
        assert torch.allclose(v, _floats(resumed.job.student)[k], atol=1e-5), k
