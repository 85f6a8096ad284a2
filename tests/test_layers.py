"""Imports point one way, from the stage scripts down to the library, derived from the code.

Every project module (`ast`, function-level imports included) may import only modules of its own
package or of a lower layer below; two packages of one layer import neither one another. And no
chain of imports comes back to where it started.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from test_dvc_deps import ROOT, imports_in

# Lowest first: the schema and plain helpers, then the library (data, then the model code, then the
# Composer and evaluation code that use both), then the stage scripts and the benchmarks above them.
LAYERS = [
    ("vlm",),  # the package itself; a new top-level module lands here until it is given its layer
    ("vlm.faults",),
    ("vlm.io",),
    ("vlm.config",),
    ("vlm.data",),
    ("vlm.model",),
    ("vlm.evaluation", "vlm.training"),
    ("pipeline",),
    ("bench",),
]
UNITS = [u for layer in LAYERS for u in layer]


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    return ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)


MODULES = {module_name(p): p for d in ("vlm", "pipeline", "bench") for p in sorted((ROOT / d).rglob("*.py"))}


def unit_of(module: str) -> str:
    """The layer unit a module belongs to: the longest listed name it equals or lies under."""
    return max((u for u in UNITS if module == u or module.startswith(u + ".")), key=len)


def layer_of(module: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if unit_of(module) in layer)


def project_imports(module: str) -> set[str]:
    """The project modules `module` imports (a name that is no module, e.g. a class, drops out)."""
    tree = ast.parse(MODULES[module].read_text())
    return {name for name in imports_in(tree, module) if name in MODULES and name != module}


def upward(graph: dict[str, set[str]]) -> list[str]:
    """Every import of a module in a higher layer or of a sibling package of the same layer."""
    bad = []
    for module, imported in sorted(graph.items()):
        for other in sorted(imported):
            same_unit = unit_of(other) == unit_of(module)
            if not same_unit and layer_of(other) >= layer_of(module):
                bad.append(f"{module} imports {other}")
    return bad


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One import chain per circle found (depth-first search)."""
    found, state = [], {}  # state: 1 on the current path, 2 done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                found.append(path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    return found


def import_graph() -> dict[str, set[str]]:
    return {m: project_imports(m) for m in MODULES}


def test_every_module_has_a_layer():
    for module in MODULES:
        assert unit_of(module), module


def test_no_module_imports_one_above_it():
    assert upward(import_graph()) == []


def test_no_import_circle():
    assert cycles(import_graph()) == []


@pytest.mark.parametrize(("edge", "found"), [
    (("vlm.config", "vlm.data.world"), "upward"),  # the schema reaching into the library
    (("vlm.data.ingest", "vlm.evaluation.metrics"), "upward"),
    (("vlm.evaluation.scoring", "vlm.training.data"), "upward"),  # siblings of one layer
    (("vlm.data.batches", "vlm.data.tokenizer"), "cycle"),  # within a package: only circles count
])
def test_the_checks_catch_a_planted_import(edge, found):
    graph = import_graph()
    module, other = edge
    graph[module] = graph[module] | {other}
    if found == "upward":
        assert f"{module} imports {other}" in upward(graph)
    graph[other] = graph[other] | {module}  # and back again: a circle
    assert any(module in c and other in c for c in cycles(graph))
