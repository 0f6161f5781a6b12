"""Every reference form of a transfer method or recipe option against a direct transcription of the authors'
code (ExplainableML/FantasticGains at f756c18: main_distillation.py, distillation/dist_utils.py,
distillation/contrastive/, distillation/flip_study.py, ffcv_transforms/) on random tensors: values, and
gradients where the loss trains something. The ``ref_*`` functions below follow that code line by line
(loops included); only names of configuration fields are replaced by arguments.
"""

import copy
import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from zoo_sweep.config.params import TransferParams
from zoo_sweep.transfer.augment import apply_paper, draw_paper
from zoo_sweep.transfer.methods import (
    METHODS,
    ClassNegatives,
    CRDReferenceState,
    Extras,
    SlowWeights,
    crd_reference,
)


# ------------------------------------------------------------------ transcriptions of the reference code
def ref_distill_kl(y_s, y_t, T):  # contrastive/CRDloss.py DistillKL.forward
    p_s = nn.functional.log_softmax(y_s / T, dim=1)
    p_t = nn.functional.softmax(y_t / T, dim=1)
    return nn.functional.kl_div(p_s, p_t, reduction='sum') * (T ** 2) / y_s.shape[0]


def ref_get_flip_masks(out_s, out_t, labels):  # dist_utils.py
    _, s_preds = torch.max(out_s, 1)
    _, t_preds = torch.max(out_t, 1)
    mask_pos = torch.logical_and(torch.eq(t_preds, labels), torch.ne(s_preds, labels))
    mask_neg = torch.logical_and(torch.ne(t_preds, labels), torch.eq(s_preds, labels))
    mask_neut = torch.logical_not(torch.logical_or(mask_pos, mask_neg))
    return mask_pos, mask_neg, mask_neut


def ref_xe_kl_step(out_s, out_t, out_st, labels, name, k, alpha, T=1.0, strat=None, on_flip=("distill",) * 3):
    """The loss of one batch of DistillationTrainer.xe_kl_distill (single teacher)."""
    kl_loss_fn = lambda a, b: ref_distill_kl(a, b, T)  # noqa: E731
    xe_loss_fn = torch.nn.CrossEntropyLoss()
    sp_s = nn.functional.softmax(out_s, dim=1)
    sp_t = nn.functional.softmax(out_t, dim=1)  # noqa: F841
    n = out_s.size(0)
    top_k, top_k_idx = torch.topk(out_t, k)
    topk_out_s = torch.randn((n, k))
    topk_out_t = torch.randn((n, k))
    topk_out_st = torch.randn((n, k))
    for i, index in enumerate(top_k_idx):
        topk_out_s[i] = torch.index_select(out_s[i], 0, index)
        topk_out_t[i] = torch.index_select(out_t[i], 0, index)
        topk_out_st[i] = torch.index_select(out_st[i], 0, index)
    pos_mask, neg_mask, neut_mask = ref_get_flip_masks(out_s, out_t, labels)
    if 'dp' in name:
        topk_out_mt = torch.randn((n, k))
        if strat == 'flip-avg':
            for i in range(n):
                if neut_mask[i]:
                    topk_out_mt[i] = torch.mean(torch.stack((topk_out_t[i], topk_out_s[i]), dim=0), 0)
                else:
                    topk_out_mt[i] = topk_out_t[i] if pos_mask[i] else topk_out_st[i]
        kl_loss = kl_loss_fn(topk_out_s, topk_out_mt)
    else:
        pos, neg, neut = on_flip
        if pos == 'distill' and neg == 'distill' and neut == 'distill':
            kl_loss = kl_loss_fn(topk_out_s, topk_out_t)
        elif pos == 'distill' and neut == 'distill':
            kl_loss = kl_loss_fn(topk_out_s[torch.logical_not(neg_mask)], topk_out_t[torch.logical_not(neg_mask)])
        if torch.isnan(kl_loss):
            kl_loss = torch.zeros(1)
    xe_loss = xe_loss_fn(sp_s, labels)
    return float(alpha) * kl_loss + (1 - float(alpha)) * xe_loss


def ref_simple_contrast(f_s, f_t):  # contrastive/SimpleContrastloss.py
    f_s = F.normalize(f_s, dim=1)
    f_t = F.normalize(f_t, dim=1)
    f_s_norm = f_s / f_s.norm(dim=1)[:, None]
    f_t_norm = f_t / f_t.norm(dim=1)[:, None]
    sim_s = torch.mm(f_s_norm, f_s_norm.transpose(0, 1))
    sim_t = torch.mm(f_t_norm, f_t_norm.transpose(0, 1))
    sim_s = F.log_softmax(sim_s, dim=1)
    sim_t = F.log_softmax(sim_t, dim=1)
    return F.kl_div(sim_s, sim_t, log_target=True, reduction='sum')


