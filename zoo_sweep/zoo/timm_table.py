"""The timm facts shipped with the package (``_info/timm_params.json``, written by tools/make_timm_params.py):
parameter counts of every pretrained architecture of one timm version. They let plans and dry runs name and
size timm models without importing timm (and torch), as login nodes need; they hold only when the installed
timm is that version."""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.resources
import json
import os


@functools.lru_cache(maxsize=1)
def installed_timm() -> str | None:
    try:
        return importlib.metadata.version("timm")
    except importlib.metadata.PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=1)
def shipped_params() -> dict[str, int]:
    """``{"arch|num_classes": parameters}`` when the installed timm is the table's version, else empty.
    ``ZOO_SWEEP_NO_PARAM_TABLE`` set: empty (benchmarks of the cold path)."""
    table = json.loads(importlib.resources.files(__package__).joinpath("_info/timm_params.json").read_text())
    if os.environ.get("ZOO_SWEEP_NO_PARAM_TABLE") or table["timm_version"] != installed_timm():
        return {}
    return table["params"]


@functools.lru_cache(maxsize=1)
def shipped_archs() -> frozenset[str]:
    """The architectures of the shipped table: each is a model name of the installed timm."""
    return frozenset(k.split("|", 1)[0] for k in shipped_params())
