"""The task function: validate the config, set up the run folder, fit, and record the result.

`train(cfg)` returns the objective's value, which is what Hydra's sweepers optimise.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shlex
import shutil
import sys
from dataclasses import field
from datetime import datetime
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from runner.paths import CONF_DIR
from runner import config as config_checks
from runner.run.callbacks import ResultRecord, build_callbacks, rank_callbacks
from runner.run.distributed import Ranks
from runner.run.interrupt import RunInterrupted
from runner.run.objective import worst_value
from runner.config.resume import check_read_back
from runner.errors import ConfigError, RunnerError, TrialFailed
from runner.logs import FILE_ONLY
from runner.files import write_text_atomic
from runner.results import (CHECKPOINT_DIR, FAIL_FAST_MARKER, FINAL_STATUSES, LAST_CHECKPOINT, RESULT_FILE, now,
                            read_result, write_json_atomic)

log = logging.getLogger(__name__)

# what a fresh start moves aside (never deletes) when trainer.resume=never
RUN_ARTIFACTS = ("result.json", "metrics.csv", "checkpoints", "tensorboard", "scalars.csv", "pruning.jsonl",
                 "pbt_policy.jsonl", ".hydra", "mlflow_run.json", "wandb_run.json", "wandb")


@dataclasses.dataclass
class RunContext:
    """Where a run writes and whether it is one trial of a sweep."""

    run_dir: Path
    sweep_dir: Path | None = None  # set when the run is a trial of a multirun
    overrides: list[str] = field(default_factory=list)
    # the folder the run was started from, and the command that runs it again from there, alone
    started_in: Path | None = None
    command: str | None = None
    # Hydra's own config of the job (YAML), written into .hydra/hydra.yaml when the run starts
    hydra_config: str | None = None

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
            hydra_config=OmegaConf.to_yaml(HydraConfig.instance().cfg),
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
    goal, so the sweep goes on; with `fail_fast=true` it raises and the sweep stops. With
    trainer.strategy=ddp the run trains on several ranks (runner.run.distributed): this process starts
    them, or is one of them as a task of a SLURM job.
    """
    context = context or RunContext.from_hydra()
    config_checks.validate(cfg)
    trainer = config_checks.typed_trainer(cfg)
    previous = read_result(context.run_dir)
    if trainer.resume == "auto" and _is_finished(previous, trainer.max_epochs):
        check_read_back(context.run_dir, previous["status"], cfg)
        log.info("%s already %s: reading its result back (trainer.resume=never starts over)",
                 context.run_dir, previous["status"])
        return _returned_value(previous, cfg.objective.goal)
    from runner.run import distributed

    if trainer.strategy != "ddp":
        if distributed.slurm_tasks() > 1:
            raise ConfigError(f"this SLURM job step has {distributed.slurm_tasks()} tasks but trainer.strategy="
                              f"{trainer.strategy}: every task would train the same run; use trainer.strategy=ddp "
                              f"(one rank per task) or a launcher with one task per trial")
        return train_rank(cfg, context, Ranks())

    if distributed.slurm_tasks() > 1:
        ranks = distributed.from_slurm(trainer)
    elif trainer.num_nodes > 1:
        raise ConfigError(f"trainer.num_nodes={trainer.num_nodes} needs a launcher that starts every rank on every "
                          f"node, one task each (hydra/launcher=slurm_ddp hydra.launcher.nodes={trainer.num_nodes}); "
                          f"this process is one task on one machine: use trainer.num_nodes=1 and trainer.devices "
                          f"for the processes of this machine")
    elif distributed.world_size(trainer) > 1:
        return _train_on_spawned_ranks(cfg, context, trainer, distributed.world_size(trainer))
    else:
        ranks = distributed.join(trainer, 0, 1, 0, 1, "127.0.0.1", distributed.free_port())
    finished = False
    try:
        value = train_rank(cfg, context, ranks)
        finished = True
        return value
    except RunInterrupted:
        # this task's checkpoint is written and SLURM requeues the job: what the run has is its value
        finished = True
        return _returned_value(read_result(context.run_dir) or {}, cfg.objective.goal)
    finally:
        ranks.close(finished)


