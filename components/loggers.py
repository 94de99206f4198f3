"""Experiment loggers: the runner hands each one scalars, hparams, images, figures, histograms and text.

A logger implements the calls it can use; the base class ignores the rest. Every logger is built
with `run_dir`, the run's folder, and `start_step`, the step a resumed run continues from.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import torch

log = logging.getLogger(__name__)


class Logger:
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...

    def log_hparams(self, hparams: dict[str, object], metrics: dict[str, float]) -> None: ...

    def log_images(self, tag: str, images: torch.Tensor, captions: list[str], step: int) -> None:
        """A grid of images in [0, 1], [N, C, H, W], with a caption each."""

    def log_figure(self, tag: str, figure, step: int) -> None:
        """A matplotlib figure."""

    def log_histograms(self, tensors: dict[str, torch.Tensor], step: int) -> None: ...

    def log_text(self, tag: str, text: str) -> None: ...

    def close(self) -> None: ...


class TensorBoardLogger(Logger):
    """TensorBoard events in `run_dir/subdir`."""

    def __init__(self, run_dir: str | Path, subdir: str = "tensorboard", start_step: int = 0):
        from torch.utils.tensorboard import SummaryWriter

        # a resumed run drops what an earlier attempt logged after its checkpoint's step
        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / subdir), purge_step=start_step or None)

    def log_metrics(self, metrics, step):
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, value, step)

    def log_hparams(self, hparams, metrics):
        # written into this run's own event file (SummaryWriter.add_hparams would open a new
        # sub-run), so `tensorboard --logdir SWEEP_DIR` shows one HParams row per trial
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        experiment, session_start, session_end = hparams_summary(hparams, metrics)
        file_writer = self.writer._get_file_writer()
        for summary in (experiment, session_start, session_end):
            file_writer.add_summary(summary)
        for tag, value in metrics.items():
            self.writer.add_scalar(f"hparams/{tag}", value, 0)

    def log_images(self, tag, images, captions, step):
        self.writer.add_figure(tag, _image_grid(images, captions), step)

    def log_figure(self, tag, figure, step):
        self.writer.add_figure(tag, figure, step, close=False)

    def log_histograms(self, tensors, step):
        for tag, tensor in tensors.items():
            self.writer.add_histogram(tag, tensor.detach().float().cpu(), step)

    def log_text(self, tag, text):
        # TensorBoard renders text as markdown: indent to keep YAML as a code block
        self.writer.add_text(tag, "    " + text.replace("\n", "\n    "), 0)

    def close(self):
        self.writer.close()


def _image_grid(images: torch.Tensor, captions: list[str]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n, channels, height, width = images.shape
    columns = min(8, n)
    rows = -(-n // columns)
    # every image on one white canvas, a caption band above each, drawn by one Axes: a tenth of
    # the time of one Axes per image with tight_layout (half a second per grid, paid by every trial)
    band, gap = height // 3, width // 8
    cell_height, cell_width = height + band, width + gap
    canvas = torch.ones(rows * cell_height, columns * cell_width, 3)
    pixels = images.detach().float().clamp(0, 1).cpu()
    pixels = pixels.expand(-1, 3, -1, -1) if channels == 1 else pixels
    for i in range(n):
        top, left = (i // columns) * cell_height + band, (i % columns) * cell_width + gap // 2
        canvas[top : top + height, left : left + width] = pixels[i].permute(1, 2, 0)
    figure, ax = plt.subplots(figsize=(1.6 * columns, 1.9 * rows))
    figure.subplots_adjust(0, 0, 1, 1)
    ax.axis("off")
    ax.imshow(canvas.numpy(), interpolation="nearest")
    for i, caption in enumerate(captions):
        ax.text((i % columns + 0.5) * cell_width, (i // columns) * cell_height + 0.8 * band, caption, ha="center",
                fontsize=8, color="green" if caption.endswith("✓") else "red")
    return figure


class CSVLogger(Logger):
    """Every scalar as a (step, tag, value) row of one long CSV file, flushed as it goes."""

    def __init__(self, run_dir: str | Path, filename: str = "scalars.csv", start_step: int = 0):
        path = Path(run_dir) / filename
        is_new = not path.exists()
        self.file = path.open("a", newline="", encoding="utf-8")
        self.writer = csv.writer(self.file)
        if is_new:
            self.writer.writerow(["step", "tag", "value"])

    def log_metrics(self, metrics, step):
        self.writer.writerows([step, tag, value] for tag, value in metrics.items())
        self.file.flush()

    def close(self):
        self.file.close()


class ConsoleLogger(Logger):
    """Scalars as plain log lines."""

    def __init__(self, run_dir: str | Path | None = None, start_step: int = 0):
        pass

    def log_metrics(self, metrics, step):
        log.info("step %d  %s", step, "  ".join(f"{tag}={value:.4g}" for tag, value in metrics.items()))
