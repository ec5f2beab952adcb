"""The layout's import rule, drawn from the code: no module imports a higher layer, and no import cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fusion"
# lower layers never import higher ones; a layer may import its own and lower layers
LAYERS = {
    "errors": 0, "files": 0,
    "encoders": 1, "fusions": 1, "alignment": 1, "temporal": 1, "distributed": 1,
    "data": 2, "runtime": 2,
    "tasks": 3,
    "eval": 4, "inference": 4, "training": 4,
    "commands": 5, "api": 5, "__init__": 5,
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit_of(module: str) -> str:
    """The layout unit of a module: fusion.<unit>[...] ('__init__' for the package itself)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports_of(path: Path) -> set[str]:
    """Every fusion module imported anywhere in the file (top level and inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fusion"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("fusion"))
    return found


GRAPH = {module_name(path): imports_of(path) for path in sorted(PACKAGE.rglob("*.py"))}


def test_every_unit_has_a_layer():
    assert {unit_of(module) for module in GRAPH} <= set(LAYERS)


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_no_upward_import(module):
    upward = sorted(target for target in GRAPH[module] if target != "fusion"
                    and LAYERS[unit_of(target)] > LAYERS[unit_of(module)])
    assert not upward, f"{module} (layer {LAYERS[unit_of(module)]}) imports higher layers: {upward}"


def test_no_import_cycle():
    """Depth-first search over module imports (a package import counts as importing its __init__)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(GRAPH.get(module, ())):
            if target not in GRAPH or target == module:
                continue
            if state.get(target) == 1:
                cycle = path[path.index(target):] + [target] if target in path else [module, target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if state.get(target) is None:
                visit(target, path + [target])
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])


def test_imports_inside_functions_are_seen(tmp_path):
    source = tmp_path / "module.py"
    source.write_text("import os\n\ndef f():\n    from fusion.tasks.classify import ClassificationTask\n"
                      "    import fusion.eval.sweep\n")
    assert imports_of(source) == {"fusion.tasks.classify", "fusion.eval.sweep"}
