"""Every third-party module the project imports is a declared dependency (pyproject.toml), not one that
happens to arrive with another package. Each import counts, also one inside a function or a test."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

from tests.conftest import REPO

OURS = {"runner", "components", "launchers", "hydra_plugins", "tests", "benchmarks"}
# what the shipped code may import; tests and benchmarks may also use the dev extra
SHIPPED = ["runner", "components", "launchers", "hydra_plugins"]
DEVELOPMENT = ["tests", "benchmarks"]


def top_level_imports(folders: list[str]) -> dict[str, str]:
    """Each imported top-level module -> one file that imports it."""
    found: dict[str, str] = {}
    for folder in folders:
        for path in sorted((REPO / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    found.setdefault(name.split(".")[0], str(path.relative_to(REPO)))
    return found


def requirement_name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].strip().lower().replace("_", "-")


def declared(extra: str | None = None) -> set[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + (project["optional-dependencies"][extra] if extra else [])
    return {requirement_name(requirement) for requirement in requirements}


def undeclared(folders: list[str], allowed: set[str]) -> list[str]:
    distributions = importlib.metadata.packages_distributions()
    missing = []
    for module, where in sorted(top_level_imports(folders).items()):
        if module in OURS or module in sys.stdlib_module_names or module == "__future__":
            continue
        providers = {name.lower().replace("_", "-") for name in distributions.get(module, [])}
        if not providers & allowed:
            missing.append(f"{module} (imported by {where}; provided by {sorted(providers) or 'nothing installed'})")
    return missing


def test_the_shipped_code_imports_only_declared_dependencies():
    assert undeclared(SHIPPED, declared()) == []


def test_tests_and_benchmarks_import_only_declared_or_dev_dependencies():
    assert undeclared(DEVELOPMENT, declared("dev")) == []


def test_the_check_sees_an_undeclared_import():
    # yaml arrives with hydra too: without its own line in pyproject.toml the check must still name it
    assert any(line.startswith("yaml ") for line in undeclared(SHIPPED, declared() - {"pyyaml"}))
