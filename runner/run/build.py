"""Builds what the config names, after checking every `_target_`'s keys against its signature, and
checks that the model, the loss, the task and its metrics fit one real batch before training."""

from __future__ import annotations

import inspect
import warnings
from functools import partial
from typing import Any, Iterable

import torch
import yaml
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf

from runner.config.objectives import objectives_of
from runner.paths import CONF_DIR
from runner.errors import ConfigError, DataError

# config groups whose nodes the runner instantiates
GROUPS = ("dataset", "model", "task", "loss", "optimizer", "scheduler", "logger", "callbacks")
# the model's trainable parameters, a metric of every evaluated epoch when an objective or a constraint
# names it (a search for small and accurate models)
PARAMS_METRIC = "model/params"
# what the runner passes itself: loggers get `run_dir` and `start_step`, and `sweep_dir`, `hparams`
# and `choices` if they name them (components/loggers/__init__.py)
RUNNER_SUPPLIED = {"logger": {"run_dir", "start_step", "sweep_dir", "hparams", "choices"}, "optimizer": {"params"},
                   "scheduler": {"optimizer", "steps_per_epoch"}}
SIMPLE_TYPES = {int: "int", float: "float", bool: "bool", str: "str"}
LOSS_CONFIGS = CONF_DIR / "loss"


def check_targets(cfg: DictConfig) -> None:
    """Every `_target_` importable, every key a parameter of it, simple types right; all mistakes at once."""
    problems = target_problems(cfg)
    if problems:
        raise ConfigError(_bullets(problems))


def target_problems(cfg: DictConfig) -> list[str]:
    problems: list[str] = []
    for group in GROUPS:
        if group in cfg and cfg[group]:
            _check_node(OmegaConf.to_container(cfg[group], resolve=True), group, group, problems)
    return problems


def build_task(cfg: DictConfig) -> Any:
    """The task with its loss bound, after every check that needs no data: the targets' parameters,
    the loss against the task, the objective against the metrics; every mistake found at once."""
    problems = target_problems(cfg)
    failures: list[ConfigError] = []  # kept as the cause: their tracebacks go to runner.log
    task = None
    if not any(p.startswith(("task.", "loss.")) for p in problems):
        try:
            task = build(cfg.task, "task")
        except ConfigError as error:
            failures.append(error)
    if task is not None:
        try:
            bind_loss(task, cfg)
        except ConfigError as error:
            failures.append(error)
        problems += objective_problems(cfg, task.metrics)
    problems += [str(error) for error in failures]
    if problems:
        raise ConfigError(_bullets(problems)) from (failures[0] if failures else None)
    return task


def _bullets(problems: list[str]) -> str:
    return problems[0] if len(problems) == 1 else "Invalid config:\n" + "\n".join(f"  - {p}" for p in problems)


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
    top_level = key in (group, f"{group}.fn") or (group in ("logger", "callbacks") and key.count(".") == 1)
    supplied = RUNNER_SUPPLIED.get(group, set()) if top_level else set()
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
    """instantiate() with the failure named: which group, which target, what went wrong (the
    underlying error stays the cause, its traceback in runner.log)."""
    try:
        return instantiate(node, **kwargs)
    except Exception as error:
        cause = error.__cause__ or error  # Hydra wraps what the target raised
        kind = DataError if what == "dataset" else ConfigError
        raise kind(f"could not build {what} ({node.get('_target_', '?')}): {_error_text(cause)}") from error


def complete(factory: Any, what: str, target: str, *args, **kwargs) -> Any:
    """Call a partial (`_partial_: true`) with what the runner supplies, the failure named as build() names it."""
    try:
        return factory(*args, **kwargs)
    except Exception as error:
        raise ConfigError(f"could not build {what} ({target}): {_error_text(error)}") from error


def _error_text(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}" if not isinstance(error, (ConfigError, DataError)) else str(error)


# ---------------------------------------------------------------- the loss and the task


