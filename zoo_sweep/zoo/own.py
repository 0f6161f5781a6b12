"""Models of your own: ``[zoo.model.NAME]`` tables and checkpoint folders saved by timm (``checkpoint_dirs``).

Each becomes one ``ModelEntry`` named by its alias (or its folder): two fine-tunes of one architecture are two
models. What a model is built from, later sources winning key by key:

    timm's config of the architecture  <  [zoo.defaults]  <  the checkpoint's config.json  <  [zoo.model.NAME]

so a folder saved by timm carries its own architecture, constructor arguments and preprocessing, and a table
says only what differs. Weights are named by their content hash, so a changed file means new jobs.
"""

from __future__ import annotations

import difflib
import glob
import json
import os
from dataclasses import dataclass
from pathlib import Path

from zoo_sweep.config.schema import build, check_value, show
from zoo_sweep.config.spec import (
    MAX_CLASSES,
    DataOverrides,
    ModelSpec,
    ZooSpec,
    check_data,
    check_model_name,
    data_notes,
)
from zoo_sweep.errors import UserError
from zoo_sweep.zoo.entry import ModelEntry, family_of, nonfinite_note, select_names, warn_model
from zoo_sweep.zoo.timm_table import shipped_archs
from zoo_sweep.zoo.weights import HashCache, require_whole

CONFIG_NAME = "config.json"  # what timm's save_for_hf / push_to_hf_hub write beside the weights
FOLDER_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
DATA_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct")


@dataclass(frozen=True)
class SavedConfig:
    """What a checkpoint folder's config.json says."""
    arch: str
    kwargs: dict
    data: dict
    num_classes: int | None
    weights: Path


def own_entries(spec: ZooSpec, hashes: HashCache, eval_classes: int) -> list[ModelEntry]:
    """The spec's own models, tables first, then folders in name order; ``exclude`` applies to both."""
    out = [_entry(alias, m, spec, hashes, eval_classes) for alias, m in spec.model.items()
           if select_names([alias], (), spec.exclude)]
    for folder in checkpoint_folders(spec.checkpoint_dirs):
        if select_names([folder.name], (), spec.exclude):
            who = f"checkpoint_dirs folder {folder}"
            check_model_name(folder.name, who)
            out.append(_entry(folder.name, ModelSpec(checkpoint=str(folder)), spec, hashes, eval_classes, who))
    return out


def checkpoint_folders(patterns: tuple[str, ...]) -> list[Path]:
    """The folders the patterns match (files they match are not models: READMEs, logs)."""
    found: list[Path] = []
    for pat in patterns:
        hits = sorted(Path(p) for p in glob.glob(os.path.expanduser(pat)) if Path(p).is_dir())
        if not hits:
            raise UserError(f"[zoo] checkpoint_dirs: {pat!r} matches no folder")
        found += [h for h in hits if h not in found]
    return found


def _entry(alias: str, m: ModelSpec, spec: ZooSpec, hashes: HashCache, eval_classes: int,
           who: str | None = None) -> ModelEntry:
    who = who or f"[zoo.model.{alias}]"
    d = spec.defaults
    saved, weights = None, None
    if m.checkpoint:
        p = Path(m.checkpoint).expanduser()
        if p.is_dir():
            saved = read_saved(p)
            weights = saved.weights
        elif p.is_file():
            weights = p
        else:
            raise UserError(f"{who} checkpoint {p} not found")
    arch = m.arch or (saved.arch if saved else None) or d.arch
    if not arch:
        raise UserError(f"{who} needs arch = \"...\" (a timm architecture such as resnet18), or a checkpoint "
                        f"folder holding timm's {CONFIG_NAME}")
    check_arch(arch, who)
    kwargs = {**d.kwargs, **(saved.kwargs if saved else {}), **m.kwargs}
    if saved and saved.num_classes and "num_classes" not in m.kwargs:
        kwargs["num_classes"] = saved.num_classes
    classes = kwargs_classes(kwargs.pop("num_classes", None), who)
    data = {**d.data.given(), **(saved.data if saved else {}), **m.data.given()}
    check_data(data, who)
    for note in data_notes(data):
        warn_model(alias, note)
    if weights is not None:
        require_whole(weights, who)
        key = f"sha256:{hashes.get(weights)}"
        w = str(weights.resolve())
        counts = hashes.nonfinite(weights)
        if counts and counts[0]:
            warn_model(alias, nonfinite_note(weights, *counts))
    else:  # timm's pretrained weights of the tag; the tag names them
        w = key = None if spec.allow_random_weights else "hub"
    if classes is None:
        classes = head_classes(arch, spec, eval_classes) if w == "hub" else (spec.num_classes or eval_classes)
    return ModelEntry(name=alias, arch=arch, family=family_of(arch), weights=w, kwargs=_tuples(kwargs),
                      data_cfg=_tuples(data), num_classes=classes, weights_key=key, origin=who)


