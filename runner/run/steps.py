"""A task's own training step and optimizers: for several optimizers (a GAN's generator and
discriminator), a closure optimizer (LBFGS) or any update the default step cannot express.

The default step is one optimizer on every parameter: forward, the task's loss, backward, step. A task
(a user's own class) may instead define

- `configure_optimizers(model, optimizer) -> {name: torch.optim.Optimizer}`: its optimizers, built
  with `optimizer`, the config's optimizer partial (call it with parameters: `optimizer(model.g.parameters())`)
  or its own; the first is the one the scheduler drives and metrics.csv's `lr` shows;
- `training_step(model, inputs, target, optimizers) -> (loss, output)`: one batch's whole update (zero
  the gradients, backward, step each optimizer, as Lightning's manual optimisation does); `loss` is what
  train/loss averages, `output` what the train metrics are updated with.

Everything else stays the runner's: the batches and their order, the train and val metrics, the
scheduler, callbacks, pruning and sweeps, and checkpoints, which hold every optimizer's state (plain
tensors), so that a resumed run goes on exactly. Evaluation calls the task's `forward` and `loss` as usual.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import torch

from runner.errors import ConfigError
from runner.run.build import complete
from runner.run.device import autocast


def build_optimizers(task: Any, model: torch.nn.Module, factory: Any, target: str) -> dict[str, torch.optim.Optimizer]:
    """The task's own optimizers (`configure_optimizers`), or the config's optimizer on every parameter."""
    configure = getattr(task, "configure_optimizers", None)
    if configure is None:
        return {"optimizer": complete(factory, "optimizer", target, model.parameters())}
    name = getattr(task, "name", type(task).__name__)
    try:
        built = configure(model, factory)
    except Exception as error:
        raise ConfigError(f"task {name!r} could not build its optimizers (configure_optimizers with optimizer "
                          f"{target}): {type(error).__name__}: {error}") from error
    if not isinstance(built, dict) or not built or not all(
            isinstance(k, str) and isinstance(v, torch.optim.Optimizer) for k, v in built.items()):
        raise ConfigError(f"task {name!r}: configure_optimizers must return a non-empty dict of name -> "
                          f"torch.optim.Optimizer; it returned {built!r}")
    return dict(built)


def own_step(fit) -> Callable | None:
    """The run's batch step through the task's `training_step`, or None when the task has none.

    Refused where the runner would have to reach inside the task's update: fp16's grad scaler, gradient
    clipping and DistributedDataParallel's loss weighting."""
    training_step = getattr(fit.task, "training_step", None)
    trainer, name = fit.trainer, getattr(fit.task, "name", type(fit.task).__name__)
    if training_step is None:
        if needs_closure(fit.optimizer):
            raise ConfigError(f"optimizer {type(fit.optimizer).__module__}.{type(fit.optimizer).__name__} steps "
                              f"with a closure that re-evaluates the loss, which the default step does not pass; "
                              f"task {name!r} has no training_step. Use another optimizer, or a task with its "
                              f"own training_step that calls optimizer.step(closure) (docs/tasks.md)")
        return None
    problems = [f"trainer.{key}={value!r} ({why})" for key, value, why, bad in (
        ("precision", str(trainer.precision), "its grad scaler steps the optimizer; use 32 or bf16",
         str(trainer.precision) == "16"),
        ("gradient_clip_val", trainer.gradient_clip_val, "clip inside training_step; set it to null",
         trainer.gradient_clip_val is not None),
        ("strategy", trainer.strategy, "several ranks are not supported with a task's own step; use single",
         fit.ranks.world > 1)) if bad]
    if problems:
        raise ConfigError(f"task {name!r} has its own training_step, which does not go with "
                          + "; ".join(problems))

    def step(inputs: Any, target: Any, weight: float | None = None) -> tuple[torch.Tensor, Any]:
        with autocast(fit.device, fit.autocast_dtype):
            loss, output = training_step(fit.forward, inputs, target, fit.optimizers)
        if fit.scheduler is not None and fit.scheduler_interval == "step":
            fit.scheduler.step()
        return loss.detach(), detached(output)

    return step


def needs_closure(optimizer: torch.optim.Optimizer) -> bool:
    """Whether the optimizer's `step` requires its closure argument (LBFGS) rather than taking it optionally."""
    parameter = inspect.signature(optimizer.step).parameters.get("closure")
    return parameter is not None and parameter.default is inspect.Parameter.empty


def detached(value: Any) -> Any:
    """Tensors detached from the graph, inside tuples, lists and dicts too."""
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, dict):
        return {k: detached(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(detached(v) for v in value)
    return value
