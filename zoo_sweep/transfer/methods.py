"""Transfer methods, registered by name (as timm registers models).

A method turns one batch of logits into a loss. All per-sample choices are masks and ``torch.where``:
no Python loop over samples. Definitions follow docs/methods.md ("Methods").

Every loss has the signature ``loss(z_s, z_t, z_s0, y, p, ex=None) -> (loss, teacher_share)``: student,
teacher and frozen-student logits (B x C), labels, the run's ``TransferParams``, and ``Extras`` for the
methods that need more than logits (penultimate features, sample indices, per-run state). The teacher share
is the mean weight of the teacher in the per-sample targets (a tensor or a float; 1 for plain distillation).

Methods that carry state across steps (slow weights of MCL, CRD's embedding heads and memory bank) declare
``make_state``; the training loop then calls the state's hooks (``after_step``, ``eval_model``, ...) and
checkpoints its ``state_dict``. Logit-only methods know nothing about the loop.

Where the authors' code (the reference) computes a method differently from its textbook form, both are here,
chosen by a [transfer] option (config/params.py CHOICES; docs/methods.md says which is the default and why):
cross-entropy on probabilities (``xe_on``), MCL's masked-KL mean, update schedule and end-of-epoch reset
(``mcl_kl_mean``, ``mcl_schedule``, ``mcl_reset``), flip-avg's neutral target (``flip_avg_neutral``), CD's and
CRD's losses (``cd_form``, ``crd_form``). tests/unit/test_reference_forms.py holds each reference form to a
transcription of that code.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from zoo_sweep.config.methods import out_of_step
from zoo_sweep.transfer.catalog import CATALOG, LOSSES, MethodInfo, attach


@dataclass(frozen=True)
class Method(MethodInfo):
    """A declared method (config/methods.py: what it reads and which parameters) with its loss attached."""
    loss: Callable | None = None  # (z_s, z_t, z_s0, labels, params, extras) -> (loss, share routed to teacher)
    make_state: Callable | None = None  # (student, teacher, params, info) -> MethodState


class _Methods(Mapping[str, Method]):
    """Every declared method that has its loss, looked up when asked: a plugin declares its methods after this
    module is imported."""

    def __getitem__(self, name: str) -> Method:
        info, attached = CATALOG.get(name), LOSSES.get(name)
        if info is None or attached is None:
            raise KeyError(f"no transfer method {name!r} here: a method of your own is loaded by its module "
                           "([transfer] plugins, or an entry point of group zoo_sweep.methods)")
        return Method(**{f.name: getattr(info, f.name) for f in fields(info)}, loss=attached.fn,
                      make_state=attached.make_state)

    def __iter__(self) -> Iterator[str]:
        return iter([n for n in CATALOG if n in LOSSES])

    def __len__(self) -> int:
        return sum(1 for n in CATALOG if n in LOSSES)


METHODS: Mapping[str, Method] = _Methods()


def register(name: str, make_state: Callable | None = None):
    """Attach ``fn`` as the loss of the declared method ``name``."""
    def deco(fn):
        attach(name, fn, make_state, module=__name__)
        return fn
    return deco


@dataclass
class Extras:
    """What some methods need beyond logits; built by the training loop only when the method asks."""
    f_s: torch.Tensor | None = None  # student penultimate features (B x D_s), with gradient
    f_t: torch.Tensor | None = None  # teacher penultimate features (B x D_t), no gradient
    idx: torch.Tensor | None = None  # positions of the batch's samples in the transfer set (memory banks)
    state: MethodState | None = None
    gen: torch.Generator | None = None  # the run's generator: random draws stay reproducible on resume


class MethodState:
    """Per-run state of a method, with the hooks the training loop calls. The defaults do nothing."""

    def parameters(self) -> list[torch.nn.Parameter]:
        return []  # extra trainable parameters, optimised with the student

    def after_step(self, student: torch.nn.Module, step: int, batch: int = 0) -> None:
        pass  # step counts optimizer steps from 1 through the run; batch is the batch's index in its epoch, from 0

    def eval_model(self, student: torch.nn.Module) -> torch.nn.Module:
        return student  # the weights that are evaluated (and kept at the end of the run)

    def after_eval(self, student: torch.nn.Module) -> None:
        pass  # called once per epoch, after the weights eval_model gives were evaluated

    def train(self, mode: bool = True) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, d: dict) -> None:
        pass


# ------------------------------------------------------------------ building blocks
def kl_to_target(z_s: torch.Tensor, target: torch.Tensor, T: float, mask: torch.Tensor | None = None,
                 over: str = "batch") -> torch.Tensor:
    """T^2 * KL(target || softmax(z_s / T)), averaged over the batch (masked-out samples count as zero), or with
    ``over="kept"`` over the samples the mask keeps (0 when it keeps none)."""
    log_p = F.log_softmax(z_s / T, dim=1)
    per_sample = (target * (torch.log(target.clamp_min(1e-12)) - log_p)).sum(dim=1)
    if mask is not None:
        per_sample = per_sample * mask
    if mask is not None and over == "kept":
        return per_sample.sum() / mask.sum().clamp_min(1) * T * T
    return per_sample.mean() * T * T


def cross_entropy(z_s: torch.Tensor, y: torch.Tensor, p) -> torch.Tensor:
    """The label term of XE-KL-Dist and MCL: on the logits, or (xe_on = "probs", the reference code) on the
    softmax probabilities taken as logits, whose gradient is scaled down by p_y (1 - p_y)-like factors."""
    return F.cross_entropy(F.softmax(z_s, dim=1) if p.xe_on == "probs" else z_s, y)


def restrict_topk(z_t: torch.Tensor, *others: torch.Tensor | None, k: int | None):
    """The teacher's top-k classes per sample, the same k indices taken from every model's logits.

    A softmax over the restricted logits is the renormalised distribution over those k classes. k of 0 or
    None (or >= the class count) keeps all classes.
    """
    if not k or k >= z_t.shape[1]:
        return (z_t, *others)
    idx = z_t.topk(k, dim=1).indices
    return (z_t.gather(1, idx), *(None if z is None else z.gather(1, idx) for z in others))


def mixed_target(z_t, z_s0, w: torch.Tensor, T: float) -> torch.Tensor:
    """Per-sample target: teacher where w is True (or with weight w), the frozen student elsewhere."""
    p_t, p_s0 = F.softmax(z_t / T, dim=1), F.softmax(z_s0 / T, dim=1)
    if w.dtype == torch.bool:
        return torch.where(w.unsqueeze(1), p_t, p_s0)
    return torch.lerp(p_s0, p_t, w.unsqueeze(1).to(p_t.dtype))


def distill(z_s, z_t, z_s0, w: torch.Tensor, p, k: int | None = None, mask=None) -> torch.Tensor:
    """KL to the per-sample mix of teacher and frozen student, over the teacher's top-k classes."""
    z_t, z_s, z_s0 = restrict_topk(z_t, z_s, z_s0, k=p.top_k if k is None else k)
    return kl_to_target(z_s, mixed_target(z_t, z_s0, w, p.temperature), p.temperature, mask)


