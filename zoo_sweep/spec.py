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

PAIR_POLICIES = ("all", "stratified")


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
    max_pairs: int | None = None  # cap after the policy; None keeps all
    seed: int = 0


@dataclass(frozen=True)
class TransferSpec:
    methods: tuple[str, ...] = ("kl", "kl_dp")
    epochs: int = 2
    seeds: tuple[int, ...] = (0,)
    batch_size: int = 128
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    temperature: float = 1.0
    alpha: float = 0.5  # xekl: weight of the KL term against cross-entropy
    augment: bool = True


@dataclass(frozen=True)
class RunSpec:
    predict_batch_size: int = 256
    topk: int = 5  # logits kept per sample in prediction records
    max_retries: int = 2


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
    from .transfer.methods import METHODS  # the registry is the one list of method names

    z, t, p = spec.zoo, spec.transfer, spec.pairs
    if z.source not in ("digits", "timm"):
        raise UserError(f"[zoo] source must be 'digits' or 'timm', got {z.source!r}")
    for m in t.methods:
        if m not in METHODS:
            raise UserError(f"unknown method {m!r} in [transfer] methods; known: {', '.join(METHODS)}")
    if t.epochs < 1:
        raise UserError(f"[transfer] epochs must be >= 1, got {t.epochs}")
    if not t.seeds:
        raise UserError("[transfer] seeds must list at least one seed")
    if not 0.0 <= t.alpha <= 1.0:
        raise UserError(f"[transfer] alpha must lie in [0, 1], got {t.alpha}")
    if t.temperature <= 0 or t.lr <= 0 or t.batch_size < 1:
        raise UserError("[transfer] temperature and lr must be > 0 and batch_size >= 1")
    if p.policy not in PAIR_POLICIES:
        raise UserError(f"[pairs] policy must be one of {', '.join(PAIR_POLICIES)}, got {p.policy!r}")
    if list(p.gap_bins) != sorted(p.gap_bins) or len(p.gap_bins) < 2:
        raise UserError("[pairs] gap_bins must be at least two increasing edges")
    for ref in (spec.data.eval, spec.data.transfer):
        kind = ref.split(":", 1)[0]
        if kind not in ("digits", "imagefolder") or ":" not in ref:
            raise UserError(f"data set {ref!r} must be 'digits:eval', 'digits:transfer' or 'imagefolder:PATH'")
