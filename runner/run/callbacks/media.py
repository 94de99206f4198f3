"""The media: weight and gradient histograms, and what the task draws from the validation batches."""

from __future__ import annotations

import logging

from runner.run.callbacks.base import Callback
from runner.run.callbacks.loggers import Loggers

log = logging.getLogger(__name__)


class Media(Callback):
    """Weight and gradient histograms, and what the task draws from the validation batches (sample
    images, a confusion matrix, predicted against true), every so many epochs and at the last.

    Media never fail a run: a drawing that raises is logged as a warning, once per kind.
    """

    def __init__(self, loggers: Loggers, histograms_every_n_epochs: int, predictions_every_n_epochs: int,
                 num_samples: int):
        self.loggers = loggers
        self.histograms_every, self.predictions_every = histograms_every_n_epochs, predictions_every_n_epochs
        self.num_samples = num_samples
        self.collector = None
        self.collecting_epoch: int | None = None
        self.warned: set[str] = set()

    def _due(self, fit, epoch: int, every: int) -> bool:
        return bool(self.loggers.loggers) and (epoch % every == 0 or epoch == fit.trainer.max_epochs)

    def on_eval_batch(self, fit, split, inputs, output, target):
        epoch = fit.progress.epoch + 1  # the epoch being evaluated
        if split != "val" or not self._due(fit, epoch, self.predictions_every):
            return
        if self.collecting_epoch != epoch:
            self.collector = self._safely(fit, "media", lambda: fit.task.media(self.num_samples))
            self.collecting_epoch = epoch
        if self.collector is not None:
            self._safely(fit, "media", lambda: self.collector.add(inputs, output, target))

    def on_epoch_end(self, fit, metrics):
        epoch, step = fit.progress.epoch, fit.progress.step
        if self._due(fit, epoch, self.histograms_every):
            self._safely(fit, "histograms", lambda: self._log_histograms(fit))
        if self.collector is not None and self.collecting_epoch == epoch:
            items = self._safely(fit, "media", lambda: self.collector.render(getattr(fit.data, "class_names", None)))
            for item in items or []:
                for logger in self.loggers.loggers:
                    self._safely(fit, f"media {item.tag}", lambda: item.log_to(logger, step))
        self.collector = None
        return None

    def _log_histograms(self, fit) -> None:
        tensors = {}
        for name, parameter in fit.model.named_parameters():
            tensors[f"weights/{name}"] = parameter
            if parameter.grad is not None:
                tensors[f"gradients/{name}"] = parameter.grad
        for logger in self.loggers.loggers:
            logger.log_histograms(tensors, fit.progress.step)

    def _safely(self, fit, kind: str, draw):
        try:
            return draw()
        except Exception as error:  # media are a view on the run, never a reason to lose it
            if fit.ranks.collective_broke(error):
                raise  # ... but a failed collective has broken the ranks' connections: the run is lost
            if kind not in self.warned:
                self.warned.add(kind)
                log.warning("could not log %s (%s: %s); the run goes on without it", kind, type(error).__name__, error)
            return None
