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
"""

from __future__ import annotations

import logging
import math
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from runner.errors import RunnerError
from runner.results import (BEST_CHECKPOINT, LAST_CHECKPOINT, blank_result, git_state, now, write_json_atomic,
                            write_metrics)

log = logging.getLogger(__name__)

INTERRUPTED_REASON = "stopped by a signal; run again to resume"


@dataclass(frozen=True)
class Stop:
    """A callback's decision to end the run after this epoch: `completed` (a stopping rule) or `pruned`."""

    reason: str
    status: str = "completed"


class Callback:
    """The hooks, each doing nothing; subclass and override what you need."""

    def on_fit_start(self, fit) -> None: ...

    def on_log_step(self, fit, scalars: dict[str, float]) -> None: ...

    def on_eval_batch(self, fit, split: str, inputs: Any, output: Any, target: Any) -> None: ...

    def on_epoch_end(self, fit, metrics: dict[str, float]) -> Stop | str | None: ...

    def on_interrupt(self, fit) -> None: ...

    def on_exception(self, fit, error: BaseException) -> None: ...

    def on_fit_end(self, fit, outcome) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


HOOKS = tuple(name for name in vars(Callback) if name.startswith("on_"))


# ---------------------------------------------------------------- stopping rules


class ObjectiveThreshold(Callback):
    """Stop once the objective reaches `threshold` in its goal's direction (Ray Tune's `stop`)."""

    def __init__(self, threshold: float):
        self.threshold = threshold

    def on_epoch_end(self, fit, metrics):
        if fit.evaluated:
            value = metrics[fit.objective.metric]
            if fit.objective.reached(value, self.threshold):
                return Stop(f"{fit.objective.metric}={value:.4g} reached trainer.stop.objective_threshold={self.threshold}")
        return None


class EarlyStopping(Callback):
    """Stop when the objective has not improved by more than `min_delta` for `patience` evaluations."""

    def __init__(self, patience: int, min_delta: float = 0.0):
        self.patience, self.min_delta = patience, min_delta
        self.reference: float | None = None  # the last value that counted as an improvement
        self.evals_without_improvement = 0

    def on_epoch_end(self, fit, metrics):
        if not fit.evaluated:
            return None
        value = metrics[fit.objective.metric]
        if fit.objective.better(value, self.reference, self.min_delta):
            self.reference, self.evals_without_improvement = value, 0
        else:
            self.evals_without_improvement += 1
        if self.evals_without_improvement >= self.patience:
            return Stop(f"early stopping: {fit.objective.metric} did not improve for {self.patience} evaluations")
        return None

    def state_dict(self):
        return {"reference": self.reference, "evals_without_improvement": self.evals_without_improvement}

    def load_state_dict(self, state):
        self.reference, self.evals_without_improvement = state["reference"], state["evals_without_improvement"]


class TimeBudget(Callback):
    """Stop once training has taken `seconds` (summed over resumed attempts)."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def on_epoch_end(self, fit, metrics):
        if fit.progress.train_seconds >= self.seconds:
            return Stop(f"time budget trainer.stop.time_budget_s={self.seconds} used up")
        return None


class Pruning(Callback):
    """Report the objective to the sweep's pruner (runner.sweep.pruning) after every evaluation; stop if it says so."""

    def __init__(self, pruner):
        self.pruner = pruner

    def on_epoch_end(self, fit, metrics):
        # a run already stopping records no rung: its value is no sign of how it would go on
        if not fit.evaluated or fit.stop is not None:
            return None
        decision = self.pruner.report(fit.progress.epoch, metrics[fit.objective.metric])
        return Stop(decision.reason, "pruned") if decision.stop else None


# ---------------------------------------------------------------- the test stage, checkpoints, loggers, media


