"""Ranking a sweep's trials by its objective (or by Pareto fronts of several), choosing the best once,
and finding what the sweep varied."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from runner.config.objectives import Objectives, objectives_of, pareto_fronts
from runner.errors import ConfigError
from runner.report.trials import SweepReportError, Trial, collect_trials
from runner.resolvers import GOALS


@dataclass(frozen=True)
class Sweep:
    """A sweep folder read once: trials best first, the one best, and what the sweep varied."""

    path: Path
    metric: str
    goal: str
    trials: list[Trial]
    best: Trial | None
    # override key -> {trial name: value}, typed alike across trials (numbers, booleans or text)
    parameters: dict[str, dict[str, object]]
    objectives: Objectives
    # trial name -> its front (1: the Pareto front), for ranked trials that keep every constraint
    fronts: dict[str, int] = field(default_factory=dict)
    # trial name -> the constraints it breaks, for ranked trials that break any
    broken: dict[str, list[str]] = field(default_factory=dict)

    def rank_of(self, trial: Trial) -> int | None:
        return self.trials.index(trial) + 1 if trial.ranked else None

    @property
    def front(self) -> list[Trial]:
        """The trials no other trial beats on every objective (several objectives), else the best alone."""
        if not self.objectives.several:
            return [self.best] if self.best else []
        return [t for t in self.trials if self.fronts.get(t.name) == 1]

    def values(self, trial: Trial) -> list[float | None]:
        """The trial's value of each objective, at its best epoch."""
        if not self.objectives.several:
            return [trial.value]
        return self.objectives.values(trial.best_metrics)

    @cached_property
    def importance(self):
        """How much each swept parameter mattered to the objective (runner.report.importance), once per Sweep."""
        from runner.report.importance import parameter_importance

        return parameter_importance(self)

    def numeric_parameters(self) -> list[str]:
        return [key for key, values in self.parameters.items() if all(is_number(v) for v in values.values())]


def load_sweep(sweep_dir: Path | str) -> Sweep:
    """Read every trial of the sweep folder, rank them and choose the best: the report's one source."""
    sweep_dir = Path(sweep_dir)
    trials = collect_trials(sweep_dir)
    objectives = sweep_objective(trials, sweep_dir)
    metric, goal = objectives.metrics[0], objectives.goals[0]
    broken = {t.name: found for t in trials if t.ranked and (found := objectives.broken(t.best_metrics))}
    fronts = {}
    if objectives.several:
        kept = [t for t in trials if t.ranked and t.name not in broken]
        fronts = dict(zip((t.name for t in kept), pareto_fronts([objectives.losses(t.best_metrics) for t in kept])))
    ranked = rank_trials(trials, goal, fronts, broken)
    first = ranked[0]
    return Sweep(
        path=sweep_dir,
        metric=metric,
        goal=goal,
        trials=ranked,
        best=first if first.ranked and first.name not in broken else None,
        parameters=swept_parameters(ranked),
        objectives=objectives,
        fronts=fronts,
        broken=broken,
    )


def sweep_objective(trials: list[Trial], sweep_dir: Path) -> Objectives:
    """The objectives every trial was optimised for; ranking trials of different ones means nothing."""
    found = set()
    for trial in trials:
        if trial.metric and trial.goal:
            if trial.goal not in GOALS:
                raise SweepReportError(f"objective.goal={trial.goal!r} in {sweep_dir} is not allowed; use one of "
                                       f"{', '.join(GOALS)}")
            try:
                found.add(objectives_of({"metric": trial.metric, "goal": trial.goal, **trial.objectives}))
            except ConfigError as error:
                raise SweepReportError(f"{trial.path}: {error}") from None
    if not found:
        raise SweepReportError(
            f"no trial in {sweep_dir} names its objective yet (result.json objective.* or .hydra/config.yaml objective.*)"
        )
    if len(found) > 1:
        named = ", ".join(sorted(describe(each) for each in found))
        raise SweepReportError(f"the trials in {sweep_dir} optimise different objectives: {named}; a sweep ranks one")
    return found.pop()


def describe(objectives: Objectives) -> str:
    """`val/acc (maximize)`, `val/acc (maximize), model/params (minimize) with model/params <= 1e+06`."""
    text = ", ".join(f"{metric} ({goal})" for metric, goal in zip(objectives.metrics, objectives.goals))
    constraints = ", ".join(str(c) for c in objectives.constraints)
    return f"{text} with {constraints}" if constraints else text


def rank_trials(trials: list[Trial], goal: str, fronts: dict[str, int] | None = None,
                broken: dict[str, list[str]] | None = None) -> list[Trial]:
    """Best first: by Pareto front when there are several objectives, then by the first objective in its
    goal's direction; trials that break a constraint after those that keep them; failed and value-less
    trials last, by job number."""
    sign = -1.0 if goal == "maximize" else 1.0
    fronts, broken = fronts or {}, broken or {}

    def order(trial: Trial):
        by_value = sign * trial.value if trial.ranked else 0.0
        return (not trial.ranked, trial.name in broken, fronts.get(trial.name, 0), by_value, trial.number is None,
                trial.number or 0, trial.name)

    return sorted(trials, key=order)


def swept_parameters(trials: list[Trial]) -> dict[str, dict[str, object]]:
    """Override keys whose values differ between trials (or are missing in some): what the sweep varied."""
    texts: dict[str, dict[str, str]] = {}
    for trial in trials:
        for key, value in set_values(trial).items():
            texts.setdefault(key, {})[trial.name] = value
    swept = {
        key: values
        for key, values in texts.items()
        if len(set(values.values())) > 1 or len(values) < len(trials)
    }
    return {key: _typed_alike(swept[key]) for key in sorted(swept)}


def set_values(trial: Trial) -> dict[str, str]:
    """The config values a trial's overrides set, key -> value as typed."""
    values = {}
    for override in trial.overrides:
        key, sep, value = override.partition("=")
        # `~key` deletes a config entry: it sets no value to compare
        if sep and not key.startswith("~"):
            values[key.lstrip("+")] = value
    return values


def _typed_alike(texts: dict[str, str]) -> dict[str, object]:
    """Numbers if every value is a finite number, booleans if every one is true/false, else the text."""
    numbers = {name: _parse_number(text) for name, text in texts.items()}
    if all(v is not None for v in numbers.values()):
        return numbers
    if all(text.lower() in ("true", "false") for text in texts.values()):
        return {name: text.lower() == "true" for name, text in texts.items()}
    return dict(texts)


def _parse_number(text: str) -> int | float | None:
    for parse in (int, float):
        try:
            number = parse(text)
        except ValueError:
            continue
        return number if math.isfinite(number) else None
    return None


def is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def by_number(trial: Trial):
    return (trial.number is None, trial.number or 0, trial.name)
