"""Sweep specs: the TOML files under jobs/ parsed into frozen dataclasses.

Unknown keys are errors rather than silently ignored, because a misspelt key (``epoch = 20``) would
otherwise run a whole sweep with the default.
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zoo_sweep.config.methods import load_plugins
from zoo_sweep.config.params import TransferParams, with_plugins
from zoo_sweep.config.schema import build, check_value, key
from zoo_sweep.errors import UserError
from zoo_sweep.ids import content_id
from zoo_sweep.urls import redact

INTERPOLATIONS = ("bilinear", "bicubic", "nearest")  # the resize filters the per-batch transform implements
# Limits of values with a physical meaning, each far beyond what a sweep uses and short of what breaks a run
MIN_SIDE, MAX_SIDE = 8, 4096  # image sides, px: the decode cache and every model's input
MAX_RESIZE = 8192  # px: the resize before a centre crop (input_size / crop_pct), a few GB per batch beyond
MAX_CLASSES = 100_000  # a head's outputs (ImageNet-21k has 21,843)
MAX_IMAGES = 1_000_000_000  # a subset's image count
MAX_PAIRS = 100_000_000  # pairs a policy picks (a zoo of 10,000 models has 10^8 ordered pairs)
MAX_SEED = 2**31 - 1  # every seed: what NumPy, scikit-learn and PyTorch all accept
STD_WARN = 0.05  # a std below this multiplies pixels by more than 20: allowed (0-255 models), with a warning


@dataclass(frozen=True)
class DataOverrides:
    """A model's preprocessing, in timm's pretrained-config keys. A key left out keeps what the checkpoint's own
    config.json says, else timm's config of the architecture (often 224 px and ImageNet mean/std)."""
    input_size: tuple[int, ...] | None = key(None, "[channels, height, width] the model sees, e.g. [3, 32, 32]: "
                                                   "3 channels (images are fed as RGB), height = width, from "
                                                   f"{MIN_SIDE} to {MAX_SIDE}", ge=1, le=MAX_SIDE)
    interpolation: str | None = key(None, 'resize filter: "bilinear", "bicubic" or "nearest"')
    mean: tuple[float, ...] | None = key(None, "per-channel mean subtracted from pixels scaled to [0, 1] (on that "
                                               "scale, not 0-255)", ge=0, le=1)
    std: tuple[float, ...] | None = key(None, "per-channel standard deviation the pixels are divided by (on the "
                                              f"[0, 1] scale; below {STD_WARN:g} a warning: it multiplies the pixels "
                                              f"by more than {1 / STD_WARN:g})", ge=1e-3, le=10)
    crop_pct: float | None = key(None, "centre crop: resize to input_size / crop_pct, then crop input_size "
                                       f"(1.0: no crop); the resize is at most {MAX_RESIZE} px", ge=0.05, le=1)

    def given(self) -> dict[str, Any]:
        """The keys this table sets (lists as tuples, the form timm's configs use)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass(frozen=True)
class ModelSpec:
    """One model of your own zoo ([zoo.model.NAME]); the same keys under [zoo.defaults] apply to every model."""
    arch: str | None = key(None, "timm architecture or pretrained tag (as in timm.list_models()); optional when "
                                 "checkpoint is a folder with timm's config.json")
    checkpoint: str | None = key(None, "weights: a .pth/.pt/.bin/.safetensors file (plain state dict, "
                                       "{state_dict: ...} or {model: ...}, DDP 'module.' prefixes) or a folder "
                                       "with timm's config.json and model.safetensors; none: timm's pretrained "
                                       "weights of arch")
    kwargs: dict[str, Any] = key(doc="arguments to timm.create_model: img_size, patch_size, num_classes, "
                                     "drop_rate, ...", factory=dict)
    data: DataOverrides = key(doc="preprocessing, timm's keys: input_size, interpolation, mean, std, crop_pct",
                              factory=DataOverrides)


@dataclass(frozen=True)
class ZooSpec:
    source: str = key("digits", '"digits": the embedded zoo, built locally; "timm": timm registry names')
    recipe: str = key("default", 'digits only: which set of embedded recipes ("default" or "micro")')
    models: tuple[str, ...] = key((), "names or fnmatch patterns of the source's models; empty: every model of the "
                                      "source, or none when the spec lists its own ([zoo.model.*], checkpoint_dirs)",
                                  unique=True)
    exclude: tuple[str, ...] = key((), "names or fnmatch patterns left out (the source's and your own)", unique=True)
    weights_dir: str | None = key(None, "timm only: a folder with one <model>.(safetensors|pth|bin) per model")
    checkpoints: dict[str, str] = key(doc="timm only: explicit model -> weights file", factory=dict)
    allow_random_weights: bool = key(False, "timm only, for tests: random weights where none are found")
    num_classes: int | None = key(None, "head size of models that do not say (kwargs, config.json); default: the "
                                        "eval set's class count", ge=1, le=MAX_CLASSES)
    checkpoint_dirs: tuple[str, ...] = key((), "folders or glob patterns (\"/ckpt/*\"), each folder holding timm's "
                                               "config.json and model.safetensors: one model per folder, named by "
                                               "the folder", unique=True)
    defaults: ModelSpec = key(doc="[zoo.defaults]: arch, kwargs and data for every model that does not set them "
                                  "(not the embedded digits zoo)", factory=ModelSpec)
    model: dict[str, ModelSpec] = key(doc="[zoo.model.NAME]: a model named NAME (its name in the store, the "
                                          "report and the pairs): arch, checkpoint, kwargs, data", factory=dict)

    @property
    def has_own(self) -> bool:
        """Whether the spec lists models of its own besides (or instead of) the source's."""
        return bool(self.model or self.checkpoint_dirs)