class TestStage(Callback):
    """When the run ends (completed, stopped early or pruned), the best checkpoint (by the objective) is
    evaluated on the dataset's test split: `test/<metric>` for every metric, with the checkpoint's epoch.
    The test data never steers anything: no stopping rule, pruner or checkpoint sees it."""

    def on_fit_end(self, fit, outcome):
        from runner.run import checkpoint

        path = fit.checkpoints / BEST_CHECKPOINT
        # every rank takes part in the evaluation: they go by what rank 0, which wrote best.pt, sees
        if fit.test_data is None or not fit.ranks.broadcast(path.exists()):
            return
        state = checkpoint.load(path)
        fit.model.load_state_dict(state["model"])
        outcome.test_metrics = fit.evaluate(fit.test_data, "test")
        outcome.test_epoch = state["epoch"]
        log.info("test (best checkpoint, epoch %d): %s", outcome.test_epoch,
                 "  ".join(f"{k}={v:.4g}" for k, v in outcome.test_metrics.items()))


class Checkpoint(Callback):
    """best.pt whenever the objective is at its best; last.pt every `every_n_epochs`, at the last epoch
    and when the run stops."""

    def __init__(self, every_n_epochs: int):
        self.every_n_epochs = every_n_epochs

    def on_epoch_end(self, fit, metrics):
        epoch = fit.progress.epoch
        if fit.is_best:
            fit.save(BEST_CHECKPOINT)
        if fit.stop is not None or epoch % self.every_n_epochs == 0 or epoch == fit.trainer.max_epochs:
            fit.save(LAST_CHECKPOINT)
        return None


class Loggers(Callback):
    """Builds the `logger` entries and hands them the config, step and epoch scalars, and at the end
    the best metrics, the status and reason, and the hyperparameters with the final metrics (a single
    run's; a sweep's trials are compared in the sweep report's one HParams table, which per-trial
    tables would duplicate).

    Each logger gets `run_dir` and `start_step`, and those of `sweep_dir`, `hparams` and `choices`
    that its constructor names (components.loggers says what they are). A logger that cannot be
    built fails the run before its first step; one that fails later is dropped with an error
    message and the run goes on without it: a logger is a view on the run, never a reason to lose
    it, and result.json, metrics.csv and the checkpoints are written as ever.
    """

    def __init__(self, cfg: DictConfig, run_dir, sweep_dir):
        self.cfg, self.run_dir, self.sweep_dir = cfg, run_dir, sweep_dir
        self.in_sweep = sweep_dir is not None
        self.entries: dict[str, Any] = {}

    @property
    def loggers(self) -> list:
        return list(self.entries.values())

    def on_fit_start(self, fit):
        from runner.run.build import build

        offered = {"sweep_dir": self.sweep_dir, "hparams": flat_hparams(self.cfg), "choices": group_choices()}
        for name, node in (self.cfg.logger or {}).items():
            if node:
                # _convert_: the offered dicts reach the logger as dicts, not as config nodes
                self.entries[name] = build(node, f"logger.{name}", _convert_="all", run_dir=self.run_dir,
                                           start_step=fit.progress.step, **_asked_for(node._target_, offered))
        self._each("log_text", "config", OmegaConf.to_yaml(self.cfg))

    def on_log_step(self, fit, scalars):
        self._each("log_metrics", scalars, fit.progress.step)

    def on_epoch_end(self, fit, metrics):
        scalars = {k: v for k, v in metrics.items() if "/" in k or k == "lr"}
        self._each("log_metrics", scalars, fit.progress.step)
        return None

    def on_interrupt(self, fit):
        # said at once: on SLURM the process may be killed right after the checkpoint
        self._each("set_status", "interrupted", INTERRUPTED_REASON)

    def on_fit_end(self, fit, outcome):
        history = fit.progress.history
        if outcome.test_metrics:
            self._each("log_metrics", outcome.test_metrics, fit.progress.step)
        if not self.in_sweep and history:
            final = {k: v for k, v in history[-1].items() if "/" in k}
            self._each("log_hparams", flat_hparams(self.cfg), final)
        self._end(fit, outcome.status, outcome.reason)

    def on_exception(self, fit, error):
        if isinstance(error, Exception):
            self._end(fit, "failed", failure_reason(error))
        else:  # the signal's SystemExit, or a second Ctrl-C
            self._end(fit, "interrupted", INTERRUPTED_REASON)

    def _end(self, fit, status: str, reason: str | None) -> None:
        objective = fit.objective
        if objective.epoch is not None:
            best = {f"best/{k}": v for k, v in objective.metrics.items() if "/" in k}
            self._each("log_summary", {**best, "best/epoch": objective.epoch}, fit.progress.step)
        self._each("set_status", status, reason)
        self.close()

    def _each(self, call: str, *args) -> None:
        for name, logger in list(self.entries.items()):
            method = getattr(logger, call, None)  # loggers of users' own may implement only some calls
            if method is None:
                continue
            try:
                method(*args)
            except Exception as error:
                del self.entries[name]
                log.error("logger.%s failed in %s (%s: %s); the run goes on without it, and its result.json, "
                          "metrics.csv and checkpoints are complete", name, call, type(error).__name__, error)
                _close_quietly(name, logger)

    def close(self) -> None:
        entries, self.entries = self.entries, {}
        for name, logger in entries.items():
            _close_quietly(name, logger)


