"""Training callbacks that configs can add under `callbacks` (runner.run.callbacks documents the hooks).

They are plain classes: the runner calls the hooks a callback has, with the running fit.
"""

from __future__ import annotations


class EpochCheckpoints:
    """Keep a checkpoint of every `every_n_epochs`-th epoch, `checkpoints/epoch_<n>.pt`, besides last.pt
    and best.pt (which later epochs overwrite)."""

    def __init__(self, every_n_epochs: int = 5):
        if isinstance(every_n_epochs, bool) or not isinstance(every_n_epochs, int) or every_n_epochs < 1:
            raise ValueError(f"every_n_epochs={every_n_epochs!r} must be an int >= 1")
        self.every_n_epochs = every_n_epochs

    def on_epoch_end(self, fit, metrics):
        epoch = fit.progress.epoch
        if epoch % self.every_n_epochs == 0:
            fit.save(f"epoch_{epoch:04d}.pt")
        return None
