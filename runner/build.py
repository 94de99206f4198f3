"""Builds what the config names, after checking every `_target_`'s keys against its signature."""

from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

import torch
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf

from runner.errors import ConfigError, DataError

# config groups whose nodes the runner instantiates; loggers get `run_dir` and `start_step` from the runner
GROUPS = ("dataset", "model", "loss", "optimizer", "scheduler", "logger")
RUNNER_SUPPLIED = {"logger": {"run_dir", "start_step"}, "optimizer": {"params"}, "scheduler": {"optimizer", "steps_per_epoch"}}
SIMPLE_TYPES = {int: "int", float: "float", bool: "bool", str: "str"}


def check_targets(cfg: DictConfig) -> None:
    """Every `_target_` importable, every key a parameter of it, simple types right; all mistakes at once."""
    problems: list[str] = []
    for group in GROUPS:
        if group in cfg and cfg[group]:
            _check_node(OmegaConf.to_container(cfg[group], resolve=True), group, group, problems)
    if problems:
        raise ConfigError("Invalid config:\n" + "\n".join(f"  - {p}" for p in problems))


def _check_node(node: Any, key: str, group: str, problems: list[str]) -> None:
    if isinstance(node, list):
        for i, item in enumerate(node):
            _check_node(item, f"{key}[{i}]", group, problems)
        return
    if not isinstance(node, dict):
        return
    for name, value in node.items():
        if not str(name).startswith("_"):
            _check_node(value, f"{key}.{name}", group, problems)
    if "_target_" not in node:
        return
    try:
        target = get_object(node["_target_"])
    except Exception:
        problems.append(f"{key}._target_={node['_target_']!r} cannot be imported")
        return
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        return
    parameters = signature.parameters
    takes_anything = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    given = {k for k in node if not str(k).startswith("_")}
    if not takes_anything:
        for name in sorted(given - set(parameters)):
            allowed = ", ".join(p for p in parameters if p not in ("self", "args", "kwargs")) or "none"
            problems.append(f"{key}.{name} is not a parameter of {node['_target_']} (its parameters: {allowed})")
    supplied = RUNNER_SUPPLIED.get(group, set()) if key in (group, f"{group}.fn") or group == "logger" else set()
    is_partial = node.get("_partial_", False)
    for name, parameter in parameters.items():
        if parameter.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            continue
        if name in given:
            _check_type(f"{key}.{name}", node[name], parameter.annotation, problems)
        elif parameter.default is inspect.Parameter.empty and name not in supplied and not is_partial and name != "self":
            problems.append(f"{key}.{name} is required by {node['_target_']} but not set")


def _check_type(key: str, value: Any, annotation: Any, problems: list[str]) -> None:
    expected = {name: t for t, name in SIMPLE_TYPES.items()}.get(annotation, annotation)
    if expected not in SIMPLE_TYPES or value is None:
        return
    ok = isinstance(value, expected) and not (expected is not bool and isinstance(value, bool))
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if not ok:
        problems.append(f"{key}={value!r} should be {SIMPLE_TYPES[expected]}")


def build(node: DictConfig, what: str, **kwargs) -> Any:
    """instantiate() with the failure named: which group, which target, what went wrong."""
    try:
        return instantiate(node, **kwargs)
    except Exception as error:
        cause = error.__cause__ or error
        target = node.get("_target_", "?")
        kind = DataError if what == "dataset" else ConfigError
        raise kind(f"could not build {what} ({target}): {cause}") from error


@dataclass
class LossAdapter:
    """Feeds the criterion what its config declares: logits, log-probabilities or probabilities
    against class indices or one-hot targets."""

    criterion: Callable
    input: str
    target: str
    num_classes: int

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.input == "log_probs":
            logits = torch.log_softmax(logits.float(), dim=1)
        elif self.input == "probs":
            logits = torch.softmax(logits.float(), dim=1)
        if self.target == "one_hot":
            labels = torch.nn.functional.one_hot(labels, self.num_classes).to(logits.dtype)
        return self.criterion(logits, labels)


def build_loss(cfg: DictConfig) -> LossAdapter:
    return LossAdapter(build(cfg.loss.criterion, "loss"), cfg.loss.input, cfg.loss.target, cfg.dataset.num_classes)


def probe(model: torch.nn.Module, loss: LossAdapter, cfg: DictConfig) -> None:
    """One forward pass and loss on a zero batch of the dataset's declared shape, before any data is loaded."""
    shape = (2, cfg.dataset.channels, cfg.dataset.image_size, cfg.dataset.image_size)
    model_name = cfg.model._target_
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            try:
                out = model(torch.zeros(shape))
            except Exception as error:
                raise ConfigError(
                    f"model {model_name} does not fit dataset {cfg.dataset._target_} with images of shape "
                    f"{shape[1:]} (C, H, W): {error}"
                ) from None
            expected = (2, cfg.dataset.num_classes)
            if not isinstance(out, torch.Tensor) or tuple(out.shape) != expected:
                found = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                raise ConfigError(
                    f"model {model_name} outputs {found} for a batch of 2, but the dataset has "
                    f"{cfg.dataset.num_classes} classes: expected {expected}"
                )
            try:
                # a shape mismatch that would only broadcast with a warning is an error here
                with warnings.catch_warnings():
                    warnings.simplefilter("error", UserWarning)
                    value = loss(out, torch.zeros(2, dtype=torch.long))
            except Exception as error:
                raise ConfigError(
                    f"loss {cfg.loss.criterion._target_} (input={loss.input}, target={loss.target}) does not fit "
                    f"a {cfg.dataset.num_classes}-class classifier's output: {error}"
                ) from None
            if not isinstance(value, torch.Tensor) or value.numel() != 1:
                raise ConfigError(
                    f"loss {cfg.loss.criterion._target_} must reduce to one number, got shape "
                    f"{tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__}; "
                    f"set its reduction to mean"
                )
    finally:
        model.train(was_training)


def build_scheduler(cfg: DictConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    """The scheduler partial, completed with the optimizer and, if it asks for one, steps_per_epoch."""
    if not cfg.scheduler:
        return None
    factory = build(cfg.scheduler.fn, "scheduler")
    func = factory.func if isinstance(factory, partial) else factory
    extra = {}
    if "steps_per_epoch" in inspect.signature(func).parameters and "steps_per_epoch" not in getattr(factory, "keywords", {}):
        extra["steps_per_epoch"] = steps_per_epoch
    try:
        return factory(optimizer, **extra)
    except Exception as error:
        raise ConfigError(f"could not build scheduler ({cfg.scheduler.fn._target_}): {error}") from None
