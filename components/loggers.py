"""Experiment loggers: the runner hands each one scalars, hparams, images, histograms and text.

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

    def log_predictions(self, tag: str, images: torch.Tensor, captions: list[str], step: int) -> None: ...

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

    def log_predictions(self, tag, images, captions, step):
        self.writer.add_figure(tag, _prediction_grid(images, captions), step)

    def log_histograms(self, tensors, step):
        for tag, tensor in tensors.items():
            self.writer.add_histogram(tag, tensor.detach().float().cpu(), step)

    def log_text(self, tag, text):
        # TensorBoard renders text as markdown: indent to keep YAML as a code block
        self.writer.add_text(tag, "    " + text.replace("\n", "\n    "), 0)

    def close(self):
        self.writer.close()


def _prediction_grid(images: torch.Tensor, captions: list[str]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(8, len(images))
    rows = -(-len(images) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(1.6 * columns, 1.9 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, caption in zip(axes.flat, images, captions):
        pixels = image.permute(1, 2, 0).clamp(0, 1).cpu().numpy()
        ax.imshow(pixels.squeeze(-1) if pixels.shape[-1] == 1 else pixels, cmap="gray")
        ax.set_title(caption, fontsize=8, color="green" if caption.endswith("✓") else "red")
    figure.tight_layout()
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
