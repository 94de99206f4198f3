"""Collecting a sweep's trials: every trial folder's result.json, metrics.csv and .hydra/ read into a Trial."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from runner.errors import RunnerError
from runner.results import read_metrics, read_result

STATUSES = ("running", "completed", "pruned", "failed", "interrupted")


class SweepReportError(RunnerError):
    """The sweep folder cannot be reported on: missing, empty, or its trials disagree."""


@dataclass(frozen=True)
class Trial:
    """One trial folder as the report sees it; `value` is None until an epoch was evaluated."""

    number: int | None
    name: str
    path: Path
    status: str
    overrides: tuple[str, ...]
    metric: str | None
    goal: str | None
    value: float | None
    best_epoch: int | None
    epochs: int | None
    duration_s: float | None
    reason: str | None
    final_metrics: dict = field(default_factory=dict)
    best_metrics: dict = field(default_factory=dict)
    # the test stage's metrics (the best checkpoint on the test split): shown, never ranked by
    test_metrics: dict = field(default_factory=dict)
    # the command that reruns the trial alone, and the folder to run it from (recorded by the trial)
    command: str | None = None
    started_in: str | None = None
    history: list = field(default_factory=list)
    started_at: str | None = None
    max_epochs: int | None = None
    # with several objectives or constraints: objective.metrics, goals and constraints as the trial was run
    objectives: dict = field(default_factory=dict)

    @property
    def ranked(self) -> bool:
        """Failed trials and trials without a value yet are listed, unranked, after the others."""
        return self.value is not None and self.status != "failed"


def collect_trials(sweep_dir: Path) -> list[Trial]:
    """Every subfolder holding .hydra/ or result.json; one without result.json has not started training."""
    if not sweep_dir.is_dir():
        raise SweepReportError(f"sweep folder {sweep_dir} does not exist")
    folders = [p for p in sorted(sweep_dir.iterdir()) if (p / ".hydra").is_dir() or (p / "result.json").is_file()]
    if not folders:
        hint = (
            " it is a single run's folder; pass the sweep folder that holds the trial folders"
            if (sweep_dir / "result.json").is_file()
            else " is it a sweep folder (outputs/sweeps/<time>)? a sweep writes one per trial"
        )
        raise SweepReportError(f"no trials in {sweep_dir}: no subfolder holds .hydra/ or result.json;{hint}")
    return [read_trial(folder) for folder in folders]


def read_trial(folder: Path) -> Trial:
    result = read_result(folder) or {}
    # Hydra made the folder but training has not written result.json yet: queued or starting
    status = result.get("status", "running")
    if status not in STATUSES:
        raise SweepReportError(
            f"{folder / 'result.json'} has status {status!r}; a trial's status is one of {', '.join(STATUSES)}"
        )
    objective = result.get("objective") or {}
    config_objective = _config_objective(folder)
    source = objective if result else config_objective
    return Trial(
        number=_job_number(folder.name),
        name=folder.name,
        path=folder.resolve(),
        status=status,
        overrides=tuple(_hydra_overrides(folder) or result.get("overrides") or ()),
        metric=objective.get("metric") or config_objective.get("metric"),
        goal=objective.get("goal") or config_objective.get("goal"),
        value=objective.get("value"),
        best_epoch=objective.get("epoch"),
        epochs=result.get("epochs"),
        duration_s=result.get("duration_s"),
        reason=result.get("reason"),
        final_metrics=result.get("final_metrics") or {},
        best_metrics=result.get("best_metrics") or {},
        test_metrics=result.get("test_metrics") or {},
        command=result.get("command"),
        started_in=result.get("started_in"),
        history=read_metrics(folder),
        started_at=result.get("started_at"),
        max_epochs=result.get("max_epochs"),
        objectives={key: list(source[key]) for key in ("metrics", "goals", "constraints") if source.get(key)},
    )


def _job_number(folder_name: str) -> int | None:
    """Hydra's job number leads the trial folder's name (`3_optimizer.lr=0.01`)."""
    digits = folder_name.split("_", 1)[0]
    return int(digits) if digits.isdigit() else None


def _hydra_overrides(folder: Path) -> list[str] | None:
    path = folder / ".hydra" / "overrides.yaml"
    return yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None


def _config_objective(folder: Path) -> dict:
    """objective.* of the trial's composed config: the objective of a trial that has no result.json yet."""
    path = folder / ".hydra" / "config.yaml"
    if not path.is_file():
        return {}
    return (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("objective") or {}


def rerun_command(trial: Trial) -> str:
    """The shell command that runs this trial's configuration again, alone, from the folder the sweep was
    started in (`trial.started_in`): as the trial recorded it (config folder flags, PYTHONPATH), or from
    its overrides for a trial that recorded none."""
    return trial.command or shlex.join(["python", "-m", "runner", *trial.overrides])