class RefNormalize(nn.Module):  # contrastive/CRDloss.py
    def __init__(self, power=2):
        super().__init__()
        self.power = power

    def forward(self, x):
        norm = x.pow(self.power).sum(1, keepdim=True).pow(1. / self.power)
        return x.div(norm)


class RefEmbed(nn.Module):
    def __init__(self, dim_in, dim_out):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)
        self.l2norm = RefNormalize(2)

    def forward(self, x):
        x = x.view(x.shape[0], -1)
        return self.l2norm(self.linear(x))


class RefContrastLoss(nn.Module):
    def __init__(self, n_data):
        super().__init__()
        self.n_data = n_data

    def forward(self, x):
        eps = 1e-7
        bsz = x.shape[0]
        m = x.size(1) - 1
        Pn = 1 / float(self.n_data)
        P_pos = x.select(1, 0)
        log_D1 = torch.div(P_pos, P_pos.add(m * Pn + eps)).log_()
        P_neg = x.narrow(1, 1, m)
        log_D0 = torch.div(P_neg.clone().fill_(m * Pn), P_neg.add(m * Pn + eps)).log_()
        return - (log_D1.sum(0) + log_D0.view(-1, 1).sum(0)) / bsz


class RefContrastMemory(nn.Module):  # contrastive/memory.py, with the contrast indices always given
    def __init__(self, inputSize, outputSize, K, T=0.07, momentum=0.5):
        super().__init__()
        self.register_buffer('params', torch.tensor([K, T, -1, -1, momentum]))
        self.register_buffer('memory_v1', torch.zeros(outputSize, inputSize))
        self.register_buffer('memory_v2', torch.zeros(outputSize, inputSize))

    def forward(self, v1, v2, y, idx):
        K = int(self.params[0].item())
        T = self.params[1].item()
        Z_v1 = self.params[2].item()
        Z_v2 = self.params[3].item()
        momentum = self.params[4].item()
        batchSize = v1.size(0)
        outputSize = self.memory_v1.size(0)
        inputSize = self.memory_v1.size(1)
        weight_v1 = torch.index_select(self.memory_v1, 0, idx.view(-1)).detach()
        weight_v1 = weight_v1.view(batchSize, K + 1, inputSize)
        out_v2 = torch.bmm(weight_v1, v2.view(batchSize, inputSize, 1))
        out_v2 = torch.exp(torch.div(out_v2, T))
        weight_v2 = torch.index_select(self.memory_v2, 0, idx.view(-1)).detach()
        weight_v2 = weight_v2.view(batchSize, K + 1, inputSize)
        out_v1 = torch.bmm(weight_v2, v1.view(batchSize, inputSize, 1))
        out_v1 = torch.exp(torch.div(out_v1, T))
        if Z_v1 < 0:
            self.params[2] = out_v1.mean() * outputSize
            Z_v1 = self.params[2].clone().detach().item()
        if Z_v2 < 0:
            self.params[3] = out_v2.mean() * outputSize
            Z_v2 = self.params[3].clone().detach().item()
        out_v1 = torch.div(out_v1, Z_v1).contiguous()
        out_v2 = torch.div(out_v2, Z_v2).contiguous()
        with torch.no_grad():
            l_pos = torch.index_select(self.memory_v1, 0, y.view(-1))
            l_pos.mul_(momentum)
            l_pos.add_(torch.mul(v1, 1 - momentum))
            l_norm = l_pos.pow(2).sum(1, keepdim=True).pow(0.5)
            updated_v1 = l_pos.div(l_norm)
            self.memory_v1.index_copy_(0, y, updated_v1)
            ab_pos = torch.index_select(self.memory_v2, 0, y.view(-1))
            ab_pos.mul_(momentum)
            ab_pos.add_(torch.mul(v2, 1 - momentum))
            ab_norm = ab_pos.pow(2).sum(1, keepdim=True).pow(0.5)
            updated_v2 = ab_pos.div(ab_norm)
            self.memory_v2.index_copy_(0, y, updated_v2)
        return out_v1, out_v2