def dp_teacher_mask(z_t: torch.Tensor, z_s0: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """Data partitioning: True where the teacher, not the frozen student, provides the target.

    Supervised (labels given): the teacher's true-class probability beats the frozen student's.
    Unsupervised (labels None): the teacher's max probability beats the frozen student's.
    Decided on all classes, before any top-k restriction (the definition uses sigma(z)_y).
    """
    p_t, p_s0 = F.softmax(z_t, dim=1), F.softmax(z_s0, dim=1)
    if labels is None:
        return p_t.max(dim=1).values > p_s0.max(dim=1).values
    idx = labels.view(-1, 1)
    return p_t.gather(1, idx).squeeze(1) > p_s0.gather(1, idx).squeeze(1)


def dp_target(z_t, z_s0, labels, T: float):
    """Per-sample target distribution for KL-Dist + DP and the teacher mask that chose it."""
    mask = dp_teacher_mask(z_t, z_s0, labels)
    return mixed_target(z_t, z_s0, mask, T), mask


def flip_masks(z_s: torch.Tensor, z_t: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(positive flips, negative flips) of the *current* student against the teacher on this batch.

    positive: teacher right where the student is wrong; negative: student right where the teacher is wrong.
    """
    s_right = z_s.detach().argmax(dim=1) == y
    t_right = z_t.argmax(dim=1) == y
    return t_right & ~s_right, s_right & ~t_right


def flip_weights(kind: str, z_s, z_t, y) -> torch.Tensor:
    """Teacher weight per sample for the flip-based partitions (1: teacher target, 0: frozen student)."""
    pos, neg = flip_masks(z_s, z_t, y)
    if kind == "st":  # teacher only where it holds complementary knowledge
        return pos
    if kind == "t":  # teacher everywhere except where following it would forget
        return ~neg
    # avg: teacher on positive flips, frozen student on negative flips, the average of both elsewhere
    return torch.where(pos, 1.0, torch.where(neg, 0.0, 0.5))


# ------------------------------------------------------------------ single-teacher methods
@register("kl")
def _kl(z_s, z_t, z_s0, y, p, ex=None):
    z_t, z_s = restrict_topk(z_t, z_s, k=p.top_k)
    return kl_to_target(z_s, F.softmax(z_t / p.temperature, dim=1), p.temperature), 1.0


@register("xekl")
def _xekl(z_s, z_t, z_s0, y, p, ex=None):
    kl, _ = _kl(z_s, z_t, z_s0, y, p)
    return p.alpha * kl + (1 - p.alpha) * cross_entropy(z_s, y, p), 1.0


@register("kl_dp")
def _kl_dp(z_s, z_t, z_s0, y, p, ex=None):
    mask = dp_teacher_mask(z_t, z_s0, y)
    return distill(z_s, z_t, z_s0, mask, p), mask.float().mean()


@register("kl_dp_unsup")
def _kl_dp_unsup(z_s, z_t, z_s0, y, p, ex=None):
    mask = dp_teacher_mask(z_t, z_s0, None)
    return distill(z_s, z_t, z_s0, mask, p), mask.float().mean()


@register("labels")
def _labels(z_s, z_t, z_s0, y, p, ex=None):
    return F.cross_entropy(z_s, y), 0.0  # on the logits whatever xe_on says: the plain label training


@register("self_dist")
def _self_dist(z_s, z_t, z_s0, y, p, ex=None):
    w = torch.zeros(len(z_s), dtype=torch.bool, device=z_s.device)
    return distill(z_s, z_t, z_s0, w, p), 0.0


def _flip(kind: str):
    def loss(z_s, z_t, z_s0, y, p, ex=None):
        w = flip_weights(kind, z_s, z_t, y)
        if kind == "avg" and p.flip_avg_neutral == "student_logits":
            return flip_avg_student_logits(z_s, z_t, z_s0, y, p), w.float().mean()
        return distill(z_s, z_t, z_s0, w, p), w.float().mean()
    return loss


def flip_avg_student_logits(z_s, z_t, z_s0, y, p) -> torch.Tensor:
    """flip-avg as the reference code computes it: teacher on positive flips, s0 on negative flips, and elsewhere
    the softmax of the mean of the teacher's and the *current student's* logits, through which the gradient
    also flows (the target moves with the student)."""
    pos, neg = flip_masks(z_s, z_t, y)
    z_t, z_s, z_s0 = restrict_topk(z_t, z_s, z_s0, k=p.top_k)
    neutral = (z_t + z_s) / 2
    z_target = torch.where(pos.unsqueeze(1), z_t, torch.where(neg.unsqueeze(1), z_s0, neutral))
    return kl_to_target(z_s, F.softmax(z_target / p.temperature, dim=1), p.temperature)


register("flip_st")(_flip("st"))
register("flip_t")(_flip("t"))
register("flip_avg")(_flip("avg"))


# ------------------------------------------------------------------ XE-KL-Dist + MCL (slow weights)
class SlowWeights(MethodState):
    """Momentum weight interpolation: theta_slow <- tau * theta_slow + (1 - tau) * theta, on a schedule.

    "steps": every ``every`` optimizer steps through the run; the slow copy starts at the student's weights.
    "reference" (the authors' code): after batch j of each epoch (j from 0) whenever j % N == 0 with
    N = every * 256 / batch_size (a float: the code divides its N by the learning-rate scale), and the slow
    copy starts at the weights after the first step (the code's slow weights alias the live ones until the
    first update). The slow copy is what gets evaluated; floating buffers (BatchNorm statistics) are
    interpolated like weights, integer ones (batch counters) copied.

    ``reset`` "reference" (the authors' code) sets the student's (fast) weights and buffers to the slow ones
    after every epoch's evaluation: its evaluation keeps ``theta_fast = student.state_dict()``, which holds the
    live tensors, loads the slow weights into them to evaluate, and "restores" those same tensors
    (distillation/dist_utils.py, get_val_metrics). The optimizer's momentum is kept, as there.
    """

    def __init__(self, student: torch.nn.Module, tau: float, every: int, schedule: str = "steps",
                 batch_size: int = 256, reset: str = "none"):
        self.slow = copy.deepcopy(student).eval()
        for q in self.slow.parameters():
            q.requires_grad_(False)
        self.tau, self.every, self.schedule, self.reset = tau, every, schedule, reset
        self.n = every / (batch_size / 256)
        self.started = schedule != "reference"

    def due(self, step: int, batch: int) -> bool:
        return batch % self.n == 0 if self.schedule == "reference" else step % self.every == 0

    @torch.no_grad()
    def after_step(self, student, step, batch=0):
        if not self.due(step, batch):
            return
        slow, fast = self.slow.state_dict(), student.state_dict()
        tau = self.tau if self.started else 0.0  # the reference's first update lands on the live weights
        self.started = True
        floats = [k for k, v in slow.items() if v.is_floating_point()]
        torch._foreach_lerp_([slow[k] for k in floats], [fast[k].to(slow[k].dtype) for k in floats], 1 - tau)
        for k, v in slow.items():
            if not v.is_floating_point():
                v.copy_(fast[k])

    def eval_model(self, student):
        return self.slow

    @torch.no_grad()
    def after_eval(self, student):
        if self.reset == "reference":
            student.load_state_dict(self.slow.state_dict())  # copies in place: the optimizer keeps its tensors

    def state_dict(self):
        return {"slow": self.slow.state_dict(), "started": self.started}

    def load_state_dict(self, d):
        self.slow.load_state_dict(d["slow"])
        self.started = d.get("started", True)


def _slow_weights(student, teacher, p, info) -> SlowWeights:
    return SlowWeights(student, p.tau, p.mcl_every, p.mcl_schedule, p.batch_size, p.mcl_reset)


@register("xekl_mcl", make_state=_slow_weights)
def _xekl_mcl(z_s, z_t, z_s0, y, p, ex=None):
    _, neg = flip_masks(z_s, z_t, y)  # teacher wrong, current student right: following it would forget
    keep = ~neg
    z_tk, z_sk = restrict_topk(z_t, z_s, k=p.mcl_top_k)
    kl = kl_to_target(z_sk, F.softmax(z_tk / p.temperature, dim=1), p.temperature, keep.float(), p.mcl_kl_mean)
    return p.mcl_alpha * kl + (1 - p.mcl_alpha) * cross_entropy(z_s, y, p), keep.float().mean()


# ------------------------------------------------------------------ contrastive baselines (features)
CD_TAU = 0.1  # softness of CD's batch-similarity distributions (cosine similarities lie in [-1, 1])


def batch_similarity(f: torch.Tensor, tau: float) -> torch.Tensor:
    """Row-wise log-softmax of the cosine similarities of a batch with itself; self-pairs are left out (their
    entry is 0 and contributes nothing to a KL of two such matrices)."""
    f = F.normalize(f.float(), dim=1)
    sim = f @ f.T / tau
    eye = torch.eye(len(f), dtype=torch.bool, device=f.device)
    return F.log_softmax(sim.masked_fill(eye, float("-inf")), dim=1).masked_fill(eye, 0.0)


def cd_reference(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """CD as the reference code computes it: cosine similarities at temperature 1 with the self-pairs kept,
    row-wise log-softmax, and the KL of the teacher's matrix to the student's summed over all B x B entries
    (so it grows with the batch)."""
    def log_sim(f):
        f = F.normalize(f.float(), dim=1)
        f = f / f.norm(dim=1)[:, None]  # normalised twice, as there: keeps the rounding the same
        return F.log_softmax(f @ f.T, dim=1)

    return F.kl_div(log_sim(f_s), log_sim(f_t), log_target=True, reduction="sum")


@register("cd")
def _cd(z_s, z_t, z_s0, y, p, ex=None):
    # each model's similarities live in its own feature space, so students and teachers of any width compare
    if p.cd_form == "reference":
        kl = cd_reference(ex.f_s, ex.f_t)
    else:
        log_q_t, log_q_s = batch_similarity(ex.f_t, CD_TAU), batch_similarity(ex.f_s, CD_TAU)
        kl = (log_q_t.exp() * (log_q_t - log_q_s)).sum(dim=1).mean()
    return p.cd_weight * kl + p.cd_xe * F.cross_entropy(z_s, y), 1.0


def feature_dim(model: torch.nn.Module) -> int:
    """Width of timm's pre-logits output (forward_head(pre_logits=True))."""
    return int(getattr(model, "head_hidden_size", None) or model.num_features)


class CRDState(MethodState):
    """CRD's embedding heads (trained with the student) and its memory bank of embeddings per sample.

    Student embeddings are contrasted with the teacher's embedding of the same sample against K teacher
    embeddings of other samples from the bank, and symmetrically; the bank entries of the batch's samples
    move towards the new embeddings with momentum 0.5 (CRD's default).
    """

    MOMENTUM = 0.5

    def __init__(self, student, teacher, p, info):
        n, device = info["n_train"], info["device"]
        self.embed_s = torch.nn.Linear(feature_dim(student), p.crd_dim).to(device)
        self.embed_t = torch.nn.Linear(feature_dim(teacher), p.crd_dim).to(device)
        g = torch.Generator().manual_seed(info.get("seed", 0))
        self.bank_s = F.normalize(torch.randn(n, p.crd_dim, generator=g), dim=1).to(device)
        self.bank_t = F.normalize(torch.randn(n, p.crd_dim, generator=g), dim=1).to(device)
        self.k = max(1, min(p.crd_negatives, n - 1))  # never more negatives than other samples exist

    def parameters(self):
        return list(self.embed_s.parameters()) + list(self.embed_t.parameters())

    def train(self, mode=True):
        self.embed_s.train(mode)
        self.embed_t.train(mode)

    def state_dict(self):
        return {"embed_s": self.embed_s.state_dict(), "embed_t": self.embed_t.state_dict(),
                "bank_s": self.bank_s, "bank_t": self.bank_t}

    def load_state_dict(self, d):
        self.embed_s.load_state_dict(d["embed_s"])
        self.embed_t.load_state_dict(d["embed_t"])
        self.bank_s.copy_(d["bank_s"])
        self.bank_t.copy_(d["bank_t"])


def bank_scores(bank: torch.Tensor, anchor: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``<bank[idx[b, j]], anchor[b]>`` for every b, j (B x J), the bank held fixed.

    Gathering J bank rows per sample moves B x J x D floats per step; one product of the whole bank with the
    batch (B x N) and picking the B x J scores from it gives the same scores, 30x faster on a 2-core CPU for a
    CRD bank of 5,390 entries and 2.5x at 128,117 (4,097 entries per sample, D = 128: bench/crd_scores.py,
    BENCHMARKS.md). The product is used while its B x N matrix is at most 32 times the gathered one, which
    bounds its memory."""
    bank = bank.detach()
    if len(bank) <= 32 * idx.shape[1]:  # a copy: the backward pass needs the bank as it was, not as updated
        return (anchor @ bank.clone().T).gather(1, idx)
    return torch.bmm(bank[idx], anchor.unsqueeze(2)).squeeze(2)


def _info_nce(anchor, positive, bank, neg_idx, T):
    """-log softmax of the positive among [positive, K bank negatives], per sample (B x K negatives)."""
    pos = (anchor * positive).sum(dim=1, keepdim=True)
    neg = bank_scores(bank, anchor, neg_idx)
    return F.cross_entropy(torch.cat([pos, neg], dim=1) / T, torch.zeros(len(anchor), dtype=torch.long,
                                                                       device=anchor.device))


def l2(x: torch.Tensor) -> torch.Tensor:
    """Rows divided by their norm, without an epsilon (the reference's Normalize and memory update)."""
    return x.div(x.pow(2).sum(1, keepdim=True).pow(0.5))


class ClassNegatives:
    """Uniform draws, with replacement, among the transfer samples of classes other than a given one."""

    def __init__(self, labels: torch.Tensor):
        self.labels = labels = labels.cpu()
        self.order = torch.argsort(labels, stable=True)  # sample indices grouped by class
        counts = torch.bincount(labels)
        self.count = counts
        self.start = torch.cumsum(counts, 0) - counts
        self.n = len(labels)
        if (self.n - counts.max()) < 1:
            raise ValueError("CRD's class-aware negatives need samples of at least two classes")

    def draw(self, idx: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
        """B x k sample indices, row i from classes other than that of sample idx[i] (CPU indices: no wait
        for the device)."""
        y = self.labels[idx.cpu()]
        others = (self.n - self.count[y]).view(-1, 1)
        r = (torch.rand(len(y), k, generator=gen, dtype=torch.float64) * others).long().clamp_max_(others - 1)
        # positions in ``order`` before the class's block are kept, the rest skip over it
        r = r + (r >= self.start[y].view(-1, 1)).long() * self.count[y].view(-1, 1)
        return self.order[r]


class CRDReferenceState(CRDState):
    """CRD as the reference code (after the CRD authors' own) runs it: linear embeddings L2-normalised, two
    memory banks (initialised uniformly in +-1/sqrt(dim/3), not normalised), the positive of a sample being
    its own bank entry, K negatives from other classes drawn with replacement, exp(<v, m> / T) divided by a
    constant Z fixed on the first batch, and the NCE loss against the uniform noise 1/n."""

    EPS = 1e-7

    def __init__(self, student, teacher, p, info):
        n, device, dim = info["n_train"], info["device"], p.crd_dim
        self.embed_s = torch.nn.Linear(feature_dim(student), dim).to(device)
        self.embed_t = torch.nn.Linear(feature_dim(teacher), dim).to(device)
        g = torch.Generator().manual_seed(info.get("seed", 0))
        stdv = 1.0 / (dim / 3) ** 0.5
        self.bank_s = torch.rand(n, dim, generator=g).mul_(2 * stdv).add_(-stdv).to(device)
        self.bank_t = torch.rand(n, dim, generator=g).mul_(2 * stdv).add_(-stdv).to(device)
        self.z = [-1.0, -1.0]  # Z of the student-anchor and teacher-anchor scores; set on the first batch
        self.k = p.crd_negatives  # with replacement: as many as asked
        self.negatives = ClassNegatives(info["labels"])

    def state_dict(self):
        return {**super().state_dict(), "z": list(self.z)}

    def load_state_dict(self, d):
        super().load_state_dict(d)
        self.z = list(d["z"])


def _make_crd_state(student, teacher, p, info) -> CRDState:
    return (CRDReferenceState if p.crd_form == "reference" else CRDState)(student, teacher, p, info)


def crd_nce(x: torch.Tensor, n_data: int, eps: float = CRDReferenceState.EPS) -> torch.Tensor:
    """The CRD NCE loss of B x (K+1) normalised scores, the positive first, against noise 1/n_data."""
    m, pn = x.shape[1] - 1, 1.0 / n_data
    log_d1 = torch.log(x[:, 0] / (x[:, 0] + m * pn + eps))
    log_d0 = torch.log((m * pn) / (x[:, 1:] + m * pn + eps))
    return -(log_d1.sum() + log_d0.sum()) / len(x)


def crd_reference(st: CRDReferenceState, f_s, f_t, idx, contrast_idx, T: float) -> torch.Tensor:
    """Both anchors' NCE losses, then the memory update of the batch's samples (momentum 0.5)."""
    v_s, v_t = l2(st.embed_s(f_s.float())), l2(st.embed_t(f_t.float()))
    n = len(st.bank_s)
    scores = []
    for i, (anchor, bank) in enumerate(((v_s, st.bank_t), (v_t, st.bank_s))):
        out = torch.exp(bank_scores(bank, anchor, contrast_idx) / T)
        if st.z[i] < 0:
            st.z[i] = out.mean().item() * n
        scores.append(out / st.z[i])
    with torch.no_grad():
        m = CRDState.MOMENTUM
        st.bank_s[idx] = l2(st.bank_s[idx] * m + v_s * (1 - m))
        st.bank_t[idx] = l2(st.bank_t[idx] * m + v_t * (1 - m))
    return crd_nce(scores[0], n) + crd_nce(scores[1], n)


@register("crd", make_state=_make_crd_state)
def _crd(z_s, z_t, z_s0, y, p, ex=None):
    if p.crd_form == "reference":
        st = ex.state
        idx = ex.idx.to(z_s.device)
        neg = st.negatives.draw(ex.idx, st.k, ex.gen).to(z_s.device)
        nce = crd_reference(st, ex.f_s, ex.f_t, idx, torch.cat([idx.view(-1, 1), neg], dim=1), p.crd_temperature)
        return p.crd_weight * nce + p.crd_xe * F.cross_entropy(z_s, y), 1.0
    st: CRDState = ex.state
    v_s = F.normalize(st.embed_s(ex.f_s.float()), dim=1)
    v_t = F.normalize(st.embed_t(ex.f_t.float()), dim=1)
    n = len(st.bank_t)
    # K negatives per sample, drawn uniformly from the other samples (shift past the sample's own index)
    neg = torch.randint(0, n - 1, (len(v_s), st.k), generator=ex.gen).to(v_s.device)
    idx = ex.idx.to(v_s.device)
    neg = neg + (neg >= idx.view(-1, 1)).long()
    nce = _info_nce(v_s, v_t, st.bank_t, neg, p.crd_temperature) + _info_nce(v_t, v_s, st.bank_s, neg,
                                                                             p.crd_temperature)
    with torch.no_grad():
        m = CRDState.MOMENTUM
        st.bank_s[idx] = F.normalize(m * st.bank_s[idx] + (1 - m) * v_s.detach(), dim=1)
        st.bank_t[idx] = F.normalize(m * st.bank_t[idx] + (1 - m) * v_t.detach(), dim=1)
    return p.crd_weight * nce + p.crd_xe * F.cross_entropy(z_s, y), 1.0


# ------------------------------------------------------------------ multi-teacher (parallel)
def parallel_choice(z_ts: torch.Tensor, z_s0: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """Per sample, which model provides the target: 0 the frozen student, i >= 1 teacher i-1 (K x B x C in).

    Supervised: the highest true-class probability; unsupervised (labels None): the highest max probability.
    Ties go to the frozen student (as DP's strict inequality does).
    """
    return _choice(torch.cat([z_s0.unsqueeze(0), z_ts]), labels)


def _choice(logits: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    probs = F.softmax(logits, dim=2)  # (K+1) x B x C, s0 first
    if labels is None:
        score = probs.max(dim=2).values
    else:
        score = probs.gather(2, labels.view(1, -1, 1).expand(len(probs), -1, 1)).squeeze(2)
    return score.argmax(dim=0)  # argmax returns the first maximum: s0 wins ties


def parallel_target(z_ts, z_s0, labels, T: float):
    logits = torch.cat([z_s0.unsqueeze(0), z_ts])  # (K+1) x B x C
    choice = _choice(logits, labels)
    chosen = logits.gather(0, choice.view(1, -1, 1).expand(1, -1, logits.shape[2])).squeeze(0)
    return F.softmax(chosen / T, dim=1), choice


def _parallel(labelled: bool):
    def loss(z_s, z_ts, z_s0, y, p, ex=None):
        target, choice = parallel_target(z_ts, z_s0, y if labelled else None, p.temperature)
        return kl_to_target(z_s, target, p.temperature), (choice > 0).float().mean()
    return loss


register("parallel")(_parallel(True))
register("parallel_unsup")(_parallel(False))


def check_registry() -> None:
    """Every declared method has a loss, and nothing has a loss without its declaration: a declared name without
    one would pass ``plan`` and fail on a worker."""
    problem = out_of_step()
    if problem:
        raise ImportError(problem)


check_registry()