@dataclass(frozen=True)
class DataSpec:
    eval: str = key("digits:eval", '"digits:eval", "digits:val", "digits:transfer" or "imagefolder:/path"')
    transfer: str = key("digits:transfer", "the transfer set, as eval")
    image_size: int = key(32, "decode-once cache resolution; each model's data config is applied on top",
                          ge=MIN_SIDE, le=MAX_SIDE)
    class_map: str | None = key(None, "imagefolder only: file with one class folder name per line, in head order")
    eval_subset: int | float | None = key(None, "a class-stratified subset of the eval set: a fraction (0.1) or a "
                                                "count of images; part of every cache and job key", gt=0,
                                            le=MAX_IMAGES)
    transfer_subset: int | float | None = key(None, "as eval_subset, for the transfer set (the paper: 0.1 of "
                                                    "ImageNet train)", gt=0,
                                                le=MAX_IMAGES)
    subset_seed: int = key(1234, "random_state of the stratified subsets (scikit-learn's StratifiedShuffleSplit)",
                           ge=0, le=MAX_SEED)

    def __post_init__(self) -> None:
        for name in ("eval_subset", "transfer_subset"):
            v = getattr(self, name)
            if isinstance(v, float) and not 0 < v < 1:
                raise UserError(f"[data] {name} must be a fraction below 1 (0.1) or a whole count of images "
                                f"(12800), got {v!r}")


@dataclass(frozen=True)
class PairSpec:
    policy: str = key("all", "all, stratified, top_ck, explicit or predicted_gain")
    per_bin: int = key(2, "stratified: pairs drawn per (accuracy-gap bin x family combination)", ge=1,
                       le=MAX_PAIRS)
    gap_bins: tuple[float, ...] = key((-100.0, -5.0, 0.0, 5.0, 100.0), "stratified: bin edges, in points", ge=-100,
                                      le=100)
    max_pairs: int | None = key(None, "cap after the policy (top_ck, predicted_gain: how many)", ge=1, le=MAX_PAIRS)
    seed: int = key(0, "seed of the policy's random choices", ge=0, le=MAX_SEED)
    students: tuple[str, ...] = key((), "explicit: student names or patterns (the paper's grid)", unique=True)
    teachers: tuple[str, ...] = key((), "explicit: teacher names or patterns", unique=True)
    gain_method: str | None = key(None, "predicted_gain: whose finished results to learn from (default: first method)")