def kwargs_classes(classes, who: str) -> int | None:
    """A head size given in kwargs (free-form, so checked here): [zoo] num_classes' range."""
    if classes is not None and (isinstance(classes, bool) or not isinstance(classes, int)
                                or not 1 <= classes <= MAX_CLASSES):
        raise UserError(f"{who} kwargs num_classes must be an integer from 1 to {MAX_CLASSES}, got {show(classes)}")
    return classes


def head_classes(name: str, spec: ZooSpec, eval_classes: int) -> int:
    """The head size of a timm model: the spec's num_classes when given, else the pretrained tag's own
    (timm's pretrained cfg, e.g. 1000 for *_in1k, 11821 for *.in12k), else (a bare architecture with local
    weights or random weights) the eval set's class count."""
    if spec.num_classes:
        return spec.num_classes
    if "." in name:
        import timm

        try:
            cfg = timm.models.get_pretrained_cfg(name)
        except Exception:
            cfg = None
        if cfg is not None and getattr(cfg, "num_classes", None):
            return int(cfg.num_classes)
    return eval_classes


def read_saved(folder: Path) -> SavedConfig:
    """A folder written by timm's ``save_for_hf`` (or pulled from the hub): its config.json and weights file.
    Read as timm reads it (``timm.models._hub._parse_model_cfg``), without importing timm."""
    cfg_path = folder / CONFIG_NAME
    if not cfg_path.is_file():
        raise UserError(f"{folder} has no {CONFIG_NAME} (timm's save_for_hf writes it beside model.safetensors); "
                        f"add it, or list the model as [zoo.model.NAME] with arch and checkpoint")
    try:
        cfg = json.loads(cfg_path.read_text())
        if "pretrained_cfg" not in cfg:  # timm's older single-dict layout
            cfg = {"architecture": cfg.pop("architecture"), "num_classes": cfg.get("num_classes"),
                   "pretrained_cfg": cfg}
        arch, pre = cfg["architecture"], dict(cfg["pretrained_cfg"])
        args = dict(cfg.get("model_args") or {})
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise UserError(f"{cfg_path} is not a timm model config ({type(e).__name__}: {str(e)[:200]}); it needs "
                        "architecture and pretrained_cfg") from None
    except RecursionError:  # json nests as deep as the file does
        raise UserError(f"{cfg_path} nests lists or objects too deeply to read; it is not a timm model config") \
            from None
    if not isinstance(arch, str) or not isinstance(args, dict):
        raise UserError(f"{cfg_path}: architecture must be a string and model_args a table")
    # what config.json says goes through the checks the same keys get in a spec: types, ranges, finite numbers
    args = check_value(ModelSpec, "kwargs", args, f"{cfg_path} model_args")
    size, fixed = args.get("img_size"), pre.get("input_size")
    if isinstance(size, (int, list)) and pre.get("fixed_input_size") and isinstance(fixed, list) and fixed:
        # as timm does: a fixed-size model's input follows its img_size (an int, or [height, width])
        pre["input_size"] = [fixed[0], *((size, size) if isinstance(size, int) else size)]
    if (pre.get("crop_mode") or "center") != "center":
        raise UserError(f"{cfg_path}: crop_mode {show(pre['crop_mode'])} is not supported; zoo-sweep centre-crops "
                        "(crop_pct); override it with data = {...} in a [zoo.model.NAME] table")
    data = build(DataOverrides, {k: v for k, v in pre.items() if k in DATA_KEYS and v is not None},
                 f"{cfg_path} pretrained_cfg").given()
    check_data(data, str(cfg_path))
    classes = cfg.get("num_classes", pre.get("num_classes"))
    if classes not in (None, 0):  # 0: timm's headless model, whose head the spec's class count gives
        classes = check_value(ZooSpec, "num_classes", classes, f"{cfg_path}")
    weights = next((folder / n for n in FOLDER_WEIGHTS if (folder / n).is_file()), None)
    if weights is None:
        raise UserError(f"{folder} has {CONFIG_NAME} but no {' or '.join(FOLDER_WEIGHTS)}")
    return SavedConfig(arch, args, data, classes or None, weights)


def check_arch(arch: str, who: str) -> None:
    if arch in shipped_archs():  # no timm import for the common case: a dry run on a login node
        return
    import timm

    from zoo_sweep.zoo import tiny_archs  # noqa: F401  (the embedded zoo's MLP entrypoints are names too)

    if timm.is_model(arch):
        return
    known = timm.list_models() + timm.list_models(pretrained=True)
    close = difflib.get_close_matches(arch, known, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else " (see timm.list_models())"
    raise UserError(f"{who}: {arch!r} is not a timm architecture{hint}")


def _tuples(d: dict) -> dict:
    """Lists as tuples, as timm's own configs and constructors have them (TOML and JSON give lists)."""
    def tup(v):
        return tuple(tup(x) for x in v) if isinstance(v, (list, tuple)) else v

    return {k: tup(v) for k, v in d.items()}
