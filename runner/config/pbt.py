"""PBT's settings and mutations as the config gives them: every check (no torch, before any trial
starts and again in each trial against its own config), and the space each mutated key explores.

The callbacks that act on them live in runner.sweep.pbt; the names below are their `_target_`s.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from runner.config.problems import bullets
from runner.errors import ConfigError

POPULATION_TARGET = "runner.sweep.pbt.PopulationBasedTraining"
REPLAY_TARGET = "runner.sweep.pbt.Replay"

# what PBT can change while a run trains: the optimizer's settings in its param groups, two trainer
# keys the loop reads at every step or epoch, and the loss's settings (attributes of the criterion)
TRAINER_KEYS = ("trainer.batch_size", "trainer.gradient_clip_val")
MUTABLE_TEXT = ("optimizer.<setting> (lr, momentum, weight_decay, ... as the optimizer's param groups hold "
                "them), trainer.batch_size, trainer.gradient_clip_val and loss.criterion.<setting>")
# what a mutation of a key under these would change, so that a donor's weights would not fit or
# would have been trained on something else
REFUSED = {"model": "the model (its shape or layers)", "dataset": "the data",
           "task": "the task (its outputs and metrics)"}
SPACE_SYNTAX = "interval(a, b), tag(log, interval(a, b)) or choice(a, b, ...)"


# ---------------------------------------------------------------- the search space of a mutation


@dataclass(frozen=True)
class Space:
    """Where one mutated key may go: an interval (uniform or log-uniform; integer when the key is an
    int in the config) or an ordered list of choices."""

    key: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False
    choices: tuple | None = None

    def sample(self, rng: random.Random) -> Any:
        if self.choices is not None:
            return rng.choice(self.choices)
        if self.log:
            value = math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        else:
            value = rng.uniform(self.low, self.high)
        return self.clip(value)

    def clip(self, value: float) -> Any:
        """Into [low, high]; integers rounded half away from zero, never truncated."""
        if self.integer:
            value = int(math.copysign(math.floor(abs(value) + 0.5), value))
            return min(max(value, math.ceil(self.low)), math.floor(self.high))
        return min(max(float(value), self.low), self.high)

    def explore(self, value: Any, rng: random.Random, factors: tuple[float, ...], resample_probability: float) -> Any:
        """A new value near `value`: resampled with `resample_probability` (or when `value` is not
        in the space); else a choice moves to a neighbour in the listed order, and a number is
        multiplied by one of `factors`, clipped to the bounds, and rounded if an integer: an integer
        that rounding would leave where it was moves one step in the factor's direction, so that
        small integers (a batch size of 2: 2 * 1.2 = 2.4) are not stuck."""
        if self.choices is not None:
            if value not in self.choices or rng.random() < resample_probability:
                return rng.choice(self.choices)
            index = self.choices.index(value)
            neighbours = [i for i in (index - 1, index + 1) if 0 <= i < len(self.choices)]
            return self.choices[rng.choice(neighbours)] if neighbours else value
        if not _is_number(value) or rng.random() < resample_probability:
            return self.sample(rng)
        factor = rng.choice(factors)
        moved = self.clip(value * factor)
        if self.integer and moved == value and factor != 1:
            moved = self.clip(value + (1 if factor > 1 else -1))
        return moved


def explore(values: dict[str, Any], spaces: dict[str, Space], rng: random.Random, factors: tuple[float, ...],
            resample_probability: float) -> dict[str, Any]:
    """Every mutated key explored from `values` (a donor's), in a fixed order so that the same
    random state gives the same result."""
    return {key: spaces[key].explore(values.get(key), rng, factors, resample_probability) for key in sorted(spaces)}


def parse_space(key: str, spec: Any, current: Any) -> Space:
    """A mutation's space from Hydra's override syntax (`tag(log, interval(1e-4, 1e-1))`,
    `interval(0.5, 0.99)`, `choice(32, 64, 128)`, `32,64,128`, `range(1, 5)`) or a YAML list of
    choices. An interval is of integers when the key's value in the config is an int."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
    from hydra.errors import HydraException

    where = f"pbt.mutations.{key}={spec!r}"
    if isinstance(spec, (list, tuple, ListConfig)):
        choices = tuple(OmegaConf.to_container(spec) if isinstance(spec, ListConfig) else spec)
        if not choices:
            raise ConfigError(f"{where}: a choice needs at least one value")
        return Space(key, choices=choices)
    if not isinstance(spec, str):
        raise ConfigError(f"{where}: a mutation's space is {SPACE_SYNTAX}, in Hydra's override syntax")
    try:
        override = OverridesParser.create().parse_override(f"{key}={spec}")
    except HydraException as error:
        raise ConfigError(f"{where} is not in Hydra's override syntax ({str(error).splitlines()[0]}); "
                          f"use {SPACE_SYNTAX}") from None
    value = override.value()
    if isinstance(value, IntervalSweep):
        low, high, log_scale = float(value.start), float(value.end), "log" in value.tags
        if not low < high:
            raise ConfigError(f"{where}: the lower bound must be below the upper bound")
        if log_scale and low <= 0:
            raise ConfigError(f"{where}: a log scale needs bounds > 0")
        integer = isinstance(current, int) and not isinstance(current, bool)
        if integer and math.ceil(low) > math.floor(high):
            raise ConfigError(f"{where}: {key} is an integer and no integer lies in the interval")
        return Space(key, low=low, high=high, log=log_scale, integer=integer)
    if isinstance(value, (ChoiceSweep, RangeSweep)):
        choices = tuple(override.sweep_iterator())
        if not choices:
            raise ConfigError(f"{where}: a choice needs at least one value")
        return Space(key, choices=choices)
    raise ConfigError(f"{where} is a fixed value, not a space to explore; use {SPACE_SYNTAX}")


def flat_mutations(mutations: Any) -> dict[str, Any]:
    """`{optimizer.lr: ...}` and `{optimizer: {lr: ...}}` (what `+pbt.mutations.optimizer.lr=...`
    adds from the command line) alike: dotted config keys to their spaces."""
    if mutations is None:
        return {}
    container = OmegaConf.to_container(mutations, resolve=True) if isinstance(mutations, DictConfig) else mutations
    if not isinstance(container, dict):
        raise ConfigError(f"pbt.mutations={container!r} must map config keys to their spaces, e.g. "
                          f"{{optimizer.lr: 'tag(log, interval(1e-4, 1e-1))'}}")
    flat: dict[str, Any] = {}

    def walk(node: dict, prefix: str) -> None:
        for name, spec in node.items():
            key = f"{prefix}.{name}" if prefix else str(name)
            if isinstance(spec, dict):
                walk(spec, key)
            else:
                flat[key] = spec

    walk(container, "")
    return flat


def key_problem(key: str, cfg: DictConfig | None) -> str | None:
    """Why `key` cannot be a mutation, or None. With `cfg`, the key must also be a number or a
    value (not a group of settings) in it."""
    head = key.split(".", 1)[0]
    if head in REFUSED:
        return (f"pbt.mutations: {key} would change {REFUSED[head]}, so a donor's weights would not fit the "
                f"trial or were trained for something else; PBT changes training hyperparameters while it "
                f"copies weights between trials: {MUTABLE_TEXT}")
    parts = key.split(".")
    mutable = (
        (parts[0] == "optimizer" and len(parts) == 2)
        or key in TRAINER_KEYS
        or (parts[:2] == ["loss", "criterion"] and len(parts) == 3)
    ) and not parts[-1].startswith("_")
    if not mutable:
        return f"pbt.mutations: {key} cannot change while a run trains; PBT can change {MUTABLE_TEXT}"
    if cfg is None:
        return None
    parent = OmegaConf.select(cfg, ".".join(parts[:-1]))
    if not isinstance(parent, DictConfig) or parts[-1] not in parent:
        settings = ", ".join(k for k in parent if not str(k).startswith("_")) if isinstance(parent, DictConfig) else ""
        target = parent.get("_target_") if isinstance(parent, DictConfig) else None
        return (f"pbt.mutations: {key} is not in the config" + (f" ({target} has: {settings})" if settings else ""))
    value = OmegaConf.select(cfg, key)
    if isinstance(value, (DictConfig, ListConfig)):
        kind = "list" if isinstance(value, ListConfig) else "group"
        return f"pbt.mutations: {key} is a {kind} of values; PBT changes one number or choice per key"
    return None


def parse_mutations(mutations: Any, cfg: DictConfig | None) -> dict[str, Space]:
    """Every mutation checked and parsed; one ConfigError listing every mistake."""
    spaces, problems = mutation_spaces(mutations, cfg)
    if problems:
        raise ConfigError(bullets(problems))
    return spaces


def mutation_spaces(mutations: Any, cfg: DictConfig | None) -> tuple[dict[str, Space], list[str]]:
    """The spaces of the mutations that can work, and what is wrong with the others."""
    problems, spaces = [], {}
    flat = flat_mutations(mutations)
    if not flat:
        problems.append(f"pbt.mutations is empty: name the keys PBT may change ({MUTABLE_TEXT}) and their "
                        f"spaces, e.g. '+pbt.mutations.optimizer.lr=\"tag(log, interval(1e-4, 1e-1))\"'")
    for key, spec in flat.items():
        problem = key_problem(key, cfg)
        if problem:
            problems.append(problem)
            continue
        try:
            spaces[key] = parse_space(key, spec, OmegaConf.select(cfg, key) if cfg is not None else None)
        except ConfigError as error:
            problems.append(str(error))
    return spaces, problems


def settings_problems(perturbation_interval: Any, burn_in: Any, quantile_fraction: Any, resample_probability: Any,
                      perturbation_factors: Any) -> list[str]:
    problems = []
    if not _is_int(perturbation_interval) or perturbation_interval < 1:
        problems.append(f"pbt.perturbation_interval={perturbation_interval!r} must be an int >= 1 (epochs)")
    if not _is_int(burn_in) or burn_in < 0:
        problems.append(f"pbt.burn_in={burn_in!r} must be an int >= 0 (epochs)")
    if not _is_number(quantile_fraction) or not 0 < quantile_fraction <= 0.5:
        problems.append(f"pbt.quantile_fraction={quantile_fraction!r} must be a number in (0, 0.5]: the bottom "
                        f"fraction copies from the top fraction")
    if not _is_number(resample_probability) or not 0 <= resample_probability <= 1:
        problems.append(f"pbt.resample_probability={resample_probability!r} must be a number in [0, 1]")
    factors = list(perturbation_factors) if isinstance(perturbation_factors, (list, tuple, ListConfig)) else None
    if not factors or not all(_is_number(f) and f > 0 for f in factors):
        problems.append(f"pbt.perturbation_factors={perturbation_factors!r} must be a list of numbers > 0, "
                        f"e.g. [0.8, 1.2]")
    return problems


def config_problems(cfg: DictConfig, keys_exist: bool = True) -> list[str]:
    """Every mistake in `cfg.pbt` and how it fits the rest of the config; no torch needed.

    `keys_exist=False` skips checking that each mutated key is in the config: a sweep's base config
    (the Preflight check) may hold another optimizer than its trials.
    """
    node = cfg.get("pbt")
    if not node or "_target_" not in node:
        return []
    target = node._target_
    if target == REPLAY_TARGET:
        if not node.get("policy"):
            return ["pbt=replay needs pbt.policy=<a PBT trial's folder or its pbt_policy.jsonl>"]
        return []
    if target != POPULATION_TARGET:
        return []
    settings = {name: node.get(name) for name in ("perturbation_interval", "burn_in", "quantile_fraction",
                                                  "resample_probability", "perturbation_factors")}
    spaces, mutation_problems = mutation_spaces(node.get("mutations"), cfg if keys_exist else None)
    problems = settings_problems(**settings) + mutation_problems
    if cfg.get("pruner") and "_target_" in cfg.pruner:
        problems.append("pbt and a pruner cannot be combined: PBT gives the bottom trials the weights of the top "
                        "ones instead of stopping them; use pruner=none")
    trainer = cfg.get("trainer") or {}
    if trainer.get("strategy") == "ddp":
        problems.append("pbt with trainer.strategy=ddp is not supported: an exploit loads a donor's weights into "
                        "rank 0 alone; train PBT members with trainer.strategy=single")
    every, interval = trainer.get("eval_every_n_epochs"), settings["perturbation_interval"]
    if _is_int(every) and every >= 1 and _is_int(interval) and interval >= 1 and interval % every:
        problems.append(f"pbt.perturbation_interval={interval} must be a multiple of trainer.eval_every_n_epochs="
                        f"{every}: a trial compares its objective at every perturbation point")
    epochs, burn_in = trainer.get("max_epochs"), settings["burn_in"]
    if _is_int(interval) and interval >= 1 and _is_int(burn_in) and burn_in >= 0 and _is_int(epochs):
        first = interval * max(1, -(-burn_in // interval))  # the first multiple of the interval from burn_in on
        if first >= epochs:
            problems.append(f"pbt.perturbation_interval={interval} with pbt.burn_in={burn_in} and trainer.max_epochs="
                            f"{epochs}: the first perturbation point would be epoch {first}, not before the last "
                            f"epoch, so PBT would never act; use a shorter interval or more epochs")
    if "trainer.batch_size" in spaces and cfg.get("scheduler") and cfg.scheduler.get("interval") == "step":
        problems.append("pbt.mutations: trainer.batch_size cannot change with a scheduler stepped every batch "
                        "(scheduler.interval=step), whose length is counted in batches of the first size; "
                        "use an epoch scheduler or mutate something else")
    return problems


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