@dataclass(frozen=True)
class TransferSpec(TransferParams):
    """[transfer]: every job hyper-parameter of ``TransferParams`` (paper defaults), plus what a sweep adds. A
    spec read while plugins are loaded is of ``with_plugins(TransferSpec)``: their keys too."""
    methods: tuple[str, ...] = key(("kl", "kl_dp"), "single-teacher methods, by name (docs/methods.md)", unique=True)
    seeds: tuple[int, ...] = key((0,), "one job per seed (controls too)", ge=0, le=MAX_SEED, unique=True)
    controls: tuple[str, ...] = key(("labels",), 'run once per student and seed beside the methods, the yardstick of '
                                                 'every gain: "labels" (the student trained as long on the labels '
                                                 'alone, same optimiser and inputs), "self_dist" (distilled from its '
                                                 'frozen self); [] for none', unique=True)
    multi_teacher: tuple[str, ...] = key((), "multi-teacher modes: parallel, parallel_unsup, "
                                             "sequential_asc/_desc[_matched], soup", unique=True)
    multi_students: tuple[str, ...] = key((), "multi-teacher: the students that learn from all teachers", unique=True)
    teachers: tuple[str, ...] = key((), "multi-teacher: the teachers; empty: every other model of the zoo",
                                    unique=True)
    multi_method: str = key("kl_dp", "multi-teacher: the single-teacher method of sequential stages and soups")
    teacher_cache: str = key("auto", 'reuse teacher and frozen-student logits across jobs: "auto" or "off"')
    teacher_cache_max_gb: float = key(20.0, "a logit stream (one model, all epochs) larger than this is not cached",
                                      ge=0, le=1_000_000)
    plugins: tuple[str, ...] = key((), "modules that declare methods of your own (docs/methods.md, \"Add your own "
                                       'method"), imported before the rest of the spec is read, and by every worker',
                                   unique=True)


@dataclass(frozen=True)
class RunSpec:
    predict_batch_size: int | str = key("auto", '"auto" (256 on the CPU; on a GPU the largest power of two up to '
                                                "1024 that fits, remembered per model and GPU) or a number", ge=1,
                                        le=65_536,
                                        expect='a positive integer or "auto"')
    topk: int = key(5, "logits kept per sample in prediction records", ge=1, le=MAX_CLASSES)
    max_retries: int = key(2, "retries of a failed job before it stays failed", ge=0, le=100)
    gpus_per_job: float | str = key(1.0, 'GPU share of a transfer job: 0.5 runs two jobs per GPU; "auto" measures '
                                         "1, 2, 4 and 8 concurrent jobs on one GPU before the transfer stage and "
                                         "takes the most that still pays (docs/gpus.md); `launch --gpus-per-job` "
                                         "overrides it", gt=0, le=64, expect='a number > 0 or "auto"')
    compile: bool = key(False, "torch.compile the transfer jobs' forward and backward passes, once per worker "
                               "and architecture (on the CPU it needs a C++ compiler)")
    fused_optimizer: bool = key(False, "the transfer jobs' SGD as one fused kernel (PyTorch's fused=True)")

    def speed(self) -> dict[str, bool]:
        """The speed options as each transfer job's inputs carry them (``pipeline.worker.speed_options``)."""
        return {"compile": self.compile, "fused": self.fused_optimizer}

    def __post_init__(self) -> None:
        for name in ("predict_batch_size", "gpus_per_job"):
            v = getattr(self, name)
            if isinstance(v, str) and v != "auto":
                what = "a positive integer" if name == "predict_batch_size" else "a number > 0"
                raise UserError(f'[run] {name} must be {what} or "auto", got {v!r}')


TRACKING_BACKENDS = ("none", "mlflow", "wandb")
WANDB_MODES = ("offline", "online")
# W&B refuses these in a project or entity name (and a name becomes a folder): letters, digits, '.', '_', '-'
WANDB_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
# what MLflow logs to: its server over HTTP(S), a local folder or SQLite file, or a database of its own. A URI without
# one of these schemes (``localhost:5000``) MLflow would take for a folder name and quietly log there
TRACKING_SCHEMES = ("http", "https", "file", "sqlite", "postgresql", "mysql", "mssql")


