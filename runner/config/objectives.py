"""Several objectives and constraints: what `objective.metrics`, `objective.goals` and
`objective.constraints` say, what a trial's metrics make of them, and which trials form the Pareto front.

A run follows the first objective (`objective.metric`, `objective.goal`: early stopping, the best
checkpoint, pruning and PBT); a sweep over several ranks trials by Pareto fronts of all of them, at
each trial's best epoch. A constraint (`val/params <= 1e6`) is a bound on a recorded metric: a trial
that breaks one is recorded, ranked after every trial that keeps them all, and never on the front.
"""

from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from runner.errors import ConfigError
from runner.resolvers import GOALS

CONSTRAINT_PATTERN = re.compile(r"^\s*(?P<metric>[^\s<>=]+)\s*(?P<op><=|>=|<|>)\s*(?P<bound>\S+)\s*$")
COMPARISONS = {"<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt}


@dataclass(frozen=True)
class Constraint:
    """`metric op bound`, kept by a trial whose metric compares so."""

    metric: str
    op: str
    bound: float

    @classmethod
    def parse(cls, text: Any) -> Constraint:
        match = CONSTRAINT_PATTERN.match(str(text))
        bound = _number(match.group("bound")) if match else None
        if match is None or bound is None:
            raise ConfigError(f"objective.constraints: {text!r} does not parse; write `<metric> <op> <number>` with op "
                              f"one of {', '.join(COMPARISONS)}, e.g. 'model/params <= 1e6'")
        return cls(match.group("metric"), match.group("op"), bound)

    def violation(self, value: float | None) -> float:
        """How far `value` is on the wrong side of the bound: 0 when kept; inf when the metric is missing."""
        if value is None or not math.isfinite(value):
            return math.inf
        if COMPARISONS[self.op](value, self.bound):
            return 0.0
        # a strict bound broken by equality is still broken
        return max(abs(value - self.bound), 1e-12)

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.bound:g}"


@dataclass(frozen=True)
class Objectives:
    """Every objective's metric and goal, the first being the run's, and the constraints."""

    metrics: tuple[str, ...]
    goals: tuple[str, ...]
    constraints: tuple[Constraint, ...] = ()

    @property
    def several(self) -> bool:
        return len(self.metrics) > 1

    @property
    def needed_metrics(self) -> list[str]:
        """The metrics a run must record for these objectives and constraints."""
        return list(dict.fromkeys([*self.metrics, *(c.metric for c in self.constraints)]))

    def values(self, metrics: Mapping[str, Any]) -> list[float | None]:
        """Each objective's value in a trial's metrics (its row at the best epoch); None where missing."""
        return [_finite(metrics.get(metric)) for metric in self.metrics]

    def losses(self, metrics: Mapping[str, Any]) -> list[float]:
        """What an optimizer minimises: each value, negated where maximized; inf where missing."""
        return [math.inf if value is None else (-value if goal == "maximize" else value)
                for value, goal in zip(self.values(metrics), self.goals)]

    def violations(self, metrics: Mapping[str, Any]) -> list[float]:
        return [c.violation(_finite(metrics.get(c.metric))) for c in self.constraints]

    def broken(self, metrics: Mapping[str, Any]) -> list[str]:
        """The constraints these metrics break, as written."""
        return [str(c) for c, amount in zip(self.constraints, self.violations(metrics)) if amount > 0]

    def record(self) -> dict[str, Any]:
        """What a run's result.json adds to its `objective` when it has more than one metric or constraints."""
        return {"metrics": list(self.metrics), "goals": list(self.goals),
                "constraints": [str(c) for c in self.constraints]}


def objectives_of(objective: Mapping[str, Any]) -> Objectives:
    """The objectives a config's `objective` node (or a result.json's `objective` record) names; a
    ConfigError naming the first thing that does not fit."""
    metric, goal = objective.get("metric"), objective.get("goal")
    metrics = list(objective.get("metrics") or [metric])
    goals = list(objective.get("goals") or ([goal] if len(metrics) == 1 else []))
    if len(goals) != len(metrics):
        raise ConfigError(f"objective.goals={goals} must give one goal per metric of objective.metrics={metrics}")
    for each in goals:
        if each not in GOALS:
            raise ConfigError(f"objective.goals: {each!r} is not allowed; use one of: {', '.join(GOALS)}")
    if len(set(metrics)) != len(metrics):
        raise ConfigError(f"objective.metrics={metrics} names a metric twice")
    if (metrics[0], goals[0]) != (metric, goal):
        raise ConfigError(
            f"objective.metrics starts with {metrics[0]} ({goals[0]}) but objective.metric={metric} ({goal}): the first "
            f"objective is the one a run follows (early stopping, the best checkpoint, pruning); set "
            f"objective.metric={metrics[0]} objective.goal={goals[0]} too, or reorder objective.metrics")
    constraints = tuple(Constraint.parse(text) for text in objective.get("constraints") or [])
    return Objectives(tuple(metrics), tuple(goals), constraints)


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """Loss vector a is no worse than b everywhere and better somewhere."""
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def pareto_fronts(losses: Sequence[Sequence[float]]) -> list[int]:
    """Each loss vector's front: 1 for the non-dominated ones, 2 for those only the first front
    dominates, and so on (non-dominated sorting)."""
    fronts = [0] * len(losses)
    remaining = set(range(len(losses)))
    front = 1
    while remaining:
        members = {i for i in remaining if not any(dominates(losses[j], losses[i]) for j in remaining if j != i)}
        for i in members:
            fronts[i] = front
        remaining -= members
        front += 1
    return fronts


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None
