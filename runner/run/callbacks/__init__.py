"""Training callbacks: what happens around the loop's epochs, each in a small class with its own state.

The loop (runner.run.fit.Fit) trains and evaluates; after every epoch it asks each callback in order,
and the first one that returns a `Stop` (or a reason string) ends the run after that epoch. A
callback overrides only the hooks it needs; each gets the running `Fit` (its `model`, `optimizer`,
`task`, `progress`, `objective`, `run_dir`, `cfg`, `stop`, `evaluated`, ...):

    on_fit_start(fit)                               after building and resuming, before the first epoch
    on_log_step(fit, scalars)                       every trainer.log_every_n_steps optimizer steps
    on_eval_batch(fit, split, inputs, output, target)  for every evaluated batch ("val", "test")
    on_epoch_end(fit, metrics) -> Stop | str | None  after each epoch; `metrics` is its metrics.csv row
    on_interrupt(fit)                               once the checkpoint of a signal is saved
    on_exception(fit, error)                        when the run fails or is interrupted by an exception
    on_fit_end(fit, outcome)                        when the run ends as completed or pruned
    state_dict() / load_state_dict(state)           saved in, and restored from, the checkpoint

Users add their own under the `callbacks` config group, as named entries with a `_target_`; they
run after the built-in stopping rules and before checkpointing, logging of the record and the result.

One module per family: `base` (the hooks and `Stop`), `dispatch` (how the loop calls them),
`stopping` (threshold, early stopping, time budget, pruning), `test_stage`, `checkpoints`, `loggers`,
`media`, `record` (result.json, metrics.csv) and `assembly` (the run's callbacks by name, in order).
This package re-exports their public names. It imports the base modules and runner.run's build
and checkpoint modules, never runner.run.fit (which it serves) nor runner.sweep or runner.report.
"""

from runner.run.callbacks.assembly import build_callbacks, rank_callbacks
from runner.run.callbacks.base import HOOKS, Callback, Stop
from runner.run.callbacks.checkpoints import Checkpoint
from runner.run.callbacks.dispatch import CallbackDispatch, CallbackFailed
from runner.run.callbacks.loggers import Loggers, flat_hparams, group_choices
from runner.run.callbacks.media import Media
from runner.run.callbacks.record import INTERRUPTED_REASON, ResultRecord, failure_reason
from runner.run.callbacks.stopping import EarlyStopping, ObjectiveThreshold, Pruning, TimeBudget
from runner.run.callbacks.test_stage import TestStage

__all__ = [
    "HOOKS", "INTERRUPTED_REASON", "Callback", "CallbackDispatch", "CallbackFailed", "Checkpoint", "EarlyStopping",
    "Loggers", "Media", "ObjectiveThreshold", "Pruning", "ResultRecord", "Stop", "TestStage", "TimeBudget",
    "build_callbacks", "failure_reason", "flat_hparams", "group_choices", "rank_callbacks",
]
