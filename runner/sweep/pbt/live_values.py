"""The mutated hyperparameters of a running fit: read from its config, checked against the built
optimizer and loss, set into them (an exploit's or a replay's new values), and taken from the
checkpoint when the run resumes."""

from __future__ import annotations

import copy
import math
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from runner.config.problems import bullets
from runner.errors import ConfigError


def current_values(cfg: DictConfig, keys: list[str]) -> dict[str, Any]:
    return {key: _plain(OmegaConf.select(cfg, key)) for key in keys}


def apply_values(fit, new: dict[str, Any], live: dict[str, Any]) -> None:
    """Give the running `fit` the values `new`; it trains with `live` now.

    optimizer.<setting> goes into every param group. With a learning-rate scheduler,
    `optimizer.lr` is the schedule's base: a new value scales the schedule (its base rates and the
    current rate) by new / old. trainer.batch_size takes effect from the next epoch;
    loss.criterion.<setting> sets the criterion's attribute. The run's config (stored in every
    checkpoint) gets the new values too.
    """
    for key, value in new.items():
        section, _, name = key.partition(".")
        if section == "optimizer":
            _set_optimizer_setting(fit, name, value, live.get(key))
        elif key == "trainer.batch_size":
            fit.set_batch_size(int(value))
        elif key == "trainer.gradient_clip_val":
            fit.trainer.gradient_clip_val = value
        else:
            setattr(fit.task.criterion, key.removeprefix("loss.criterion."), value)
        OmegaConf.update(fit.cfg, key, value, merge=False)


def _set_optimizer_setting(fit, name: str, value: Any, old: Any) -> None:
    groups = fit.optimizer.param_groups
    if name == "lr" and fit.scheduler is not None and _is_number(old) and old > 0:
        ratio = value / old
        for group in groups:
            for rate in ("lr", "initial_lr", "max_lr", "min_lr"):
                if _is_number(group.get(rate)):
                    group[rate] *= ratio
        if hasattr(fit.scheduler, "base_lrs"):
            fit.scheduler.base_lrs = [rate * ratio for rate in fit.scheduler.base_lrs]
        if hasattr(fit.scheduler, "_last_lr"):
            fit.scheduler._last_lr = [group["lr"] for group in groups]
        return
    for group in groups:
        group[name] = value


def check_live_keys(fit, keys: list[str]) -> None:
    """Every optimizer and loss key must be a setting the built objects hold."""
    problems = []
    groups = fit.optimizer.param_groups
    for key in keys:
        section, _, name = key.partition(".")
        if section == "optimizer" and name not in groups[0]:
            settings = ", ".join(k for k in groups[0] if k != "params")
            problems.append(f"pbt.mutations: {key} is not a setting of {type(fit.optimizer).__name__}'s param "
                            f"groups, which PBT changes (they have: {settings})")
        if key.startswith("loss.criterion.") and not hasattr(fit.task.criterion, key.removeprefix("loss.criterion.")):
            problems.append(f"pbt.mutations: {key} is not an attribute of the loss "
                            f"{type(fit.task.criterion).__name__}, so it cannot change while the run trains")
    if problems:
        raise ConfigError(bullets(problems))


def resumed_config(cfg: DictConfig, saved_yaml: str, keys: list[str]) -> DictConfig:
    """The config a PBT trial (or a replay) resumes with: the composed one, with the mutated keys'
    values from the checkpoint (the run's effective config). Everything else must still match."""
    saved = OmegaConf.create(saved_yaml)
    effective = copy.deepcopy(cfg)
    for key in keys:
        OmegaConf.update(effective, key, OmegaConf.select(saved, key), merge=False)
    return effective


def value_text(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def values_text(values: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value_text(value)}" for key, value in values.items())


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value) if isinstance(value, (DictConfig, ListConfig)) else value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