class RefCRDLoss(nn.Module):
    def __init__(self, s_dim, t_dim, feat_dim, n_data, nce_k, nce_t, nce_m):
        super().__init__()
        self.embed_s = RefEmbed(s_dim, feat_dim)
        self.embed_t = RefEmbed(t_dim, feat_dim)
        self.contrast = RefContrastMemory(feat_dim, n_data, nce_k, nce_t, nce_m)
        self.criterion_t = RefContrastLoss(n_data)
        self.criterion_s = RefContrastLoss(n_data)

    def forward(self, f_s, f_t, idx, contrast_idx=None):
        f_s = self.embed_s(f_s)
        f_t = self.embed_t(f_t)
        out_s, out_t = self.contrast(f_s, f_t, idx, contrast_idx)
        return self.criterion_s(out_s) + self.criterion_t(out_t)


def ref_color_and_gray(images, d):
    """ffcv_transforms: RandomHorizontalFlip, RandomColorDistortion(p, strength=1).color_jitter (with the draws
    given), RandomGrayscale; uint8 N x H x W x 3 arrays."""
    images = images.copy()
    for i in range(images.shape[0]):
        if d["flip"][i]:
            images[i] = images[i][:, ::-1]
    dst = np.zeros_like(images)
    for i in range(images.shape[0]):
        if d["jitter"][i]:
            img = images[i]
            ratio_brightness = d["brightness"][i]
            img = ratio_brightness * img + (1.0 - ratio_brightness) * img * 0
            img = np.clip(img, 0, 255)
            ratio_contrast = d["contrast"][i]
            gray = 0.2989 * img[:, :, 0:1] + 0.5870 * img[:, :, 1:2] + 0.1140 * img[:, :, 2:3]
            img = ratio_contrast * img + (1.0 - ratio_contrast) * gray.mean()
            img = np.clip(img, 0, 255)
            ratio_saturation = d["saturation"][i]
            dst[i] = 0.2989 * img[:, :, 0:1] + 0.5870 * img[:, :, 1:2] + 0.1140 * img[:, :, 2:3]
            img = ratio_saturation * img + (1.0 - ratio_saturation) * dst[i]
            img = np.clip(img, 0, 255)
            img = img / 255.0
            hue_factor = d["hue"][i]
            hue_factor_radians = hue_factor * 2.0 * np.pi
            cosA = np.cos(hue_factor_radians)
            sinA = np.sin(hue_factor_radians)
            hue_rotation_matrix = \
                [[cosA + (1.0 - cosA) / 3.0,
                  1./3. * (1.0 - cosA) - np.sqrt(1./3.) * sinA,
                  1./3. * (1.0 - cosA) + np.sqrt(1./3.) * sinA],
                 [1./3. * (1.0 - cosA) + np.sqrt(1./3.) * sinA,
                  cosA + 1./3.*(1.0 - cosA),
                  1./3. * (1.0 - cosA) - np.sqrt(1./3.) * sinA],
                 [1./3. * (1.0 - cosA) - np.sqrt(1./3.) * sinA,
                  1./3. * (1.0 - cosA) + np.sqrt(1./3.) * sinA,
                  cosA + 1./3. * (1.0 - cosA)]]
            hue_rotation_matrix = np.array(hue_rotation_matrix, dtype=img.dtype)
            for row in range(img.shape[0]):
                for col in range(img.shape[1]):
                    r, g, b = img[row, col, :]
                    img[row, col, 0] = (r * hue_rotation_matrix[0, 0] + g * hue_rotation_matrix[0, 1]
                                        + b * hue_rotation_matrix[0, 2])
                    img[row, col, 1] = (r * hue_rotation_matrix[1, 0] + g * hue_rotation_matrix[1, 1]
                                        + b * hue_rotation_matrix[1, 2])
                    img[row, col, 2] = (r * hue_rotation_matrix[2, 0] + g * hue_rotation_matrix[2, 1]
                                        + b * hue_rotation_matrix[2, 2])
            img = np.asarray(np.clip(img * 255., 0, 255), dtype=np.uint8)
            dst[i] = img
        else:
            dst[i] = images[i]
    images = dst
    for i in range(images.shape[0]):
        if d["gray"][i]:
            r, g, b = images[i, :, :, 0], images[i, :, :, 1], images[i, :, :, 2]
            l_img = (0.2989 * r + 0.587 * g + 0.114 * b).astype(images[i].dtype)
            l_img3 = np.zeros_like(images[i])
            for j in range(images[i].shape[-1]):
                l_img3[:, :, j] = l_img
            images[i] = l_img3.clip(0, 255).astype(images[i].dtype)
    return images


