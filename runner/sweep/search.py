"""What a sweep searches: the points of a grid in order, or Nevergrad's ask/tell, one point at a time.

Both read the search space as Hydra's sweepers do (`hydra.sweeper.params` first, then the
command line, in Hydra's override syntax) and turn each point into the overrides of one trial,
written exactly as Hydra's basic and Nevergrad sweepers write them, so trial folders keep their
names. A search is driven by runner.sweep.sweeper.StreamingSweeper.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Mapping

from omegaconf import DictConfig, OmegaConf

from runner.config.checks import sweep_workers_problem
from runner.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class Point:
    """One trial's place in the search: its overrides, and what the optimizer needs to be told."""

    overrides: list[str]
    value: dict[str, Any] | None = None  # Nevergrad's candidate value (JSON-able); None for a grid
    candidate: Any = None  # Nevergrad's candidate object


def space_lines(params: Mapping[str, Any] | None, arguments: list[str]) -> list[str]:
    """The search space as override lines: hydra.sweeper.params first, then the command line."""
    lines = [f"{key}={value}" for key, value in (params or {}).items()]
    return lines + list(arguments)


class GridSearch:
    """Every combination of the swept values, in Hydra's basic sweeper's order."""

    kind = "grid"

    def __init__(self, lines: list[str], config_loader=None):
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
        from hydra.core.override_parser.overrides_parser import OverridesParser

        self.lines = lines
        parsed = OverridesParser.create(config_loader=config_loader).parse_overrides(lines)
        (self.points,) = BasicSweeper.split_arguments(parsed, max_batch_size=None)
        # key -> every value it takes, for validating each value once
        self.choices: dict[str, list[str]] = {}
        for overrides in self.points:
            for override in overrides:
                key, _, _ = override.partition("=")
                values = self.choices.setdefault(key, [])
                if override not in values:
                    values.append(override)
        self.asked = 0

    @property
    def budget(self) -> int:
        return len(self.points)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "space": self.lines}

    def ask(self) -> Point:
        point = Point(list(self.points[self.asked]))
        self.asked += 1
        return point

    def recorded(self, overrides: list[str], value: Any) -> Point:
        """A point this sweep asked before it was stopped (from its journal)."""
        return Point(list(overrides))

    def tell(self, point: Point, loss: float) -> None:
        pass



class NevergradSearch:
    """Nevergrad's ask/tell over the space Hydra's Nevergrad sweeper would build from the same lines."""

    kind = "nevergrad"

    def __init__(self, lines: list[str], optim: DictConfig, config_loader=None, base_config: DictConfig | None = None):
        import nevergrad as ng
        from hydra.core.override_parser.overrides_parser import OverridesParser
        from hydra_plugins.hydra_nevergrad_sweeper._impl import create_nevergrad_parameter_from_override

        self.lines = lines
        self.optim = optim
        parsed = OverridesParser.create(config_loader=config_loader).parse_overrides(lines)
        for override in parsed:
            check_dimension(override, base_config)
        params = {override.get_key_element(): create_nevergrad_parameter_from_override(override)
                  for override in parsed}
        # key -> the overrides of every option of a choice, for validating each option once
        self.choices = {key: [f"{key}={option}" for option in param.choices.value]
                        for key, param in params.items() if isinstance(param, ng.p.Choice)}
        self.parametrization = ng.p.Dict(**params)
        self.parametrization.function.deterministic = not optim.noisy
        self.parametrization.random_state.seed(optim.seed)
        self.optimizer = ng.optimizers.registry[optim.optimizer](
            parametrization=self.parametrization, budget=optim.budget, num_workers=optim.num_workers)
        self.direction = -1.0 if optim.maximize else 1.0

    @property
    def budget(self) -> int:
        return int(self.optim.budget)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "space": self.lines}

    def ask(self) -> Point:
        candidate = self.optimizer.ask()
        # written as Hydra's Nevergrad sweeper writes them: the folder names stay the same
        overrides = [f"{key}={value}" for key, value in candidate.value.items()]
        return Point(overrides, _json_value(candidate.value), candidate)

    def recorded(self, overrides: list[str], value: dict[str, Any]) -> Point:
        """A point the journal holds that this optimizer did not ask again (no seed, or other settings)."""
        candidate = self.parametrization.spawn_child(new_value=value)
        return Point(list(overrides), value, candidate)

    def tell(self, point: Point, loss: float) -> None:
        """Tell the optimizer the trial's loss (the objective, negated when maximizing; inf when failed)."""
        from nevergrad.common.errors import TellNotAskedNotSupportedError

        try:
            self.optimizer.tell(point.candidate, loss)
        except TellNotAskedNotSupportedError:
            log.warning("Nevergrad's %s cannot be told a point it did not ask: %s is left out",
                        self.optim.optimizer, " ".join(point.overrides))



