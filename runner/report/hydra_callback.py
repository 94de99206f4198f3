"""The Hydra callback that ends every multirun with its report (registered in conf/hydra/default.yaml),
also sent to the trackers among its loggers (the sweep's MLflow run, say, ends with the ranking)."""

from __future__ import annotations

import logging
import threading

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from runner.report.table import format_table
from runner.report.trackers import push_to_tracker, takes_sweeps
from runner.report.trials import SweepReportError
from runner.report.writing import prepare_report, report
from runner.sweep.dry_run import is_dry_run

log = logging.getLogger(__name__)


class SweepReport(Callback):
    """When a multirun ends, write the sweep report into its sweep folder, log the ranked table, and
    send the summary to each logger that takes one (its class has `log_sweep`)."""

    def on_last_trials(self, config: DictConfig, **kwargs) -> None:
        """The streaming sweeper has launched its last trials: load what the report draws with while
        they run (matplotlib, TensorBoard's writer: about a second), so that little is left after them."""
        self.preparing = threading.Thread(target=prepare_report, name="report-preparation", daemon=True)
        self.preparing.start()

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        if is_dry_run(config):
            return  # nothing ran: no report
        preparing = getattr(self, "preparing", None)
        if preparing is not None:
            preparing.join()
        # the sweep folder's `${now:...}` resolves from the cache it was created with: the same folder
        sweep = report(config.hydra.sweep.dir)
        log.info("Sweep report written to %s\n%s", sweep.path, format_table(sweep))
        for node in (config.get("logger") or {}).values():
            if node and takes_sweeps(node.get("_target_")):
                try:
                    log.info("Sweep summary sent to %s", push_to_tracker(sweep, node._target_))
                except SweepReportError as error:  # the report itself is written: the sweep succeeded
                    log.error("%s", error)
