"""The task function: validate the config, set up the run folder, fit, and record the result.

`train(cfg)` returns the objective's value, which is what Hydra's sweepers optimise.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from runner import CONF_DIR
from runner import config as config_checks
from runner.callbacks import ResultRecord, build_callbacks, worst_value
from runner.errors import RunnerError, TrialFailed
from runner.results import (CHECKPOINT_DIR, FAIL_FAST_MARKER, FINAL_STATUSES, LAST_CHECKPOINT, read_result,
                            write_text_atomic)

log = logging.getLogger(__name__)

# what a fresh start moves aside (never deletes) when trainer.resume=never
RUN_ARTIFACTS = ("result.json", "metrics.csv", "checkpoints", "tensorboard", "scalars.csv", "pruning.jsonl",
                 "pbt_policy.jsonl", ".hydra")


@dataclass
class RunContext:
    """Where a run writes and whether it is one trial of a sweep."""

    run_dir: Path
    sweep_dir: Path | None = None  # set when the run is a trial of a multirun
    overrides: list[str] = field(default_factory=list)
    # the folder the run was started from, and the command that runs it again from there, alone
    started_in: Path | None = None
    command: str | None = None

    @property
    def trial(self) -> str | None:
        return self.run_dir.name if self.sweep_dir is not None else None

    @property
    def fail_fast_marker(self) -> Path | None:
        return self.sweep_dir / FAIL_FAST_MARKER if self.sweep_dir is not None else None

    def mark_failed(self, error: BaseException) -> None:
        """With fail_fast, tell the sweep's later trials not to start: the first failure writes the marker."""
        marker = self.fail_fast_marker
        if marker is None:
            return
        try:
            fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return  # an earlier failure is the one that counts
        with os.fdopen(fd, "w") as f:
            f.write(f"{self.trial}: {error}\n")

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
            started_in=Path(hydra.runtime.cwd),
            command=rerun_command(hydra),
        )


def rerun_command(hydra: DictConfig) -> str:
    """`python -m runner` with the config folder flags the run was started with (--config-path,
    --config-name, --config-dir) and its overrides, and the PYTHONPATH that found the user's code."""
    args = [sys.executable, "-m", "runner"]
    for source in hydra.runtime.config_sources:
        if source.provider == "main" and Path(source.path) != CONF_DIR:
            args += ["--config-path", source.path]
        elif source.provider == "command-line" and source.schema == "file":
            args += ["--config-dir", source.path]
    if hydra.job.config_name != "config":
        args += ["--config-name", hydra.job.config_name]
    pythonpath = os.environ.get("PYTHONPATH")
    return (f"PYTHONPATH={shlex.quote(pythonpath)} " if pythonpath else "") + shlex.join([*args, *hydra.overrides.task])


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

    # a resume changes nothing on disk until it has succeeded (runner.resume checks it first); a
    # fresh run is recorded from its start, so that a failure to build it is recorded too
    resuming = trainer.resume == "auto" and (run_dir / CHECKPOINT_DIR / LAST_CHECKPOINT).exists()
    record = ResultRecord(cfg, context)
    if not resuming:
        save_run_config(cfg, run_dir)
        record.write()
    try:
        _stop_if_sweep_failed(context, cfg)
        value = _fit(cfg, trainer, context, record, resuming)
    except Exception as error:
        # the whole traceback goes to runner.log (the console shows the message alone)
        log.error("%s failed: %s", f"trial {context.trial}" if context.trial else "the run", error, exc_info=error)
        if record.written:
            record.failed(error)
        if context.sweep_dir is None or cfg.fail_fast:
            context.mark_failed(error)
            if isinstance(error, RunnerError):
                raise
            raise TrialFailed(f"{type(error).__name__}: {error} (the traceback is in {run_dir / 'runner.log'})") from error
        return worst_value(cfg.objective.goal)
    return value


def save_run_config(cfg: DictConfig, run_dir: Path) -> None:
    """The run's config, and under Hydra its own config and the overrides, into run_dir/.hydra/.

    Hydra would write them before the task starts (hydra.output_subdir is null in conf/hydra): the
    runner writes them once a run starts, or once a resume has passed its checks, so that a refused
    resume leaves the folder as it was.
    """
    from hydra.core.hydra_config import HydraConfig

    folder = run_dir / ".hydra"
    write_text_atomic(folder / "config.yaml", OmegaConf.to_yaml(cfg))
    if HydraConfig.initialized():
        hydra = HydraConfig.instance().cfg
        write_text_atomic(folder / "hydra.yaml", OmegaConf.to_yaml(hydra))
        write_text_atomic(folder / "overrides.yaml", OmegaConf.to_yaml(hydra.hydra.overrides.task))


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
    return worst_value(goal) if value is None else float(value)


def _move_aside(run_dir: Path) -> None:
    present = [run_dir / name for name in RUN_ARTIFACTS if (run_dir / name).exists()]
    if not present:
        return
    archive = run_dir / "archive" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f")
    archive.mkdir(parents=True)
    for path in present:
        shutil.move(str(path), archive / path.name)
    log.info("trainer.resume=never: moved the earlier results to %s", archive)


def _fit(cfg: DictConfig, trainer, context: RunContext, record: ResultRecord, resuming: bool) -> float:
    # torch and everything built on it load only now: config errors above stay instant
    from hydra.utils import instantiate

    from runner import checkpoint, pbt
    from runner.fit import Fit
    from runner.resume import check_resume

    last = context.run_dir / CHECKPOINT_DIR / LAST_CHECKPOINT
    saved = None
    composed = cfg
    population = pbt.build(cfg, context)
    if resuming:
        saved = checkpoint.load(last)
        if population is not None:
            # a PBT trial resumes with the hyperparameters it had reached (its effective config)
            cfg = population.resumed_config(cfg, saved["config"])
            trainer = config_checks.typed_trainer(cfg)
        check_resume(saved["config"], cfg, last, saved["progress"]["epoch"])
    pruner = None
    if context.sweep_dir is not None and cfg.pruner:
        pruner = instantiate(cfg.pruner, sweep_dir=context.sweep_dir, trial=context.trial,
                             metric=cfg.objective.metric, goal=cfg.objective.goal)
    callbacks = build_callbacks(cfg, trainer, record, pruner, in_sweep=context.sweep_dir is not None, pbt=population)
    fit = Fit(cfg, trainer, context.run_dir, callbacks, git_commit=record.result["git_commit"])
    if saved is not None:
        fit.resume_from(saved, last)
        save_run_config(composed, context.run_dir)
    outcome = fit.run()
    log.info("%s: %s=%s (best, epoch %s)%s", outcome.status, outcome.objective.metric, outcome.objective.value,
             outcome.objective.epoch, f"; {outcome.reason}" if outcome.reason else "")
    return _returned_value(record.result, cfg.objective.goal)