def train_rank(cfg: DictConfig, context: RunContext, ranks: Ranks) -> float:
    """The run as one rank sees it; rank 0 (the only one of a single-process run) owns the run folder."""
    trainer = config_checks.typed_trainer(cfg)
    run_dir = context.run_dir
    if trainer.resume == "never" and ranks.is_main:
        _move_aside(run_dir)
    ranks.barrier()  # the others start once the earlier results are out of the way

    # a resume changes nothing on disk until it has succeeded (runner.config.resume checks it first); a
    # fresh run is recorded from its start, so that a failure to build it is recorded too
    resuming = trainer.resume == "auto" and (run_dir / CHECKPOINT_DIR / LAST_CHECKPOINT).exists()
    record = ResultRecord(cfg, context) if ranks.is_main else None
    if record is not None and not resuming:
        save_run_config(cfg, context)
        record.write()
    try:
        _stop_if_sweep_failed(context, cfg)
        value = _fit(cfg, trainer, context, record, resuming, ranks)
    except Exception as raised:
        error = ranks.explain(raised)  # a collective that timed out: where each rank was
        raising = context.sweep_dir is None or cfg.fail_fast
        # the whole traceback goes to runner.log; the console shows the message, once: Hydra prints
        # what a single run raises
        log.error("%s failed: %s", f"trial {context.trial}" if context.trial else "the run", error, exc_info=error,
                  extra=FILE_ONLY if context.sweep_dir is None else None)
        if record is not None and record.written:
            record.failed(error)
        if raising:
            if ranks.is_main:
                context.mark_failed(error)
            if error is not raised:
                raise error from raised
            if isinstance(error, RunnerError):
                raise
            log_file = run_dir / ("runner.log" if ranks.is_main else f"runner.rank{ranks.rank}.log")
            raise TrialFailed(f"{type(error).__name__}: {error} (the traceback is in {log_file})") from error
        return worst_value(cfg.objective.goal)
    return value


def _train_on_spawned_ranks(cfg: DictConfig, context: RunContext, trainer, world: int) -> float:
    """Start the run's ranks on this machine, wait for them; a rank's failure is the run's."""
    from runner.run import distributed
    from runner.logs import error_with_traceback

    started = now()
    try:
        distributed.spawn(_spawned_rank, OmegaConf.to_yaml(cfg), dataclasses.asdict(context), trainer, world)
    except distributed.RankFailed as error:
        error_with_traceback(log, str(error), error.traceback_text, console=context.sweep_dir is not None)
        result = read_result(context.run_dir)
        if result is not None and result.get("started_at", "") >= started:  # this attempt's record
            result.update(status="failed", reason=str(error), traceback=error.traceback_text, finished_at=now())
            write_json_atomic(context.run_dir / RESULT_FILE, result)
        if context.sweep_dir is None or cfg.fail_fast:
            context.mark_failed(error)
            raise TrialFailed(str(error)) from None
        return worst_value(cfg.objective.goal)
    return _returned_value(read_result(context.run_dir) or {}, cfg.objective.goal)


def _spawned_rank(cfg: DictConfig, context: dict, ranks: Ranks) -> None:
    """What a rank that `distributed.spawn` started runs: the run as that rank sees it."""
    train_rank(cfg, RunContext(**context), ranks)


