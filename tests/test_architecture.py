"""The house's shape: runner's packages import one way (base <- config <- run <- sweep <- report), no
module imports itself back through others, components never import runner, and no module or class
outgrows one job. Every import counts, also one inside a function."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.conftest import REPO

# lowest first: a module may import its own layer and the ones below, never one above
LAYERS = [
    ("base", ["runner.errors", "runner.resolvers", "runner.logs", "runner.files", "runner.results", "runner.paths"]),
    ("config", ["runner.config"]),
    ("run", ["runner.run"]),
    ("sweep", ["runner.sweep"]),
    ("report", ["runner.report"]),
    # the package root, the entry points and what reads a finished run
    ("top", ["runner", "runner.__main__", "runner.evaluate"]),
]
MAX_MODULE_LINES = 400
MAX_CLASS_LINES = 200


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(package: str) -> dict[str, Path]:
    return {module_name(path): path for path in sorted((REPO / package).rglob("*.py"))}


def imported(path: Path, known: set[str]) -> set[str]:
    """The project modules `path` imports: `from a.b import c` is a.b.c when that is a module, else a.b."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in known else node.module
                     for alias in node.names]
        else:
            continue
        for name in names:
            # `import a.b.c` also runs a and a.b; the edge that matters is to the deepest project module
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def import_graph(package: str = "runner") -> dict[str, set[str]]:
    known = modules(package)
    return {name: imported(path, set(known)) - {name} for name, path in known.items()}


def layer_of(module: str) -> int:
    best, layer = -1, None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, layer = len(prefix), index
    assert layer is not None, f"{module} belongs to no layer: add it to LAYERS in tests/test_architecture.py"
    return layer


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return [f"{module} ({LAYERS[layer_of(module)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})"
            for module, targets in sorted(graph.items()) for target in sorted(targets)
            if layer_of(target) > layer_of(module)]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_runner_has_no_import_cycle():
    assert cycles(import_graph()) == []


def test_runner_imports_point_down_the_layers():
    assert upward_imports(import_graph()) == []


def test_the_checks_catch_a_cycle_and_an_upward_import():
    graph = import_graph()
    assert "runner.config.checks" in graph["runner.run.fit"]  # the loop reads the trainer's schema
    graph["runner.config.checks"] = graph["runner.config.checks"] | {"runner.run.fit"}
    assert "runner.config.checks (config) imports runner.run.fit (run)" in upward_imports(graph)
    assert any({"runner.config.checks", "runner.run.fit"} <= set(component) for component in cycles(graph))


def test_components_never_import_runner():
    offenders = [f"{name} imports {target}" for name, path in modules("components").items()
                 for target in imported(path, set(modules("runner"))) if target.split(".")[0] == "runner"]
    assert offenders == []


def test_every_package_says_what_it_owns():
    for package in ("runner", "runner/config", "runner/run", "runner/sweep", "runner/report", "components",
                    "launchers"):
        docstring = ast.get_docstring(ast.parse((REPO / package / "__init__.py").read_text()))
        assert docstring, f"{package}/__init__.py needs a docstring: what the package owns and may import"


@pytest.mark.parametrize("package", ["runner", "components", "launchers"])
def test_no_module_or_class_outgrows_one_job(package):
    too_long = []
    for name, path in modules(package).items():
        text = path.read_text()
        if (lines := len(text.splitlines())) > MAX_MODULE_LINES:
            too_long.append(f"{name}: {lines} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > MAX_CLASS_LINES:
                too_long.append(f"{name}.{node.name}: class of {node.end_lineno - node.lineno + 1} lines")
    assert too_long == [], f"over {MAX_MODULE_LINES} lines a module or {MAX_CLASS_LINES} a class"


def test_the_architecture_page_lists_every_module():
    page = (REPO / "docs" / "architecture.md").read_text()
    listed = set(re.findall(r"^\| `([\w/]+\.py)` \|", page, flags=re.MULTILINE))
    present = {str(path.relative_to(REPO)) for package in ("runner", "components", "launchers")
               for path in modules(package).values()}
    assert not present - listed, f"add to docs/architecture.md's module table: {sorted(present - listed)}"
    assert not listed - present, f"docs/architecture.md lists modules that are gone: {sorted(listed - present)}"