@dataclass(frozen=True)
class TrackingSpec:
    """[tracking]: where a launch logs its transfer runs besides the store (docs/launch.md). Not part of the sweep's
    identity: it changes no job id and is not written to the store, where a password in its URI would be kept."""
    backend: str = key("none", '"none", "mlflow" or "wandb": one run per transfer, control and multi-teacher job '
                               "(pip install 'zoo-sweep[mlflow]' or 'zoo-sweep[wandb]')")
    uri: str | None = key(None, "MLflow tracking URI: http://HOST:PORT, https://HOST, file:/PATH or sqlite:///PATH; "
                                "unset: $MLFLOW_TRACKING_URI, else mlflow.db (SQLite) in the results folder (--home)")
    project: str = key("zoo-sweep", "W&B project; each sweep is a group in it")
    entity: str | None = key(None, "W&B entity (user or team); unset: your default entity")
    mode: str = key("offline", '"offline" (W&B run folders under the results folder, for `wandb sync`) or "online"')

    def __post_init__(self) -> None:
        if self.backend not in TRACKING_BACKENDS:
            raise UserError(f"[tracking] backend must be one of {', '.join(map(repr, TRACKING_BACKENDS))}, "
                            f"got {self.backend!r}")
        if self.uri is not None:
            if self.backend == "wandb":
                raise UserError('[tracking] uri is where MLflow logs; W&B takes project, entity and mode instead')
            check_tracking_uri(self.uri, "[tracking] uri")
        if self.mode not in WANDB_MODES:
            raise UserError(f"[tracking] mode must be one of {', '.join(map(repr, WANDB_MODES))}, got {self.mode!r}")
        for k in ("project", "entity"):
            v = getattr(self, k)
            if v is not None and not WANDB_NAME.fullmatch(v):
                raise UserError(f"[tracking] {k} {v!r} is not a W&B name: use 1-128 letters, digits, '.', '_' or '-'")


def tracking_uri_problem(uri: str) -> str | None:
    """What keeps ``uri`` from being a tracking URI MLflow can log to, or None."""
    from urllib.parse import urlsplit

    if not uri:
        return "it is empty"
    if any(c.isspace() for c in uri):
        return "it holds a space"
    scheme, colon, rest = uri.partition(":")
    base, plus, _ = scheme.lower().partition("+")
    if not colon or base not in TRACKING_SCHEMES or (plus and base in ("http", "https", "file", "sqlite")):
        return "it has no scheme MLflow logs to"
    if base == "file":
        host, path = (rest[2:].partition("/")[0], "/" + rest[2:].partition("/")[2]) if rest.startswith("//") \
            else ("", rest)
        if host not in ("", "localhost"):
            return "a file: URI names a folder on this machine, not on a host"
        return None if path.strip("/") else "it names no folder"
    if base == "sqlite":
        db = rest[3:] if rest.startswith("///") else ""
        # in memory (sqlite://, :memory:): nothing logged there would outlast the launch
        return None if db and db != ":memory:" and "mode=memory" not in db else "it names no database file"
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018  (raises ValueError for a port that is no number from 0 to 65535)
    except ValueError:
        return "its port is not a number from 1 to 65535"
    if not rest.startswith("//") or not parts.hostname:
        return "it names no host"
    if parts.port == 0:
        return "its port is not a number from 1 to 65535"
    return None


def check_tracking_uri(uri: str, where: str) -> str:
    """``uri`` when MLflow can log to it; a UserError naming ``where`` (a key, a flag, a variable) otherwise. The
    URI in the message has its password masked."""
    problem = tracking_uri_problem(uri) if isinstance(uri, str) else "it is not a string"
    if problem:
        raise UserError(f"{where} {redact(str(uri))!r} is not an MLflow tracking URI: {problem}; give "
                        "http://HOST:PORT, https://HOST, file:/PATH or sqlite:///PATH")
    return uri


SECTIONS = {"zoo": ZooSpec, "data": DataSpec, "pairs": PairSpec, "transfer": TransferSpec, "run": RunSpec,
            "tracking": TrackingSpec}


