"""Per-sample target selection of the transfer methods on hand-built logits with known answers."""

import pytest
import torch
import torch.nn.functional as F

from zoo_sweep.transfer.methods import METHODS, bank_scores, dp_target, dp_teacher_mask, kl_to_target
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


# ------------------------------------------------------------------ every method of the paper
from zoo_sweep.transfer.methods import (  # noqa: E402
    CRDState,
    Extras,
    SlowWeights,
    batch_similarity,
    flip_masks,
    flip_weights,
    mixed_target,
    parallel_choice,
    restrict_topk,
)
from zoo_sweep.transfer.multi import average_weights, curriculum  # noqa: E402

# the current student equals s0 here: it is wrong on sample 0, right on 1 and 2
Z_S = Z_S0.clone()


def test_dp_mask_matches_a_per_sample_loop():
    g = torch.Generator().manual_seed(0)
    z_t, z_s0 = torch.randn(64, 7, generator=g) * 3, torch.randn(64, 7, generator=g) * 3
    y = torch.randint(0, 7, (64,), generator=g)
    for labels in (y, None):
        ref = []
        for i in range(64):
            p_t, p_s = F.softmax(z_t[i], 0), F.softmax(z_s0[i], 0)
            ref.append(bool(p_t[y[i]] > p_s[y[i]]) if labels is not None else bool(p_t.max() > p_s.max()))
        assert dp_teacher_mask(z_t, z_s0, labels).tolist() == ref


def test_flip_masks_are_the_current_students_flips():
    pos, neg = flip_masks(Z_S, Z_T, Y)
    assert pos.tolist() == [True, False, False]  # teacher right, student wrong
    assert neg.tolist() == [False, True, False]  # student right, teacher wrong


@pytest.mark.parametrize("kind, weights", [("st", [1.0, 0.0, 0.0]), ("t", [1.0, 0.0, 1.0]), ("avg", [1.0, 0.0, 0.5])])
def test_flip_partitions_weight_the_teacher_as_defined(kind, weights):
    assert flip_weights(kind, Z_S, Z_T, Y).float().tolist() == weights
    p = TransferParams()
    loss, share = METHODS[f"flip_{kind}"].loss(Z_S, Z_T, Z_S0, Y, p)
    w = torch.tensor(weights).unsqueeze(1)
    target = w * F.softmax(Z_T, 1) + (1 - w) * F.softmax(Z_S0, 1)
    assert torch.allclose(loss, kl_to_target(Z_S, target, 1.0))
    assert float(share) == pytest.approx(sum(weights) / 3)


def test_self_distillation_targets_the_frozen_student():
    loss, share = METHODS["self_dist"].loss(Z_S0, Z_T, Z_S0, Y, TransferParams())
    assert loss.item() < 1e-6 and share == 0.0


def test_the_labels_control_is_plain_cross_entropy_whatever_the_teacher():
    z_s = torch.randn(4, 10, requires_grad=True)
    y = torch.tensor([1, 2, 3, 4])
    for p in (TransferParams(), TransferParams(xe_on="probs")):
        loss, share = METHODS["labels"].loss(z_s, torch.randn(4, 10), None, y, p)
        assert torch.allclose(loss, torch.nn.functional.cross_entropy(z_s, y)) and share == 0.0
    assert METHODS["labels"].control and METHODS["self_dist"].control and not METHODS["kl"].control


def test_topk_keeps_the_teachers_classes_in_every_model_and_renormalises():
    z_t = torch.tensor([[5.0, 1, 4, 0], [0.0, 3, 1, 2]])
    z_s = torch.arange(8.0).view(2, 4)
    kt, ks = restrict_topk(z_t, z_s, k=2)
    assert kt.tolist() == [[5.0, 4.0], [3.0, 2.0]]
    assert ks.tolist() == [[0.0, 2.0], [5.0, 7.0]]  # the teacher's indices, not the student's own top-2
    assert restrict_topk(z_t, z_s, k=0)[1] is z_s and restrict_topk(z_t, z_s, k=9)[1] is z_s
    loss, _ = METHODS["kl"].loss(z_s, z_t, None, None, TransferParams(top_k=2))
    assert torch.allclose(loss, kl_to_target(ks, F.softmax(kt, 1), 1.0))  # softmax over the two classes only


