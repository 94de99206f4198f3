"""The callback that retrains one run on the schedule a PBT trial's weights went through
(conf/pbt/replay.yaml): the lineage's start values from the first epoch, and each exploit's new
values after its epoch. The run's config must be the population's the schedule was trained in."""

from __future__ import annotations

import logging
from typing import Any

from omegaconf import DictConfig

from runner.errors import ConfigError
from runner.run.callbacks import Callback
from runner.sweep.pbt.live_values import apply_values, check_live_keys, current_values, resumed_config, values_text
from runner.sweep.pbt.policy import policy_path, read_policy
from runner.sweep.pbt.records import population_config

log = logging.getLogger(__name__)


class Replay(Callback):
    """Train one run on the schedule a PBT trial's weights went through (conf/pbt/replay.yaml):
    the lineage's start values from the first epoch, and each exploit's new values after its epoch."""

    needs_sweep = False

    def __init__(self, *, cfg: DictConfig, policy: str | None) -> None:
        if not policy:
            raise ConfigError("pbt=replay needs pbt.policy=<a PBT trial's folder or its pbt_policy.jsonl>")
        self.path = policy_path(policy)
        entries = read_policy(self.path)
        start = entries[0]
        self.keys = list(start["mutations"])
        differences = _config_differences(start["config"], population_config(cfg, self.keys))
        if differences:
            lines = "\n".join(f"  - {key}: {_shown(old)} in the schedule, {_shown(new)} now"
                              for key, old, new in differences)
            raise ConfigError(
                f"pbt.policy={self.path}: the run's config differs from the one the schedule was trained with "
                f"(apart from {', '.join(self.keys)}, which the schedule sets):\n{lines}\n"
                f"Replay with the sweep's settings: the command the sweep report prints after 'Replay:'.")
        self.start = start["values"]
        self.changes = {entry["epoch"]: entry for entry in entries[1:]}
        self.values: dict[str, Any] = dict(self.start)

    def resumed_config(self, cfg: DictConfig, saved_yaml: str) -> DictConfig:
        return resumed_config(cfg, saved_yaml, self.keys)

    def on_fit_start(self, fit):
        check_live_keys(fit, self.keys)
        if fit.progress.epoch == 0:
            apply_values(fit, self.start, current_values(fit.cfg, self.keys))
            log.info("PBT replay of %s: starting with %s", self.path, values_text(self.start))
        self.values = current_values(fit.cfg, self.keys)

    def on_epoch_end(self, fit, metrics):
        entry = self.changes.get(fit.progress.epoch)
        if entry is None or fit.stop is not None:
            return None
        apply_values(fit, entry["new"], self.values)
        self.values = dict(entry["new"])
        log.info("PBT replay, epoch %d (exploit of %s from %s): now %s", entry["epoch"], entry["trial"],
                 entry["donor"], values_text(self.values))
        return None


def _config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    missing = object()
    return [(key, saved.get(key, missing), current.get(key, missing)) for key in sorted(saved.keys() | current.keys())
            if saved.get(key, missing) != current.get(key, missing)]


def _shown(value: Any) -> str:
    return repr(value) if isinstance(value, (str, int, float, bool, type(None), list, dict)) else "(absent)"
