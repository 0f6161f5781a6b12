"""The package's layers, checked from the source: lower layers never import higher ones (not even inside a
function), and modules import each other without cycles. One exception: the package root's module-level
``__getattr__`` (PEP 562) may import the public API of any layer, since it runs only when a caller asks for
that name, after the package is loaded; the rest of the root imports no layer above the base."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "zoo_sweep"
# lowest first; a module may import its own layer and any lower one
LAYERS = ["errors", "ids", "paths", "urls", "config", "data", "zoo", "science", "transfer", "storage", "pipeline",
          "report", "submit", "cli"]
BASE = {"errors", "ids", "paths", "urls"}  # no dependencies at all: one layer in effect


def _module(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _top(module: str) -> str:
    top = module.split(".")[1] if "." in module else ""
    return "cli" if top == "__main__" else top  # `python -m zoo_sweep` is the command line


def _layer(module: str) -> int:
    top = _top(module)
    if top in BASE or top == "":
        return 0
    return LAYERS.index(top)


def _imports(path: Path, lazy: bool = True) -> set[str]:
    """Every zoo_sweep module this file imports, at any depth of the file; ``lazy`` False: less those imported
    inside a module-level ``__getattr__``."""
    tree = ast.parse(path.read_text())
    if not lazy:
        tree.body = [n for n in tree.body if not (isinstance(n, ast.FunctionDef) and n.name == "__getattr__")]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("zoo_sweep"):
            assert node.level == 0, f"{path}: relative import; use zoo_sweep.<layer>.<module>"
            for alias in node.names:  # `from zoo_sweep.science import stats` imports the module stats
                sub = f"{node.module}.{alias.name}"
                out.add(sub if (PKG.parent / (sub.replace(".", "/") + ".py")).exists() else node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("zoo_sweep"))
    return out


GRAPH = {_module(p): _imports(p) for p in sorted(PKG.rglob("*.py"))}
# what importing the package itself runs: the root without its lazy exports (`import zoo_sweep` stays cheap)
EAGER = {**GRAPH, "zoo_sweep": _imports(PKG / "__init__.py", lazy=False)}


def test_every_module_sits_in_a_known_layer():
    for mod in GRAPH:
        top = _top(mod)
        assert top == "" or top in LAYERS, f"{mod}: add its folder to LAYERS"


def test_no_layer_imports_a_higher_one():
    upward = [f"{m} -> {d}" for m, deps in EAGER.items() for d in deps
              if d != "zoo_sweep" and _layer(d) > _layer(m)]
    assert not upward, "upward imports:\n" + "\n".join(sorted(upward))


def test_modules_import_each_other_without_cycles():
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for d in sorted(GRAPH.get(m, ())):
            if d not in GRAPH or d == m or d == "zoo_sweep":
                continue
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(d):] + [d]))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in GRAPH:
        if m not in state:
            visit(m)
