"""The test stage: when the run ends, its best checkpoint is evaluated on the dataset's test split."""

from __future__ import annotations

import logging

from runner.results import BEST_CHECKPOINT
from runner.run.callbacks.base import Callback

log = logging.getLogger(__name__)


class TestStage(Callback):
    """When the run ends (completed, stopped early or pruned), the best checkpoint (by the objective) is
    evaluated on the dataset's test split: `test/<metric>` for every metric, with the checkpoint's epoch.
    The test data never steers anything: no stopping rule, pruner or checkpoint sees it."""

    def on_fit_end(self, fit, outcome):
        from runner.run import checkpoint

        path = fit.checkpoints / BEST_CHECKPOINT
        # every rank takes part in the evaluation: they go by what rank 0, which wrote best.pt, sees
        if fit.test_data is None or not fit.ranks.broadcast(path.exists()):
            return
        state = checkpoint.load(path)
        fit.model.load_state_dict(state["model"])
        outcome.test_metrics = fit.evaluate(fit.test_data, "test")
        outcome.test_epoch = state["epoch"]
        log.info("test (best checkpoint, epoch %d): %s", outcome.test_epoch,
                 "  ".join(f"{k}={v:.4g}" for k, v in outcome.test_metrics.items()))
