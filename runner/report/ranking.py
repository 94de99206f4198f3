"""Ranking a sweep's trials by its one objective, choosing the best once, and finding what the sweep varied."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

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

    def rank_of(self, trial: Trial) -> int | None:
        return self.trials.index(trial) + 1 if trial.ranked else None

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
    metric, goal = sweep_objective(trials, sweep_dir)
    ranked = rank_trials(trials, goal)
    return Sweep(
        path=sweep_dir,
        metric=metric,
        goal=goal,
        trials=ranked,
        best=ranked[0] if ranked[0].ranked else None,
        parameters=swept_parameters(ranked),
    )


def sweep_objective(trials: list[Trial], sweep_dir: Path) -> tuple[str, str]:
    """The metric and goal every trial was optimised for; ranking trials of different ones means nothing."""
    objectives = {(t.metric, t.goal) for t in trials if t.metric and t.goal}
    if not objectives:
        raise SweepReportError(
            f"no trial in {sweep_dir} names its objective yet (result.json objective.* or .hydra/config.yaml objective.*)"
        )
    if len(objectives) > 1:
        found = ", ".join(f"{metric} ({goal})" for metric, goal in sorted(objectives))
        raise SweepReportError(f"the trials in {sweep_dir} optimise different objectives: {found}; a sweep ranks one")
    metric, goal = objectives.pop()
    if goal not in GOALS:
        raise SweepReportError(f"objective.goal={goal!r} in {sweep_dir} is not allowed; use one of {', '.join(GOALS)}")
    return metric, goal


def rank_trials(trials: list[Trial], goal: str) -> list[Trial]:
    """Best first in the goal's direction; failed and value-less trials last, by job number."""
    sign = -1.0 if goal == "maximize" else 1.0

    def order(trial: Trial):
        by_value = sign * trial.value if trial.ranked else 0.0
        return (not trial.ranked, by_value, trial.number is None, trial.number or 0, trial.name)

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
