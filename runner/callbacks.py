"""Hydra callbacks: what happens around a sweep, outside its trials.

Registered in conf/hydra/default.yaml under `hydra.callbacks`, so every multirun ends with its report.
"""

from __future__ import annotations

import logging

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from runner.report import format_table, report

log = logging.getLogger(__name__)


class SweepReport(Callback):
    """When a multirun ends, write the sweep report into its sweep folder and log the ranked table."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        # the sweep folder's `${now:...}` resolves from the cache it was created with: the same folder
        sweep = report(config.hydra.sweep.dir)
        log.info("Sweep report written to %s\n%s", sweep.path, format_table(sweep))
