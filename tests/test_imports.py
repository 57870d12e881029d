"""The package's import graph, read from the source with `ast`: no cycle, no edge up the layers.

Edges: every `import ngrpo...` and `from ngrpo... import ...` in `src/ngrpo`, at module level or
inside a function (a lazy import is a dependency all the same); imports under `if TYPE_CHECKING:`
are not edges (they never run). `from ngrpo.pkg import name` is an edge to the module
`ngrpo.pkg.name` when that is a module, else to `ngrpo.pkg` (its `__init__`).

Layers (`LAYERS`, bottom first; docs/reference/code-map.md lists the same order): a module
belongs to the unit named by its first component under `ngrpo` (`ngrpo.models.lora` -> `models`;
`ngrpo/__init__.py` is the unit `__init__`). An import between two units must go to a strictly
lower layer; units that share a layer do not import each other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"

LAYERS: tuple[tuple[str, ...], ...] = (
    ("utils",),  # errors, atomic writes
    ("method",),  # the algorithm as pure tensor functions
    ("tasks", "rewards", "rollout", "sharding"),
    ("data", "models", "learner"),
    ("config", "evaluation", "tracking"),
    ("memory",),
    ("trainer",),
    ("study", "bench"),
    ("api", "__init__"),
    ("cli",),
    ("__main__",),
)
LAYER = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    found = {}
    for path in sorted((SRC / "ngrpo").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported_names(tree: ast.Module, module: str, is_package: bool):
    """(imported dotted name, line) for every import that runs (TYPE_CHECKING blocks skipped)."""
    package = module if is_package else module.rpartition(".")[0]
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            yield from ((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            yield from ((f"{source}.{alias.name}", node.lineno) for alias in node.names)
        stack.extend(ast.iter_child_nodes(node))


def _target(name: str, modules: dict[str, Path]) -> str | None:
    """The ngrpo module an imported name runs: itself, or for `from pkg import name` where
    `name` is not a module, `pkg`; None outside ngrpo."""
    if name != "ngrpo" and not name.startswith("ngrpo."):
        return None
    while name not in modules:
        name = name.rpartition(".")[0]
    return name


def import_graph() -> dict[str, dict[str, int]]:
    """module -> {imported ngrpo module: line of the first such import}."""
    modules = _modules()
    graph: dict[str, dict[str, int]] = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        edges: dict[str, int] = {}
        for name, line in _imported_names(tree, module, path.name == "__init__.py"):
            target = _target(name, modules)
            if target is not None and target != module:
                edges.setdefault(target, line)
        graph[module] = edges
    return graph


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_unit_has_a_layer():
    units = {_unit(m) for m in _modules()}
    assert not units - set(LAYER), f"add these to LAYERS: {sorted(units - set(LAYER))}"
    assert not set(LAYER) - units, f"no such package: {sorted(set(LAYER) - units)}"


def test_no_import_cycle():
    graph = import_graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []
    cycles = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycles.append(path[path.index(target) :] + [target])
            elif target not in state:
                visit(target)
        path.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_import_from_a_higher_layer():
    upward = []
    for module, edges in import_graph().items():
        for target, line in edges.items():
            a, b = _unit(module), _unit(target)
            if a != b and LAYER[b] >= LAYER[a]:
                upward.append(f"{module}:{line} imports {target} ({a} -> {b})")
    assert not upward, "imports that do not go down the layers:\n" + "\n".join(sorted(upward))


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from ngrpo.models import lora\n", {"ngrpo.models.lora"}),
        ("from ngrpo.rollout import RolloutBatch\n", {"ngrpo.rollout"}),
        ("def f():\n    import ngrpo.method.losses\n", {"ngrpo.method.losses"}),
        ("if TYPE_CHECKING:\n    from ngrpo.api import train\n", set()),
        ("from . import load\n", {"ngrpo.models.load"}),
    ],
)
def test_the_graph_reads_every_form_of_import(source, expected):
    names = _imported_names(ast.parse(source), "ngrpo.models.tokenizer", is_package=False)
    assert {_target(name, _modules()) for name, _ in names} == expected
