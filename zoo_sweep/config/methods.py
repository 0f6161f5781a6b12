"""Every transfer method, declared once and without torch: what it reads, its parameters, its check against the
zoo, and (attached to the same name) its loss.

``plan --dry-run`` and ``submit slurm --dry-run`` run on login nodes without torch, yet must reject an unknown
method, a parameter out of range or a top-k above the zoo's class count before anything is queued. So the
facts of a method live here, one :func:`declare` each, and its loss, which needs torch, is attached to the
same name by ``transfer/methods.py`` (``register``); importing that module fails at once, in one line, when a
declared method has no loss or a loss has no declaration. A plugin module attaches its loss with :func:`loss`
and is checked the same way when :func:`load_plugins` imports it.

A method's parameters are frozen dataclasses of spec keys (``schema.key``: default, range, choices, meaning),
*parameter groups*. ``config/params.py`` composes the groups of the built-in methods into ``TransferParams``, so
each key is a flat ``[transfer]`` key, and docs/specs.md lists each group under the methods that read it.
Methods share a group where they read the same key (``top_k``). A job's id holds the common keys
(``params.COMMON_HP``) and the keys of its method's groups, nobody else's: a plugin's keys never reach the ids of
the built-in methods' jobs.

Your own methods: a module that declares them and attaches their losses (docs/methods.md, "Add your own
method"), named by a spec's ``[transfer] plugins`` or by an entry point of group ``zoo_sweep.methods``. Its
parameter groups are [transfer] keys while it is loaded.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import importlib.util
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zoo_sweep.config.schema import key
from zoo_sweep.errors import UserError

# (the [transfer] parameters, the eval set's class count, "the 10 classes of digits:eval") -> what is wrong, or None
ZooCheck = Callable[[Any, int, str], "str | None"]
ENTRY_POINTS = "zoo_sweep.methods"  # the entry-point group of installed packages that declare methods
NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")  # a method name is written to the store, report tables and plot legends


@dataclass(frozen=True)
class MethodInfo:
    name: str
    needs_s0: bool  # the loss reads the frozen student's logits
    description: str
    needs_features: bool = False  # the loss reads penultimate features (Extras.f_s / f_t)
    lr_param: str = "lr"  # the parameter that sets this method's learning rate
    multi: bool = False  # takes a stack of teachers' logits (K x B x C): multi-teacher only, not a spec method
    params: tuple[str, ...] = ("top_k",)  # the keys of its parameter groups: what its jobs' ids hold besides COMMON_HP
    # a control: what the student becomes without a teacher's knowledge, run once per student and seed
    # ([transfer] controls), never per pair; its jobs name the student as their own teacher
    control: bool = False
    groups: tuple[type, ...] = ()  # its parameter groups (dataclasses of spec keys)
    check: ZooCheck | None = None  # its check against the zoo, at plan time
    module: str = __name__  # the module that declared it: this one for the built-in methods


@dataclass(frozen=True)
class Loss:
    """A declared method's loss (``transfer/methods.py`` documents the signature) and the per-run state it keeps."""
    fn: Callable[..., Any]
    make_state: Callable[..., Any] | None
    module: str


CATALOG: dict[str, MethodInfo] = {}
LOSSES: dict[str, Loss] = {}
PLUGINS: dict[str, str | None] = {}  # plugin module -> the sys.path folder it was found in (None: not a file)

# multi-teacher modes of a spec's [transfer] multi_teacher (transfer/multi.py runs them)
MULTI_MODES = ("parallel", "parallel_unsup", "sequential_asc", "sequential_desc", "sequential_asc_matched",
               "sequential_desc_matched", "soup")
# teacher_cache policies (transfer/logit_store.py)
CACHE_POLICIES = ("auto", "off")


def _caller() -> str:
    """The module that called the caller of this function (who declares or attaches)."""
    return str(sys._getframe(2).f_globals.get("__name__", "?"))