@dataclass(frozen=True)
class SweepSpec:
    name: str
    description: str = ""
    zoo: ZooSpec = field(default_factory=ZooSpec)
    data: DataSpec = field(default_factory=DataSpec)
    pairs: PairSpec = field(default_factory=PairSpec)
    transfer: TransferSpec = field(default_factory=TransferSpec)
    run: RunSpec = field(default_factory=RunSpec)
    # where runs are logged besides the store: not part of its identity (spec_hash, the stored spec) either, so
    # turning tracking on or off changes nothing stored, and a password in its URI is never stored
    tracking: TrackingSpec = field(default_factory=TrackingSpec)
    path: str | None = None  # where it was read from; not part of its identity

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("path")
        d.pop("tracking")
        # a spec that uses no plugin reads as it did before plugins existed, whatever plugins are installed
        t = d["transfer"]
        if not t["plugins"]:
            del t["plugins"]
        for f in dataclasses.fields(self.transfer):
            if f.name not in TransferSpec.__dataclass_fields__ and t[f.name] == f.default:
                del t[f.name]
        return d

    def with_tracking(self, uri: str, where: str = "--tracking") -> SweepSpec:
        """This spec logging to MLflow at ``uri`` (``launch --tracking URI``), whatever its [tracking] says."""
        return dataclasses.replace(self, tracking=TrackingSpec("mlflow", check_tracking_uri(uri, where)))

    @property
    def digest(self) -> str:
        return content_id(self.to_dict())


def parse_spec(doc: dict[str, Any], path: str | None = None) -> SweepSpec:
    doc = dict(doc)
    name = doc.pop("name", None)
    if name is None:
        name = Path(path).stem if path else None
    if not name:
        raise UserError("the spec has no name; add name = \"...\" at the top")
    check_name(name)
    # the methods a spec's plugins declare, and their keys, must be known before [transfer] is read
    table = doc.get("transfer")
    if isinstance(table, dict) and "plugins" in table:
        load_plugins(check_value(TransferSpec, "plugins", table["plugins"], "transfer"))
    else:
        load_plugins()
    sections = {**SECTIONS, "transfer": with_plugins(TransferSpec)}
    # Any: each value is its own section class, the SweepSpec keyword of that name
    parts: dict[str, Any] = {section: build(cls, doc.pop(section, {}), section) for section, cls in sections.items()}
    description = doc.pop("description", "")
    if not isinstance(description, str):
        raise UserError(f"description must be a string, got {description!r}")
    if doc:
        raise UserError(f"unknown top-level key(s) {', '.join(sorted(doc))}; known: name, description, "
                        + ", ".join(f"[{s}]" for s in SECTIONS))
    spec = SweepSpec(name=name, description=description, path=path, **parts)
    validate(spec)
    return spec


def load_spec(path: str | Path) -> SweepSpec:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"spec file not found: {p} (sweep specs live in jobs/, e.g. jobs/digits-demo.toml)")
    try:
        doc = tomllib.loads(p.read_text())
    except UnicodeDecodeError:
        raise UserError(f"{p} is not a text file; a sweep spec is TOML (see jobs/digits-demo.toml)") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{p} is not valid TOML: {e}") from None
    except RecursionError:  # tomllib parses nested arrays and inline tables recursively
        raise UserError(f"{p} nests arrays or tables too deeply to read; a sweep spec is a few tables deep") from None
    except ValueError as e:  # an integer of more than 4300 digits: Python refuses to convert it
        raise UserError(f"{p} is not a usable spec: {str(e).split(';')[0]}") from None
    if not set(doc) - {"name", "description"}:
        raise UserError(f"{p} says nothing about the sweep: give at least [zoo] and [transfer] "
                        "(see jobs/digits-demo.toml)")
    return parse_spec(doc, str(p))


def validate(spec: SweepSpec) -> None:
    """Rules that tie keys together (types and ranges are the schema's). Names chosen from a registry (methods,
    policies, sources) are checked by ``pipeline.plan.check_names``: the registries live in the layers that
    implement them."""
    t, p = spec.transfer, spec.pairs
    validate_zoo(spec.zoo)
    if not t.seeds:
        raise UserError("[transfer] seeds must list at least one seed")
    if p.policy in ("top_ck", "predicted_gain") and not p.max_pairs:
        raise UserError(f"[pairs] policy '{p.policy}' needs max_pairs (how many pairs to pick)")
    if p.policy == "explicit" and not (p.students and p.teachers):
        raise UserError("[pairs] policy 'explicit' needs students = [...] and teachers = [...]")
    if list(p.gap_bins) != sorted(set(p.gap_bins)) or len(p.gap_bins) < 2:
        raise UserError("[pairs] gap_bins must be at least two increasing edges")
    for ref in (spec.data.eval, spec.data.transfer):
        kind, _, arg = ref.partition(":")
        if not (kind == "digits" and arg in ("eval", "val", "transfer")) and not (kind == "imagefolder" and arg):
            raise UserError(f"data set {ref!r} must be 'digits:eval', 'digits:val', 'digits:transfer' or "
                            "'imagefolder:PATH'")
    if t.multi_teacher and not t.multi_students:
        raise UserError("[transfer] multi_teacher needs multi_students: the students that learn from all teachers")
    clash = sorted(set(t.multi_students) & set(t.teachers))
    if clash:
        raise UserError(f"[transfer] teachers contains the student {', '.join(clash)}: a model cannot teach itself")