def save_run_config(cfg: DictConfig, context: RunContext) -> None:
    """The run's config, and under Hydra its own config and the overrides, into run_dir/.hydra/.

    Hydra would write them before the task starts (hydra.output_subdir is null in conf/hydra): the
    runner writes them once a run starts, or once a resume has passed its checks, so that a refused
    resume leaves the folder as it was.
    """
    folder = context.run_dir / ".hydra"
    write_text_atomic(folder / "config.yaml", OmegaConf.to_yaml(cfg))
    if context.hydra_config is not None:
        write_text_atomic(folder / "hydra.yaml", context.hydra_config)
        write_text_atomic(folder / "overrides.yaml", OmegaConf.to_yaml(OmegaConf.create(context.overrides)))


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


def _population(cfg: DictConfig, context: RunContext):
    """The callback `cfg.pbt` names (PBT across a sweep's trials, or a replay of one trial's schedule),
    or None: no `pbt`, or one that acts across a sweep (`needs_sweep`) in a single run, which has no
    population (the pruner acts in a multirun only, likewise)."""
    from hydra.utils import get_class

    node = cfg.get("pbt")
    if not node or "_target_" not in node:
        return None
    kind = get_class(node._target_)
    settings = {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if k != "_target_"}
    if not getattr(kind, "needs_sweep", False):
        return kind(cfg=cfg, **settings)
    if context.sweep_dir is None:
        log.warning("%s acts across a sweep's trials (--multirun); this single run trains without it", kind.__name__)
        return None
    return kind(cfg=cfg, sweep_dir=context.sweep_dir, trial=context.trial, **settings)


def _move_aside(run_dir: Path) -> None:
    present = [run_dir / name for name in RUN_ARTIFACTS if (run_dir / name).exists()]
    if not present:
        return
    archive = run_dir / "archive" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f")
    archive.mkdir(parents=True)
    for path in present:
        shutil.move(str(path), archive / path.name)
    log.info("trainer.resume=never: moved the earlier results to %s", archive)


def _fit(cfg: DictConfig, trainer, context: RunContext, record: ResultRecord | None, resuming: bool,
         ranks: Ranks) -> float:
    # torch and everything built on it load only now: config errors above stay instant
    from hydra.utils import instantiate

    from runner.config.resume import check_resume
    from runner.run import checkpoint
    from runner.run.fit import Fit

    last = context.run_dir / CHECKPOINT_DIR / LAST_CHECKPOINT
    saved = None
    composed = cfg
    population = _population(cfg, context)
    if resuming:
        saved = checkpoint.load(last)
        if population is not None:
            # a PBT trial resumes with the hyperparameters it had reached (its effective config)
            cfg = population.resumed_config(cfg, saved["config"])
            trainer = config_checks.typed_trainer(cfg)
        check_resume(saved["config"], cfg, last, saved["progress"]["epoch"])
    if ranks.is_main:
        pruner = None
        if context.sweep_dir is not None and cfg.pruner:
            # trials that set their seed (a repeated sweep) are compared with trials of the same seed only
            seeded = any(o.partition("=")[0].lstrip("+~") == "trainer.seed" for o in context.overrides)
            pruner = instantiate(cfg.pruner, sweep_dir=context.sweep_dir, trial=context.trial,
                                 metric=cfg.objective.metric, goal=cfg.objective.goal,
                                 **({"cohort": cfg.trainer.seed} if seeded else {}))
        callbacks = build_callbacks(cfg, trainer, record, pruner, context.sweep_dir, pbt=population)
    else:
        callbacks = rank_callbacks()
    fit = Fit(cfg, trainer, context.run_dir, callbacks, ranks=ranks,
              git_commit=record.result["git_commit"] if record is not None else None)
    if saved is not None:
        fit.resume_from(saved, last)
        if ranks.is_main:
            save_run_config(composed, context)
    outcome = fit.run()
    if not ranks.is_main:
        return worst_value(cfg.objective.goal)  # what the run returns is rank 0's
    log.info("%s: %s=%s (best, epoch %s)%s", outcome.status, outcome.objective.metric, outcome.objective.value,
             outcome.objective.epoch, f"; {outcome.reason}" if outcome.reason else "")
    return _returned_value(record.result, cfg.objective.goal)