def test_topk_dp_chooses_on_all_classes_and_distils_over_k():
    p = TransferParams(top_k=2)
    z_s = torch.randn(3, 3)
    loss, share = METHODS["kl_dp"].loss(z_s, Z_T, Z_S0, Y, p)
    mask = dp_teacher_mask(Z_T, Z_S0, Y)
    kt, ks, k0 = restrict_topk(Z_T, z_s, Z_S0, k=2)
    assert torch.allclose(loss, kl_to_target(ks, mixed_target(kt, k0, mask, 1.0), 1.0))


def test_mcl_skips_kl_where_only_the_student_is_right():
    p = TransferParams(mcl_alpha=0.68, mcl_top_k=0)
    z_s = Z_S + 0.1 * torch.randn(3, 3)
    loss, share = METHODS["xekl_mcl"].loss(z_s, Z_T, None, Y, p)
    keep = torch.tensor([1.0, 0.0, 1.0])  # sample 1: teacher wrong, current student right
    ref = 0.68 * kl_to_target(z_s, F.softmax(Z_T, 1), 1.0, keep) + 0.32 * F.cross_entropy(z_s, Y)
    assert torch.allclose(loss, ref) and float(share) == pytest.approx(2 / 3)


def test_slow_weights_interpolate_every_n_steps():
    fast = torch.nn.Linear(2, 1)
    sw = SlowWeights(fast, tau=0.75, every=2)
    start = fast.weight.detach().clone()
    with torch.no_grad():
        fast.weight.add_(4.0)
    sw.after_step(fast, 1)  # not a multiple of 2: no update
    assert torch.equal(sw.slow.weight, start)
    sw.after_step(fast, 2)
    assert torch.allclose(sw.slow.weight, 0.75 * start + 0.25 * (start + 4.0))
    assert sw.eval_model(fast) is sw.slow


def test_parallel_picks_the_surest_model_per_sample():
    z_s0 = torch.tensor([[2.0, 0], [0.0, 2], [0.0, 0]])
    z_ts = torch.tensor([[[0.0, 3], [0.0, 1], [0.0, 0]],    # teacher A
                         [[3.0, 0], [0.0, 0], [0.0, 0]]])   # teacher B
    y = torch.tensor([0, 1, 0])
    assert parallel_choice(z_ts, z_s0, y).tolist() == [2, 0, 0]  # B surest of 0; s0 of 1; a tie goes to s0
    assert parallel_choice(z_ts, z_s0, None).tolist() == [1, 0, 0]  # A and B equally confident: first wins
    loss, share = METHODS["parallel"].loss(z_s0, z_ts, z_s0, y, TransferParams())
    target = torch.stack([F.softmax(z_ts[1, 0], 0), F.softmax(z_s0[1], 0), F.softmax(z_s0[2], 0)])
    assert torch.allclose(loss, kl_to_target(z_s0, target, 1.0)) and float(share) == pytest.approx(1 / 3)


def test_cd_is_pure_cross_entropy_when_the_similarity_structures_agree():
    f = torch.randn(8, 5)
    z = torch.randn(8, 10)
    y = torch.randint(0, 10, (8,))
    p = TransferParams(cd_weight=10.0, cd_xe=0.1)
    loss, _ = METHODS["cd"].loss(z, z, None, y, p, Extras(f_s=2 * f, f_t=f))  # scale does not change cosines
    assert torch.allclose(loss, 0.1 * F.cross_entropy(z, y), atol=1e-5)
    other, _ = METHODS["cd"].loss(z, z, None, y, p, Extras(f_s=torch.randn(8, 5), f_t=f))
    assert other > loss
    off_diagonal = 1 - torch.eye(8)  # self-pairs are left out of each row's distribution
    assert torch.allclose((batch_similarity(f, 0.1).exp() * off_diagonal).sum(1), torch.ones(8))


