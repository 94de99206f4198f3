"""The objective: one metric and its goal, and the best value a run has reached."""

from __future__ import annotations

import math
from typing import Any


class Objective:
    def __init__(self, metric: str, goal: str):
        self.metric, self.goal = metric, goal
        self.maximize = goal == "maximize"
        self.value: float | None = None  # best so far
        self.epoch: int | None = None
        self.metrics: dict[str, Any] = {}
        self.last: float | None = None

    @property
    def worst(self) -> float:
        return worst_value(self.goal)

    def better(self, a: float, b: float | None, margin: float = 0.0) -> bool:
        if a is None or math.isnan(a):
            return False
        if b is None:
            return True
        return a > b + margin if self.maximize else a < b - margin

    def reached(self, value: float, threshold: float) -> bool:
        return value >= threshold if self.maximize else value <= threshold

    def update(self, value: float, epoch: int, row: dict[str, Any]) -> bool:
        """Record an evaluation; returns whether it is the new best."""
        self.last = value
        is_best = self.better(value, self.value)
        if is_best:
            self.value, self.epoch, self.metrics = value, epoch, dict(row)
        return is_best

    def state(self) -> dict[str, Any]:
        return {"value": self.value, "epoch": self.epoch, "metrics": self.metrics, "last": self.last}

    def load_state(self, state: dict[str, Any]) -> None:
        self.value, self.epoch, self.metrics, self.last = state["value"], state["epoch"], state["metrics"], state["last"]


def worst_value(goal: str) -> float:
    """The value no result is worse than for `goal`: what a failed trial gives its sweeper."""
    return -math.inf if goal == "maximize" else math.inf