def _group_fields(group: type, where: str) -> list[dataclasses.Field[Any]]:
    """The keys of a parameter group, checked: a frozen dataclass whose every field is a ``key`` with a default."""
    frozen = getattr(getattr(group, "__dataclass_params__", None), "frozen", False)
    if not (isinstance(group, type) and dataclasses.is_dataclass(group) and frozen):
        raise UserError(f"{where}: parameters must be frozen dataclasses of keys (@dataclass(frozen=True)), "
                        f"got {group!r}")
    out = list(dataclasses.fields(group))
    for f in out:
        if "doc" not in f.metadata or (f.default is dataclasses.MISSING
                                       and f.default_factory is dataclasses.MISSING):
            raise UserError(f"{where}: parameter {f.name} must be declared with key(default, meaning, ...)")
        if not isinstance(f.type, str):  # the schema reads annotations as text, as `from __future__ import annotations`
            f.type = f.type.__name__ if isinstance(f.type, type) else str(f.type)
    return out


def declare(name: str, description: str, *, params: Iterable[type] = (), needs_s0: bool = False,
            needs_features: bool = False, control: bool = False, multi: bool = False, lr_param: str = "lr",
            check: ZooCheck | None = None) -> MethodInfo:
    """Declare the transfer method ``name``: what it does (one line, docs/methods.md's table), its parameter
    groups ``params``, whether its loss reads the frozen student's logits (``needs_s0``) or penultimate features
    (``needs_features``), whether it is a control (``[transfer] controls``, run once per student), the parameter
    that sets its learning rate, and ``check(params, num_classes, where)``, which says what is wrong with the
    parameters on a zoo of ``num_classes`` classes (``where`` names them: "the 10 classes of digits:eval"),
    or None. Its loss is attached to the same name (``@loss``)."""
    module = _caller()
    where = f"method {name!r} ({module})"
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise UserError(f"method name {name!r} ({module}) is not allowed: use 1-64 lower-case letters, digits "
                        "and '_', starting with a letter")
    old = CATALOG.get(name)
    if (old is not None and old.module != module) or (name in MULTI_MODES and module != __name__):
        by = old.module if old is not None else "a multi-teacher mode"
        raise UserError(f"{where}: the name is taken (by {by}); give yours another name")
    groups = tuple(dict.fromkeys(params))
    names = tuple(f.name for g in groups for f in _group_fields(g, where))
    taken = {f.name: g for m in CATALOG.values() if m.name != name for g in m.groups for f in dataclasses.fields(g)}
    taken.update({f.name: TrainingParams for f in dataclasses.fields(TrainingParams)})
    for g in groups:
        for f in dataclasses.fields(g):
            if taken.get(f.name, g) is not g:
                raise UserError(f"{where}: its key {f.name} is already a key of {taken[f.name].__name__}; give it "
                                f"another name, or read that key through {taken[f.name].__name__}")
    if lr_param != "lr" and lr_param not in names:
        raise UserError(f"{where}: lr_param {lr_param!r} is none of its parameters ({', '.join(names) or 'none'})")
    info = MethodInfo(name, needs_s0, description, needs_features=needs_features, lr_param=lr_param, multi=multi,
                      params=names, control=control, groups=groups, check=check, module=module)
    CATALOG[name] = info
    return info


def attach(name: str, fn: Callable[..., Any], make_state: Callable[..., Any] | None = None,
           module: str | None = None) -> None:
    """Attach ``fn`` as the loss of the declared method ``name`` (``make_state``: its per-run state, if any)."""
    module = module or _caller()
    if name not in CATALOG:
        raise UserError(f"a loss for {name!r} ({module}), which is not declared: declare({name!r}, ...) first")
    old = LOSSES.get(name)
    if old is not None and old.module != module:
        raise UserError(f"method {name!r} already has a loss (from {old.module}); {module} cannot replace it")
    LOSSES[name] = Loss(fn, make_state, module)


def loss(name: str, make_state: Callable[..., Any] | None = None) -> Callable[[Callable[..., Any]],
                                                                                 Callable[..., Any]]:
    """Decorator: the function is the loss of the declared method ``name``. Attaching imports no torch: a
    module that imports torch inside its loss can be read by ``plan --dry-run`` on a machine without it."""
    module = _caller()

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        attach(name, fn, make_state, module)
        return fn
    return deco


