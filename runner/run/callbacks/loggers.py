"""The loggers: the run's config, scalars, hyperparameters and status handed to every `logger` entry."""

from __future__ import annotations

import logging
from typing import Any

from omegaconf import DictConfig, OmegaConf

from runner.run.callbacks.base import Callback
from runner.run.callbacks.record import INTERRUPTED_REASON, failure_reason

log = logging.getLogger(__name__)


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
