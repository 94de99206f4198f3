"""The Hydra callback that checks every run and sweep before its first job (registered in
conf/hydra/default.yaml): the output folder can be written, fail_fast, Nevergrad's and PBT's settings.

Hydra's callbacks run outside the jobs; a problem stops the command with its message alone.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from runner.results import FAIL_FAST_MARKER
from runner.sweep.dry_run import is_dry_run

log = logging.getLogger(__name__)

RUNNER_SWEEPERS = "hydra_plugins.runner_plugins."


class Preflight(Callback):
    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        if is_dry_run(config):
            stop("--dry-run (hydra.sweeper.dry_run=true) previews a sweep's trials: add --multirun")
        require_writable(Path(config.hydra.run.dir), "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        dry_run = is_dry_run(config)  # writes nothing, not even the sweep folder
        if not dry_run:
            require_writable(sweep_dir, "hydra.sweep.dir")
        from runner.config.checks import fail_fast_problem

        if problem := fail_fast_problem(config):
            stop(problem)
        # a rerun of a sweep that stopped on fail_fast starts afresh
        if not dry_run:
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
    from runner.sweep.search import check_optim

    try:
        check_optim(optim)
    except ConfigError as error:
        stop(str(error))
    log.info("Nevergrad %s: %d trials, %d at a time, %s %s", optim.optimizer, optim.budget, optim.num_workers,
             "maximizing" if optim.maximize else "minimizing", objective.metric)


def check_pbt(config: DictConfig) -> None:
    """PBT's settings and mutations, once before any trial starts (each trial checks them again
    against its own config, where the keys must exist: its optimizer may be another)."""
    from runner.config.problems import bullets
    from runner.config.pbt import config_problems

    problems = config_problems(config, keys_exist=False)
    if problems:
        stop(bullets(problems))

