"""Sweep specs: the TOML files under jobs/ parsed into frozen dataclasses.

Unknown keys are errors rather than silently ignored, because a misspelt key (``epoch = 20``) would
otherwise run a whole sweep with the default.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import UserError
from .transfer.params import TransferParams

PAIR_POLICIES = ("all", "stratified", "top_ck", "explicit", "predicted_gain")


@dataclass(frozen=True)
class ZooSpec:
    source: str = "digits"  # "digits": the embedded zoo, built locally; "timm": timm registry names
    recipe: str = "default"  # digits only: which set of embedded recipes ("default" or "micro")
    models: tuple[str, ...] = ()  # names or fnmatch patterns; empty means every model of the source
    exclude: tuple[str, ...] = ()
    weights_dir: str | None = None  # timm only: a folder with one <model>.(safetensors|pth|bin) per model
    checkpoints: dict[str, str] = field(default_factory=dict)  # timm only: explicit model -> file
    allow_random_weights: bool = False  # timm only, for tests: never silently used otherwise
    num_classes: int | None = None  # timm only: head size; default is the eval set's class count


@dataclass(frozen=True)
class DataSpec:
    eval: str = "digits:eval"  # "digits:eval" | "digits:transfer" | "imagefolder:/path"
    transfer: str = "digits:transfer"
    image_size: int = 32  # decode-once cache resolution; each model's data config is applied on top
    class_map: str | None = None  # imagefolder only: file with one folder name per line, in head order


@dataclass(frozen=True)
class PairSpec:
    policy: str = "all"
    per_bin: int = 2  # stratified: pairs drawn per (accuracy-gap bin x family combination)
    gap_bins: tuple[float, ...] = (-100.0, -5.0, 0.0, 5.0, 100.0)  # stratified: bin edges, points
    max_pairs: int | None = None  # cap after the policy (top_ck: how many); None keeps all
    seed: int = 0
    students: tuple[str, ...] = ()  # explicit: names or patterns (the paper's grid)
    teachers: tuple[str, ...] = ()  # explicit: names or patterns
    gain_method: str | None = None  # predicted_gain: whose finished results to learn from (default: first method)


@dataclass(frozen=True)
class TransferSpec(TransferParams):
    """[transfer]: every job hyper-parameter of ``TransferParams`` (paper defaults), plus what a sweep adds."""
    methods: tuple[str, ...] = ("kl", "kl_dp")
    seeds: tuple[int, ...] = (0,)
    # multi-teacher jobs: each student in multi_students learns from all of `teachers` at once
    multi_teacher: tuple[str, ...] = ()  # parallel, parallel_unsup, sequential_asc/_desc[_matched], soup
    multi_students: tuple[str, ...] = ()
    teachers: tuple[str, ...] = ()  # empty: every other model of the zoo
    multi_method: str = "kl_dp"  # the single-teacher method of sequential stages and soup ingredients
    # reuse teacher (and frozen-student) logits across the sweep's jobs: "auto" | "off" (logit_cache.py)
    teacher_cache: str = "auto"
    teacher_cache_max_gb: float = 20.0  # a stream (one model, all epochs) larger than this is not cached


@dataclass(frozen=True)
class RunSpec:
    # "auto": 256 on the CPU; on a GPU the largest power of two (up to 1024) that fits, remembered per model and
    # GPU type in the cache folder (predict_batch_sizes.json)
    predict_batch_size: int | str = "auto"
    topk: int = 5  # logits kept per sample in prediction records
    max_retries: int = 2

    def __post_init__(self):
        b = self.predict_batch_size
        if b != "auto" and (isinstance(b, bool) or not isinstance(b, int) or b < 1):
            raise UserError(f'[run] predict_batch_size must be a positive integer or "auto", got {b!r}')


@dataclass(frozen=True)
class SweepSpec:
    name: str
    description: str = ""
    zoo: ZooSpec = field(default_factory=ZooSpec)
    data: DataSpec = field(default_factory=DataSpec)
    pairs: PairSpec = field(default_factory=PairSpec)
    transfer: TransferSpec = field(default_factory=TransferSpec)
    run: RunSpec = field(default_factory=RunSpec)
    path: str | None = None  # where it was read from; not part of its identity

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("path")
        return d

    @property
    def digest(self) -> str:
        return content_id(self.to_dict())


def content_id(obj: Any, length: int = 16) -> str:
    """Stable short hash of a JSON-able object: the identity of a job, a record or a zoo recipe."""
    blob = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


_SCALARS = {"int": int, "bool": bool, "str": str, "float": (int, float)}


def _build(cls, table: dict[str, Any], where: str):
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(table) - set(known) - {"path"})
    if unknown:
        raise UserError(f"unknown key(s) {', '.join(unknown)} in [{where}]; known: {', '.join(known)}")
    kwargs = {}
    for key, value in table.items():
        declared = str(known[key].type)  # a string: this module uses postponed annotations
        if declared.startswith("tuple"):
            if not isinstance(value, list):
                raise UserError(f"[{where}] {key} must be a list, got {value!r}")
            value = tuple(value)
        elif declared in _SCALARS and not isinstance(value, _SCALARS[declared]):
            raise UserError(f"[{where}] {key} must be {declared}, got {value!r}")
        elif declared == "float":
            value = float(value)
        kwargs[key] = value
    return cls(**kwargs)


def parse_spec(doc: dict[str, Any], path: str | None = None) -> SweepSpec:
    doc = dict(doc)
    name = doc.pop("name", None) or (Path(path).stem if path else None)
    if not name:
        raise UserError("the spec has no name; add name = \"...\" at the top")
    sections = {"zoo": ZooSpec, "data": DataSpec, "pairs": PairSpec, "transfer": TransferSpec, "run": RunSpec}
    parts: dict[str, Any] = {}
    for key, cls in sections.items():
        table = doc.pop(key, {})
        if not isinstance(table, dict):
            raise UserError(f"{key} must be a table ([{key}]) in the spec")
        parts[key] = _build(cls, table, key)
    description = doc.pop("description", "")
    if doc:
        raise UserError(f"unknown top-level key(s) {', '.join(sorted(doc))}; known: name, description, "
                        + ", ".join(f"[{s}]" for s in sections))
    spec = SweepSpec(name=name, description=description, path=path, **parts)
    validate(spec)
    return spec


def load_spec(path: str | Path) -> SweepSpec:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"spec file not found: {p} (sweep specs live in jobs/, e.g. jobs/digits-demo.toml)")
    try:
        doc = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{p} is not valid TOML: {e}") from None
    return parse_spec(doc, str(p))


def validate(spec: SweepSpec) -> None:
    """Checks that need no model or data; name checks against the zoo happen at plan time."""
    from .logit_cache import POLICIES as CACHE_POLICIES
    from .transfer.methods import METHODS  # the registry is the one list of method names

    z, t, p = spec.zoo, spec.transfer, spec.pairs
    if z.source not in ("digits", "timm"):
        raise UserError(f"[zoo] source must be 'digits' or 'timm', got {z.source!r}")
    for m in t.methods:
        if m not in METHODS:
            raise UserError(f"unknown method {m!r} in [transfer] methods; known: {', '.join(METHODS)}")
    if t.teacher_cache not in CACHE_POLICIES:
        raise UserError(f"[transfer] teacher_cache must be one of {', '.join(CACHE_POLICIES)}, got {t.teacher_cache!r}")
    if t.epochs < 1:
        raise UserError(f"[transfer] epochs must be >= 1, got {t.epochs}")
    if not t.seeds:
        raise UserError("[transfer] seeds must list at least one seed")
    if not 0.0 <= t.alpha <= 1.0:
        raise UserError(f"[transfer] alpha must lie in [0, 1], got {t.alpha}")
    _validate_method_params(t)
    if t.temperature <= 0 or t.lr <= 0 or t.batch_size < 1:
        raise UserError("[transfer] temperature and lr must be > 0 and batch_size >= 1")
    if p.policy not in PAIR_POLICIES:
        raise UserError(f"[pairs] policy must be one of {', '.join(PAIR_POLICIES)}, got {p.policy!r}")
    if p.policy in ("top_ck", "predicted_gain") and not p.max_pairs:
        raise UserError(f"[pairs] policy '{p.policy}' needs max_pairs (how many pairs to pick)")
    if p.policy == "explicit" and not (p.students and p.teachers):
        raise UserError("[pairs] policy 'explicit' needs students = [...] and teachers = [...]")
    if p.max_pairs is not None and p.max_pairs < 1:
        raise UserError(f"[pairs] max_pairs must be >= 1, got {p.max_pairs}")
    if list(p.gap_bins) != sorted(p.gap_bins) or len(p.gap_bins) < 2:
        raise UserError("[pairs] gap_bins must be at least two increasing edges")
    for ref in (spec.data.eval, spec.data.transfer):
        kind = ref.split(":", 1)[0]
        if kind not in ("digits", "imagefolder") or ":" not in ref:
            raise UserError(f"data set {ref!r} must be 'digits:eval', 'digits:transfer' or 'imagefolder:PATH'")


def _validate_method_params(t: TransferSpec) -> None:
    """Method parameters and multi-teacher keys; the class-count checks need the data (plan time)."""
    from .transfer.methods import METHODS
    from .transfer.multi import MULTI_MODES

    if not 0.0 <= t.mcl_alpha <= 1.0:
        raise UserError(f"[transfer] mcl_alpha must lie in [0, 1], got {t.mcl_alpha}")
    if not 0.0 < t.tau < 1.0:
        raise UserError(f"[transfer] tau must lie in (0, 1), got {t.tau}")
    if t.top_k < 0 or t.mcl_top_k < 0:
        raise UserError("[transfer] top_k and mcl_top_k must be >= 0 (0 = all classes)")
    if t.mcl_every < 1 or t.crd_dim < 1 or t.crd_negatives < 1:
        raise UserError("[transfer] mcl_every, crd_dim and crd_negatives must be >= 1")
    if t.mcl_lr <= 0 or t.crd_temperature <= 0:
        raise UserError("[transfer] mcl_lr and crd_temperature must be > 0")
    if min(t.cd_weight, t.cd_xe, t.crd_weight, t.crd_xe) < 0:
        raise UserError("[transfer] cd_weight, cd_xe, crd_weight and crd_xe must be >= 0")
    for m in t.methods:
        if METHODS[m].multi:
            raise UserError(f"{m!r} is a multi-teacher mode: list it under [transfer] multi_teacher")
    for mode in t.multi_teacher:
        if mode not in MULTI_MODES:
            raise UserError(f"unknown multi-teacher mode {mode!r} in [transfer] multi_teacher; "
                            f"known: {', '.join(MULTI_MODES)}")
    base = METHODS.get(t.multi_method)
    if base is None or base.multi:
        known = ", ".join(n for n, m in METHODS.items() if not m.multi)
        raise UserError(f"[transfer] multi_method must be a single-teacher method ({known}), got {t.multi_method!r}")
    if t.multi_teacher and not t.multi_students:
        raise UserError("[transfer] multi_teacher needs multi_students: the students that learn from all teachers")
    clash = sorted(set(t.multi_students) & set(t.teachers))
    if clash:
        raise UserError(f"[transfer] teachers contains the student {', '.join(clash)}: a model cannot teach itself")
