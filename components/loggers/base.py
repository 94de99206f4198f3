"""What every logger is: the calls the runner makes (a logger implements those it can use), and what
several loggers share: keeping only the steps not logged yet, and one clear error for a tracker's store."""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


class Logger:
    """The calls the runner makes; each does nothing until a logger implements it."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...

    def log_hparams(self, hparams: dict[str, object], metrics: dict[str, float]) -> None: ...

    def log_images(self, tag: str, images: torch.Tensor, captions: list[str], step: int) -> None:
        """A grid of images in [0, 1], [N, C, H, W], with a caption each."""

    def log_figure(self, tag: str, figure, step: int) -> None:
        """A matplotlib figure."""

    def log_histograms(self, tensors: dict[str, torch.Tensor], step: int) -> None: ...

    def log_text(self, tag: str, text: str) -> None: ...

    def log_summary(self, summary: dict[str, float], step: int) -> None: ...

    def set_status(self, status: str, reason: str | None) -> None: ...

    def close(self) -> None: ...


class FreshSteps:
    """Keeps from a logging call the values a logger has not logged yet: each tag only at a step after
    the last one it was logged at.

    The runner logs `lr` with the step scalars and with the epoch's, at one step when an epoch ends
    on a logging step; and everything up to `start_step` was logged by an earlier attempt.
    """

    def __init__(self, start_step: int):
        self.start_step = start_step
        self.last: dict[str, int] = {}

    def __call__(self, metrics: dict[str, float], step: int) -> dict[str, float]:
        fresh = {tag: value for tag, value in metrics.items() if step > self.last.get(tag, self.start_step)}
        self.last.update(dict.fromkeys(fresh, step))
        return fresh


class TrackerError(RuntimeError):
    """A tracker's store cannot be used; the message names it, says why and what to do."""


@contextmanager
def store_errors(store: str, ways_out: str):
    """Turns any failure of a tracker's store into one message: which store, why, and the ways out."""
    try:
        yield
    except TrackerError:
        raise
    except Exception as error:
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise TrackerError(f"cannot use {store}: {first_line}; {ways_out}") from error
