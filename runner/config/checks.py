"""Checks on the composed config that need no torch: types, ranges and choices, all reported at once."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, List, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationKeyError, OmegaConfBaseException

from runner.config.objectives import objectives_of
from runner.config.pbt import config_problems as pbt_problems
from runner.config.problems import bullets, leaves
from runner.errors import ConfigError
from runner.resolvers import GOALS

PRECISIONS = ("32", "bf16", "16")
RESUME_MODES = ("auto", "never")
SCHEDULER_INTERVALS = ("epoch", "step")
STRATEGIES = ("single", "ddp")
DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


@dataclass
class EarlyStoppingConfig:
    patience: Optional[int] = None
    min_delta: float = 0.0


@dataclass
class StopConfig:
    objective_threshold: Optional[float] = None
    time_budget_s: Optional[float] = None


@dataclass
class TrainerConfig:
    """The schema of `trainer`: conf/trainer/default.yaml documents each field."""

    max_epochs: int = 10
    batch_size: int = 64
    eval_batch_size: int = 1000
    device: str = "auto"
    precision: str = "32"
    gradient_clip_val: Optional[float] = None
    seed: int = 0
    deterministic: bool = False
    eval_every_n_epochs: int = 1
    checkpoint_every_n_epochs: int = 1
    log_every_n_steps: int = 50
    histograms_every_n_epochs: int = 5
    predictions_every_n_epochs: int = 5
    num_prediction_samples: int = 16
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    stop: StopConfig = field(default_factory=StopConfig)
    limit_train_batches: Optional[int] = None
    limit_val_batches: Optional[int] = None
    resume: str = "auto"
    data_on_device: str = "auto"
    num_workers: int = 0
    pin_memory: str = "auto"
    persistent_workers: bool = True
    compile: bool = False
    channels_last: str = "auto"
    test: bool = True
    strategy: str = "single"
    devices: str = "auto"
    num_nodes: int = 1
    collective_timeout_s: float = 120.0


@dataclass
class ObjectiveConfig:
    """The schema of `objective`: conf/objective/default.yaml documents each field."""

    metric: str = "val/acc"
    goal: str = "maximize"
    metrics: Optional[List[str]] = None
    goals: Optional[List[str]] = None
    constraints: List[str] = field(default_factory=list)


def typed_trainer(cfg: DictConfig) -> TrainerConfig:
    """`cfg.trainer` checked against its schema and returned as a typed object."""
    return OmegaConf.to_object(_merge_schema(TrainerConfig, cfg.trainer, "trainer"))


def _merge_schema(schema: type, node: Any, where: str) -> DictConfig:
    try:
        return OmegaConf.merge(OmegaConf.structured(schema), node)
    except OmegaConfBaseException as error:
        key = f"{where}.{error.full_key}" if getattr(error, "full_key", None) else where
        raise ConfigError(f"{key}: {error.msg.splitlines()[0]}") from None


def validate(cfg: DictConfig) -> None:
    """Raise one ConfigError that lists every mistake found, before anything is built or loaded."""
    try:
        resolved = OmegaConf.to_container(cfg, resolve=True)
    except InterpolationKeyError as error:
        missing = re.search(r"Interpolation key '([^']+)'", error.msg)
        needed = missing.group(1) if missing else "?"
        needs = (f": the {error.full_key.split('.')[0]} needs a {needed.split('.')[0]} that declares "
                 f"{needed.split('.', 1)[1]}" if "." in needed and error.full_key else "")
        raise ConfigError(f"{error.full_key}: {_raw_value(cfg, error.full_key)} refers to {needed}, which the "
                          f"composed config does not have{needs}. Do the chosen options fit together?") from None
    except OmegaConfBaseException as error:
        # a resolver's own ConfigError (a bad objective.goal, say) says it best
        cause = error.__cause__ if isinstance(error.__cause__, ConfigError) else None
        raise ConfigError(str(cause) if cause else f"the config cannot be resolved: {error}") from None

    problems = [f"{key}={value} is not a finite number" for key, value in leaves(resolved)
                if isinstance(value, float) and not math.isfinite(value)]
    typed = {}
    for schema, key in ((TrainerConfig, "trainer"), (ObjectiveConfig, "objective")):
        try:
            _merge_schema(schema, cfg[key], key)
            typed[key] = True
        except ConfigError as error:
            problems.append(str(error))
            typed[key] = False
    # ranges and choices of a group whose types are wrong would only repeat the type error
    if typed["trainer"]:
        _check_trainer(cfg.trainer, problems)
    if typed["objective"]:
        _choice(problems, "objective.goal", cfg.objective.goal, GOALS)
        try:
            objectives_of(cfg.objective)
        except ConfigError as error:
            problems.append(str(error))

    lr = cfg.optimizer.get("lr")
    if not isinstance(lr, (int, float)) or isinstance(lr, bool) or lr <= 0:
        problems.append(f"optimizer.lr={lr!r} must be a number > 0")

    if problem := fail_fast_problem(cfg):
        problems.append(problem)

    for group in ("dataset", "model", "task"):
        if not isinstance(cfg.get(group), DictConfig) or "_target_" not in cfg[group]:
            problems.append(f"{group} must name what to build with _target_ (see conf/{group}/)")
    for name, node in (cfg.get("callbacks") or {}).items():
        if node and not (isinstance(node, DictConfig) and "_target_" in node):
            problems.append(f"callbacks.{name}={_raw_value(cfg, f'callbacks.{name}')} must name what to build with "
                            f"_target_, e.g. {{_target_: mylab.MyCallback}}, or be null to leave it out")
    if "criterion" not in cfg.loss or "_target_" not in (cfg.loss.criterion or {}):
        problems.append("loss.criterion must name a loss with _target_ (see conf/loss/)")
    fits = cfg.loss.get("tasks")
    if fits is not None and not (isinstance(fits, DictConfig) and all(isinstance(v, DictConfig) or v is None
                                                                       for v in fits.values())):
        problems.append("loss.tasks must map each task the loss fits to its settings, e.g. "
                        "{classification: {input: logits, target: index}, regression: {}}")

    if cfg.scheduler:
        if "fn" not in cfg.scheduler or "_target_" not in (cfg.scheduler.fn or {}):
            problems.append("scheduler.fn must name a scheduler with _target_ (see conf/scheduler/)")
        _choice(problems, "scheduler.interval", cfg.scheduler.get("interval"), SCHEDULER_INTERVALS)

    problems += pbt_problems(cfg)

    if problems:
        raise ConfigError(bullets(problems))


def fail_fast_problem(cfg: DictConfig) -> str | None:
    """A run checks it with the rest of its config; a sweep before its first trial (runner.sweep.preflight)."""
    value = cfg.get("fail_fast", False)
    return None if isinstance(value, bool) else f"fail_fast={value!r} must be true or false"


def sweep_workers_problem(kind: str, num_workers: Any) -> str | None:
    """How many trials a sweep runs at once: Nevergrad's hydra.sweeper.optim.num_workers (the runner's
    ask/tell sweeper and Hydra's), a grid's hydra.sweeper.num_workers, which may be null."""
    if kind != "nevergrad" and num_workers is None:
        return None  # as many as the launcher runs at once
    if isinstance(num_workers, int) and num_workers >= 1:
        return None
    key = "optim.num_workers" if kind == "nevergrad" else "num_workers"
    return (f"hydra.sweeper.{key}={num_workers} must be a positive integer"
            + ("" if kind == "nevergrad" else " or null (as many as the launcher runs)"))


def _check_trainer(trainer: DictConfig, problems: list[str]) -> None:
    at_least_one = ["max_epochs", "batch_size", "eval_batch_size", "eval_every_n_epochs",
                    "checkpoint_every_n_epochs", "log_every_n_steps", "histograms_every_n_epochs",
                    "predictions_every_n_epochs"]
    for name in at_least_one:
        if trainer[name] < 1:
            problems.append(f"trainer.{name}={trainer[name]} must be >= 1")
    for name in ("limit_train_batches", "limit_val_batches"):
        if trainer[name] is not None and trainer[name] < 1:
            problems.append(f"trainer.{name}={trainer[name]} must be >= 1 or null")
    if trainer.num_workers < 0:
        problems.append(f"trainer.num_workers={trainer.num_workers} must be >= 0")
    _choice(problems, "trainer.precision", str(trainer.precision), PRECISIONS)
    _choice(problems, "trainer.resume", trainer.resume, RESUME_MODES)
    for name in ("data_on_device", "pin_memory", "channels_last"):
        _choice(problems, f"trainer.{name}", str(trainer[name]).lower(), ("auto", "true", "false"))
    if not DEVICE_PATTERN.match(str(trainer.device)):
        problems.append(f"trainer.device={trainer.device!r} is not allowed; use auto, cpu, mps, cuda or cuda:N")
    if trainer.gradient_clip_val is not None and trainer.gradient_clip_val <= 0:
        problems.append(f"trainer.gradient_clip_val={trainer.gradient_clip_val} must be > 0 or null")
    patience = trainer.early_stopping.patience
    if patience is not None and patience < 1:
        problems.append(f"trainer.early_stopping.patience={patience} must be >= 1 or null")
    budget = trainer.stop.time_budget_s
    if budget is not None and budget <= 0:
        problems.append(f"trainer.stop.time_budget_s={budget} must be > 0 or null")
    _choice(problems, "trainer.strategy", trainer.strategy, STRATEGIES)
    devices = str(trainer.devices)
    if devices != "auto" and not (devices.isdigit() and int(devices) >= 1):
        problems.append(f"trainer.devices={trainer.devices!r} is not allowed; use auto or a number >= 1")
    elif trainer.strategy == "single" and devices not in ("auto", "1"):
        problems.append(f"trainer.devices={trainer.devices} needs trainer.strategy=ddp (one process trains on one device)")
    if trainer.num_nodes < 1:
        problems.append(f"trainer.num_nodes={trainer.num_nodes} must be >= 1")
    elif trainer.num_nodes > 1 and trainer.strategy != "ddp":
        problems.append(f"trainer.num_nodes={trainer.num_nodes} needs trainer.strategy=ddp")
    if trainer.collective_timeout_s <= 0:
        problems.append(f"trainer.collective_timeout_s={trainer.collective_timeout_s} must be > 0")


def _raw_value(cfg: DictConfig, dotted_key: str) -> Any:
    """A config value as written, interpolations unresolved."""
    node: Any = OmegaConf.to_container(cfg, resolve=False)
    for part in dotted_key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _choice(problems: list[str], key: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        problems.append(f"{key}={value!r} is not allowed; use one of: {', '.join(allowed)}")