def bind_loss(task: Any, cfg: DictConfig) -> None:
    """Give the task the loss's criterion with the settings of the loss config's entry for this task.

    `loss.tasks` lists the tasks a loss fits, each with its settings; a loss config without it fits
    any task (a user's own loss for a user's own task).
    """
    criterion = build(cfg.loss.criterion, "loss")
    name = getattr(task, "name", type(task).__name__)
    fits = cfg.loss.get("tasks")
    if fits is not None and name not in fits:
        others = losses_for(name)
        raise ConfigError(
            f"loss {cfg.loss.criterion._target_} does not fit task {name!r}: it fits "
            f"{', '.join(fits) or 'no task'} (loss.tasks)"
            + (f"; with it, pick {' or '.join(f'task={fit}' for fit in fits)}. " if fits else ". ")
            + (f"Losses for {name}: {', '.join(others)}." if others else
               f"Add {name} to loss.tasks if the loss does fit it.")
        )
    entry = fits[name] if fits is not None else None
    settings = OmegaConf.to_container(entry, resolve=True) if entry else {}
    accepted = [p for p in inspect.signature(task.bind_loss).parameters if p != "criterion"]
    unknown = sorted(set(settings) - set(accepted))
    if unknown:
        raise ConfigError(f"loss.tasks.{name}.{unknown[0]} is not a setting of task {name!r} "
                          f"(its settings: {', '.join(accepted) or 'none'})")
    try:
        task.bind_loss(criterion, **settings)
    except ValueError as error:
        raise ConfigError(f"loss.tasks.{name}: {error}") from error


def losses_for(task_name: str) -> list[str]:
    """The options of conf/loss/ whose `tasks` name this task."""
    found = []
    for path in sorted(LOSS_CONFIGS.glob("*.yaml")):
        tasks = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("tasks") or {}
        if task_name in tasks:
            found.append(path.stem)
    return found


def recorded_metrics(metric_names: Iterable[str]) -> list[str]:
    """Every metric a run records per epoch, in metrics.csv order (after epoch, step, time_s and lr), for a
    task whose metrics have these names: a built task's `task.metrics`, or the names its config declares."""
    names = []
    for split in ("train", "val"):
        names += [f"{split}/loss", *(f"{split}/{name}" for name in sorted(metric_names))]
        if split == "train":
            names.append("train/samples_per_s")
    return names


def objective_problems(cfg: DictConfig, metric_names: Iterable[str]) -> list[str]:
    """Every objective's and constraint's metric must be one the run records, for a task whose metrics have
    these names (see recorded_metrics)."""
    known = [m for m in recorded_metrics(metric_names) if m != "train/samples_per_s"] + ["lr", PARAMS_METRIC]
    objectives = objectives_of(cfg.objective)
    allowed = f"use one of: {', '.join(known)} (add metrics under task.metrics)"
    problems = []
    if cfg.objective.metric not in known:
        problems.append(f"objective.metric={cfg.objective.metric!r} is not a metric this run records; {allowed}")
    problems += [f"objective.metrics: {metric!r} is not a metric this run records; {allowed}"
                 for metric in objectives.metrics[1:] if metric not in known]
    problems += [f"objective.constraints: {str(c)!r} bounds {c.metric!r}, which is not a metric this run records; "
                 f"{allowed}" for c in objectives.constraints if c.metric not in known]
    return problems


def declared_objective_problems(cfg: DictConfig) -> list[str]:
    """objective_problems before anything is built: from the metric names the task's config declares;
    only when an objective is not among them is the task built to be sure (a task of one's own may
    record metrics its config does not name)."""
    metrics = cfg.task.get("metrics") if isinstance(cfg.get("task"), DictConfig) else None
    if not objective_problems(cfg, [name for name, node in (metrics or {}).items() if node is not None]):
        return []
    try:
        return objective_problems(cfg, build(cfg.task, "task").metrics)
    except ConfigError as error:
        return [str(error)]


def extra_metrics(cfg: DictConfig) -> list[str]:
    """Metrics beyond the task's that the run records because an objective or a constraint names them."""
    return [PARAMS_METRIC] if PARAMS_METRIC in objectives_of(cfg.objective).needed_metrics else []


