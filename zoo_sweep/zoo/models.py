"""The zoo: which models a sweep covers, what family each belongs to, and how to instantiate it with weights.

Three kinds of model share one entry type (``ModelEntry``): the embedded digits zoo (timm architectures at
tiny sizes, trained locally and cached, see ``digits_zoo``), the timm registry (pretrained tags such as
``resnet50.a1_in1k``, weights from the hub cache, a local weights folder or explicit checkpoints), and your
own models (``[zoo.model.NAME]`` tables and timm checkpoint folders, see ``own``).
Weights are never silently random: a model without weights fails with the ways to provide them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from zoo_sweep.config.spec import ZooSpec, check_data, data_notes
from zoo_sweep.errors import UserError
from zoo_sweep.paths import write_atomic
from zoo_sweep.zoo.entry import (  # noqa: F401  (re-exported)
    FAMILIES,
    ModelEntry,
    family_of,
    nonfinite_note,
    select_names,
    warn_model,
)
from zoo_sweep.zoo.own import (  # noqa: F401  (head_classes re-exported)
    _tuples,
    head_classes,
    kwargs_classes,
    own_entries,
)
from zoo_sweep.zoo.timm_table import installed_timm, shipped_params
from zoo_sweep.zoo.weights import (
    WEIGHT_SUFFIXES,
    HashCache,
    fit_state,
    load_state,
    require_whole,
)


def resolve_zoo(spec: ZooSpec, cache_dir: str | Path, num_classes: int, image_size: int) -> list[ModelEntry]:
    """The sweep's models, in a stable order: the source's (all of them when ``models`` is empty and the spec
    has none of its own), then the spec's own. Nothing is downloaded or trained here; weights files are
    checked and hashed."""
    entries = SOURCES[spec.source](spec, cache_dir, num_classes, image_size) \
        if spec.models or not spec.has_own else []
    hashes = HashCache(cache_dir)
    try:
        entries += own_entries(spec, hashes, num_classes)
    finally:
        hashes.save()
    seen: dict[str, ModelEntry] = {}
    for e in entries:
        if e.name in seen:
            where = " and ".join(x.origin or f"[zoo] source {spec.source}" for x in (seen[e.name], e))
            raise UserError(f"two models are named {e.name!r} ({where}): rename one")
        seen[e.name] = e
    if len(entries) < 2:
        raise UserError(f"the zoo has {len(entries)} model(s) after filtering; a sweep needs at least two")
    return entries


def _digits_entries(spec: ZooSpec, cache_dir, num_classes: int, image_size: int) -> list[ModelEntry]:
    from zoo_sweep.zoo.digits import digits_entries

    entries = digits_entries(spec.recipe, cache_dir, image_size)
    names = select_names([e.name for e in entries], spec.models, spec.exclude)
    return [e for e in entries if e.name in names]


def _timm_entries(spec: ZooSpec, cache_dir, num_classes: int, image_size: int) -> list[ModelEntry]:
    """Registry names; [zoo.defaults] kwargs and data apply to them as to your own models."""
    import timm

    # pretrained tags (resnet50.a1_in1k), bare architectures, and whatever the manifest names
    available = sorted(set(timm.list_models(pretrained=True)) | set(timm.list_models()) | set(spec.checkpoints))
    names = select_names(available, spec.models, spec.exclude)
    kwargs = dict(spec.defaults.kwargs)
    given_classes = kwargs_classes(kwargs.pop("num_classes", None), "[zoo.defaults]")
    data = spec.defaults.data.given()
    check_data(data, "[zoo.defaults.data]")
    for note in data_notes(data):  # once for the whole source, not once per model
        warn_model("[zoo.defaults.data]", note)
    hashes = HashCache(cache_dir)
    out = []
    try:
        for n in names:
            w = _find_weights(n, spec)
            key = w
            if w not in (None, "hub"):
                w = str(Path(w).expanduser().resolve())  # workers may run elsewhere than this process's cwd
                require_whole(w, n)
                key = f"sha256:{hashes.get(w)}"
                counts = hashes.nonfinite(w)
                if counts and counts[0]:
                    warn_model(n, nonfinite_note(w, *counts))
            out.append(ModelEntry(name=n, arch=n, family=family_of(n), weights=w, kwargs=_tuples(kwargs),
                                  data_cfg=_tuples(data),
                                  num_classes=given_classes or head_classes(n, spec, num_classes),
                                  weights_key=key))
    finally:
        hashes.save()
    return out


# [zoo] source -> (spec, cache folder, eval classes, image size) -> entries
SOURCES: dict[str, Callable[..., list[ModelEntry]]] = {"digits": _digits_entries, "timm": _timm_entries}


def check_heads(models: list[ModelEntry], eval_classes: int, eval_ref: str) -> None:
    """Reject, at plan time, models whose head does not have one output per eval class."""
    odd = [m for m in models if m.num_classes is not None and m.num_classes != eval_classes]
    if odd:
        listed = ", ".join(f"{m.name} ({m.num_classes} classes)" for m in odd[:5])
        more = f" and {len(odd) - 5} more" if len(odd) > 5 else ""
        raise UserError(f"{listed}{more}: the head does not match the {eval_classes} classes of {eval_ref}; "
                        "exclude these models, or give an eval set (or [data] class_map) with their classes")


def _find_weights(name: str, spec: ZooSpec) -> str | None:
    if name in spec.checkpoints:
        return spec.checkpoints[name]
    if spec.weights_dir:
        for suf in WEIGHT_SUFFIXES:
            p = Path(spec.weights_dir) / f"{name}{suf}"
            if p.exists():
                return str(p)
    if spec.allow_random_weights:
        return None
    return "hub"


def no_weights_message(name: str) -> str:
    return (f"no weights for {name}: put them in the Hugging Face hub cache (HF_HOME), in weights_dir as "
            f"{name}.safetensors, or list the file under [zoo.checkpoints]")


def create(entry: ModelEntry, pretrained: bool = True):
    """A timm model for the entry, with its weights loaded (eval mode)."""
    import timm

    from zoo_sweep.zoo import tiny_archs  # noqa: F401  (registers the embedded zoo's MLP entrypoints)

    kwargs = dict(entry.kwargs)
    if entry.num_classes is not None:
        kwargs["num_classes"] = entry.num_classes
    if entry.data_cfg:
        kwargs["pretrained_cfg_overlay"] = dict(entry.data_cfg)
    w = entry.weights if pretrained else None
    if w == "hub":
        cached = hub_cached_file(entry.arch)
        if cached:  # straight from the local cache: no network round trip per model
            kwargs["pretrained_cfg_overlay"] = {**kwargs.get("pretrained_cfg_overlay", {}), "file": cached}
        elif os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
            raise UserError(no_weights_message(entry.name) + " (not in the hub cache, and HF_HUB_OFFLINE is set)")
        try:
            model = timm.create_model(entry.arch, pretrained=True, **kwargs)
        except Exception as e:  # offline, or no such tag on the hub
            raise UserError(f"{no_weights_message(entry.name)} ({type(e).__name__})") from None
    else:
        model = _build(entry, kwargs) if entry.weights else _seeded_build(entry, kwargs)
        if w:
            if not Path(w).exists():
                raise UserError(no_weights_message(entry.name) + f" (missing file {w})")
            who = entry.name if entry.name == entry.arch else f"{entry.name} ({entry.arch})"
            state = fit_state(model, load_state(w), w, who)
            try:
                model.load_state_dict(state)
            except RuntimeError as e:  # what fit_state does not compare (e.g. a tensor of another dtype kind)
                first = str(e).strip().splitlines()[0]
                raise UserError(f"weights {w} do not fit {who}: {first}") from None
    return model.eval()


def _seeded_build(entry: ModelEntry, kwargs: dict):
    """A model with random weights (``allow_random_weights``), initialised from a seed derived from its identity:
    every worker process that builds it, on any device, must build the same network, else a model's predict
    record and its role as a teacher (or a CPU run and a GPU run of one sweep) would describe different ones."""
    import torch

    from zoo_sweep.ids import content_id

    with torch.random.fork_rng(devices=[]):  # the caller's random stream stays as it was
        torch.manual_seed(int(content_id(entry.ident), 16) % 2**63)
        return _build(entry, kwargs)


def _build(entry: ModelEntry, kwargs: dict):
    """``timm.create_model`` without weights; a constructor that rejects the spec's kwargs is the user's to fix."""
    import timm

    try:
        return timm.create_model(entry.arch, pretrained=False, **kwargs)
    except (TypeError, ValueError, AssertionError, RuntimeError) as e:
        where = entry.origin or entry.name
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"{where}: timm.create_model({entry.arch!r}, ...) fails with these kwargs: "
                        f"{type(e).__name__}: {first}") from None


def hub_cached_file(arch: str) -> str | None:
    """The weights file of a timm tag in the local Hugging Face cache, if it is there."""
    import timm
    from huggingface_hub import try_to_load_from_cache

    try:
        cfg = timm.models.get_pretrained_cfg(arch)
    except Exception:
        return None
    if cfg is None or not cfg.hf_hub_id:
        return None
    repo, _, rev = cfg.hf_hub_id.partition("@")
    for name in filter(None, (cfg.hf_hub_filename, "model.safetensors", "pytorch_model.bin")):
        found = try_to_load_from_cache(repo, name, revision=rev or None)
        if isinstance(found, str):
            return found
    return None


def data_config(model) -> dict:
    """The model's eval-time data config, the same dict timm's own transforms are built from."""
    import timm.data

    cfg = timm.data.resolve_model_data_config(model)
    return {k: cfg[k] for k in ("input_size", "interpolation", "mean", "std", "crop_pct")}


def count_params(entry: ModelEntry) -> int:
    """Parameter count without allocating weights (meta device)."""
    import torch

    from zoo_sweep.zoo import tiny_archs  # noqa: F401

    kwargs = dict(entry.kwargs)
    if entry.num_classes is not None:
        kwargs["num_classes"] = entry.num_classes
    with torch.device("meta"):
        model = _build(entry, kwargs)  # at plan time: kwargs a constructor rejects fail here, in one line
    return sum(p.numel() for p in model.parameters())


def _params_key(entry: ModelEntry) -> str:
    if entry.kwargs:
        return f"{entry.arch}|{entry.num_classes}|{json.dumps(entry.kwargs, sort_keys=True, default=str)}"
    return f"{entry.arch.split('.')[0]}|{entry.num_classes}"


def param_counts(entries: list[ModelEntry], cache_dir: str | Path | None = None) -> dict[str, int]:
    """Parameter counts of many models: the shipped table for this timm version (``_info/timm_params.json``),
    then a JSON cache keyed by the timm version under ``cache_dir/params/``, then meta-device builds (whose
    results are added to that cache). Building 1,300 ImageNet models takes minutes; a lookup, milliseconds.
    Nothing imports torch unless a count is missing, so dry runs work on machines without it."""
    seed = shipped_params()
    path = Path(cache_dir) / "params" / f"timm-{installed_timm()}.json" if cache_dir else None
    cached: dict[str, int] = {}
    if path is not None and path.is_file():
        try:
            cached = {k: int(v) for k, v in json.loads(path.read_text()).items()}
        except (ValueError, OSError, AttributeError):
            cached = {}  # a damaged cache is rebuilt
    out, new = {}, {}
    for e in entries:
        key = _params_key(e)
        n = seed.get(key, cached.get(key, new.get(key)))
        if n is None:
            n = new[key] = count_params(e)
        out[e.name] = n
    if new and path is not None:
        write_atomic(path, lambda tmp: tmp.write_text(json.dumps({**cached, **new}, sort_keys=True)))
    return out