def out_of_step(names: Iterable[str] | None = None) -> str | None:
    """What is wrong between the declarations of ``names`` (default: all) and the losses, or None."""
    wanted = set(CATALOG if names is None else names)
    missing = [n for n in CATALOG if n in wanted and n not in LOSSES]
    undeclared = [n for n in LOSSES if n in wanted and n not in CATALOG]
    if not (missing or undeclared):
        return None
    return (f"transfer methods out of step: declared without a loss: {', '.join(missing) or 'none'}; "
            f"a loss without a declaration: {', '.join(undeclared) or 'none'}")


def single_teacher() -> list[str]:
    """The methods a spec lists under [transfer] methods: neither multi-teacher modes nor controls."""
    load_entry_points()
    return [n for n, m in CATALOG.items() if not (m.multi or m.control)]


def controls() -> list[str]:
    """The controls a spec lists under [transfer] controls."""
    load_entry_points()
    return [n for n, m in CATALOG.items() if m.control]


def builtin(m: MethodInfo) -> bool:
    return m.module == __name__


def plugin_groups() -> tuple[type, ...]:
    """The parameter groups of the loaded plugins' methods that no built-in method reads, in declaration order."""
    ours = {g for m in CATALOG.values() if builtin(m) for g in m.groups}
    return tuple(dict.fromkeys(g for m in CATALOG.values() if not builtin(m) for g in m.groups if g not in ours))


def param_field(name: str) -> dataclasses.Field[Any] | None:
    """The declaration of the method parameter ``name`` (any loaded method's), or None."""
    for m in CATALOG.values():
        for g in m.groups:
            found = {f.name: f for f in dataclasses.fields(g)}.get(name)
            if found is not None:
                return found
    return None


def zoo_problem(t: Any, methods: Iterable[str], num_classes: int, where: str) -> str | None:
    """The first thing the checks of ``methods`` find wrong with the parameters ``t`` on a zoo of ``num_classes``
    classes, in declaration order (a key several methods read is named once), or None."""
    wanted = set(methods)
    for m in CATALOG.values():
        problem = m.check(t, num_classes, where) if m.name in wanted and m.check else None
        if problem:
            return problem
    return None


# ------------------------------------------------------------------ plugins
_entry_points_loaded = False


