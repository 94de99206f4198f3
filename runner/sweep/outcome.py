"""What a finished trial tells the sweep: its outcome (read from its result.json, or a failure), the
record of a trial lost without a result, and what the optimizer was told."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from hydra.core.utils import JobReturn, JobStatus
from omegaconf import DictConfig, open_dict

from runner.config.objectives import objectives_of
from runner.sweep.journal import json_number
from runner.results import RESULT_FILE, blank_result, now, read_result, write_json_atomic


@dataclass
class Outcome:
    """What a finished trial told the sweep."""

    number: int
    job_return: JobReturn | None
    status: str  # the trial's result.json status, "failed" for a failed or lost trial
    loss: float  # what the optimizer is told: the objective, negated when maximizing; inf if failed
    metric: str | None
    objective: float | None  # the trial's best objective value (result.json), None if it has none
    goal: str | None
    duration_s: float | None
    failed_job: bool  # the trial function raised (fail_fast, a config that does not compose)
    # with several objectives: every objective's loss (inf where missing); with constraints: how far
    # each is broken (0 when kept). None for one objective without constraints, or a failed trial.
    losses: list[float] | None = None
    violations: list[float] | None = None

    @classmethod
    def failed(cls, number: int, job_return: JobReturn | None, *, failed_job: bool) -> Outcome:
        return cls(number, job_return, "failed", math.inf, None, None, None, None, failed_job=failed_job)

    def tell_event(self, time: str) -> dict:
        """The journal's record of what the optimizer is told (runner.sweep.journal)."""
        event = {"event": "tell", "number": self.number, "status": self.status, "loss": json_number(self.loss),
                 "time": time}
        if self.losses:
            event["losses"] = [json_number(x) for x in self.losses]
        if self.violations:
            event["violations"] = [json_number(x) for x in self.violations]
        return event

    @property
    def told_loss(self) -> float | list[float]:
        """What the optimizer is told: the one loss, or every objective's."""
        return self.losses if self.losses is not None else self.loss


def returned_outcome(finished, maximize: bool | None) -> Outcome:
    """The outcome of a trial whose function returned or raised; `maximize` None follows the goal
    the trial's result.json names (a grid has no direction of its own)."""
    ret = finished.job_return
    if ret.status != JobStatus.COMPLETED:
        return Outcome.failed(finished.number, ret, failed_job=True)
    result = (read_result(finished.run_dir) or {}) if finished.run_dir else {}
    objective = result.get("objective") or {}
    value = ret.return_value
    loss = math.inf
    if isinstance(value, (int, float)) and not math.isnan(value):
        maximizing = objective.get("goal") == "maximize" if maximize is None else maximize
        loss = -float(value) if maximizing else float(value)
    outcome = Outcome(finished.number, ret, result.get("status", "completed"), loss, objective.get("metric"),
                      objective.get("value"), objective.get("goal"), result.get("duration_s"), failed_job=False)
    if objective.get("metrics") and not math.isinf(loss):
        objectives = objectives_of(objective)
        # as the first objective's returned value: a pruned trial is told where it stopped, others their best epoch
        metrics = result.get("final_metrics" if outcome.status == "pruned" else "best_metrics") or {}
        outcome.losses = objectives.losses(metrics) if objectives.several else None
        outcome.violations = objectives.violations(metrics) if objectives.constraints else None
    return outcome


def record_lost(config_loader, config: DictConfig, finished) -> Path:
    """A trial whose process or job ended without a result: its result.json says failed and why
    (what it had recorded is kept; its checkpoints stay, so running the sweep again resumes it).
    Returns its folder."""
    cfg = config_loader.load_sweep_config(config, list(finished.overrides))
    with open_dict(cfg):
        cfg.hydra.job.num = finished.number
    run_dir = Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir)
    result = read_result(run_dir) or blank_result(
        metric=cfg.objective.metric, goal=cfg.objective.goal, overrides=finished.overrides,
        run_dir=run_dir.resolve(), max_epochs=cfg.trainer.max_epochs)
    result.update(status="failed", reason=finished.lost, finished_at=now())
    write_json_atomic(run_dir / RESULT_FILE, result)
    return run_dir


class Told:
    """What the optimizer was told: each trial's latest loss, how many tells, and the best loss told."""

    def __init__(self) -> None:
        self.losses: dict[int, float] = {}
        self.count = 0
        self.best: tuple[float, int] | None = None

    def add(self, number: int, loss: float) -> None:
        self.losses[number] = loss
        self.count += 1
        if self.best is None or loss < self.best[0]:
            self.best = (loss, number)
