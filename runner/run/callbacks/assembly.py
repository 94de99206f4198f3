"""The run's callbacks, assembled by name in the order the loop asks them."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from runner.errors import RunnerError
from runner.run.callbacks.base import HOOKS, Callback
from runner.run.callbacks.checkpoints import Checkpoint
from runner.run.callbacks.loggers import Loggers
from runner.run.callbacks.media import Media
from runner.run.callbacks.record import ResultRecord
from runner.run.callbacks.stopping import EarlyStopping, ObjectiveThreshold, Pruning, TimeBudget
from runner.run.callbacks.test_stage import TestStage


def build_callbacks(cfg: DictConfig, trainer, record: ResultRecord, pruner, sweep_dir,
                    pbt: Callback | None = None) -> dict[str, Any]:
    """The run's callbacks by name, in the order they are asked: stopping rules, the user's own,
    pruning or PBT (runner.sweep.pbt; before the checkpoints, which then hold what an exploit copied),
    loggers and media, checkpoints, and the record last (it sees every decision)."""
    from runner.run.build import build

    callbacks: dict[str, Any] = {}
    if trainer.stop.objective_threshold is not None:
        callbacks["objective_threshold"] = ObjectiveThreshold(trainer.stop.objective_threshold)
    if trainer.early_stopping.patience is not None:
        callbacks["early_stopping"] = EarlyStopping(trainer.early_stopping.patience, trainer.early_stopping.min_delta)
    builtin = {"objective_threshold", "early_stopping", "pruning", "pbt", "time_budget", "test", "loggers", "media",
               "checkpoint", "record"}
    for name, node in (cfg.get("callbacks") or {}).items():
        if not node:
            continue
        if name in builtin:
            raise RunnerError(f"callbacks.{name}: the name is taken by a built-in callback; "
                              f"use another ({', '.join(sorted(builtin))} are taken)")
        callback = build(node, f"callbacks.{name}")
        if not any(callable(getattr(callback, hook, None)) for hook in HOOKS):
            raise RunnerError(f"callbacks.{name}: {node._target_} has none of the hooks a callback is called by "
                              f"({', '.join(HOOKS)}), so it would never run; see runner.run.callbacks.Callback")
        callbacks[name] = callback
    if pruner is not None:
        callbacks["pruning"] = Pruning(pruner)
    if pbt is not None:
        callbacks["pbt"] = pbt
    if trainer.stop.time_budget_s is not None:
        callbacks["time_budget"] = TimeBudget(trainer.stop.time_budget_s)
    callbacks["test"] = TestStage()
    loggers = Loggers(cfg, record.run_dir, sweep_dir)
    callbacks["loggers"] = loggers
    callbacks["media"] = Media(loggers, trainer.histograms_every_n_epochs, trainer.predictions_every_n_epochs,
                               trainer.num_prediction_samples)
    callbacks["checkpoint"] = Checkpoint(trainer.checkpoint_every_n_epochs)
    callbacks["record"] = record
    return callbacks


def rank_callbacks() -> dict[str, Any]:
    """The callbacks of a rank other than 0 of a data-parallel run: only the test stage, whose evaluation
    every rank shares; rank 0 decides, logs and writes for the run."""
    return {"test": TestStage()}

