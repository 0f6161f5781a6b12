"""Code small enough to read in one sitting, checked from the source: no function over 60 lines and no class
over 250 lines (decorators, docstrings and comments included) anywhere in the package."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "zoo_sweep"
# every module of the package but the migration scripts: frozen history, each the change of one version
EXEMPT = ("storage/migrations/",)
LIMITS = {"function": 60, "class": 250}


def _span(node: ast.AST) -> int:
    first = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", ()))])
    return node.end_lineno - first + 1


def too_long(source: str) -> list[tuple[int, str, str, int]]:
    """(line, "function" or "class", name, lines) of every definition over its limit, nested ones too."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            what = "function"
        elif isinstance(node, ast.ClassDef):
            what = "class"
        else:
            continue
        if _span(node) > LIMITS[what]:
            out.append((node.lineno, what, node.name, _span(node)))
    return sorted(out)


def test_no_function_or_class_is_over_its_limit():
    files = [p for p in sorted(PKG.rglob("*.py")) if not p.relative_to(PKG).as_posix().startswith(EXEMPT)]
    assert len(files) > 10  # the walk found the package
    offenders = [f"{p.relative_to(PKG.parent)}:{line}: {what} {name} is {n} lines (at most {LIMITS[what]})"
                 for p in files for line, what, name, n in too_long(p.read_text())]
    assert not offenders, "split these:\n" + "\n".join(offenders)


def test_the_limits_count_every_line_of_a_definition():
    def function(name: str, lines: int) -> str:  # a decorator, the def line and a body
        return "@staticmethod\n" + f"def {name}():\n" + "".join(f"    x{i} = {i}\n" for i in range(lines - 2))

    def cls(name: str, lines: int) -> str:
        return f"class {name}:\n" + "".join(f"    y{i} = {i}\n" for i in range(lines - 1))

    source = function("fits", 60) + function("long", 61) + cls("Fits", 250) + cls("Big", 251)
    assert [(what, name, n) for _, what, name, n in too_long(source)] == [("function", "long", 61),
                                                                          ("class", "Big", 251)]
