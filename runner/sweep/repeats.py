"""Repeated trials: every configuration of a search run with the same k seeds, the optimizer told the mean.

`hydra.sweeper.repeats=k` wraps a search (runner.sweep.search) in RepeatedSearch. Its ask() hands
out each configuration k times, member i with `trainer.seed=<seed>+i` appended to its overrides,
where <seed> is the composed config's trainer.seed: every configuration meets the same seeds, so
configurations are compared on common seeds. Its tell() tells the inner search once, when all k
members have ended, the mean of their losses (elementwise when a loss is a list, one per
objective). A configuration with a failed member is told as failed (inf): a mean over the
survivors would favour configurations that crash on unlucky seeds.

The budget of a Nevergrad search counts configurations: `optim.budget=10 repeats=3` runs 30 trials.
The journal records each member's ask and tell as any trial's; resuming replays them through this
wrapper, which rebuilds its groups from the members' overrides.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from runner.errors import ConfigError
from runner.sweep.search import Point

SEED_KEY = "trainer.seed"


@dataclass
class Member:
    """Which configuration a trial repeats, and with which of the k seeds."""

    group: tuple[str, ...]
    index: int


@dataclass
class Group:
    """One configuration's inner point and the losses its members told so far."""

    point: Point
    losses: dict[int, Any] = field(default_factory=dict)
    violations: dict[int, Any] = field(default_factory=dict)
    told: bool = False


def check_repeats(repeats: Any, lines: list[str]) -> int:
    """Refuse a repeat count that is not an int >= 1, and a swept seed beside repeats > 1."""
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ConfigError(f"hydra.sweeper.repeats={repeats!r} must be an integer >= 1 (1: each configuration once)")
    swept = [line for line in lines if without_seed([line]) == []]
    if repeats > 1 and swept:
        raise ConfigError(f"{swept[0]} sweeps the seed, and hydra.sweeper.repeats={repeats} sets it: each "
                          f"configuration runs with {SEED_KEY}=<seed>..<seed+{repeats - 1}>; drop one of the two")
    return repeats


def without_seed(overrides) -> list[str]:
    """The overrides that name the configuration: all but the seed's."""
    return [o for o in overrides if o.partition("=")[0].lstrip("+~") != SEED_KEY]


def mean_loss(losses: list[Any]) -> Any:
    """The mean of the members' losses, elementwise for lists; inf (each element) if any member failed."""
    values = np.array([np.asarray(loss, dtype=float) for loss in losses])
    if not np.all(np.isfinite(values)):
        mean = np.full(values.shape[1:], math.inf)
    else:
        mean = values.mean(axis=0)
    return mean.tolist() if mean.ndim else float(mean)


class RepeatedSearch:
    """A search whose every configuration runs as k trials, seeds seed..seed+k-1, told as one mean."""

    def __init__(self, inner, repeats: int, base_seed: int) -> None:
        self.inner, self.repeats, self.base_seed = inner, repeats, base_seed
        self.kind, self.choices = inner.kind, inner.choices
        self.groups: dict[tuple[str, ...], Group] = {}
        self.pending: list[Point] = []

    def __getattr__(self, name: str) -> Any:
        if name == "inner":  # not set yet (a copy being made): no search to ask
            raise AttributeError(name)
        # what the sweep reads of its search beyond ask/tell (the objectives, a conditional space, the
        # results file) is the configurations' search's
        return getattr(self.inner, name)

    @property
    def budget(self) -> int:
        return self.inner.budget * self.repeats

    def describe(self) -> dict[str, Any]:
        described = self.inner.describe()
        # in the space: a sweep resumed with another repeat count is refused as another space
        return {**described, "space": [*described["space"], f"hydra.sweeper.repeats={self.repeats}"]}

    def _members(self, point: Point) -> list[Point]:
        key = tuple(point.overrides)
        self.groups[key] = Group(point)
        return [Point([*point.overrides, f"{SEED_KEY}={self.base_seed + i}"], point.value, Member(key, i))
                for i in range(self.repeats)]

    def ask(self) -> Point:
        if not self.pending:
            self.pending = self._members(self.inner.ask())
        return self.pending.pop(0)

    def recorded(self, overrides: list[str], value: Any) -> Point:
        """A member the journal holds that this search did not ask again."""
        key = tuple(without_seed(overrides))
        if key not in self.groups:
            self._members(self.inner.recorded(list(key), value))
        seed = int(next(o for o in overrides if o not in key).partition("=")[2])
        return Point(list(overrides), value, Member(key, seed - self.base_seed))

    def tell(self, point: Point, loss: Any, violations: list[float] | None = None) -> None:
        group = self.groups[point.candidate.group]
        group.losses[point.candidate.index] = loss
        if violations is not None:
            group.violations[point.candidate.index] = violations
        if len(group.losses) == self.repeats and not group.told:
            group.told = True
            # a configuration breaks a constraint as far as its members do on average
            mean_violations = mean_loss(list(group.violations.values())) if group.violations else None
            self.inner.tell(group.point, mean_loss(list(group.losses.values())), violations=mean_violations)


def repeated(search, repeats: Any, config: DictConfig):
    """The search itself for repeats=1 (today's sweep, unchanged), else wrapped in RepeatedSearch."""
    if check_repeats(repeats, search.lines) == 1:
        return search
    seed = OmegaConf.select(config, SEED_KEY, default=0)
    return RepeatedSearch(search, repeats, int(seed))
