"""The import graph of pyvene_like: every module imports, no cycles between its parts, imports
run from higher layers to lower ones, and no private name crosses a package boundary.

The graph is read from the source (``ast``), so imports inside functions (lazy imports) count
as well: a lazy import hides a cycle from Python, not from the design. A *part* is what sits
directly under ``pyvene_like`` (``sae``, ``model``, ``errors``...); importing ``pyvene_like.x.y``
also runs ``pyvene_like/x/__init__.py``, so parts, not single files, are what can form cycles.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "pyvene_like"

#: Lower number: lower layer. A part may import parts of its own layer or below.
LAYERS = {
    "errors": 0,
    "validation": 0,
    "version": 0,
    "exports": 0,
    "modes": 0,
    "types": 0,
    "registry": 1,
    "sites": 2,
    "interventions": 2,  # the contract; configs check against it and the engine plans with it
    "config": 3,
    "engine": 4,
    "serialization": 5,
    "hub": 5,
    "model": 6,
    "training": 7,
    "sae": 8,
    "codebook": 8,
    "analysis": 8,
    "compat": 8,
    "models": 9,  # pyvene's module paths: re-exports of config, model, interventions and compat
    "cli": 9,
    "__main__": 9,  # python -m pyvene_like: runs the command line
    "app": 9,
}
#: Feature parts that may use one another, in this direction only: sae reads activations with
#: analysis.collect_activations.
SAME_LAYER_ALLOWED = {("sae", "analysis")}



def _modules() -> dict[str, tuple[Path, bool]]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        out[".".join(parts)] = (path, is_pkg)
    return out


MODULES = _modules()


def _imports():
    """Yield ``(importer module, imported module, imported name or None, lazy)``."""
    for mod, (path, is_pkg) in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        nested = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                nested.update(id(n) for n in ast.walk(node) if n is not node)
        for node in ast.walk(tree):
            lazy = id(node) in nested
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("pyvene_like"):
                        yield mod, alias.name, None, lazy
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if not target.startswith("pyvene_like"):
                    continue
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    yield mod, sub if sub in MODULES else target, alias.name, lazy


def _part(module: str) -> str:
    """``pyvene_like.sae.steering`` -> ``sae``; the package itself -> ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


EDGES = [(_part(a), _part(b), name, lazy) for a, b, name, lazy in _imports() if _part(a) != _part(b)]


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_module_imports(module):
    importlib.import_module(module)


def _cycles() -> set[tuple[str, ...]]:
    """Strongly connected components with more than one part (Tarjan), the package itself left
    out: it re-exports everything, by design on top."""
    graph: dict[str, set[str]] = {}
    for a, b, _, _ in EDGES:
        if a and b:
            graph.setdefault(a, set()).add(b)
            graph.setdefault(b, set())
    index, low, stack, on_stack, out = {}, {}, [], set(), set()

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.add(tuple(sorted(comp)))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles_between_parts():
    cycles = _cycles()
    assert cycles == set(), f"import cycles between parts: {sorted(cycles)}"


def test_imports_point_down():
    new = {p for a, b, _, _ in EDGES for p in (a, b)} - set(LAYERS) - {""}
    assert not new, f"new parts {sorted(new)}: give each a layer in LAYERS"

    def rank(part):
        # The package itself (the public API) is on top, with the command line that uses it.
        return LAYERS[part] if part else LAYERS["cli"]

    features = LAYERS["sae"]
    upward = {(a, b) for a, b, _, _ in EDGES if a and (
        rank(b) > rank(a) or (rank(a) == rank(b) == features and (a, b) not in SAME_LAYER_ALLOWED))}
    assert upward == set(), f"imports from a lower layer up: {sorted(upward)}"


def test_no_private_names_cross_parts():
    private = {(a, b, name) for a, b, name, _ in EDGES
               if a and name and name.startswith("_") and not name.startswith("__")}
    assert private == set(), f"private names imported across parts: {sorted(private)}"


def test_registry_imports_nothing_above_errors():
    assert {b for a, b, _, _ in EDGES if a == "registry"} <= {"errors"}
