"""The task function: validate the config, set up the run folder, fit, and record the result.

`train(cfg)` returns the objective's value, which is what Hydra's sweepers optimise.
"""

from __future__ import annotations

import logging
import math
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from runner import config as config_checks
from runner.errors import RunnerError, TrialFailed
from runner.results import FAIL_FAST_MARKER, FINAL_STATUSES, read_result, write_json_atomic

log = logging.getLogger(__name__)

# what a fresh start moves aside (never deletes) when trainer.resume=never
RUN_ARTIFACTS = ("result.json", "metrics.csv", "checkpoints", "tensorboard", "scalars.csv", "pruning.jsonl")


@dataclass
class RunContext:
    """Where a run writes and whether it is one trial of a sweep."""

    run_dir: Path
    sweep_dir: Path | None = None  # set when the run is a trial of a multirun
    overrides: list[str] = field(default_factory=list)

    @property
    def trial(self) -> str | None:
        return self.run_dir.name if self.sweep_dir is not None else None

    @property
    def fail_fast_marker(self) -> Path | None:
        return self.sweep_dir / FAIL_FAST_MARKER if self.sweep_dir is not None else None

    @classmethod
    def from_hydra(cls) -> "RunContext":
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hydra = HydraConfig.get()
        multirun = hydra.mode == RunMode.MULTIRUN
        return cls(
            run_dir=Path(hydra.runtime.output_dir).resolve(),
            sweep_dir=Path(hydra.sweep.dir).resolve() if multirun else None,
            overrides=list(hydra.overrides.task),
        )


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--verify", "-q", "HEAD"], capture_output=True, text=True,
                             timeout=5, cwd=Path(__file__).parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def train(cfg: DictConfig, context: RunContext | None = None) -> float:
    """Train the experiment `cfg` describes; return its objective value.

    In a multirun a trial that fails is recorded as failed and returns the worst value for the
    goal, so the sweep goes on; with `fail_fast=true` it raises and the sweep stops.
    """
    context = context or RunContext.from_hydra()
    config_checks.validate(cfg)
    trainer = config_checks.typed_trainer(cfg)
    run_dir = context.run_dir
    previous = read_result(run_dir)
    if trainer.resume == "auto" and _is_finished(previous, trainer.max_epochs):
        log.info("%s already %s: reading its result back (trainer.resume=never starts over)",
                 run_dir, previous["status"])
        return _returned_value(previous, cfg.objective.goal)
    if trainer.resume == "never":
        _move_aside(run_dir)

    record = Record(cfg, context)
    try:
        _stop_if_sweep_failed(context, cfg)
        value = _fit(cfg, trainer, context, record)
    except Exception as error:
        record.failed(error)
        if context.sweep_dir is None or cfg.fail_fast:
            marker = context.fail_fast_marker
            if marker is not None and not marker.exists():
                marker.write_text(f"{context.trial}: {error}\n")
            raise
        log.error("trial %s failed: %s", context.trial, error)
        return -math.inf if cfg.objective.goal == "maximize" else math.inf
    return value


def _is_finished(result: dict | None, max_epochs: int) -> bool:
    """Final, unless it completed every epoch it had and now has more (then it trains on)."""
    if result is None or result.get("status") not in FINAL_STATUSES:
        return False
    ran_out_of_epochs = result["status"] == "completed" and result.get("reason") is None
    return not (ran_out_of_epochs and result.get("epochs", 0) < max_epochs)


def _stop_if_sweep_failed(context: RunContext, cfg: DictConfig) -> None:
    marker = context.fail_fast_marker
    if cfg.fail_fast and marker is not None and marker.exists():
        raise TrialFailed(f"not started: fail_fast is on and a trial failed ({marker.read_text().strip()})")


def _returned_value(result: dict, goal: str) -> float:
    """What the sweeper receives: the best value, or for a pruned trial its last one."""
    objective = result.get("objective") or {}
    value = objective.get("last") if result.get("status") == "pruned" else objective.get("value")
    if value is None:
        return -math.inf if goal == "maximize" else math.inf
    return float(value)


def _move_aside(run_dir: Path) -> None:
    present = [run_dir / name for name in RUN_ARTIFACTS if (run_dir / name).exists()]
    if not present:
        return
    archive = run_dir / "archive" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f")
    archive.mkdir(parents=True)
    for path in present:
        shutil.move(str(path), archive / path.name)
    log.info("trainer.resume=never: moved the earlier results to %s", archive)