# the tags Hydra's Nevergrad parametrization reads; any other would be dropped without a word
INTERVAL_TAGS = {"log"}
CHOICE_TAGS = {"ordered"}


def check_dimension(override, base_config: DictConfig | None) -> None:
    """Refuse a dimension of the space that would not search what it says, before any trial runs."""
    line = override.input_line
    if override.is_choice_sweep():
        unknown = set(override.value().tags) - CHOICE_TAGS
        if unknown:
            raise ConfigError(f"{line}: unknown tag {', '.join(sorted(unknown))}; a choice takes tag(ordered, "
                              f"choice(...)) (neighbouring options are close) or no tag")
    if not override.is_interval_sweep():
        return
    interval, key = override.value(), override.get_key_element()
    unknown = set(interval.tags) - INTERVAL_TAGS
    if unknown:
        raise ConfigError(f"{line}: unknown tag {', '.join(sorted(unknown))}; an interval takes tag(log, "
                          f"interval(low, high)) (a log scale) or no tag (uniform)")
    if "log" in interval.tags and min(interval.start, interval.end) <= 0:
        raise ConfigError(f"{line}: a log-scale interval needs both bounds above 0")
    current = None if base_config is None else OmegaConf.select(base_config, key, default=None,
                                                                 throw_on_resolution_failure=False)
    if isinstance(interval.start, float) and isinstance(current, int) and not isinstance(current, bool):
        # Hydra reads interval bounds as floats, whole or not
        raise ConfigError(f"{line} draws floats, but {key} is an integer ({current}); write "
                          f"{key}=int(interval({int(interval.start)},{int(interval.end)})) for integers")


def each_value_once(first: list[str], choices: dict[str, list[str]]) -> list[list[str]]:
    """The first trial's overrides, then each other value of each key swapped into them, once:
    every value of a grid (or option of a choice) is composed without composing every combination."""
    variants = [first]
    for position, override in enumerate(first):
        for other in choices.get(override.partition("=")[0], []):
            if other != override:
                variants.append(first[:position] + [other] + first[position + 1:])
    return variants


def compose_each_choice(search, first: list[str], config_loader, config: DictConfig) -> None:
    """Compose the first trial, and each other choice of each config group once: a misspelt option
    stops the sweep before anything runs, not after the trials before it."""
    groups = {key: values for key, values in search.choices.items() if "." not in key}
    for overrides in each_value_once(first, groups):
        config_loader.load_sweep_config(config, list(overrides))


def _json_value(value: dict[str, Any]) -> dict[str, Any]:
    """A candidate's value with numpy scalars made plain numbers, so the journal can hold it."""
    plain = {}
    for key, item in value.items():
        if hasattr(item, "item") and not isinstance(item, (str, bytes)):
            item = item.item()
        plain[key] = item
    return plain


def make_search(kind: str, params: Any, optim: DictConfig | None, arguments: list[str], config_loader=None,
                base_config: DictConfig | None = None):
    """The sweep's search; base_config (the composed config before any override of the space) tells
    which keys hold integers."""
    params = OmegaConf.to_container(params, resolve=True) if OmegaConf.is_config(params) else params
    lines = space_lines(params, arguments)
    if kind == "grid":
        return GridSearch(lines, config_loader)
    check_optim(optim)
    return NevergradSearch(lines, optim, config_loader, base_config)


def check_optim(optim: DictConfig | None) -> None:
    """Refuse Nevergrad settings that cannot work, before any trial runs (for Hydra's Nevergrad sweeper too)."""
    import nevergrad

    if optim is None:
        raise ConfigError("hydra.sweeper.optim is missing: the Nevergrad sweeper needs an optimizer and a budget")
    registry = nevergrad.optimizers.registry
    name = optim.optimizer
    if name not in registry:
        raise ConfigError(f"hydra.sweeper.optim.optimizer={name!r} is not in Nevergrad's registry; "
                          f"try NGOpt, RandomSearch, BO, CMA, TwoPointsDE or OnePlusOne")
    if not (isinstance(optim.budget, int) and optim.budget >= 1):
        raise ConfigError(f"hydra.sweeper.optim.budget={optim.budget} must be an integer >= 1")
    if problem := sweep_workers_problem("nevergrad", optim.num_workers):
        raise ConfigError(problem)
    if optim.num_workers > 1 and getattr(registry[name], "no_parallelization", False):
        raise ConfigError(f"Nevergrad's {name} asks for one trial at a time, but hydra.sweeper.optim.num_workers="
                          f"{optim.num_workers}; set hydra.sweeper.optim.num_workers=1 or use an optimizer that "
                          f"runs trials in parallel, such as NGOpt")
    if not (0.0 <= optim.max_failure_rate <= 1.0) or math.isnan(optim.max_failure_rate):
        raise ConfigError(f"hydra.sweeper.optim.max_failure_rate={optim.max_failure_rate} must be between 0 and 1")
