"""What a run's checkpoint holds, and putting a run back from one.

The state is plain data (runner.run.checkpoint writes and reads it): the model's, optimizer's (each
of a task's own, runner.run.steps), scheduler's and grad scaler's states, the `Progress` (epochs,
steps, the unfinished epoch, the history), the objective, every callback's own state, the random generators (every rank's, on rank
0, in a data-parallel run), the data's preprocessing, the config and the commit. Each function
takes the running `Fit` (runner.run.fit).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from runner.errors import ConfigError
from runner.results import LAST_CHECKPOINT
from runner.run import checkpoint

log = logging.getLogger(__name__)


@dataclass
class Progress:
    """Where training stands: everything besides the modules that a checkpoint must carry."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    batch_in_epoch: int = 0  # steps done in the unfinished epoch `epoch + 1`
    partial: dict[str, Any] | None = None  # EpochTotals.state() of that unfinished epoch
    generator_state: torch.Tensor | None = None  # the unfinished epoch's data generator
    history: list[dict[str, Any]] = field(default_factory=list)
    train_seconds: float = 0.0

    def state(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "step": self.step, "batch_in_epoch": self.batch_in_epoch,
                "partial": self.partial, "generator_state": self.generator_state,
                "history": [dict(row) for row in self.history], "train_seconds": self.train_seconds}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "Progress":
        return cls(**state)


def state_of(fit) -> dict[str, Any]:
    """The run's state as a checkpoint holds it (rank 0; with several ranks, after gather_rank_states)."""
    return {
        "model": fit.model.state_dict(),
        "optimizer": fit.optimizer.state_dict(),
        # a task's own optimizers (runner.run.steps), each by name; the first is "optimizer" too
        **({"optimizers": {name: o.state_dict() for name, o in fit.optimizers.items()}}
           if len(fit.optimizers) > 1 else {}),
        "scheduler": fit.scheduler.state_dict() if fit.scheduler is not None else None,
        "scaler": fit.scaler.state_dict(),
        "epoch": fit.progress.epoch,
        "step": fit.progress.step,
        "progress": fit.progress.state(),
        "objective": fit.objective.state(),
        "callbacks": {name: callback.state_dict() for name, callback in fit.callbacks.items()
                      if hasattr(callback, "state_dict")},
        "rng": checkpoint.rng_state(),
        **({"ranks": fit.rank_states} if fit.ranks.world > 1 else {}),
        "data": data_state(fit.data),
        "config": OmegaConf.to_yaml(fit.cfg),
        "git_commit": fit.git_commit,
    }


def data_state(data) -> dict[str, Any]:
    """What code outside the runner needs to feed the model: the preprocessing (its class and plain
    state) and the class names."""
    preprocess = getattr(data, "preprocess", None)
    stored = None
    if preprocess is not None and hasattr(preprocess, "state_dict"):
        kind = type(preprocess)
        stored = {"target": f"{kind.__module__}.{kind.__qualname__}", "state": preprocess.state_dict()}
    return {"preprocess": stored, "class_names": list(getattr(data, "class_names", None) or [])}


def gather_rank_states(fit) -> None:
    """Every rank's generators and unfinished epoch to rank 0, for the next save (a collective)."""
    if fit.ranks.world > 1:
        fit.rank_states = fit.ranks.gather({"rng": checkpoint.rng_state(), "partial": fit.progress.partial})


def save_mid_epoch(fit, batch_index: int, totals, generator: torch.Generator) -> None:
    """last.pt of a signal: the unfinished epoch's steps, sums and data generator with the rest (every
    rank takes part; rank 0 writes). The progress keeps them until the caller clears them."""
    progress = fit.progress
    progress.batch_in_epoch = batch_index
    progress.partial = totals.state()
    progress.generator_state = generator.get_state()
    gather_rank_states(fit)
    if fit.ranks.is_main:
        fit.save(LAST_CHECKPOINT)
        log.warning("checkpoint saved mid-epoch %d at step %d: the run resumes from here",
                    progress.epoch + 1, progress.step)


def resume(fit, state: dict[str, Any], path: Path) -> None:
    """Continue from a checkpoint's state (runner.run.checkpoint.load; runner.config.resume checked its config)."""
    from runner.config.resume import scheduler_changed

    try:
        load_training_state(fit, state, rebuild_scheduler=scheduler_changed(OmegaConf.create(state["config"]),
                                                                            fit.cfg))
    except (RuntimeError, KeyError, ValueError) as error:
        raise ConfigError(
            f"cannot resume from {path}: it was saved by a different model or optimizer ({error}). "
            f"Use a new run folder, or trainer.resume=never to start over (the old results are kept)."
        ) from error
    fit.progress = Progress.from_state(state["progress"])
    fit.objective.load_state(state["objective"])
    for name, callback_state in state.get("callbacks", {}).items():
        if name in fit.callbacks and hasattr(fit.callbacks[name], "load_state_dict"):
            fit.callbacks[name].load_state_dict(callback_state)
    own = state["ranks"][fit.ranks.rank] if "ranks" in state else {"rng": state["rng"]}
    if "ranks" in state:
        fit.progress.partial = own["partial"]
    checkpoint.restore_rng_state(own["rng"])
    log.info("resumed from %s at epoch %d, step %d", path, fit.progress.epoch, fit.progress.step)


def take_over(fit, state: dict[str, Any]) -> None:
    """Go on from another run's checkpoint (PBT's exploit): its weights, optimizer, scheduler, grad
    scaler, epoch, step and random states. This run keeps its own history, objective, callbacks
    and config; the caller made sure the other run trains the same model (no config check here)."""
    load_training_state(fit, state, rebuild_scheduler=False)
    fit.progress.epoch, fit.progress.step = state["progress"]["epoch"], state["progress"]["step"]
    checkpoint.restore_rng_state(state["rng"])


def load_training_state(fit, state: dict[str, Any], rebuild_scheduler: bool) -> None:
    """The model's weights, the optimizer's, scheduler's and grad scaler's states; a scheduler built for
    a new length continues at the saved one's step instead (runner.config.resume)."""
    from runner.run.resume import continue_scheduler

    fit.model.load_state_dict(state["model"])
    fit.optimizer.load_state_dict(state["optimizer"])
    if len(fit.optimizers) > 1:
        for name, optimizer in fit.optimizers.items():
            optimizer.load_state_dict(state["optimizers"][name])
    if fit.scheduler is not None and state.get("scheduler") is not None:
        if rebuild_scheduler:
            continue_scheduler(fit.scheduler, state["scheduler"])
        else:
            fit.scheduler.load_state_dict(state["scheduler"])
    fit.scaler.load_state_dict(state["scaler"])
