"""Experiment loggers: the runner hands each one scalars, hparams, images, figures, histograms and text.

A logger implements the calls it can use; the base class ignores the rest. Every logger is built
with `run_dir`, the run's folder, and `start_step`, the step a resumed run continues from: what an
earlier attempt logged up to that step is kept, what it logged after it (it died past its last
checkpoint) is dropped, as TensorBoard's `purge_step` does.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import tempfile
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


class TensorBoardLogger(Logger):
    """TensorBoard events in `run_dir/subdir`."""

    def __init__(self, run_dir: str | Path, subdir: str = "tensorboard", start_step: int = 0):
        from torch.utils.tensorboard import SummaryWriter

        # TensorBoard hides the events of an earlier attempt from purge_step on: keep those up to
        # start_step (a checkpoint is saved after its epoch's scalars are logged), drop the later ones
        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / subdir), purge_step=start_step + 1)

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
        self.fresh = FreshSteps(start_step)
        if path.exists():
            _keep_rows_up_to(path, start_step)
        is_new = not path.exists()
        self.file = path.open("a", newline="", encoding="utf-8")
        self.writer = csv.writer(self.file)
        if is_new:
            self.writer.writerow(["step", "tag", "value"])

    def log_metrics(self, metrics, step):
        self.writer.writerows([step, tag, value] for tag, value in self.fresh(metrics, step).items())
        self.file.flush()

    def close(self):
        self.file.close()


def _keep_rows_up_to(path: Path, step: int) -> None:
    """Drop the rows an earlier attempt wrote after `step`; the file is replaced whole, or left as it was."""
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    kept = rows[:1] + [row for row in rows[1:] if row and int(row[0]) <= step]
    if len(kept) < len(rows):
        buffer = io.StringIO()
        csv.writer(buffer).writerows(kept)
        _replace_file(path, buffer.getvalue())


def _replace_file(path: Path, text: str) -> None:
    """Write through a temporary file in the same folder, then rename: readers never see half a file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class ConsoleLogger(Logger):
    """Scalars as plain log lines."""

    def __init__(self, run_dir: str | Path | None = None, start_step: int = 0):
        pass

    def log_metrics(self, metrics, step):
        log.info("step %d  %s", step, "  ".join(f"{tag}={value:.4g}" for tag, value in metrics.items()))
