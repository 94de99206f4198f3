"""The first trial's config, checked in the sweep's own process before any trial runs, as the trial would
check it: a mistake there (a bad objective, a constraint that does not parse) would fail every trial alike."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf, open_dict

from runner.config.checks import validate
from runner.config.problems import bullets
from runner.errors import ConfigError


def check_first_trial(cfg: DictConfig) -> None:
    """The first trial's config, checked as the trial would check it (runner.config.checks.validate) and
    its objectives and constraints against the metrics it records, before any trial runs: a mistake
    there would fail every trial of the sweep alike. Raises one ConfigError listing every problem."""
    # imported here: `python -m runner --help` and `--cfg job` load this module, and must not load torch
    from runner.run.build import declared_objective_problems

    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    with open_dict(cfg):
        cfg.pop("hydra", None)
    validate(cfg)
    if problems := declared_objective_problems(cfg):
        raise ConfigError(bullets(problems))
