"""Conditional search spaces: a config group swept over its options, each option with its own keys.

In `hydra.sweeper.params`, a config group whose value is one block per option, instead of a
line in Hydra's override syntax, is a conditional dimension:

    model:
      lenet: {}
      mlp:
        model.dropout: interval(0.0, 0.5)

A trial that draws `model=mlp` also gets `model.dropout=...`; one that draws `model=lenet` never
gets `model.dropout`. The grid expands each block (the option's override times the product of its
own keys' values); Nevergrad searches an ng.p.Choice whose options are ng.p.Dict branches, each
with its own parameters. Trials' overrides stay in Hydra's `key=value` form. make_search here
builds them when the space holds such a block, and the plain searches otherwise.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

from omegaconf import DictConfig, OmegaConf

from runner.errors import ConfigError
from runner.sweep import search as plain_search
from runner.sweep.trial_checks import check_first_trial
from runner.sweep.search import GridSearch, NevergradSearch, Point, check_optim, each_value_once, values_by_key


@dataclass
class Conditional:
    """A config group swept over its options, each option's block its own keys (Hydra override syntax)."""

    group: str
    blocks: dict[str, dict[str, str]]

    @property
    def keys(self) -> set[str]:
        return {key for block in self.blocks.values() for key in block}

    def line(self) -> str:
        """The dimension as one line of the space (what a resumed sweep compares)."""
        return f"{self.group}={json.dumps(self.blocks)}"

    def option_lines(self, option: str) -> list[str]:
        return [f"{self.group}={option}"] + [f"{key}={value}" for key, value in self.blocks[option].items()]


def read_conditional(group: str, blocks: Mapping[str, Any]) -> Conditional:
    where = f"hydra.sweeper.params.{group}"
    read: dict[str, dict[str, str]] = {}
    for option, block in blocks.items():
        if block is None:
            block = {}
        if not isinstance(block, Mapping):
            raise ConfigError(f"{where}.{option}: {block!r} is not a block of keys; write {group}: {{{option}: {{}}}} "
                              f"for an option without keys of its own, or {option}: {{key: values}}")
        read[str(option)] = {str(key): _override_text(value) for key, value in block.items()}
    if not read:
        raise ConfigError(f"{where}: no option; give one block per option ({group}: {{option: {{key: values}}}})")
    return Conditional(group, read)


def _override_text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)  # a YAML list: a grid's values
    return str(value)


class ConditionalSpace:
    """The dimensions of a space with conditional blocks, in order: an override line for an ordinary
    key, a Conditional for a group with blocks. A later line for the same key replaces an earlier one
    (the command line replaces the preset), as in Hydra's sweepers."""

    def __init__(self, params: Mapping[str, Any], arguments: list[str], config_loader=None):
        entries: dict[str, str | Conditional] = {}
        for key, value in params.items():
            entries[key] = read_conditional(key, value) if isinstance(value, Mapping) else f"{key}={value}"
        for line in arguments:
            entries[line.partition("=")[0]] = line
        self.entries = entries
        self.conditionals = [e for e in entries.values() if isinstance(e, Conditional)]
        for conditional in self.conditionals:
            clash = conditional.keys & set(entries)
            if clash:
                raise ConfigError(f"{', '.join(sorted(clash))} is swept in a block of hydra.sweeper.params."
                                  f"{conditional.group}, and on its own as well: sweep it in one place")
            if config_loader is not None:
                check_options(conditional, config_loader)

    def lines(self) -> list[str]:
        return [e.line() if isinstance(e, Conditional) else e for e in self.entries.values()]

    @property
    def conditional_keys(self) -> set[str]:
        return {c.group for c in self.conditionals} | {key for c in self.conditionals for key in c.keys}


def check_options(conditional: Conditional, config_loader) -> None:
    """Refuse a block under a key that is not a config group, or for an option the group lacks."""
    group = conditional.group
    options = config_loader.get_group_options(group)
    if not options:
        groups = ", ".join(sorted(g for g in config_loader.list_groups("") if g != "hydra"))
        raise ConfigError(f"hydra.sweeper.params.{group} holds one block per option, but {group} is not a config "
                          f"group (config groups: {groups}); sweep a key with a line such as "
                          f"{group}: interval(0.0, 1.0)")
    for option in conditional.blocks:
        if option not in options:
            raise ConfigError(f"hydra.sweeper.params.{group}.{option}: {group} has no option {option!r}; its "
                              f"options: {', '.join(options)}")


def _parse(lines: list[str], config_loader):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create(config_loader=config_loader).parse_overrides(lines)


class ConditionalGridSearch(GridSearch):
    """A grid where each option of a conditional group brings the product of its own keys' values."""

    def __init__(self, space: ConditionalSpace, config_loader=None):
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

        def points_of(lines: list[str]) -> list[list[str]]:
            (points,) = BasicSweeper.split_arguments(_parse(lines, config_loader), max_batch_size=None)
            return points

        self.space, self.lines = space, space.lines()
        # group -> option -> one trial's overrides of that option, for composing each option once
        self.option_samples: dict[str, dict[str, list[str]]] = {}
        axes = []
        for entry in space.entries.values():
            if isinstance(entry, Conditional):
                by_option = {option: points_of(entry.option_lines(option)) for option in entry.blocks}
                self.option_samples[entry.group] = {option: points[0] for option, points in by_option.items()}
                axes.append([point for points in by_option.values() for point in points])
            else:
                axes.append(points_of([entry]))
        self.points = [[o for part in combination for o in part] for combination in itertools.product(*axes)]
        self.choices = {key: values for key, values in values_by_key(self.points).items()
                        if key not in space.conditional_keys}
        self.asked = 0