@pytest.mark.parametrize("n", [40, 400], ids=["whole-bank-product", "gathered-rows"])
def test_bank_scores_are_the_gathered_dot_products_either_way(n):
    """Small banks go through one product with the whole bank, large ones gather rows: same scores, same
    gradient, and the bank may be updated in place after the forward pass (as CRD's memory is)."""
    g = torch.Generator().manual_seed(n)
    bank = torch.randn(n, 8, generator=g)
    anchor = torch.randn(5, 8, generator=g, requires_grad=True)
    idx = torch.randint(0, n, (5, 3), generator=g)
    want = torch.einsum("bd,bjd->bj", anchor, bank[idx].clone())
    (w_grad,) = torch.autograd.grad(want.pow(2).sum(), anchor)
    got = bank_scores(bank, anchor, idx)
    bank.add_(1.0)  # the memory update that follows the loss
    (g_grad,) = torch.autograd.grad(got.pow(2).sum(), anchor)
    assert torch.allclose(got, want, atol=1e-6)
    assert torch.allclose(g_grad, w_grad, atol=1e-5)


def test_crd_contrasts_with_the_bank_and_updates_only_the_batch_rows():
    p = TransferParams(crd_dim=4, crd_negatives=10_000)
    s_model, t_model = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    s_model.num_features, t_model.num_features = 6, 5
    st = CRDState(s_model, t_model, p, {"n_train": 20, "device": "cpu", "seed": 0})
    assert st.k == 19  # negatives capped by the other samples in the set
    before_s, before_t = st.bank_s.clone(), st.bank_t.clone()
    idx = torch.tensor([3, 7])
    ex = Extras(f_s=torch.randn(2, 6), f_t=torch.randn(2, 5), idx=idx, state=st, gen=torch.Generator().manual_seed(0))
    z, y = torch.randn(2, 10), torch.tensor([1, 2])
    loss, _ = METHODS["crd"].loss(z, z, None, y, p, ex)
    assert torch.isfinite(loss)
    loss.backward()
    assert st.embed_s.weight.grad is not None and st.embed_t.weight.grad is not None
    rest = torch.ones(20, dtype=torch.bool)
    rest[idx] = False
    assert torch.equal(st.bank_s[rest], before_s[rest]) and torch.equal(st.bank_t[rest], before_t[rest])
    assert not torch.equal(st.bank_s[idx], before_s[idx])
    assert torch.allclose(st.bank_s.norm(dim=1), torch.ones(20))


def test_curricula_and_soup_average():
    assert curriculum([70.0, 50.0, 90.0], "asc") == [1, 0, 2]
    assert curriculum([70.0, 50.0, 90.0], "desc") == [2, 0, 1]
    a = {"w": torch.tensor([1.0, 3.0]), "n": torch.tensor(5)}
    b = {"w": torch.tensor([3.0, 5.0]), "n": torch.tensor(7)}
    avg = average_weights([a, b])
    assert avg["w"].tolist() == [2.0, 4.0] and avg["n"].item() == 5


def test_every_spec_method_has_a_description_and_known_params():
    fields = set(TransferParams.__dataclass_fields__)
    for name, m in METHODS.items():
        assert m.description and set(m.params) <= fields and m.lr_param in fields, name


def test_every_declared_method_has_a_loss_and_a_missing_one_fails_at_import(monkeypatch):
    from zoo_sweep.transfer import methods
    from zoo_sweep.transfer.catalog import CATALOG, MethodInfo

    assert set(methods.METHODS) == set(CATALOG)
    monkeypatch.setitem(CATALOG, "toy", MethodInfo("toy", False, "declared, never given a loss"))
    with pytest.raises(ImportError, match="declared without a loss: toy"):
        methods.check_registry()
