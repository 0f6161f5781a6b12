"""The hyper-parameters of one transfer job, with the paper's defaults.

One definition serves both the spec's [transfer] table (``spec.TransferSpec`` extends it with what a sweep
adds: methods, seeds, multi-teacher lists) and the training loop. ``TransferParams`` is the common keys
(``TrainingParams``) composed with the parameter groups the built-in methods declare (config/methods.py), each
key a flat attribute and a flat [transfer] key; ``with_plugins`` adds the groups of the plugin methods that are
loaded. No torch import here: specs are parsed by commands that never train.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Any, SupportsIndex, TypeVar

from zoo_sweep.config.methods import (
    CATALOG,
    CDParams,
    CRDParams,
    FlipAvgParams,
    MCLParams,
    TeacherBNParams,
    TopKParams,
    TrainingParams,
    XEKLParams,
    XEOnParams,
    builtin,
    param_field,
    plugin_groups,
)
from zoo_sweep.errors import UserError


def used_rows(n: int, batch_size: int) -> int:
    """Samples of an n-sample transfer set one epoch trains on: whole batches only (BatchNorm needs more than
    one sample in a batch), or the whole set when it is smaller than a batch. The training loop and the
    logit cache's files both follow this count."""
    return n - n % batch_size if n > batch_size else n


# The keys every transfer job's id holds, whatever its method (a method's own keys are added to them: method_hp).
# alpha is xekl's, yet in every id: it was there before methods declared keys of their own, and ids never move.
COMMON_HP = ("epochs", "batch_size", "lr", "momentum", "weight_decay", "temperature", "alpha", "augment", "inputs",
             "lr_scaling")


# the bases in reverse: a dataclass lists the fields of its last base first, so the common keys lead
@dataclass(frozen=True)
class TransferParams(TeacherBNParams, CRDParams, CDParams, FlipAvgParams, MCLParams, XEOnParams, TopKParams,
                     XEKLParams, TrainingParams):
    def __post_init__(self) -> None:
        if isinstance(self.augment, bool):  # older specs and job payloads: augment = true / false
            object.__setattr__(self, "augment", "shift" if self.augment else "none")
        for f in fields(self):  # a plugin's keys too, when its groups are composed in (with_plugins)
            allowed, value = f.metadata.get("choices"), getattr(self, f.name)
            if allowed and value not in allowed:
                raise UserError(f"[transfer] {f.name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")

    def lr_of(self, field: str) -> float:
        """The learning rate the optimizer uses: ``field`` (lr, mcl_lr, a method's lr_param) after lr_scaling."""
        lr: float = getattr(self, field)
        return lr * self.batch_size / 256 if self.lr_scaling == "linear" else lr

    def __reduce_ex__(self, protocol: SupportsIndex) -> str | tuple[Any, ...]:
        # a class composed with a plugin's groups cannot be found by its name: it is composed again where the
        # parameters are unpickled (where the plugin is loaded too), from its base and its values
        if type(self) not in _COMPOSED.values():
            return super().__reduce_ex__(protocol)
        return _recompose, (type(self).__bases__[-1], {f.name: getattr(self, f.name) for f in fields(self)})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TransferParams:
        """Parameters from a job payload's ``hp`` (see ``job_hp``): options it leaves out read as LEGACY. The keys
        of a loaded plugin's method are kept (its groups composed in); a built-in method's payload gets this very
        class, whatever plugins are loaded."""
        full = with_plugins(cls, d)
        names = {f.name for f in fields(full)}
        return full(**{**{k: v for k, v in LEGACY.items() if k in names}, **{k: v for k, v in d.items() if k in names}})


def _check_composition() -> None:
    """Every parameter group a built-in method declares is part of TransferParams (and so a [transfer] key)."""
    left_out = sorted({g.__name__ for m in CATALOG.values() if builtin(m) for g in m.groups
                       if not issubclass(TransferParams, g)})
    if left_out:
        raise ImportError(f"parameter groups of built-in methods left out of TransferParams: {', '.join(left_out)}")


_check_composition()

# The allowed values of the option keys (config/methods.py declares them with their keys). For each, the
# authors' code (the paper's published numbers) has one form and zoo-sweep's textbook form the other;
# docs/methods.md says which is which.
CHOICES: dict[str, tuple[str, ...]] = {f.name: f.metadata["choices"] for f in fields(TransferParams)
                                       if f.metadata.get("choices")}
# What a job did before each option existed. A job's hyper-parameters leave out an option at this value, so the ids of
# jobs planned before the option was added stay the same (and their results are reused); a payload that lacks the
# key reads back as this value, whatever the default becomes. Never change these (key(..., legacy=...)).
LEGACY: dict[str, Any] = {f.name: f.metadata["legacy"] for f in fields(TransferParams) if "legacy" in f.metadata}
# augment was a bool before it named its kind: "shift" and "none" are stored as true and false
LEGACY_AUGMENT = {"shift": True, "none": False}

_P = TypeVar("_P", bound=TransferParams)
_COMPOSED: dict[tuple[type, ...], type] = {}


def with_plugins(base: type[_P], names: Iterable[str] | None = None) -> type[_P]:
    """``base`` (TransferParams or the spec's TransferSpec) with the parameter groups of the loaded plugins'
    methods composed in: all of them, or (``names``) those that hold one of these keys. Without any, ``base``
    itself. A plugin key that is already a key of ``base``, or of another plugin, is refused."""
    wanted = None if names is None else set(names)
    groups = [g for g in plugin_groups() if wanted is None or any(f.name in wanted for f in fields(g))]
    if not groups:
        return base
    found = _COMPOSED.get((base, *groups))
    if found is None:
        taken = {f.name: base.__name__ for f in fields(base)}
        for g in groups:
            for f in fields(g):
                if f.name in taken:
                    raise UserError(f"[transfer] {f.name}: a key of {g.__module__}.{g.__name__} is already a key of "
                                    f"{taken[f.name]}; give it a name of its own")
                taken[f.name] = f"{g.__module__}.{g.__name__}"
        # the groups' own fields after the base's: same class name, so messages and docs still say TransferParams
        cls = type(base.__name__, (*reversed(groups), base), {"__module__": base.__module__,
                                                              "__qualname__": base.__qualname__})
        found = _COMPOSED[(base, *groups)] = dataclass(frozen=True)(cls)
    return found


def _recompose(base: type[TransferParams], values: dict[str, Any]) -> TransferParams:
    return with_plugins(base, values)(**values)


def job_hp(params: TransferParams, names: Iterable[str]) -> dict[str, Any]:
    """The hyper-parameters ``names`` of a job, as its payload (and so its id) carries them: options at their
    LEGACY value are left out and augment "shift" / "none" is written true / false, so a spec that uses none
    of the newer options plans the very jobs it planned before they existed. A plugin key the parameters lack
    (built without the plugin loaded) has its declared default."""
    out = {}
    for k in names:
        v = getattr(params, k) if hasattr(params, k) else _default(k)
        if k in LEGACY and v == LEGACY[k]:
            continue
        out[k] = LEGACY_AUGMENT.get(v, v) if k == "augment" else v
    return out


def _default(name: str) -> Any:
    f = param_field(name)
    if f is None:
        raise AttributeError(f"no transfer parameter {name!r} is declared")
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