def extra_metric_values(names: list[str], model: torch.nn.Module) -> dict[str, float]:
    """The values of extra_metrics' metrics for an evaluated epoch."""
    return {PARAMS_METRIC: parameter_count(model)} if PARAMS_METRIC in names else {}


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def shape_of(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"{str(value.dtype).removeprefix('torch.')} {tuple(value.shape)}"
    if isinstance(value, (dict, tuple, list)):
        items = value.items() if isinstance(value, dict) else enumerate(value)
        return type(value).__name__ + "(" + ", ".join(f"{k}: {shape_of(v)}" for k, v in items) + ")"
    return type(value).__name__


def probe(model: torch.nn.Module, task: Any, batch: Any, cfg: DictConfig) -> None:
    """The model, the task's check, the loss and every metric on one real batch, before training:
    a mismatch is one error naming what does not fit, with the underlying error as its cause."""
    inputs, target = task.unpack(batch)
    model_name, task_name = cfg.model._target_, getattr(task, "name", type(task).__name__)
    was_training = model.training
    model.eval()
    # the check draws no random numbers of the training's (dropout, a VAE's sampling): a run's stream is
    # the one a plain loop seeded alike has
    devices = [p.device for p in model.parameters() if p.device.type == "cuda"][:1]
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            try:
                output = task.forward(model, inputs)
            except Exception as error:
                raise ConfigError(f"model {model_name} fails on a batch of dataset {cfg.dataset._target_} "
                                  f"(inputs {shape_of(inputs)}): {type(error).__name__}: {error}") from error
            try:
                task.check(output, target)
            except ValueError as error:
                raise ConfigError(f"model {model_name} does not fit task {task_name!r} on dataset "
                                  f"{cfg.dataset._target_}: {error}") from error
            try:
                # a shape mismatch that would only broadcast with a warning is an error here
                with warnings.catch_warnings():
                    warnings.simplefilter("error", UserWarning)
                    value = task.loss(output, target)
            except Exception as error:
                raise ConfigError(f"loss {cfg.loss.criterion._target_} does not fit the output of model "
                                  f"{model_name} ({shape_of(output)}) for task {task_name!r} with targets "
                                  f"{shape_of(target)}: {type(error).__name__}: {error}") from error
            if not isinstance(value, torch.Tensor) or value.numel() != 1:
                raise ConfigError(f"loss {cfg.loss.criterion._target_} must reduce to one number, got "
                                  f"{shape_of(value)}; set its reduction to mean")
            _probe_metrics(task, output, target)
    finally:
        model.train(was_training)


def _probe_metrics(task: Any, output: Any, target: Any) -> None:
    from torchmetrics import MetricCollection

    metrics = task.new_metrics().to(output.device if isinstance(output, torch.Tensor) else "cpu")
    for name, metric in metrics.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a tiny batch may lack a class: the metric says so, rightly
                task.update_metrics(MetricCollection({name: metric}, compute_groups=False), output, target)
                value = metric.compute()
        except Exception as error:
            raise ConfigError(f"metric task.metrics.{name} ({type(metric).__module__}.{type(metric).__name__}) "
                              f"fails on the model's output {shape_of(output)} and targets {shape_of(target)}: "
                              f"{type(error).__name__}: {error}") from error
        if not (isinstance(value, torch.Tensor) and value.numel() == 1 or isinstance(value, (int, float))):
            raise ConfigError(f"metric task.metrics.{name} gives {shape_of(value)}, not one number; "
                              f"set it to average over classes or outputs (average='macro', say)")


# ---------------------------------------------------------------- optimisation


def build_scheduler(cfg: DictConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    """The scheduler partial, completed with the optimizer and, if it asks for one, steps_per_epoch."""
    if not cfg.scheduler:
        return None
    factory = build(cfg.scheduler.fn, "scheduler")
    func = factory.func if isinstance(factory, partial) else factory
    extra = {}
    if "steps_per_epoch" in inspect.signature(func).parameters and "steps_per_epoch" not in getattr(factory, "keywords", {}):
        extra["steps_per_epoch"] = steps_per_epoch
    return complete(factory, "scheduler", cfg.scheduler.fn._target_, optimizer, **extra)
