"""One definition per spec key: its type (the annotation), default, allowed range and meaning.

A spec section is a frozen dataclass whose fields are declared with :func:`key`. :func:`build` checks a TOML
table against it (unknown keys, types, ranges, finite numbers, repeated list entries) and :func:`describe` turns
the same declarations into the reference table of docs/specs.md, so the documentation cannot drift from the
checks. Every number anywhere in a spec, free-form tables (``kwargs``) included, is finite and every integer
fits in 64 bits (:func:`_number`): a value beyond that would pass the spec and then fail (or overflow) in
NumPy, PyTorch or the store, after the launch had begun.

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
from collections.abc import Mapping
from dataclasses import field
from typing import TYPE_CHECKING, Any, TypeVar

from zoo_sweep.errors import UserError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

    _Section = TypeVar("_Section", bound=DataclassInstance)


def key(default: Any = dataclasses.MISSING, doc: str = "", *, ge: float | None = None, gt: float | None = None,
        le: float | None = None, lt: float | None = None, factory: Any = None, expect: str | None = None,
        unique: bool = False, choices: tuple[str, ...] | None = None,
        legacy: Any = dataclasses.MISSING) -> Any:  # Any, as dataclasses.field: the default of a field of any type
    """A spec key: ``default`` (or ``factory`` for mutable ones), a one-line meaning, and bounds for numbers
    (``ge``/``gt``/``le``/``lt``; for lists, every element). Every numeric key has both a lower and an upper
    bound, one a real sweep could use: a value past it is a typo or a unit mistake, and would run for days or
    fail halfway through a launch. ``expect`` replaces the generated wording of what a value must be, where the
    type alone says it badly (``a positive integer or "auto"``). ``unique``: a list whose entries each count
    once (methods, seeds, names), so a repeated entry is refused rather than run or counted twice.

    ``choices``: the values a string key allows (its section checks them: config/params.py). ``legacy``: what a
    job did before the key existed; a job's hyper-parameters leave the key out at that value, so the ids of
    jobs planned before it was added stay the same (config/params.py, ``job_hp``)."""
    meta = {"doc": doc, "ge": ge, "gt": gt, "le": le, "lt": lt, "expect": expect, "unique": unique,
            "choices": choices}
    if legacy is not dataclasses.MISSING:
        meta["legacy"] = legacy
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


_SCALARS = {"int": int, "float": float, "bool": bool, "str": str}
INT64 = (-2**63, 2**63 - 1)  # what SQLite, NumPy and PyTorch hold in an integer


def _number(value: Any) -> None:
    """ValueError unless a number is finite and an integer fits in 64 bits: the one check of every number of
    a spec (and of a checkpoint's config.json), whatever key it is under."""
    if isinstance(value, bool):
        return
    if isinstance(value, int) and not INT64[0] <= value <= INT64[1]:
        raise ValueError("must fit in 64 bits (from -2**63 to 2**63 - 1)")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("must be a finite number")


def _free_form(value: Any, depth: int = 0) -> Any:
    """A value of a free-form table (``kwargs``), every number in it checked by :func:`_number`: what JSON can
    hold (a TOML date or time cannot be stored with the sweep, nor passed to a constructor). TOML and JSON nest
    as deep as their parser lets them; 100 levels is far beyond any constructor argument."""
    if depth > 100:
        raise ValueError("nests lists or tables more than 100 deep")
    if isinstance(value, (list, tuple)):  # tuples: a spec built in Python, as timm's configs write lists
        return type(value)(_free_form(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return {k: _free_form(v, depth + 1) for k, v in value.items()}
    if not isinstance(value, (str, int, float)):  # bool is an int
        raise ValueError("must be a number, a string, true or false, a list or a table (not a date or time)")
    _number(value)
    return value


def show(value: Any, limit: int = 60) -> str:
    """``repr(value)`` for a message, cut to ``limit`` characters: a value can be a megabyte of TOML, or an
    integer too long for Python to print."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"an integer of {value.bit_length()} bits"
    try:
        text = repr(value)
    except (ValueError, RecursionError):  # an integer of more than 4300 digits inside a list, deep nesting
        return f"a {type(value).__name__} too large to print"
    return text if len(text) <= limit else text[:limit] + " ..."


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
    """``value`` as type ``elem``, or raise TypeError (ValueError: the right type, but no usable number). bool
    is not a number here (TOML's true is not 1)."""
    if elem == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError
        _number(value)
        return float(value)
    if elem == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError
        _number(value)
        return value
    if elem in _SCALARS and not isinstance(value, _SCALARS[elem]):
        raise TypeError
    return value if elem in _SCALARS else _free_form(value)  # Any: a kwargs value


_BOUNDS = (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))


def _bound(b: float) -> str:
    """A bound as the docs and messages write it: integers in full (2147483647, not 2.14748e+09)."""
    return str(b) if isinstance(b, int) else f"{b:g}"


def _check_range(value: Any, meta: Mapping[str, Any]) -> str | None:
    for bound, word in _BOUNDS:
        b = meta.get(bound)
        if b is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        ok = {"ge": value >= b, "gt": value > b, "le": value <= b, "lt": value < b}[bound]
        if not ok:
            return f"must be {word} {_bound(b)}"
    return None


def _section_of(cls: type[DataclassInstance], kind: str, elem: str) -> type[DataclassInstance] | None:
    """The section class a field's annotation names (a nested table), looked up where ``cls`` is defined."""
    if kind not in ("scalar", "dict"):
        return None
    found = vars(sys.modules[cls.__module__]).get(elem)
    return found if isinstance(found, type) and dataclasses.is_dataclass(found) else None


def _nested(sub: type[DataclassInstance], kind: str, value: Any, where: str, name: str) -> Any:
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


def check_value(cls: type[DataclassInstance], name: str, value: Any, where: str) -> Any:
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
            entries = {}
            for k, v in value.items():
                try:
                    entries[str(k)] = _scalar(v, elem)
                except ValueError as e:  # name the entry: [zoo.model.a] kwargs drop_rate must be a finite ...
                    raise UserError(f"{label} {k} {e}, got {show(v)}") from None
            value, items = entries, ()
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
            raise UserError(f"{label} must be {f.metadata['expect']}, got {show(value)}") from None
        want = " or ".join(_type_name("scalar", a) for a in elem.split("|")) if kind == "union" \
            else _type_name(kind, elem)
        raise UserError(f"{label} must be {want}, got {show(value)}") from None
    except ValueError as e:
        raise UserError(f"{label} {e}, got {show(value)}") from None
    for v in items:
        problem = _check_range(v, f.metadata)
        if problem and f.metadata.get("expect"):
            raise UserError(f"{label} must be {f.metadata['expect']}, got {show(v)}")
        if problem:
            raise UserError(f"{label} {problem}, got {show(v)}")
    if f.metadata.get("unique"):
        seen: set[Any] = set()
        for v in items:
            if v in seen:
                raise UserError(f"{label} lists {show(v)} twice; list each once")
            seen.add(v)
    return value


def build(cls: type[_Section], table: Any, where: str) -> _Section:
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


def _one_of(choices: tuple[str, ...] | None) -> str:
    """'"a", "b" or "c"': the values a key with ``choices`` allows, as the reference's type column says them."""
    if not choices:
        return ""
    shown = [f'"{c}"' for c in choices]
    return ", ".join(shown[:-1]) + " or " + shown[-1] if len(shown) > 1 else shown[0]


def describe(cls: type[DataclassInstance], where: str = "") -> list[dict[str, str]]:
    """The reference rows of a section: key, type, default, allowed range, meaning. ``where`` (the section's
    path, e.g. "zoo") names nested tables in the type column."""
    rows = []
    for f in dataclasses.fields(cls):
        if not f.init or "doc" not in f.metadata:
            continue
        kind, elem, optional = _parse_type(str(f.type))
        m = f.metadata
        bounds = [f"{w} {_bound(m[b])}" for b, w in _BOUNDS if m[b] is not None]
        if m.get("unique"):
            bounds.append("each once")
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        sub = _section_of(cls, kind, elem)
        if sub is not None:
            path = f"{where}.{f.name}" if where else f.name
            kind_name = f"a table ([{path}])" if kind == "scalar" else f"tables ([{path}.NAME])"
            default = {}
        else:
            kind_name = m.get("expect") or _one_of(m.get("choices")) or _type_name(kind, elem)
        rows.append({"key": f.name, "type": kind_name + (" (optional)" if optional else ""),
                     "default": _toml(default),
                     "range": ", ".join(bounds), "meaning": m["doc"]})
    return rows


def sections(cls: type[DataclassInstance], where: str) -> list[tuple[str, type[DataclassInstance]]]:
    """``(path, section class)`` of a section and of every table nested in it, depth first, for the reference
    docs: ``sections(ZooSpec, "zoo")`` gives zoo, zoo.defaults, zoo.defaults.data, zoo.model.NAME, ..."""
    out = [(where, cls)]
    for f in dataclasses.fields(cls):
        kind, elem, _ = _parse_type(str(f.type))
        sub = _section_of(cls, kind, elem)
        if sub is not None:
            out += sections(sub, f"{where}.{f.name}" + (".NAME" if kind == "dict" else ""))
    return out
