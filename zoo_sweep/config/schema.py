"""One definition per spec key: its type (the annotation), default, allowed range and meaning.

A spec section is a frozen dataclass whose fields are declared with :func:`key`. :func:`build` checks a TOML
table against it (unknown keys, types, ranges, finite numbers) and :func:`describe` turns the same
declarations into the reference table of docs/specs.md, so the documentation cannot drift from the checks.

Sections nest: a field annotated with another section class (``defaults: ModelSpec``) is a sub-table
(``[zoo.defaults]``, or an inline ``data = {...}``), and ``dict[str, Section]`` is a table of tables, one
sub-table per name of the user's choosing (``[zoo.model.NAME]``). Both are checked key by key like a
section, their errors naming the full path (``[zoo.model.NAME.data] crop_pct ...``); :func:`sections` lists
every nested section for the reference docs.
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
from dataclasses import field
from typing import Any

from zoo_sweep.errors import UserError


def key(default: Any = dataclasses.MISSING, doc: str = "", *, ge: float | None = None, gt: float | None = None,
        le: float | None = None, lt: float | None = None, factory: Any = None, expect: str | None = None):
    """A spec key: ``default`` (or ``factory`` for mutable ones), a one-line meaning, and bounds for numbers
    (``ge``/``gt``/``le``/``lt``; for lists, every element). ``expect`` replaces the generated wording of what
    a value must be, where the type alone says it badly (``a positive integer or "auto"``)."""
    meta = {"doc": doc, "ge": ge, "gt": gt, "le": le, "lt": lt, "expect": expect}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


_SCALARS = {"int": int, "float": float, "bool": bool, "str": str}


def _parse_type(declared: str) -> tuple[str, str, bool]:
    """('scalar'|'list'|'dict'|'union', element type, optional) from an annotation string."""
    t = declared.replace(" ", "")
    optional = t.endswith("|None")
    t = t.removesuffix("|None")
    m = re.fullmatch(r"tuple\[(\w+),\.\.\.\]", t)
    if m:
        return "list", m.group(1), optional
    m = re.fullmatch(r"dict\[str,(\w+)\]", t)
    if m:
        return "dict", m.group(1), optional
    if "|" in t:
        return "union", t, optional
    return "scalar", t, optional


def _type_name(kind: str, elem: str) -> str:
    names = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}
    if kind == "list":
        return f"a list of {names.get(elem, elem).removeprefix('an ').removeprefix('a ')}s"
    if kind == "dict":
        return "a table"
    return names.get(elem, elem)


def _scalar(value: Any, elem: str) -> Any:
    """``value`` as type ``elem``, or raise TypeError. bool is not a number here (TOML's true is not 1)."""
    if elem == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return float(value)
    if elem == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError
        return value
    if elem in _SCALARS and not isinstance(value, _SCALARS[elem]):
        raise TypeError
    return value


def _check_range(value: Any, meta: dict) -> str | None:
    for bound, ok, word in (("ge", lambda v, b: v >= b, ">="), ("gt", lambda v, b: v > b, ">"),
                            ("le", lambda v, b: v <= b, "<="), ("lt", lambda v, b: v < b, "<")):
        b = meta.get(bound)
        if b is not None and isinstance(value, (int, float)) and not ok(value, b):
            return f"must be {word} {b:g}"
    return None


def _section_of(cls, kind: str, elem: str):
    """The section class a field's annotation names (a nested table), looked up where ``cls`` is defined."""
    if kind not in ("scalar", "dict"):
        return None
    found = vars(sys.modules[cls.__module__]).get(elem)
    return found if isinstance(found, type) and dataclasses.is_dataclass(found) else None


def _nested(sub, kind: str, value: Any, where: str, name: str) -> Any:
    """A sub-table built as its own section, or (``dict[str, Section]``) one per key."""
    if kind == "scalar":
        return build(sub, value, f"{where}.{name}")
    if not isinstance(value, dict):
        raise UserError(f"[{where}] {name} must be a table of tables ([{where}.{name}.NAME]), got {value!r}")
    bad = [k for k, v in value.items() if not isinstance(v, dict)]
    if bad:
        raise UserError(f"[{where}.{name}] {bad[0]} must be a table ([{where}.{name}.{bad[0]}] with its keys), "
                        f"got {value[bad[0]]!r}")
    return {str(k): build(sub, v, f"{where}.{name}.{k}") for k, v in value.items()}


def check_value(cls, name: str, value: Any, where: str) -> Any:
    """One key's value converted and checked against its declaration; a UserError names key and rule."""
    f = {x.name: x for x in dataclasses.fields(cls)}[name]
    kind, elem, optional = _parse_type(str(f.type))
    label = f"[{where}] {name}"
    if value is None and optional:
        return None
    sub = _section_of(cls, kind, elem)
    if sub is not None:
        return _nested(sub, kind, value, where, name)
    try:
        if kind == "list":
            if not isinstance(value, list):
                raise TypeError
            value = tuple(_scalar(v, elem) for v in value)
            items = value
        elif kind == "dict":
            if not isinstance(value, dict):
                raise TypeError
            value = {str(k): _scalar(v, elem) for k, v in value.items()}
            items = ()
        elif kind == "union":
            for alt in elem.split("|"):
                try:
                    value = _scalar(value, alt)
                    break
                except TypeError:
                    continue
            else:
                raise TypeError
            items = (value,)
        else:
            value = _scalar(value, elem)
            items = (value,)
    except TypeError:
        if f.metadata.get("expect"):
            raise UserError(f"{label} must be {f.metadata['expect']}, got {value!r}") from None
        want = " or ".join(_type_name("scalar", a) for a in elem.split("|")) if kind == "union" \
            else _type_name(kind, elem)
        raise UserError(f"{label} must be {want}, got {value!r}") from None
    except ValueError as e:
        raise UserError(f"{label} {e}, got {value!r}") from None
    for v in items:
        problem = _check_range(v, f.metadata)
        if problem and f.metadata.get("expect"):
            raise UserError(f"{label} must be {f.metadata['expect']}, got {v!r}")
        if problem:
            raise UserError(f"{label} {problem}, got {v!r}")
    return value


def build(cls, table: Any, where: str):
    """An instance of the section ``cls`` from a TOML table, every key checked."""
    if not isinstance(table, dict):
        raise UserError(f"{where} must be a table ([{where}]) in the spec, got {table!r}")
    known = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise UserError(f"unknown key(s) {', '.join(unknown)} in [{where}]; known: {', '.join(known)}")
    return cls(**{k: check_value(cls, k, v, where) for k, v in table.items()})


def _toml(value: Any) -> str:
    """A default as it would be written in a spec (``None``: the key is simply left out)."""
    if value is None:
        return "(unset)"
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{}" if not value else "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value + '"'
    return f"{value:g}" if isinstance(value, float) else str(value)


def describe(cls, where: str = "") -> list[dict[str, str]]:
    """The reference rows of a section: key, type, default, allowed range, meaning. ``where`` (the section's
    path, e.g. "zoo") names nested tables in the type column."""
    rows = []
    for f in dataclasses.fields(cls):
        if not f.init or "doc" not in f.metadata:
            continue
        kind, elem, optional = _parse_type(str(f.type))
        m = f.metadata
        bounds = [f"{w} {m[b]:g}" for b, w in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")) if m[b] is not None]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        sub = _section_of(cls, kind, elem)
        if sub is not None:
            path = f"{where}.{f.name}" if where else f.name
            kind_name = f"a table ([{path}])" if kind == "scalar" else f"tables ([{path}.NAME])"
            default = {}
        else:
            kind_name = m.get("expect") or _type_name(kind, elem)
        rows.append({"key": f.name, "type": kind_name + (" (optional)" if optional else ""),
                     "default": _toml(default),
                     "range": ", ".join(bounds), "meaning": m["doc"]})
    return rows


def sections(cls, where: str) -> list[tuple[str, type]]:
    """``(path, section class)`` of a section and of every table nested in it, depth first, for the reference
    docs: ``sections(ZooSpec, "zoo")`` gives zoo, zoo.defaults, zoo.defaults.data, zoo.model.NAME, ..."""
    out = [(where, cls)]
    for f in dataclasses.fields(cls):
        kind, elem, _ = _parse_type(str(f.type))
        sub = _section_of(cls, kind, elem)
        if sub is not None:
            out += sections(sub, f"{where}.{f.name}" + (".NAME" if kind == "dict" else ""))
    return out