def _asked_for(target: str, offered: dict[str, Any]) -> dict[str, Any]:
    """The offered arguments that a `_target_`'s signature names; all of them if it takes **kwargs."""
    import inspect

    from hydra.utils import get_object

    parameters = inspect.signature(get_object(target)).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return dict(offered)
    return {key: value for key, value in offered.items() if key in parameters}


def _close_quietly(name: str, logger) -> None:
    try:
        logger.close()
    except Exception as error:
        log.error("logger.%s failed to close (%s: %s)", name, type(error).__name__, error)


class Media(Callback):
    """Weight and gradient histograms, and what the task draws from the validation batches (sample
    images, a confusion matrix, predicted against true), every so many epochs and at the last.

    Media never fail a run: a drawing that raises is logged as a warning, once per kind.
    """

    def __init__(self, loggers: Loggers, histograms_every_n_epochs: int, predictions_every_n_epochs: int,
                 num_samples: int):
        self.loggers = loggers
        self.histograms_every, self.predictions_every = histograms_every_n_epochs, predictions_every_n_epochs
        self.num_samples = num_samples
        self.collector = None
        self.collecting_epoch: int | None = None
        self.warned: set[str] = set()

    def _due(self, fit, epoch: int, every: int) -> bool:
        return bool(self.loggers.loggers) and (epoch % every == 0 or epoch == fit.trainer.max_epochs)

    def on_eval_batch(self, fit, split, inputs, output, target):
        epoch = fit.progress.epoch + 1  # the epoch being evaluated
        if split != "val" or not self._due(fit, epoch, self.predictions_every):
            return
        if self.collecting_epoch != epoch:
            self.collector = self._safely(fit, "media", lambda: fit.task.media(self.num_samples))
            self.collecting_epoch = epoch
        if self.collector is not None:
            self._safely(fit, "media", lambda: self.collector.add(inputs, output, target))

    def on_epoch_end(self, fit, metrics):
        epoch, step = fit.progress.epoch, fit.progress.step
        if self._due(fit, epoch, self.histograms_every):
            self._safely(fit, "histograms", lambda: self._log_histograms(fit))
        if self.collector is not None and self.collecting_epoch == epoch:
            items = self._safely(fit, "media", lambda: self.collector.render(getattr(fit.data, "class_names", None)))
            for item in items or []:
                for logger in self.loggers.loggers:
                    self._safely(fit, f"media {item.tag}", lambda: item.log_to(logger, step))
        self.collector = None
        return None

    def _log_histograms(self, fit) -> None:
        tensors = {}
        for name, parameter in fit.model.named_parameters():
            tensors[f"weights/{name}"] = parameter
            if parameter.grad is not None:
                tensors[f"gradients/{name}"] = parameter.grad
        for logger in self.loggers.loggers:
            logger.log_histograms(tensors, fit.progress.step)

    def _safely(self, fit, kind: str, draw):
        try:
            return draw()
        except Exception as error:  # media are a view on the run, never a reason to lose it
            if fit.ranks.collective_broke(error):
                raise  # ... but a failed collective has broken the ranks' connections: the run is lost
            if kind not in self.warned:
                self.warned.add(kind)
                log.warning("could not log %s (%s: %s); the run goes on without it", kind, type(error).__name__, error)
            return None


# ---------------------------------------------------------------- the record