class Record:
    """result.json for one run, rewritten atomically as the run goes."""

    def __init__(self, cfg: DictConfig, context: RunContext):
        self.cfg, self.context = cfg, context
        self.started = time.monotonic()
        self.result: dict[str, Any] = {
            "status": "running",
            "reason": None,
            "objective": {"metric": cfg.objective.metric, "goal": cfg.objective.goal,
                          "value": None, "epoch": None, "last": None},
            "final_metrics": {},
            "best_metrics": {},
            "epochs": 0,
            "max_epochs": cfg.trainer.max_epochs,
            "steps": 0,
            "duration_s": 0.0,
            "overrides": context.overrides,
            "run_dir": str(context.run_dir),
            "git_commit": git_commit(),
            "started_at": now(),
            "finished_at": None,
            "pruned_at_epoch": None,
        }
        self.write()

    def write(self) -> None:
        self.result["duration_s"] = round(time.monotonic() - self.started, 3)
        write_json_atomic(self.context.run_dir / "result.json", self.result)

    def progress(self, progress, objective) -> None:
        history = progress.history
        self.result.update(
            status="running",  # also after an interruption that the run was allowed to ride out
            epochs=progress.epoch,
            steps=progress.step,
            final_metrics=dict(history[-1]) if history else {},
            best_metrics=dict(objective.metrics),
        )
        self.result["objective"].update(value=objective.value, epoch=objective.epoch, last=objective.last)
        self.write()

    def finished(self, status: str, reason: str | None) -> None:
        self.result.update(status=status, reason=reason, finished_at=now())
        if status == "pruned":
            self.result["pruned_at_epoch"] = self.result["epochs"]
        self.write()

    def failed(self, error: BaseException) -> None:
        reason = str(error) if isinstance(error, RunnerError) else f"{type(error).__name__}: {error}"
        self.finished("failed", reason)

    def interrupted(self) -> None:
        self.result.update(status="interrupted", reason="stopped by a signal; run again to resume")
        self.write()


def _fit(cfg: DictConfig, trainer, context: RunContext, record: Record) -> float:
    # torch and everything built on it load only now: config errors above stay instant
    from hydra.utils import instantiate

    from runner.fit import Fit

    pruner = None
    if context.sweep_dir is not None and cfg.pruner:
        pruner = instantiate(cfg.pruner, sweep_dir=context.sweep_dir, trial=context.trial,
                             metric=cfg.objective.metric, goal=cfg.objective.goal)
    fit = Fit(cfg, trainer, context.run_dir, pruner=pruner, on_epoch_end=record.progress,
              on_interrupt=record.interrupted, git_commit=record.result["git_commit"])
    last = fit.checkpoints / "last.pt"
    if trainer.resume == "auto" and last.exists():
        fit.resume_from(last)
        record.progress(fit.progress, fit.objective)
    loggers = [
        instantiate(node, run_dir=context.run_dir, start_step=fit.progress.step)
        for node in (cfg.logger or {}).values()
        if node
    ]
    try:
        for logger in loggers:
            logger.log_text("config", OmegaConf.to_yaml(cfg))
        try:
            outcome = fit.run(loggers)
        except KeyboardInterrupt:  # a second Ctrl-C, which does not wait for a checkpoint
            record.interrupted()
            raise
        # a sweep's trials are compared in the report's one HParams table (runner.report), which
        # per-trial tables would duplicate under `tensorboard --logdir SWEEP_DIR`
        if context.sweep_dir is None and outcome.progress.history:
            final = {k: v for k, v in outcome.progress.history[-1].items() if "/" in k}
            for logger in loggers:
                logger.log_hparams(_hparams(cfg), final)
    finally:
        for logger in loggers:
            logger.close()
    record.progress(outcome.progress, outcome.objective)
    record.finished(outcome.status, outcome.reason)
    log.info("%s: %s=%s (best, epoch %s)%s", outcome.status, outcome.objective.metric, outcome.objective.value,
             outcome.objective.epoch, f"; {outcome.reason}" if outcome.reason else "")
    return _returned_value(record.result, cfg.objective.goal)


def _hparams(cfg: DictConfig) -> dict[str, Any]:
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
        if group not in ("paths", "logger"):
            walk(node, group)
    try:
        from hydra.core.hydra_config import HydraConfig

        choices = HydraConfig.get().runtime.choices
        flat.update({group: choice for group, choice in choices.items()
                     if not group.startswith("hydra") and choice is not None})
    except ValueError:
        pass  # composed without Hydra's app (tests): no group choices to add
    return flat