def ref_get_flips_per_class(preds_a, preds_b, true_y):  # flip_study.py (1,000 classes hard-coded there)
    pos_flips = np.zeros((len(true_y), 1000))
    neg_flips = np.zeros((len(true_y), 1000))
    for i in range(len(true_y)):
        pos_flips[i, true_y[i]] = preds_a[i] != true_y[i] and preds_b[i] == true_y[i]
        neg_flips[i, true_y[i]] = preds_a[i] == true_y[i] and preds_b[i] != preds_a[i]
    return np.sum(pos_flips, axis=0), np.sum(neg_flips, axis=0)


def ref_get_top_p_percent_classes(pos_class_flips, p):
    sorted_classes = np.argsort(pos_class_flips)[::-1]
    k = []
    for p_share in p:
        share, k_val = 0, 1
        while share < p_share:
            share = np.sum(pos_class_flips[sorted_classes[:k_val]]) / np.sum(pos_class_flips) * 100
            k_val += 1
        k.append(k_val)
    return k


def ref_get_dist_improvement(preds, zero_preds, teach_preds, true_y, p=(2, 5, 20, 50, 100)):
    pos_flips, _ = ref_get_flips_per_class(zero_preds, teach_preds, true_y)
    dist_flips, _ = ref_get_flips_per_class(zero_preds, preds, true_y)
    k = ref_get_top_p_percent_classes(pos_flips, p)
    sorted_classes = np.argsort(pos_flips)[::-1]
    improvement = {}
    for i, top_k in enumerate(k):
        improvement[f'top{p[i]}%_improve'] = np.sum(dist_flips[sorted_classes[:top_k]]) / np.sum(dist_flips) * 100
    improvement['transfer_rate'] = np.sum(dist_flips[sorted_classes[:k[-1]]]) / np.sum(pos_flips) * 100
    return improvement