class ConditionalNevergradSearch(NevergradSearch):
    """Nevergrad over a space whose conditional groups are ng.p.Choice of ng.p.Dict branches, one per option
    (the branch holds the option's name under the group's key, and the option's own parameters)."""

    def __init__(self, space: ConditionalSpace, optim: DictConfig, config_loader=None,
                 base_config: DictConfig | None = None):
        self.space = space
        super().__init__(space.lines(), optim, config_loader, base_config)
        # a conditional group's options are composed with their own keys (compose_each_option)
        self.choices = {key: values for key, values in self.choices.items() if key not in space.conditional_keys}

    def _parameters(self, lines: list[str], config_loader, base_config: DictConfig | None) -> dict[str, Any]:
        import nevergrad as ng

        def parameters_of(lines: list[str]) -> dict[str, Any]:
            return NevergradSearch._parameters(self, lines, config_loader, base_config) if lines else {}

        self.option_samples = {}
        params = {}
        for key, entry in self.space.entries.items():
            if not isinstance(entry, Conditional):
                params.update(parameters_of([entry]))
                continue
            branches = {option: ng.p.Dict(**{key: option}, **parameters_of(entry.option_lines(option)[1:]))
                        for option in entry.blocks}
            # a branch's value before any draw: the middle of its intervals, the first of its choices
            self.option_samples[key] = {option: flat_overrides(branch.value) for option, branch in branches.items()}
            params[key] = ng.p.Choice(list(branches.values()))
        return params

    def ask(self) -> Point:
        point = super().ask()
        point.overrides = flat_overrides(point.candidate.value)
        return point


def flat_overrides(value: Mapping[str, Any]) -> list[str]:
    """A candidate's value as overrides: a conditional group's branch gives its option and its own keys."""
    overrides = []
    for key, item in value.items():
        if isinstance(item, Mapping):
            overrides += flat_overrides(item)
        else:
            overrides.append(f"{key}={item}")
    return overrides


def make_search(kind: str, params: Any, optim: DictConfig | None, arguments: list[str], config_loader=None,
                base_config: DictConfig | None = None):
    """The sweep's search (runner.sweep.search.make_search), conditional when a config group holds blocks."""
    plain = OmegaConf.to_container(params, resolve=True) if OmegaConf.is_config(params) else params
    if not any(isinstance(value, Mapping) for value in (plain or {}).values()):
        return plain_search.make_search(kind, plain, optim, arguments, config_loader, base_config)
    space = ConditionalSpace(plain, arguments, config_loader)
    if kind == "grid":
        return ConditionalGridSearch(space, config_loader)
    check_optim(optim)
    return ConditionalNevergradSearch(space, optim, config_loader, base_config)


def compose_each_option(search, first: list[str], compose: Callable[[list[str]], DictConfig]) -> None:
    """Compose the first trial, each option of each conditional group with its own keys, and each other
    value of each plain config group, once each: a bad option or key stops the sweep before it starts."""
    for group, samples in getattr(search, "option_samples", {}).items():
        conditional = next(c for c in search.space.conditionals if c.group == group)
        # the other groups' own keys are left out: each option is judged by its own block alone
        block_keys = {key for c in search.space.conditionals for key in c.keys}
        for option, sample in samples.items():
            compose_option(conditional, option, _with_option(first, conditional, block_keys, sample), compose)
    groups = {key: values for key, values in search.choices.items() if "." not in key}
    for overrides in each_value_once(first, groups):
        compose(list(overrides))


def _with_option(first: list[str], conditional: Conditional, block_keys: set[str], sample: list[str]) -> list[str]:
    """The first trial's overrides without any block's keys, its conditional group's option replaced by `sample`."""
    owned = block_keys | {conditional.group}
    position = next((i for i, o in enumerate(first) if o.partition("=")[0] == conditional.group), len(first))
    kept = [o for o in first[:position] if o.partition("=")[0] not in owned]
    return kept + sample + [o for o in first[position:] if o.partition("=")[0] not in owned]


def compose_option(conditional: Conditional, option: str, overrides: list[str], compose) -> None:
    try:
        compose(overrides)
    except Exception:
        own = set(conditional.blocks[option])
        config = compose([o for o in overrides if o.partition("=")[0] not in own])
        missing = [key for key in conditional.blocks[option]
                   if not key.startswith("+") and OmegaConf.select(config, key.lstrip("~"), default=_ABSENT,
                                                                   throw_on_resolution_failure=False) is _ABSENT]
        if not missing:
            raise
        key = missing[0]
        parent = key.rpartition(".")[0]
        node = OmegaConf.select(config, parent, default=None) if parent else config
        has = ", ".join(str(k) for k in node.keys()) if OmegaConf.is_dict(node) else "none"
        raise ConfigError(f"hydra.sweeper.params.{conditional.group}.{option}: {key} is not a key of the config "
                          f"of {conditional.group}={option} ({parent or 'top level'} has: {has}); write +{key} to "
                          f"add a new key") from None


_ABSENT = object()


def validate_first_trials(search, first: list[str], config_loader, config: DictConfig) -> None:
    """Before any trial runs: compose the first trial and each option of each swept group once (with its
    own keys), then check the first trial's config as the trial would (runner.sweep.preflight): a
    misspelt option or a bad objective stops the sweep now, not after the trials before it."""
    compose = partial(config_loader.load_sweep_config, config)
    compose_each_option(search, first, compose)
    check_first_trial(compose(list(first)))
