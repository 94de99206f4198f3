"""Hydra callbacks: what happens around runs and sweeps, outside their jobs (training callbacks: runner.callbacks).

Registered in conf/hydra/default.yaml under `hydra.callbacks`: every run and sweep is checked
before its first job, and every multirun ends with its report, which is also sent to the trackers
among its loggers (the sweep's MLflow run, say, ends with the ranking).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from runner.report import SweepReportError, format_table, push_to_tracker, report, takes_sweeps
from runner.results import FAIL_FAST_MARKER

log = logging.getLogger(__name__)

RUNNER_SWEEPERS = "hydra_plugins.runner_plugins."


class SweepReport(Callback):
    """When a multirun ends, write the sweep report into its sweep folder, log the ranked table, and
    send the summary to each logger that takes one (its class has `log_sweep`)."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        # the sweep folder's `${now:...}` resolves from the cache it was created with: the same folder
        sweep = report(config.hydra.sweep.dir)
        log.info("Sweep report written to %s\n%s", sweep.path, format_table(sweep))
        for node in (config.get("logger") or {}).values():
            if node and takes_sweeps(node.get("_target_")):
                try:
                    log.info("Sweep summary sent to %s", push_to_tracker(sweep, node._target_))
                except SweepReportError as error:  # the report itself is written: the sweep succeeded
                    log.error("%s", error)


class Preflight(Callback):
    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        require_writable(Path(config.hydra.run.dir), "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        require_writable(sweep_dir, "hydra.sweep.dir")
        from runner.config import fail_fast_problem

        if problem := fail_fast_problem(config):
            stop(problem)
        # a rerun of a sweep that stopped on fail_fast starts afresh
        (sweep_dir / FAIL_FAST_MARKER).unlink(missing_ok=True)
        # the runner's own sweepers check their settings themselves, once their workers are starting
        optim = config.hydra.sweeper.get("optim")
        if optim is not None and not config.hydra.sweeper._target_.startswith(RUNNER_SWEEPERS):
            check_nevergrad(optim, config.objective)
        check_pbt(config)


def stop(message: str) -> None:
    # Hydra turns a callback's exceptions into warnings and carries on; only an exit stops it
    raise SystemExit(f"Error: {message}")


def require_writable(folder: Path, key: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        stop(f"cannot write the output folder {folder} ({error.strerror or error}); set {key}=... "
             f"or RUNNER_OUTPUT_DIR to a folder you can write")


def check_nevergrad(optim: DictConfig, objective: DictConfig) -> None:
    """Hydra's batch Nevergrad sweeper (hydra/sweeper=nevergrad): the checks the runner's sweepers make."""
    from runner.errors import ConfigError
    from runner.search import check_optim

    try:
        check_optim(optim)
    except ConfigError as error:
        stop(str(error))
    log.info("Nevergrad %s: %d trials, %d at a time, %s %s", optim.optimizer, optim.budget, optim.num_workers,
             "maximizing" if optim.maximize else "minimizing", objective.metric)


def check_pbt(config: DictConfig) -> None:
    """PBT's settings and mutations, once before any trial starts (each trial checks them again
    against its own config, where the keys must exist: its optimizer may be another)."""
    from runner.config import _bullets
    from runner.pbt import config_problems

    problems = config_problems(config, keys_exist=False)
    if problems:
        stop(_bullets(problems))
