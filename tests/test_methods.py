"""Per-sample target selection of the transfer methods on hand-built logits with known answers."""

import pytest
import torch
import torch.nn.functional as F

from zoo_sweep.transfer.methods import METHODS, dp_target, dp_teacher_mask, kl_to_target
from zoo_sweep.transfer.train import TransferParams

# three samples, three classes; labels 0, 1, 2
Y = torch.tensor([0, 1, 2])
Z_T = torch.tensor([[4.0, 0, 0],    # teacher sure and right
                    [0.0, 1, 3],    # teacher wrong (class 2), confident
                    [0.0, 0, 2]])   # teacher right, moderately
Z_S0 = torch.tensor([[0.0, 2, 0],   # student wrong
                     [0.0, 3, 0],   # student right and surer than the teacher is of class 1
                     [0.0, 0, 5]])  # student right and very sure


def test_supervised_dp_picks_the_model_surer_of_the_true_class():
    assert dp_teacher_mask(Z_T, Z_S0, Y).tolist() == [True, False, False]


def test_unsupervised_dp_picks_the_more_confident_model():
    conf_t = F.softmax(Z_T, 1).max(1).values
    conf_s = F.softmax(Z_S0, 1).max(1).values
    assert dp_teacher_mask(Z_T, Z_S0, None).tolist() == (conf_t > conf_s).tolist()
    assert dp_teacher_mask(Z_T, Z_S0, None).tolist() == [True, False, False]


def test_dp_target_rows_come_from_the_chosen_model():
    target, mask = dp_target(Z_T, Z_S0, Y, T=2.0)
    for i, from_teacher in enumerate(mask.tolist()):
        src = Z_T if from_teacher else Z_S0
        assert torch.allclose(target[i], F.softmax(src[i] / 2.0, dim=0))


def test_kl_is_zero_at_the_target_and_matches_torch():
    z = torch.randn(6, 5)
    assert kl_to_target(z, F.softmax(z, 1), 1.0).item() < 1e-6
    target = F.softmax(torch.randn(6, 5), 1)
    ref = F.kl_div(F.log_softmax(z / 3, 1), target, reduction="batchmean") * 9
    assert torch.allclose(kl_to_target(z, target, 3.0), ref, atol=1e-5)


def test_kl_dp_loss_equals_kl_to_the_partitioned_target():
    p = TransferParams(temperature=1.0)
    z_s = torch.randn(3, 3)
    loss, share = METHODS["kl_dp"].loss(z_s, Z_T, Z_S0, Y, p)
    target, _ = dp_target(Z_T, Z_S0, Y, 1.0)
    assert torch.allclose(loss, kl_to_target(z_s, target, 1.0))
    assert share == pytest.approx(1 / 3)
    kl_loss, kl_share = METHODS["kl"].loss(z_s, Z_T, Z_S0, Y, p)
    assert torch.allclose(kl_loss, kl_to_target(z_s, F.softmax(Z_T, 1), 1.0)) and kl_share == 1.0