# ------------------------------------------------------------------ helpers
def logits(seed, b=24, c=10, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    z_s = (torch.randn(b, c, generator=g) * scale).requires_grad_(True)
    z_t = torch.randn(b, c, generator=g) * scale
    z_s0 = torch.randn(b, c, generator=g) * scale
    y = torch.randint(0, c, (b,), generator=g)
    # make sure every flip kind occurs: the student right on the first third, the teacher on the second
    with torch.no_grad():
        z_s[: b // 3, :] -= 20
        z_s[torch.arange(b // 3), y[: b // 3]] += 40
        z_t[b // 3: 2 * b // 3, :] -= 20
        z_t[torch.arange(b // 3, 2 * b // 3), y[b // 3: 2 * b // 3]] += 40
    return z_s, z_t, z_s0, y


def same_value_and_grad(ours, ref, z_s):
    g_ours, = torch.autograd.grad(ours, z_s)
    g_ref, = torch.autograd.grad(ref, z_s)
    assert torch.allclose(ours, ref.reshape(()), rtol=1e-5, atol=1e-6), (ours.item(), ref.item())
    assert torch.allclose(g_ours, g_ref, rtol=1e-4, atol=1e-7)


# ------------------------------------------------------------------ 3: cross-entropy on probabilities
@pytest.mark.parametrize("seed", [0, 1])
def test_xekl_on_probs_is_the_reference_loss(seed):
    z_s, z_t, z_s0, y = logits(seed)
    ours, _ = METHODS["xekl"].loss(z_s, z_t, z_s0, y, TransferParams(alpha=0.5, xe_on="probs"))
    same_value_and_grad(ours, ref_xe_kl_step(z_s, z_t, z_s0, y, "xekl", k=10, alpha=0.5), z_s)
    logits_form, _ = METHODS["xekl"].loss(z_s, z_t, z_s0, y, TransferParams(alpha=0.5))
    assert not torch.allclose(logits_form, ours)  # the default (logits) is the textbook form, not this one


# ------------------------------------------------------------------ 4: MCL's masked KL over the kept samples
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mcl_kept_mean_on_probs_is_the_reference_loss(seed):
    z_s, z_t, z_s0, y = logits(seed)
    p = TransferParams(mcl_alpha=0.68, mcl_top_k=5, xe_on="probs", mcl_kl_mean="kept")
    ours, share = METHODS["xekl_mcl"].loss(z_s, z_t, z_s0, y, p)
    ref = ref_xe_kl_step(z_s, z_t, z_s0, y, "xekl_mcl", k=5, alpha=0.68, on_flip=("distill", "nothing", "distill"))
    same_value_and_grad(ours, ref, z_s)
    assert 0 < float(share) < 1  # some samples were masked


def test_mcl_kept_mean_with_nothing_kept_is_cross_entropy_only():
    y = torch.tensor([0, 1])
    z_s = torch.tensor([[5.0, 0], [0.0, 5]], requires_grad=True)  # the student right everywhere
    z_t = torch.tensor([[0.0, 5], [5.0, 0]])  # the teacher wrong everywhere: every sample masked
    p = TransferParams(mcl_alpha=0.68, mcl_top_k=0, xe_on="probs", mcl_kl_mean="kept")
    ours, _ = METHODS["xekl_mcl"].loss(z_s, z_t, None, y, p)
    ref = ref_xe_kl_step(z_s, z_t, z_t, y, "xekl_mcl", k=2, alpha=0.68, on_flip=("distill", "nothing", "distill"))
    same_value_and_grad(ours, ref, z_s)


@pytest.mark.parametrize("batch", [128, 384, 512])
def test_mcl_reference_schedule_follows_the_reference_loop(batch):
    """The reference: theta_slow = student.state_dict() (aliases the live weights until the first update),
    updated after batch j of each epoch when j % N == 0 with N = 2 / (batch / 256)."""
    tau, epochs, steps = 0.9, 3, 7
    torch.manual_seed(0)
    ref_model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    ours_model = copy.deepcopy(ref_model)
    slow = SlowWeights(ours_model, tau, every=2, schedule="reference", batch_size=batch)
    theta_slow = ref_model.state_dict()
    N = 2 / (batch / 256)
    g = torch.Generator().manual_seed(1)
    step = 0
    for _ in range(epochs):
        for j in range(steps):
            deltas = [torch.randn(q.shape, generator=g) for q in ref_model.parameters()]
            with torch.no_grad():  # an optimizer step, in place, on both
                for q, d in zip(ref_model.parameters(), deltas):
                    q.add_(d)
                for q, d in zip(ours_model.parameters(), deltas):
                    q.add_(d)
            step += 1
            if theta_slow is not None and j % N == 0:
                theta = ref_model.state_dict()
                for key in theta.keys():
                    theta_slow[key] = tau * theta_slow[key] + (1 - tau) * theta[key]
            slow.after_step(ours_model, step, j)
    ours = slow.slow.state_dict()
    for key in ours:
        if ours[key].is_floating_point():
            assert torch.allclose(ours[key], theta_slow[key].float(), rtol=1e-6, atol=1e-6), key


def _mcl_net():
    return nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 5))


def _same_floats(a: dict, b: dict, what: str) -> None:
    # integer buffers (BatchNorm's batch counter) aside: the reference averages them as floats, which only a
    # BatchNorm without momentum would read
    for key in a:
        if a[key].is_floating_point():
            assert torch.allclose(a[key], b[key].float(), rtol=1e-5, atol=1e-6), (what, key)


@pytest.mark.parametrize("batch", [256, 512])
def test_mcl_reference_reset_follows_the_reference_evaluation(batch):
    """Three epochs of MCL with SGD (momentum, weight decay) on a small network with BatchNorm: the reference's
    loop (main_distillation.py: xe_kl_distill, its slow-weight update, then eval_student -> get_val_metrics,
    distillation/dist_utils.py) against ours with mcl_reset = "reference", our hooks called as the training
    loop calls them. Each epoch: the evaluated logits, the slow weights, and the fast weights it goes on from."""
    tau, epochs, steps, n, k = 0.8, 3, 5, 12, 3
    torch.manual_seed(0)
    teacher = nn.Linear(6, 5)
    ref_student = _mcl_net()
    start = copy.deepcopy(ref_student)
    g = torch.Generator().manual_seed(2)
    data = [[(torch.randn(n, 6, generator=g), torch.randint(0, 5, (n,), generator=g)) for _ in range(steps)]
            for _ in range(epochs)]
    val = torch.randn(20, 6, generator=g)
    p = TransferParams(mcl_alpha=0.68, mcl_top_k=k, xe_on="probs", mcl_kl_mean="kept", tau=tau, mcl_every=2,
                       mcl_schedule="reference", mcl_reset="reference", batch_size=batch)

    def sgd(model):
        return torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9, weight_decay=1e-4)

    # the reference
    opt = sgd(ref_student)
    theta_slow = ref_student.state_dict()
    N = p.mcl_every / (batch / 256)
    ref_evals, ref_slow, ref_fast = [], [], []
    for e in range(epochs):
        ref_student.train()
        for j, (imgs, labels) in enumerate(data[e]):
            opt.zero_grad()
            out_s = ref_student(imgs)
            with torch.no_grad():
                out_t = teacher(imgs)
            loss = ref_xe_kl_step(out_s, out_t, out_t, labels, "xekl_mcl", k=k, alpha=0.68,
                                  on_flip=("distill", "nothing", "distill"))
            loss.backward()
            opt.step()
            if theta_slow is not None and j % N == 0:
                theta = ref_student.state_dict()
                for key in theta.keys():
                    theta_slow[key] = tau * theta_slow[key] + (1 - tau) * theta[key]
        ref_student.eval()  # get_val_metrics
        if theta_slow is not None:
            theta_fast = ref_student.state_dict()
            ref_student.load_state_dict(theta_slow)
        with torch.no_grad():
            ref_evals.append(ref_student(val))
        if theta_slow is not None:
            ref_student.load_state_dict(theta_fast)
        ref_slow.append({key: v.clone() for key, v in theta_slow.items()})
        ref_fast.append({key: v.clone() for key, v in ref_student.state_dict().items()})

    # the reference's evaluation leaves the slow weights in the student: theta_fast held the live tensors
    for fast, slow in zip(ref_fast, ref_slow):
        _same_floats(fast, slow, "the reference's fast weights after its evaluation")

    def ours(reset):
        """Our MCL loss and state, the hooks called in the training loop's order (train_step, evaluate)."""
        model = copy.deepcopy(start)
        opt = sgd(model)
        q = dataclasses.replace(p, mcl_reset=reset)
        state = METHODS["xekl_mcl"].make_state(model, teacher, q, {})
        evals, slows, fasts, step = [], [], [], 0
        for e in range(epochs):
            model.train()
            for j, (imgs, labels) in enumerate(data[e]):
                with torch.no_grad():
                    z_t = teacher(imgs)
                loss, _ = METHODS["xekl_mcl"].loss(model(imgs), z_t, None, labels, q)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                state.after_step(model, step, j)
            with torch.no_grad():
                evals.append(state.eval_model(model)(val))
            state.after_eval(model)
            slows.append({key: v.clone() for key, v in state.slow.state_dict().items()})
            fasts.append({key: v.clone() for key, v in model.state_dict().items()})
        return evals, slows, fasts

    evals, slows, fasts = ours("reference")
    for e in range(epochs):
        assert torch.allclose(evals[e], ref_evals[e], rtol=1e-5, atol=1e-5), e
        _same_floats(slows[e], ref_slow[e], f"slow weights after epoch {e + 1}")
        _same_floats(fasts[e], ref_fast[e], f"fast weights after epoch {e + 1}")
    # "none" (zoo-sweep's default): the same first evaluation, then the fast weights go on from where they were
    evals, _, fasts = ours("none")
    assert torch.allclose(evals[0], ref_evals[0], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(evals[-1], ref_evals[-1], rtol=1e-3, atol=1e-3)
    assert not torch.allclose(fasts[0]["0.weight"], ref_fast[0]["0.weight"], rtol=1e-3, atol=1e-3)


# ------------------------------------------------------------------ 5: flip-avg's neutral target
@pytest.mark.parametrize("seed, top_k", [(0, 0), (1, 0), (2, 4)])
def test_flip_avg_student_logits_is_the_reference_loss(seed, top_k):
    z_s, z_t, z_s0, y = logits(seed)
    p = TransferParams(flip_avg_neutral="student_logits", top_k=top_k)
    ours, _ = METHODS["flip_avg"].loss(z_s, z_t, z_s0, y, p)
    ref = ref_xe_kl_step(z_s, z_t, z_s0, y, "xekl_dp", k=top_k or 10, alpha=1, strat="flip-avg")
    same_value_and_grad(ours, ref, z_s)


# ------------------------------------------------------------------ 6: CD and CRD
@pytest.mark.parametrize("seed", [0, 1])
def test_cd_reference_is_the_reference_loss(seed):
    g = torch.Generator().manual_seed(seed)
    f_s = torch.randn(16, 12, generator=g).requires_grad_(True)
    f_t = torch.randn(16, 7, generator=g)
    z_s = torch.randn(16, 10, generator=g).requires_grad_(True)
    y = torch.randint(0, 10, (16,), generator=g)
    p = TransferParams(cd_form="reference", cd_weight=10.0, cd_xe=0.1)
    ours, _ = METHODS["cd"].loss(z_s, None, None, y, p, Extras(f_s=f_s, f_t=f_t))
    ref = (0.1 * nn.CrossEntropyLoss()(z_s, y) + 0 * ref_distill_kl(z_s, z_s.detach(), 1)
           + 10 * ref_simple_contrast(f_s, f_t))
    g_ours = torch.autograd.grad(ours, (f_s, z_s))
    g_ref = torch.autograd.grad(ref, (f_s, z_s))
    assert torch.allclose(ours, ref, rtol=1e-5)
    for a, b in zip(g_ours, g_ref):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)


class _Features(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.num_features = width


def test_crd_reference_is_the_reference_loss_over_two_batches():
    n, s_dim, t_dim, dim, k = 40, 6, 5, 8, 16
    labels = torch.arange(n) % 4
    p = TransferParams(crd_form="reference", crd_dim=dim, crd_negatives=k, crd_temperature=0.07)
    torch.manual_seed(0)
    st = CRDReferenceState(_Features(s_dim), _Features(t_dim), p, {"n_train": n, "device": "cpu", "seed": 3,
                                                                   "labels": labels})
    ref = RefCRDLoss(s_dim, t_dim, dim, n, k, 0.07, 0.5)
    ref.embed_s.linear.load_state_dict(st.embed_s.state_dict())
    ref.embed_t.linear.load_state_dict(st.embed_t.state_dict())
    ref.contrast.memory_v1.copy_(st.bank_s)
    ref.contrast.memory_v2.copy_(st.bank_t)
    gen = torch.Generator().manual_seed(5)
    for batch in (torch.tensor([3, 17, 22, 8, 30]), torch.tensor([1, 2, 35, 9, 17])):
        g = torch.Generator().manual_seed(int(batch[0]))
        f_s = torch.randn(len(batch), s_dim, generator=g).requires_grad_(True)
        f_t = torch.randn(len(batch), t_dim, generator=g)
        contrast_idx = torch.cat([batch.view(-1, 1), st.negatives.draw(batch, k, gen)], dim=1)
        ours = crd_reference(st, f_s, f_t, batch, contrast_idx, 0.07)
        theirs = ref(f_s, f_t, batch, contrast_idx)
        assert torch.allclose(ours, theirs.reshape(()), rtol=1e-5), (ours.item(), theirs.item())
        g_ours = torch.autograd.grad(ours, [f_s, st.embed_s.weight, st.embed_t.weight])
        g_ref = torch.autograd.grad(theirs.sum(), [f_s, ref.embed_s.linear.weight, ref.embed_t.linear.weight])
        for a, b in zip(g_ours, g_ref):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)
        assert torch.allclose(st.bank_s, ref.contrast.memory_v1, atol=1e-6)
        assert torch.allclose(st.bank_t, ref.contrast.memory_v2, atol=1e-6)
        assert st.z == pytest.approx([ref.contrast.params[2].item(), ref.contrast.params[3].item()], rel=1e-6)


def test_crd_reference_loss_adds_its_weights_and_cross_entropy():
    n, labels = 30, torch.arange(30) % 3
    p = TransferParams(crd_form="reference", crd_dim=4, crd_negatives=7, crd_weight=0.8, crd_xe=1.0)
    st = METHODS["crd"].make_state(_Features(6), _Features(5), p, {"n_train": n, "device": "cpu", "seed": 0,
                                                                    "labels": labels})
    assert isinstance(st, CRDReferenceState)
    twin = copy.deepcopy(st)
    idx, z, y = torch.tensor([4, 9]), torch.randn(2, 3), labels[torch.tensor([4, 9])]
    f_s, f_t = torch.randn(2, 6), torch.randn(2, 5)
    loss, _ = METHODS["crd"].loss(z, None, None, y, p, Extras(f_s=f_s, f_t=f_t, idx=idx, state=st,
                                                              gen=torch.Generator().manual_seed(1)))
    neg = twin.negatives.draw(idx, 7, torch.Generator().manual_seed(1))
    nce = crd_reference(twin, f_s, f_t, idx, torch.cat([idx.view(-1, 1), neg], 1), p.crd_temperature)
    assert torch.allclose(loss, 0.8 * nce + F.cross_entropy(z, y))


def test_class_negatives_come_uniformly_from_other_classes():
    labels = torch.tensor([0] * 5 + [1] * 3 + [2] * 12)[torch.randperm(20, generator=torch.Generator().manual_seed(0))]
    neg = ClassNegatives(labels)
    idx = torch.arange(20)
    draws = neg.draw(idx, 3000, torch.Generator().manual_seed(2))
    assert (labels[draws] != labels.view(-1, 1)).all()  # never the sample's own class
    for i in (0, 7, 13):
        others = torch.nonzero(labels != labels[i]).flatten()
        counts = torch.bincount(draws[i], minlength=20)[others].float()
        assert (counts > 0).all()  # every other-class sample can be drawn
        assert counts.max() / counts.min() < 1.8  # about uniform (3000 draws over at most 17 samples)


# ------------------------------------------------------------------ 1: the paper's augmentation
def test_paper_augmentation_is_the_reference_pipeline():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (24, 3, 12, 12), generator=g, dtype=torch.uint8)
    x[:, :, :4, :4] = x[:, :1, :4, :4]  # gray pixels, where the hue rotation lands on rounding edges
    x[:6, :, 6:, 6:] = 255
    x[6:9, :, 6:, 6:] = 0
    d = draw_paper(len(x), torch.Generator().manual_seed(1))
    assert 0 < d["jitter"].sum() < len(x) and 0 < d["flip"].sum() < len(x) and 0 < d["gray"].sum() < len(x)
    ours = apply_paper(x, d).permute(0, 2, 3, 1).numpy()
    ref = ref_color_and_gray(x.permute(0, 2, 3, 1).numpy(), d)
    assert ours.dtype == np.uint8
    np.testing.assert_array_equal(ours, ref)


def test_paper_augmentation_draws_a_fixed_count_per_image():
    a, b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    draw_paper(10, a)
    torch.rand(70, generator=b, dtype=torch.float64)
    assert torch.equal(torch.rand(3, generator=a), torch.rand(3, generator=b))


# ------------------------------------------------------------------ 8, 9: the class-level transfer rate
def test_paper_transfer_rate_columns_are_the_references_get_dist_improvement():
    from zoo_sweep.transfer.metrics import transfer_metrics

    rng = np.random.default_rng(0)
    n, classes = 4000, 1000
    y = rng.integers(0, 200, n) * 5  # 200 classes used: many empty ones, as in a pair with few flips
    t_pred = np.where(rng.random(n) < 0.7, y, rng.integers(0, classes, n))
    s0_pred = np.where(rng.random(n) < 0.6, y, rng.integers(0, classes, n))
    sT_pred = np.where(rng.random(n) < 0.65, y, s0_pred)
    ref = ref_get_dist_improvement(list(sT_pred), list(s0_pred), list(t_pred), list(y))
    m = transfer_metrics(s0_pred == y, sT_pred == y, t_pred == y, y, classes)
    assert m["transfer_rate_class_paper"] == pytest.approx(ref["transfer_rate"], rel=1e-12)
    for p in (2, 5, 20, 50, 100):
        assert m[f"improve_top{p}_paper"] == pytest.approx(ref[f"top{p}%_improve"], rel=1e-12)


def test_exact_top_p_counts_are_one_below_the_references():
    from zoo_sweep.transfer.metrics import top_p_classes

    rng = np.random.default_rng(1)
    for _ in range(20):
        counts = rng.poisson(rng.uniform(0.2, 5), 50).astype(np.float64)
        if counts.sum() == 0:
            continue
        ks = ref_get_top_p_percent_classes(counts, [2, 5, 20, 50, 100])
        for p, k in zip((2, 5, 20, 50, 100), ks):
            exact = top_p_classes(counts, p)
            # the reference's count may pass the class count (its slice then takes every class)
            assert len(exact) == k - 1 and len(top_p_classes(counts, p, "paper")) == min(k, len(counts))
            top = np.sort(counts)[::-1]
            assert top[:len(exact)].sum() * 100 >= p * counts.sum() > top[:len(exact) - 1].sum() * 100


def test_class_level_rate_by_brute_force():
    from zoo_sweep.transfer.metrics import transfer_metrics

    y = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 3])
    s0 = np.array([0, 0, 0, 0, 0, 0, 0, 0, 1, 1], bool)
    t = np.array([1, 1, 0, 1, 0, 1, 1, 1, 1, 0], bool)  # positive flips per class: 2, 1, 3, 0 (6 in all)
    sT = np.array([1, 0, 1, 0, 1, 1, 0, 0, 1, 1], bool)  # gains per class: 2, 1, 1, 0 (4 in all)
    m = transfer_metrics(s0, sT, t, y, 4)
    assert m["transfer_rate_class"] == pytest.approx(100 * 4 / 6)  # all three flip classes hold every gain
    assert m["transfer_rate_class_top50"] == pytest.approx(100 * 1 / 6)  # class 2 alone holds 3 of 6 flips
    assert m["improve_top50"] == pytest.approx(25.0)
    assert m["improve_top100"] == pytest.approx(100.0)
    # the sample level counts only gains on the teacher's positive flips: 2 of the 6 flip samples
    assert m["transfer_rate_sample"] == pytest.approx(100 * 2 / 6)
    assert m["transfer_rate_class_paper"] == pytest.approx(100 * 4 / 6)  # + class 3: no gain there
    assert math.isnan(transfer_metrics(s0, s0, s0, y, 4)["transfer_rate_class"])
