"""What every transfer method is, by name, without torch: the registry that specs are checked against.

``plan --dry-run`` and ``submit slurm --dry-run`` run on login nodes without torch, yet must reject an
unknown method before anything is queued. So the facts about a method (what it reads, which parameters it
uses, whether it runs the frozen student) live here, and ``methods.py`` attaches the loss to each name; a
test holds the two to the same set of names.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MethodInfo:
    name: str
    needs_s0: bool  # the loss reads the frozen student's logits
    description: str
    needs_features: bool = False  # the loss reads penultimate features (Extras.f_s / f_t)
    lr_param: str = "lr"  # the TransferParams field that sets this method's learning rate
    multi: bool = False  # takes a stack of teachers' logits (K x B x C): multi-teacher only, not a spec method
    params: tuple[str, ...] = ("top_k",)  # TransferParams fields this method reads beyond the common ones
    # a control: what the student becomes without a teacher's knowledge, run once per student and seed
    # ([transfer] controls), never per pair; its jobs name the student as their own teacher
    control: bool = False


CATALOG: dict[str, MethodInfo] = {}


def _declare(name: str, needs_s0: bool, description: str, **kw) -> None:
    CATALOG[name] = MethodInfo(name, needs_s0, description, **kw)


_declare("kl", False, "KL-Dist: match the teacher on every sample")
_declare("xekl", False, "XE-KL-Dist: alpha * KL + (1 - alpha) * cross-entropy with labels",
         params=("top_k", "xe_on"))
_declare("kl_dp", True, "KL-Dist + DP (supervised): teacher where it is surer of the label")
_declare("kl_dp_unsup", True, "KL-Dist + DP (unsupervised): teacher where it is more confident")
_declare("labels", False, "Labels only: cross-entropy with the labels, the student trained as long without a "
         "teacher (a control)", control=True, params=())
_declare("self_dist", True, "Self-distillation: always the frozen student (a control)", control=True)
_declare("flip_st", True, "Flip-st: teacher on positive flips of the current student, else s0")
_declare("flip_t", True, "Flip-t: s0 on negative flips of the current student, else teacher")
_declare("flip_avg", True, "Flip-avg: teacher on positive flips, s0 on negative flips, their average elsewhere",
         params=("top_k", "flip_avg_neutral"))
_declare("xekl_mcl", False, "XE-KL-Dist + MCL: slow weights (momentum interpolation), no KL where only the "
         "student is right", lr_param="mcl_lr",
         params=("mcl_alpha", "mcl_top_k", "tau", "mcl_every", "mcl_lr", "xe_on", "mcl_kl_mean", "mcl_schedule",
                 "mcl_reset"))
_declare("cd", False, "CD: match the teacher's batch-similarity structure of penultimate features, + XE",
         needs_features=True, params=("cd_weight", "cd_xe", "cd_form", "teacher_bn"))
_declare("crd", False, "CRD: contrastive representation distillation with a memory bank, + XE",
         needs_features=True, params=("crd_weight", "crd_xe", "crd_dim", "crd_negatives", "crd_temperature",
                                      "crd_form", "teacher_bn"))
_declare("parallel", True, "Multi-teacher parallel (supervised): per sample the model surest of the label",
         multi=True, params=())
_declare("parallel_unsup", True, "Multi-teacher parallel (unsupervised): per sample the most confident model",
         multi=True, params=())

# multi-teacher modes of a spec's [transfer] multi_teacher (transfer/multi.py runs them)
MULTI_MODES = ("parallel", "parallel_unsup", "sequential_asc", "sequential_desc", "sequential_asc_matched",
               "sequential_desc_matched", "soup")
# teacher_cache policies (transfer/logit_store.py)
CACHE_POLICIES = ("auto", "off")


def single_teacher() -> list[str]:
    """The methods a spec lists under [transfer] methods: neither multi-teacher modes nor controls."""
    return [n for n, m in CATALOG.items() if not (m.multi or m.control)]


def controls() -> list[str]:
    """The controls a spec lists under [transfer] controls."""
    return [n for n, m in CATALOG.items() if m.control]
