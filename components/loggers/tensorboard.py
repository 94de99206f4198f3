"""TensorBoard: event files in the run folder, with the run's HParams row in its own event file."""

from __future__ import annotations

from pathlib import Path

from components.loggers.base import Logger
from components.loggers.image_grid import image_grid


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
        self.writer.add_figure(tag, image_grid(images, captions), step)

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
