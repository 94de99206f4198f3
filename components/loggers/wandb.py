"""Weights & Biases: a run per run in the run folder, offline by default, in a group per sweep."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

from components.loggers.base import Logger, TrackerError, store_errors
from components.loggers.records import read_record, write_record

WANDB_RUN_FILE = "wandb_run.json"
WANDB_MODES = ("offline", "online", "disabled")


class WandbLogger(Logger):
    """A W&B run in run_dir/wandb/, offline by default: nothing leaves the machine until `wandb sync`.

    Logged as the W&B tutorial logs them: every scalar at the runner's step, the flattened config
    (the keys of TensorBoard's HParams), prediction images with their captions, weight and gradient
    histograms, figures; `summary` holds the best of every metric (best/<metric>, best/epoch) and
    the runner's status and reason. A trial of a sweep is in the group named after the sweep folder;
    a run is named after its folder; a resumed run continues the same W&B run id.
    """

    def __init__(self, run_dir: str | Path, project: str = "runner", entity: str | None = None,
                 mode: str = "offline", job_type: str = "train", start_step: int = 0,
                 sweep_dir: str | Path | None = None, hparams: dict[str, Any] | None = None):
        if mode not in WANDB_MODES:
            raise ValueError(f"logger.wandb.mode={mode!r} is not a W&B mode; use one of {', '.join(WANDB_MODES)}")
        self.wandb = _import_wandb()
        self.run_dir = Path(run_dir)
        record = read_record(self.run_dir / WANDB_RUN_FILE)
        run_id = record["id"] if start_step > 0 and record is not None else uuid.uuid4().hex[:16]
        with store_errors(f"W&B ({mode}) in {self.run_dir / 'wandb'}",
                           "set logger.wandb.mode (or WANDB_MODE) to offline, or leave the logger out with ~logger.wandb"):
            self.run = _start_wandb(self.wandb, mode, project=project, entity=entity, id=run_id,
                                    name=self.run_dir.name, group=Path(sweep_dir).name if sweep_dir else None,
                                    job_type=job_type, dir=str(self.run_dir))
            self.run.config.update(hparams or {}, allow_val_change=True)
        write_record(self.run_dir / WANDB_RUN_FILE, {"id": run_id, "project": project, "entity": entity, "mode": mode})
        self.exit_code = 0
        self.ended = False

    def _log(self, data: dict[str, Any], step: int) -> None:
        if self.ended:  # interrupted, and training went on
            self.run.summary.update({"status": "running", "reason": ""})
            self.ended = False
        self.run.log(data, step=step)

    def log_metrics(self, metrics, step):
        self._log(dict(metrics), step)

    def log_images(self, tag, images, captions, step):
        import torch

        pixels = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        self._log({tag: [self.wandb.Image(image, caption=caption) for image, caption in zip(pixels, captions)]}, step)

    def log_figure(self, tag, figure, step):
        self._log({tag: self.wandb.Image(figure)}, step)

    def log_histograms(self, tensors, step):
        self._log({tag: self.wandb.Histogram(tensor.detach().float().cpu().numpy()) for tag, tensor in tensors.items()},
                  step)

    def log_summary(self, summary, step):
        self.run.summary.update(summary)

    def set_status(self, status, reason):
        if status == "interrupted":
            # if the process is killed now, W&B shows the run as preempted rather than crashed
            self.run.mark_preempting()
        self.run.summary.update({"status": status, "reason": reason or ""})
        self.exit_code = 0 if status in ("completed", "pruned") else 1
        self.ended = True

    def close(self):
        self.run.finish(exit_code=self.exit_code)

    @staticmethod
    def log_sweep(sweep_dir: str | Path, summary: dict[str, Any]) -> str:
        """A run of its own in the sweep's group (job type `sweep`), in SWEEP_DIR/wandb/: the sweep's
        definition as config, the ranked table as a W&B Table, report.png, and the best value, best
        trial and status counts in its summary. W&B's runs table sorted by best/<metric> gives the
        report's order."""
        wandb = _import_wandb()
        sweep_dir = Path(sweep_dir)
        trials = [record for trial in summary["trials"]
                  if (record := read_record(Path(trial["run_dir"]) / WANDB_RUN_FILE)) is not None]
        if not trials:
            raise RuntimeError(f"no trial of {sweep_dir} logged to W&B (no trial folder holds {WANDB_RUN_FILE}); "
                               f"run the sweep with the wandb logger, e.g. logger=[tensorboard,wandb]")
        settings = trials[0]
        record = read_record(sweep_dir / WANDB_RUN_FILE)
        run_id = record["id"] if record is not None else uuid.uuid4().hex[:16]
        with store_errors(f"W&B ({settings['mode']}) in {sweep_dir / 'wandb'}", "check that the sweep folder "
                           "can be written, or set WANDB_MODE=offline"):
            run = _start_wandb(wandb, settings["mode"], project=settings["project"], entity=settings["entity"],
                               id=run_id, name=summary["name"], group=summary["name"], job_type="sweep",
                               dir=str(sweep_dir))
            run.config.update(summary["params"], allow_val_change=True)
            data = {"ranking": wandb.Table(columns=summary["table"]["columns"], data=summary["table"]["rows"])}
            data.update({Path(path).stem: wandb.Image(path) for path in summary["files"] if path.endswith(".png")})
            run.log(data)
            best = summary["best"]
            run.summary.update({f"trials/{status}": count for status, count in summary["counts"].items()})
            if best is not None:
                run.summary.update({f"best/{summary['metric']}": best["value"], "best/epoch": best["epoch"],
                                    "best_trial": best["name"]})
            run.finish()
        write_record(sweep_dir / WANDB_RUN_FILE, {**settings, "id": run_id})
        return f"W&B run {run_id} ({settings['mode']}) in {sweep_dir / 'wandb'}"


def _import_wandb():
    # runs go unattended: no banner, and no crash reports sent to W&B's servers
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("WANDB_ERROR_REPORTING", "false")
    import wandb

    return wandb


def _start_wandb(wandb, mode: str, **init):
    """wandb.init that never prompts: online mode without a login is an error, not a question."""
    if mode == "online" and not wandb.login(prompt=False):
        raise TrackerError("W&B online mode needs a login and none is set up: run `wandb login` once or set "
                           "WANDB_API_KEY; or log offline (logger.wandb.mode=offline) and `wandb sync` later")
    settings = wandb.Settings(mode=mode, silent=True, console="off")
    # create_new: each logger holds its own run and never touches the global wandb.run of another
    return wandb.init(**init, resume="allow", reinit="create_new", settings=settings)