def validate_zoo(z: ZooSpec) -> None:
    """[zoo.defaults] and [zoo.model.*]: model names, and preprocessing timm's transforms can follow."""
    if z.defaults.checkpoint is not None:
        raise UserError("[zoo.defaults] checkpoint: every model has its own weights; set checkpoint in "
                        "[zoo.model.NAME] or use checkpoint_dirs")
    check_data(z.defaults.data.given(), "[zoo.defaults.data]")
    for alias, m in z.model.items():
        check_model_name(alias, f"[zoo.model.{alias}]")
        check_data(m.data.given(), f"[zoo.model.{alias}.data]")


def check_data(cfg: dict[str, Any], where: str) -> None:
    """Preprocessing keys that go together (the schema checks each alone, DataOverrides' ranges); also run on
    configs read from a checkpoint's config.json, after the same schema checks (zoo/own.py)."""
    size = cfg.get("input_size")
    if size is not None:
        if len(size) != 3 or size[1] != size[2]:
            raise UserError(f"{where} input_size must be [channels, height, width] with height = width, "
                            f"got {list(size)}")
        if size[0] != 3:  # model_input always hands a model the decoded RGB images
            raise UserError(f"{where} input_size must have 3 channels (images are fed to every model as RGB), "
                            f"got {list(size)}")
        if not MIN_SIDE <= size[1] <= MAX_SIDE:
            raise UserError(f"{where} input_size height and width must be from {MIN_SIDE} to {MAX_SIDE}, "
                            f"got {list(size)}")
    for k in ("mean", "std"):
        v = cfg.get(k)
        if v is not None and len(v) not in {1, 3}:
            raise UserError(f"{where} {k} must have one value per input channel, got {list(v)}")
    if cfg.get("interpolation") not in (None, *INTERPOLATIONS):
        raise UserError(f"{where} interpolation must be one of {', '.join(map(repr, INTERPOLATIONS))}, "
                        f"got {cfg['interpolation']!r}")
    crop = cfg.get("crop_pct")
    if size is not None and crop and math.floor(size[-1] / crop) > MAX_RESIZE:
        raise UserError(f"{where} input_size {size[-1]} with crop_pct {crop:g} resizes every image to "
                        f"{math.floor(size[-1] / crop)} px before the crop; at most {MAX_RESIZE}: raise crop_pct")


def data_notes(cfg: dict[str, Any]) -> list[str]:
    """Preprocessing that is allowed but almost always a mistake, as warning lines (checked: check_data)."""
    small = [s for s in cfg.get("std") or () if s < STD_WARN]
    if not small:
        return []
    return [f"std {min(small):g} multiplies the pixels by {1 / min(small):,.0f}: timm's std is on pixels scaled "
            "to [0, 1] (ImageNet's: 0.229, 0.224, 0.225); check that the model was trained with it"]


# a model name is a column value, a legend entry and part of "a+b" multi-teacher names: no '+'
MODEL_NAME_PATTERN = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}")


def check_model_name(name: str, where: str) -> str:
    if not MODEL_NAME_PATTERN.fullmatch(name):
        raise UserError(f"{where}: the model name {name!r} is not allowed: use 1-100 letters, digits, '.', '_' "
                        "or '-', not starting with '.'")
    return name


NAME_PATTERN = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}")


def check_name(name: object) -> str:
    """A sweep name becomes a file name (reports, SLURM scripts) and a job name: letters, digits, '.', '_'
    and '-' only, at most 100, not starting with '.' (no hidden files, no '..', no path or shell syntax)."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise UserError(f"the sweep name {name!r} is not allowed: use 1-100 letters, digits, '.', '_' or '-', "
                        "not starting with '.'")
    return name