class ResultRecord(Callback):
    """result.json and metrics.csv for one run, rewritten atomically as the run goes.

    Created before anything is built, so that a run that fails to build is recorded as failed too
    (with the traceback), except a resume that fails before it resumed: its earlier record stays.
    """

    def __init__(self, cfg: DictConfig, context):
        self.run_dir = run_dir = context.run_dir
        self.started = time.monotonic()
        self.columns: list[str] = []
        self.result: dict[str, Any] = blank_result(
            metric=cfg.objective.metric, goal=cfg.objective.goal, overrides=context.overrides, run_dir=run_dir,
            max_epochs=cfg.trainer.max_epochs,
            started_in=str(context.started_in) if context.started_in else None, command=context.command,
            git_commit=git_state(Path(__file__).parent)["commit"],
            project_git=git_state(context.started_in) if context.started_in else None, started_at=now())
        self.written = False  # runner.run.train writes a fresh run's record at once, a resumed run's once it resumed

    def write(self) -> None:
        self.result["duration_s"] = round(time.monotonic() - self.started, 3)
        write_json_atomic(self.run_dir / "result.json", self.result)
        self.written = True

    def progress(self, fit) -> None:
        """Where the run stands: its epochs, steps, metrics and best objective."""
        history, objective = fit.progress.history, fit.objective
        self.columns = fit.csv_columns
        self.result.update(
            status="running",  # also after an interruption that the run was allowed to ride out
            epochs=fit.progress.epoch,
            steps=fit.progress.step,
            final_metrics=dict(history[-1]) if history else {},
            best_metrics=dict(objective.metrics),
        )
        self.result["objective"].update(value=objective.value, epoch=objective.epoch, last=objective.last)
        if history:
            write_metrics(self.run_dir, history, self.columns)
        self.write()

    def on_fit_start(self, fit):
        self.progress(fit)

    def on_epoch_end(self, fit, metrics):
        self.progress(fit)
        return None

    def on_interrupt(self, fit):
        self.result.update(status="interrupted", reason=INTERRUPTED_REASON)
        self.write()

    def on_exception(self, fit, error):
        if isinstance(error, KeyboardInterrupt):  # a second Ctrl-C, which does not wait for a checkpoint
            self.on_interrupt(fit)
        elif isinstance(error, Exception):
            self.failed(error)

    def on_fit_end(self, fit, outcome):
        self.progress(fit)
        if outcome.test_metrics is not None:
            self.result.update(test_metrics=outcome.test_metrics, test_epoch=outcome.test_epoch)
        self.finished(outcome.status, outcome.reason)

    def finished(self, status: str, reason: str | None) -> None:
        self.result.update(status=status, reason=reason, finished_at=now())
        if status == "pruned":
            self.result["pruned_at_epoch"] = self.result["epochs"]
        self.write()

    def failed(self, error: BaseException) -> None:
        self.result["traceback"] = "".join(traceback.format_exception(error))
        self.finished("failed", failure_reason(error))


def failure_reason(error: BaseException) -> str:
    """What a failed run's record says: a RunnerError's message, else the error's type and message."""
    return str(error) if isinstance(error, RunnerError) else f"{type(error).__name__}: {error}"


# ---------------------------------------------------------------- assembly


def flat_hparams(cfg: DictConfig) -> dict[str, Any]:
    """Every scalar setting of the experiment, flattened (`optimizer.lr`), plus each group's choice."""
    container = OmegaConf.to_container(cfg, resolve=True)
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}.{key}" if prefix else str(key))
        elif isinstance(node, (int, float, str, bool)):
            flat[prefix] = node
        elif isinstance(node, list):
            flat[prefix] = str(node)

    for group, node in container.items():
        if group not in ("paths", "logger", "callbacks"):
            walk(node, group)
    flat.update(group_choices())
    return flat


def group_choices() -> dict[str, str]:
    """Each config group's choice (`model: lenet`), Hydra's own groups left out; empty when the config
    was composed without Hydra's app (tests)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return {}
    choices = HydraConfig.get().runtime.choices
    return {group: choice for group, choice in choices.items() if not group.startswith("hydra") and choice is not None}


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


def worst_value(goal: str) -> float:
    return -math.inf if goal == "maximize" else math.inf
