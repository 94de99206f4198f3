"""How the checks walk a config and say what is wrong with it."""

from __future__ import annotations

from typing import Any


def leaves(node: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted key, value) of every leaf of a plain container: `optimizer.lr`, `optimizer.betas[0]`."""
    if isinstance(node, dict):
        return [leaf for key, value in node.items() for leaf in leaves(value, f"{prefix}.{key}" if prefix else str(key))]
    if isinstance(node, list):
        return [leaf for i, value in enumerate(node) for leaf in leaves(value, f"{prefix}[{i}]")]
    return [(prefix, node)]


def bullets(problems: list[str]) -> str:
    if len(problems) == 1:
        return f"Invalid config: {problems[0]}"
    return "Invalid config:\n" + "\n".join(f"  - {p}" for p in problems)
