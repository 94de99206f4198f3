"""The run's record: result.json and metrics.csv, rewritten atomically as the run goes, and the reason a
failed or interrupted run's record gives."""

from __future__ import annotations

import time
import traceback
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from runner.config.objectives import objectives_of
from runner.errors import RunnerError
from runner.results import blank_result, git_state, now, write_json_atomic, write_metrics
from runner.run.callbacks.base import Callback

INTERRUPTED_REASON = "stopped by a signal; run again to resume"


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
        objectives = objectives_of(cfg.objective)
        if objectives.several or objectives.constraints:
            self.result["objective"].update(objectives.record())
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
