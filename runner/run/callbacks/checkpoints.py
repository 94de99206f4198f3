"""The run's own checkpoints: best.pt at the objective's best, last.pt to resume from."""

from __future__ import annotations

from runner.results import BEST_CHECKPOINT, LAST_CHECKPOINT
from runner.run.callbacks.base import Callback


class Checkpoint(Callback):
    """best.pt whenever the objective is at its best; last.pt every `every_n_epochs`, at the last epoch
    and when the run stops."""

    def __init__(self, every_n_epochs: int):
        self.every_n_epochs = every_n_epochs

    def on_epoch_end(self, fit, metrics):
        epoch = fit.progress.epoch
        if fit.is_best:
            fit.save(BEST_CHECKPOINT)
        if fit.stop is not None or epoch % self.every_n_epochs == 0 or epoch == fit.trainer.max_epochs:
            fit.save(LAST_CHECKPOINT)
        return None
