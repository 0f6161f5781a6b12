"""A zoo member: one name bound to an architecture, weights, constructor arguments and preprocessing.

No torch here: planning and dry runs build entries without instantiating a model.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import math
import warnings
from dataclasses import dataclass, field

from zoo_sweep.errors import UserError

FAMILIES = ("cnn", "transformer", "mlp")
# Families from the architecture name (timm's names; prefixes first, then substrings such as "vit" and
# "former"). Hybrids with attention blocks (MaxViT, CoAtNet, FastViT, EfficientViT, ...) count as
# transformers; ResNets with a few attention layers (BoTNet, HaloNet, LambdaNet) stay CNNs.
_TRANSFORMER_PREFIXES = (
    "vit", "deit", "beit", "swin", "cait", "levit", "pit", "xcit", "eva", "convit", "crossvit", "tnt",
    "twins", "coat", "efficientformer", "mvitv2", "pvt", "sequencer", "flexivit", "volo", "tiny_vit",
    "fastvit", "nextvit", "hiera", "davit", "gcvit", "maxvit", "maxxvit", "coatnet", "samvit", "vitamin",
    "mobilevit", "edgenext", "hgnet_vit", "focalnet", "inception_next_vit", "nest_", "efficientvim", "csatv2",
)
_TRANSFORMER_PARTS = ("vit", "former", "swin", "deit", "transformer")
_MLP_PREFIXES = ("mixer", "resmlp", "gmlp", "cyclemlp", "poolformer", "convmlp", "mlp", "tiny_mixer", "tiny_resmlp",
                 "tiny_gmlp", "gmixer")
_MLP_PARTS = ("mixer",)  # not "mlp": convnext_large_mlp (an MLP head) and *_rmlp_* (relative-position MLPs)
# names that look like a transformer or an MLP but are convolutional
_CNN_LOOKALIKES = ("repvit", "convformer", "convmixer", "mambaout")


def family_of(arch: str) -> str:
    base = arch.split(".")[0].lower()
    if base.startswith(_CNN_LOOKALIKES):
        return "cnn"
    if base.startswith(_MLP_PREFIXES):
        return "mlp"
    if base.startswith(_TRANSFORMER_PREFIXES) or any(p in base for p in _TRANSFORMER_PARTS):
        return "transformer"
    if any(p in base for p in _MLP_PARTS):
        return "mlp"
    return "cnn"


@dataclass(frozen=True)
class ModelEntry:
    name: str  # unique within the zoo; a timm tag for the timm source
    arch: str  # timm model name passed to create_model
    family: str
    weights: str | None  # a file path, "hub" (timm pretrained), or None (random: tests only)
    kwargs: dict = field(default_factory=dict)  # create_model size overrides
    data_cfg: dict = field(default_factory=dict)  # pretrained_cfg overlay: input_size, mean, std, crop_pct
    num_classes: int | None = None
    # identifies the weights' content: "sha256:<hex>" of a file, the recipe hash of the embedded zoo (whose
    # files are checked against the checksum recorded when they were built), or "hub" for a pretrained tag
    weights_key: str | None = None
    origin: str = ""  # where the spec defines it ("[zoo.model.NAME]", a checkpoint folder), for messages

    @property
    def ident(self) -> dict:
        """What determines this model's outputs: part of every job id that uses it. Changing a model's arch,
        kwargs, preprocessing or weights changes the ids of exactly its jobs."""
        return {"name": self.name, "arch": self.arch, "kwargs": self.kwargs, "cfg": self.data_cfg,
                "weights": self.weights_key or self.weights, "classes": self.num_classes}

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if not d["origin"]:  # messages only: payloads of models without one stay as they were written before
            del d["origin"]
        return d


def select_names(available: list[str], include: tuple[str, ...], exclude: tuple[str, ...]) -> list[str]:
    """Names matching any include pattern and no exclude pattern; an unmatched pattern is an error."""
    if not include:
        chosen = list(available)
    else:
        chosen = []
        for pat in include:
            hits = [n for n in available if fnmatch.fnmatchcase(n, pat)]
            if not hits:
                close = difflib.get_close_matches(pat, available, n=3)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                raise UserError(f"unknown model {pat!r}{hint}")
            chosen.extend(h for h in hits if h not in chosen)
    return [n for n in chosen if not any(fnmatch.fnmatchcase(n, p) for p in exclude)]


def chance_note(accuracy: float, num_classes: int, n: int | None = None) -> str | None:
    """A warning when an accuracy (percent) is not above chance: almost always the wrong preprocessing (input
    size, mean/std) or a class order other than the eval set's. Within two standard errors of chance on ``n``
    samples counts as chance; None when the model does better."""
    chance = 100.0 / num_classes
    slack = 200.0 * math.sqrt((1 / num_classes) * (1 - 1 / num_classes) / n) if n else 0.0
    if accuracy > chance + slack:
        return None
    if accuracy >= chance - slack:
        return f"accuracy {accuracy:.1f} % = chance for {num_classes} classes: check its preprocessing"
    return (f"accuracy {accuracy:.1f} % < chance ({chance:.1f} %) for {num_classes} classes: check its preprocessing "
            "and that its classes are in the eval set's order")


class ModelWarning(UserWarning):
    """A model that will run, but almost certainly not as meant (weights holding NaN, a std that multiplies the
    pixels by hundreds). Raised while the zoo is resolved, so plan, plan --dry-run and launch all say it before
    anything runs; the command line prints each as one ``warning: MODEL: ...`` line."""


def warn_model(name: str, note: str) -> None:
    warnings.warn(f"{name}: {note}", ModelWarning, stacklevel=2)


def nonfinite_note(path, bad: int, total: int) -> str:
    """The warning for weights with NaN or infinite values: such a model computes NaN for every image, so the
    chance-level note that follows its prediction (check its preprocessing) would point the wrong way."""
    share = f"all {total:,}" if bad == total else f"{bad:,} of the {total:,}"
    return (f"{share} floating-point weights in {path} are NaN or infinite: the model outputs NaN, so it always "
            "answers one class (chance-level accuracy) and every transfer job with it diverges; use weights saved "
            "before training diverged")