def load_entry_points() -> None:
    """Import, once per process, the modules that installed packages name under the entry-point group
    ``zoo_sweep.methods`` (``mymethod = "mypkg.mymethod"``)."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True  # before the imports: a plugin that calls single_teacher() does not recurse
    try:
        for ep in importlib.metadata.entry_points(group=ENTRY_POINTS):
            _import(ep.value.partition(":")[0].strip(), None, f"entry point {ep.name!r} of {ENTRY_POINTS}")
    except BaseException:
        _entry_points_loaded = False  # the next caller meets the same error, not a registry without them
        raise


def load_plugins(modules: Iterable[str] | Mapping[str, str | None] = ()) -> None:
    """Import the entry-point plugins and ``modules`` (a spec's ``[transfer] plugins``), each at most once. A
    mapping gives each module the folder it was found in on the driver (``plugin_sources``): a worker adds that
    folder to its path when it cannot find the module itself. A module that cannot be imported, or that declares
    a method without a loss, is one UserError, and leaves no declaration behind."""
    load_entry_points()
    folders = modules if isinstance(modules, Mapping) else {}
    for module in modules:
        _import(module, folders.get(module), "[transfer] plugins")


def plugin_sources() -> dict[str, str | None]:
    """Every plugin module loaded in this process and the sys.path folder it came from: what a worker needs to
    import the same ones (``load_plugins``), on this machine or a cluster that shares the folder."""
    return dict(PLUGINS)


def _import(module: str, folder: str | None, what: str) -> None:
    if module in PLUGINS:
        return
    if not isinstance(module, str) or not module or not all(p.isidentifier() for p in module.split(".")):
        raise UserError(f"{what}: {module!r} is not a module name (mypkg.mymethod)")
    if folder and _find(module) is None and folder not in sys.path:
        sys.path.append(folder)  # last: a module of that name elsewhere on the path still wins
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as e:
        _forget(module)
        if e.name and module.startswith(e.name):
            raise UserError(f"{what}: no module {module!r} here; install its package, or put its folder on "
                            "PYTHONPATH (on every machine a worker runs on)") from None
        raise UserError(f"{what}: importing {module} failed: {type(e).__name__}: {e}") from None
    except UserError as e:  # declare's and attach's own messages name the module
        _forget(module)
        raise UserError(f"{what}: {e}") from None
    except Exception as e:
        _forget(module)
        raise UserError(f"{what}: importing {module} failed: {type(e).__name__}: {e}") from None
    own = [n for n, m in CATALOG.items() if m.module == module]
    problem = out_of_step(own)
    if problem:
        _forget(module)
        raise UserError(f"{what}: {module}: {problem}")
    PLUGINS[module] = _folder(module)


def _find(module: str) -> Any:
    try:
        return importlib.util.find_spec(module)
    except (ImportError, ValueError):  # a missing parent package
        return None


def _folder(module: str) -> str | None:
    """The sys.path entry ``module`` was imported from (``/src`` for /src/mypkg/mymethod.py)."""
    file = getattr(sys.modules.get(module), "__file__", None)
    if not file:
        return None
    path = Path(file)
    if path.stem == "__init__":
        path = path.parent
    return str(path.parents[len(module.split(".")) - 1])


def _forget(module: str) -> None:
    """Undo a plugin module's import: its declarations, its losses, and the module itself."""
    for name in [n for n, m in CATALOG.items() if m.module == module]:
        del CATALOG[name]
        LOSSES.pop(name, None)
    for name in [n for n, fn in LOSSES.items() if fn.module == module]:
        del LOSSES[name]
    sys.modules.pop(module, None)
    PLUGINS.pop(module, None)


# ------------------------------------------------------------------ the built-in methods' parameters and checks
# (paper defaults; each option key names zoo-sweep's textbook form and the reference code's form, docs/methods.md)
@dataclass(frozen=True)
class TrainingParams:
    """The keys every method reads: the optimiser, the schedule and what the models see."""
    epochs: int = key(2, "passes over the transfer set", ge=1, le=10_000)
    batch_size: int = key(128, "samples per optimizer step", ge=1, le=65_536)
    lr: float = key(0.01, "SGD learning rate", gt=0, le=10)
    momentum: float = key(0.9, "SGD momentum", ge=0, lt=1)
    weight_decay: float = key(1e-4, "SGD weight decay", ge=0, le=1)
    temperature: float = key(1.0, "distillation temperature T (KL is T^2 * KL(target || softmax(z_s / T)))",
                              ge=0.01, le=100)
    augment: str | bool = key("shift", "train-time augmentation, drawn from the job's seeded stream on the device: "
                              '"paper" (flip p 0.5, colour distortion p 0.8, grayscale p 0.2, as the authors\' '
                              'code), "shift" (random +-2 px shifts), "none"',
                              expect='"paper", "shift" or "none" (true and false, as older specs say: "shift" '
                                     'and "none")', choices=("paper", "shift", "none"))
    inputs: str = key("own", '"own": every model its own timm data config; "student": every model sees the '
                             "student's resolution and crop, only mean/std per model (the authors' code)",
                      choices=("own", "student"), legacy="own")
    lr_scaling: str = key("none", '"linear": the learning rate (lr, mcl_lr) times batch_size / 256 (the authors\' '
                                  'code); "none": as given', choices=("none", "linear"), legacy="none")


@dataclass(frozen=True)
class XEKLParams:
    alpha: float = key(0.5, "xekl: weight of KL against cross-entropy", ge=0, le=1)


@dataclass(frozen=True)
class TopKParams:
    top_k: int = key(0, "KL over the teacher's top-k classes only; 0 = all classes", ge=0, le=100_000)


@dataclass(frozen=True)
class XEOnParams:
    xe_on: str = key("logits", 'xekl, xekl_mcl: cross-entropy on the student\'s "logits", or on its softmax '
                               '"probs" (the authors\' code: a far weaker label term)',
                     choices=("logits", "probs"), legacy="logits")


@dataclass(frozen=True)
class MCLParams:  # XE-KL-Dist + MCL (paper: alpha 0.68, top-k 100, tau 0.9999, every 2 steps, lr 0.01)
    mcl_alpha: float = key(0.68, "xekl_mcl: weight of KL against cross-entropy", ge=0, le=1)
    mcl_top_k: int = key(100, "xekl_mcl: KL over the teacher's top-k classes; 0 = all", ge=0, le=100_000)
    tau: float = key(0.9999, "xekl_mcl: slow-weight momentum", gt=0, lt=1)
    mcl_every: int = key(2, "xekl_mcl: optimizer steps between slow-weight updates (mcl_schedule "
                            '"reference": at batch 256, scaled by 256 / batch_size)', ge=1, le=10_000)
    mcl_lr: float = key(0.01, "xekl_mcl: learning rate", gt=0, le=10)
    mcl_kl_mean: str = key("batch", 'xekl_mcl: the masked KL averaged over the whole "batch", or over the '
                                    '"kept" samples only (the authors\' code)',
                           choices=("batch", "kept"), legacy="batch")
    mcl_schedule: str = key("steps", 'xekl_mcl: "steps": slow weights updated every mcl_every optimizer steps; '
                                     '"reference": after batch j of each epoch (from 0) when j % (mcl_every * 256 '
                                     '/ batch_size) == 0, starting from the weights after the first step',
                            choices=("steps", "reference"), legacy="steps")
    mcl_reset: str = key("none", 'xekl_mcl: the trained (fast) weights after each epoch\'s evaluation: "none": '
                                 'they go on from where they are; "reference": they are set to the slow weights '
                                 'just evaluated (the authors\' code)',
                         choices=("none", "reference"), legacy="none")


@dataclass(frozen=True)
class FlipAvgParams:
    flip_avg_neutral: str = key("s0_probs", 'flip_avg: target where neither model flips: "s0_probs" (mean of '
                                            'the teacher\'s and s0\'s probabilities) or "student_logits" (softmax '
                                            'of the mean of the teacher\'s and the current student\'s logits, '
                                            'gradient included: the authors\' code)',
                                choices=("s0_probs", "student_logits"), legacy="s0_probs")


@dataclass(frozen=True)
class CDParams:  # paper: weight 10, XE 0.1
    cd_weight: float = key(10.0, "cd: weight of the batch-similarity KL", ge=0, le=1000)
    cd_xe: float = key(0.1, "cd: weight of cross-entropy", ge=0, le=1000)
    cd_form: str = key("standard", 'cd: "standard" (cosine similarities / 0.1, self-pairs left out, KL per row '
                                   'averaged) or "reference" (/ 1, self-pairs kept, KL summed over the B x B matrix)',
                       choices=("standard", "reference"), legacy="standard")


@dataclass(frozen=True)
class CRDParams:  # paper: 128-d, 4096 negatives, weight 0.8, XE 1
    crd_weight: float = key(0.8, "crd: weight of the contrastive loss", ge=0, le=1000)
    crd_xe: float = key(1.0, "crd: weight of cross-entropy", ge=0, le=1000)
    crd_dim: int = key(128, "crd: embedding width", ge=1, le=65_536)
    crd_negatives: int = key(4096, "crd: negatives per sample (infonce: capped at the other samples of the set; "
                                   "reference: drawn with replacement)", ge=1, le=1_000_000)
    crd_temperature: float = key(0.07, "crd: temperature of the contrastive softmax", ge=0.001, le=100)
    crd_form: str = key("infonce", 'crd: "infonce" (InfoNCE against uniform negatives) or "reference" (CRD\'s '
                                   'NCE loss with its memory-bank positives, fixed Z and negatives drawn from '
                                   'other classes)', choices=("infonce", "reference"), legacy="infonce")


@dataclass(frozen=True)
class TeacherBNParams:
    teacher_bn: str = key("eval", 'cd, crd: the teacher in "eval" mode, or in "train" mode (BatchNorm on '
                                  'batch statistics, as the authors\' code leaves it)',
                          choices=("eval", "train"), legacy="eval")


def top_k_fits(p: Any, num_classes: int, where: str) -> str | None:
    """``top_k`` keeps at most the zoo's classes (for every method that reads TopKParams)."""
    if p.top_k > num_classes:
        return f"[transfer] top_k = {p.top_k} is larger than {where}; use <= {num_classes} (0 = all)"
    return None


def mcl_top_k_fits(p: Any, num_classes: int, where: str) -> str | None:
    if p.mcl_top_k > num_classes:
        return (f"[transfer] mcl_top_k = {p.mcl_top_k} (the paper's ImageNet value) is larger than {where}; "
                f"set mcl_top_k <= {num_classes} (0 = all)")
    return None


# ------------------------------------------------------------------ the built-in methods
# Notation (docs/methods.md): s the student, t the teacher, s0 the frozen student before transfer, z logits,
# σ softmax, T the temperature; KL is T²·KL(target ‖ σ(z_s/T)) over the teacher's top-k classes when top_k > 0.
_TOP_K = (TopKParams,)  # what the distillation methods read besides the common keys
declare("kl", "KL-Dist: target σ(z_t/T) on every sample", params=_TOP_K, check=top_k_fits)
declare("xekl", "XE-KL-Dist: α·KL + (1−α)·cross-entropy with the labels",
        params=(XEKLParams, TopKParams, XEOnParams), check=top_k_fits)
declare("kl_dp", "KL-Dist + DP (the paper's method): per sample the teacher's target if σ(z_t)_y > σ(z_s0)_y, "
        "else s0's", params=_TOP_K, needs_s0=True, check=top_k_fits)
declare("kl_dp_unsup", "KL-Dist + DP without labels: the teacher if max σ(z_t) > max σ(z_s0)", params=_TOP_K,
        needs_s0=True, check=top_k_fits)
declare("labels", "cross-entropy with the labels on the logits: the student simply trained longer", control=True)
declare("self_dist", "always s0's target: distilled from its frozen self", params=_TOP_K, needs_s0=True, control=True,
        check=top_k_fits)
declare("flip_st", "Flip-st: the teacher's target on the current student's positive flips, s0's elsewhere",
        params=_TOP_K, needs_s0=True, check=top_k_fits)
declare("flip_t", "Flip-t: s0's target on the current student's negative flips, the teacher's elsewhere",
        params=_TOP_K, needs_s0=True, check=top_k_fits)
declare("flip_avg", "Flip-avg: the teacher's target on positive flips, s0's on negative flips, a mix of both "
        "elsewhere", params=(TopKParams, FlipAvgParams), needs_s0=True, check=top_k_fits)
declare("xekl_mcl", "XE-KL-Dist + MCL: no KL where the teacher is wrong and the current student right; slow "
        "weights θ_slow ← τθ_slow + (1−τ)θ are what is evaluated", params=(MCLParams, XEOnParams),
        lr_param="mcl_lr", check=mcl_top_k_fits)
declare("cd", "contrastive distillation of the batch-similarity structure of penultimate features, + "
        "cross-entropy", params=(CDParams, TeacherBNParams), needs_features=True)
declare("crd", "contrastive representation distillation with a memory bank, + cross-entropy",
        params=(CRDParams, TeacherBNParams), needs_features=True)
declare("parallel", "Multi-teacher parallel (supervised): per sample the model surest of the label", multi=True,
        needs_s0=True)
declare("parallel_unsup", "Multi-teacher parallel (unsupervised): per sample the most confident model", multi=True,
        needs_s0=True)
