"""The training loop: build what the config names, train and validate each epoch, checkpoint, stop."""

from __future__ import annotations

import ctypes
import logging
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from runner import checkpoint
from runner.build import build, build_loss, build_scheduler, check_targets, probe
from runner.config import TrainerConfig
from runner.data import batches_per_epoch, epoch_generator, make_source
from runner.errors import ConfigError, TrialFailed
from runner.interrupt import Interruption
from runner.objective import Objective
from runner.progress import EpochProgress
from runner.results import write_metrics

log = logging.getLogger(__name__)

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "16": torch.float16}


def metric_names(num_classes: int) -> list[str]:
    """Every metric a run records, in metrics.csv column order."""
    top5 = num_classes > 5
    names = ["epoch", "step", "time_s", "lr"]
    for split in ("train", "val"):
        names += [f"{split}/loss", f"{split}/acc"] + ([f"{split}/acc_top5"] if top5 else [])
        if split == "train":
            names.append("train/samples_per_s")
    return names


def resolve_device(requested: str) -> torch.device:
    if requested != "auto":
        device = torch.device(requested)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"trainer.device={requested} but no CUDA device is visible; use trainer.device=auto or cpu")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise ConfigError(f"trainer.device={requested} but MPS is not available; use trainer.device=auto or cpu")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int, deterministic: bool) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.deterministic = deterministic
    # cuDNN autotuning picks the fastest kernels, which need not be the same run to run
    torch.backends.cudnn.benchmark = not deterministic


def keep_cpu_buffers_mapped() -> None:
    """Let glibc reuse freed activation buffers instead of handing them back to the OS every step.

    glibc serves blocks over 128 KiB with a fresh mmap, and raises that limit only once such a
    block is freed; while it is low it also trims the heap at every free. A CPU training step
    allocates megabytes of activations and gradients, so until an evaluation's larger blocks raise
    the limit, the buffers of every step can page-fault anew: depending on the order of
    allocations, up to 450,000 faults in 500 MNIST steps here, which then took 70% longer. These
    are the values glibc itself ends up with.
    """
    if sys.platform != "linux":
        return
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # another C library
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # malloc.h
    mallopt(m_mmap_threshold, 32 << 20)
    mallopt(m_trim_threshold, 64 << 20)


@dataclass
class EpochTotals:
    """Running sums over an epoch's batches, kept on the device so steps need not synchronise."""

    loss: torch.Tensor
    correct: torch.Tensor
    correct_top5: torch.Tensor
    seen: int = 0
    seconds: float = 0.0

    @classmethod
    def zeros(cls, device: torch.device) -> "EpochTotals":
        z = lambda: torch.zeros((), dtype=torch.float64, device=device)  # noqa: E731
        return cls(z(), z(), z())

    def add(self, logits: torch.Tensor, labels: torch.Tensor, loss: torch.Tensor) -> None:
        n = len(labels)
        self.loss.add_(loss.detach(), alpha=n)  # one kernel; the same float64 sum as .double() * n
        self.correct += (logits.argmax(1) == labels).sum()
        if logits.shape[1] > 5:
            self.correct_top5 += (logits.topk(5, dim=1).indices == labels[:, None]).any(1).sum()
        self.seen += n

    def metrics(self, split: str, top5: bool) -> dict[str, float]:
        seen = max(self.seen, 1)
        out = {f"{split}/loss": self.loss.item() / seen, f"{split}/acc": self.correct.item() / seen}
        if top5:
            out[f"{split}/acc_top5"] = self.correct_top5.item() / seen
        return out

    def state(self) -> dict[str, Any]:
        return {"loss": self.loss.cpu(), "correct": self.correct.cpu(), "correct_top5": self.correct_top5.cpu(),
                "seen": self.seen, "seconds": self.seconds}

    @classmethod
    def from_state(cls, state: dict[str, Any], device: torch.device) -> "EpochTotals":
        return cls(state["loss"].to(device), state["correct"].to(device), state["correct_top5"].to(device),
                   state["seen"], state["seconds"])


@dataclass
class Progress:
    """Where training stands: everything besides the modules that a checkpoint must carry."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    batch_in_epoch: int = 0  # steps done in the unfinished epoch `epoch + 1`
    partial: dict[str, Any] | None = None  # EpochTotals.state() of that unfinished epoch
    generator_state: torch.Tensor | None = None  # the unfinished epoch's data generator
    history: list[dict[str, Any]] = field(default_factory=list)
    train_seconds: float = 0.0


@dataclass
class Outcome:
    status: str  # completed | pruned
    reason: str | None
    progress: Progress
    objective: Objective


class Fit:
    """One run's training: built from the config, resumable from its own checkpoints."""

    def __init__(self, cfg: DictConfig, trainer: TrainerConfig, run_dir: Path, pruner=None, on_epoch_end=None,
                 on_interrupt=None, git_commit: str | None = None):
        self.cfg, self.trainer, self.run_dir = cfg, trainer, run_dir
        self.git_commit = git_commit  # stored in every checkpoint
        self.checkpoints = run_dir / "checkpoints"
        self.pruner = pruner
        self.on_epoch_end = on_epoch_end  # called with (progress, objective) after each epoch's record
        # called once the checkpoint of an interruption is saved, before the signal is handed on:
        # on SLURM the job may be killed soon after the hand-over
        self.on_interrupt = on_interrupt
        self.device = resolve_device(trainer.device)
        seed_everything(trainer.seed, trainer.deterministic)
        if self.device.type == "cpu":
            keep_cpu_buffers_mapped()

        check_targets(cfg)
        self.model = build(cfg.model, "model")
        self.loss = build_loss(cfg)
        probe(self.model, self.loss, cfg)
        self.top5 = cfg.dataset.num_classes > 5
        self.objective = Objective(cfg.objective.metric, cfg.objective.goal)
        known = [m for m in metric_names(cfg.dataset.num_classes) if "/" in m] + ["lr"]
        if self.objective.metric not in known:
            raise ConfigError(f"objective.metric={self.objective.metric!r} is not a metric this run records; "
                              f"use one of: {', '.join(known)}")

        self.dataset = build(cfg.dataset, "dataset")
        self.channels_last = self.device.type == "cuda" if trainer.channels_last == "auto" else trainer.channels_last == "true"
        self.train_data = make_source(self.dataset.train, self.dataset, self.device, trainer, self.channels_last)
        self.val_data = make_source(self.dataset.val, self.dataset, self.device, trainer, self.channels_last)
        self.steps_per_epoch = batches_per_epoch(len(self.train_data), trainer.batch_size, trainer.limit_train_batches)

        self.model.to(self.device, memory_format=torch.channels_last if self.channels_last else torch.preserve_format)
        self.forward = torch.compile(self.model) if trainer.compile else self.model
        self.optimizer = build(cfg.optimizer, "optimizer")(self.model.parameters())
        self.scheduler = build_scheduler(cfg, self.optimizer, self.steps_per_epoch)
        self.scheduler_interval = cfg.scheduler.get("interval") if cfg.scheduler else None
        self.scheduler_monitor = cfg.scheduler.get("monitor") if cfg.scheduler else None
        precision = str(trainer.precision)
        self.autocast_dtype = AUTOCAST_DTYPES.get(precision)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=precision == "16")
        self.progress = Progress()
        self.evals_without_improvement = 0

    # ------------------------------------------------------------------ checkpoints
    def resume_from(self, path: Path) -> None:
        state = checkpoint.load(path)
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            if self.scheduler is not None and state.get("scheduler") is not None:
                self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
        except (RuntimeError, KeyError, ValueError) as error:
            raise ConfigError(
                f"cannot resume from {path}: it was saved by a different model or optimizer ({error}). "
                f"Use a new run folder, or trainer.resume=never to start over (the old results are kept)."
            ) from None
        self.progress = state["progress"]
        self.objective.load_state(state["objective"])
        self.evals_without_improvement = state["evals_without_improvement"]
        checkpoint.restore_rng_state(state["rng"])
        log.info("resumed from %s at epoch %d, step %d", path, self.progress.epoch, self.progress.step)

    def _state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict(),
            "epoch": self.progress.epoch,
            "step": self.progress.step,
            "progress": self.progress,
            "objective": self.objective.state(),
            "evals_without_improvement": self.evals_without_improvement,
            "rng": checkpoint.rng_state(),
            "config": OmegaConf.to_yaml(self.cfg),
            "git_commit": self.git_commit,
        }

    def save(self, *names: str) -> None:
        state = self._state()
        for name in names:
            checkpoint.save_atomic(state, self.checkpoints / name)

    # ------------------------------------------------------------------ the loop
    def run(self, loggers: list) -> Outcome:
        trainer = self.trainer
        started = time.monotonic() - self.progress.train_seconds
        with Interruption() as interruption:
            while self.progress.epoch < trainer.max_epochs:
                epoch = self.progress.epoch + 1
                train_metrics = self._train_epoch(epoch, loggers, interruption)
                row = {"epoch": epoch, "step": self.progress.step, "lr": self._lr(), **train_metrics}
                evaluated = epoch % trainer.eval_every_n_epochs == 0 or epoch == trainer.max_epochs
                if evaluated:
                    row.update(self.evaluate())
                self.progress.epoch, self.progress.batch_in_epoch = epoch, 0
                self.progress.partial = self.progress.generator_state = None
                self.progress.train_seconds = time.monotonic() - started
                row["time_s"] = round(self.progress.train_seconds, 3)
                self.progress.history.append(row)
                stop_reason = self._after_epoch(row, evaluated, loggers)
                if stop_reason is not None and stop_reason[0] == "pruned":
                    return Outcome("pruned", stop_reason[1], self.progress, self.objective)
                if stop_reason is not None:
                    return Outcome("completed", stop_reason[1], self.progress, self.objective)
        return Outcome("completed", None, self.progress, self.objective)

    def _after_epoch(self, row: dict, evaluated: bool, loggers: list) -> tuple[str, str] | None:
        """Record the epoch, then decide whether to stop: returns (status, reason) or None."""
        trainer, epoch = self.trainer, row["epoch"]
        write_metrics(self.run_dir, self.progress.history, metric_names(self.cfg.dataset.num_classes))
        for logger in loggers:
            logger.log_metrics({k: v for k, v in row.items() if "/" in k or k == "lr"}, self.progress.step)
        log.info("epoch %d/%d  %s", epoch, trainer.max_epochs,
                 "  ".join(f"{k}={v:.4g}" for k, v in row.items() if "/" in k))

        is_best = False
        if evaluated:
            value = row[self.objective.metric]
            is_best, improved = self.objective.update(value, epoch, row, trainer.early_stopping.min_delta)
            self.evals_without_improvement = 0 if improved else self.evals_without_improvement + 1
            if self.scheduler is not None and self.scheduler_monitor:
                self.scheduler.step(row[self.scheduler_monitor])
        if self.scheduler is not None and self.scheduler_interval == "epoch" and not self.scheduler_monitor:
            self.scheduler.step()
        if epoch % trainer.histograms_every_n_epochs == 0 or epoch == trainer.max_epochs:
            self._log_histograms(loggers)
        if epoch % trainer.predictions_every_n_epochs == 0 or epoch == trainer.max_epochs:
            self._log_predictions(loggers)

        decision = None
        if evaluated:
            value = row[self.objective.metric]
            threshold = trainer.stop.objective_threshold
            patience = trainer.early_stopping.patience
            if threshold is not None and self.objective.reached(value, threshold):
                decision = ("completed", f"{self.objective.metric}={value:.4g} reached trainer.stop.objective_threshold={threshold}")
            elif patience is not None and self.evals_without_improvement >= patience:
                decision = ("completed", f"early stopping: {self.objective.metric} did not improve for {patience} evaluations")
            elif self.pruner is not None:
                verdict = self.pruner.report(epoch, value)
                if verdict.stop:
                    decision = ("pruned", verdict.reason)
        budget = trainer.stop.time_budget_s
        if decision is None and budget is not None and self.progress.train_seconds >= budget:
            decision = ("completed", f"time budget trainer.stop.time_budget_s={budget} used up")

        if is_best:
            self.save("best.pt")
        if decision is not None or epoch % trainer.checkpoint_every_n_epochs == 0 or epoch == trainer.max_epochs:
            self.save("last.pt")
        if self.on_epoch_end is not None:
            self.on_epoch_end(self.progress, self.objective)
        return decision

    def _lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def _train_epoch(self, epoch: int, loggers: list, interruption: Interruption) -> dict[str, float]:
        trainer, progress = self.trainer, self.progress
        generator = epoch_generator(trainer.seed, epoch)
        order = torch.randperm(len(self.train_data), generator=generator)
        skip = progress.batch_in_epoch
        if skip:
            generator.set_state(progress.generator_state)
            totals = EpochTotals.from_state(progress.partial, self.device)
        else:
            totals = EpochTotals.zeros(self.device)
        augment = getattr(self.dataset, "augment", None)
        bar = EpochProgress(epoch, trainer.max_epochs, self.steps_per_epoch, skip)
        self.model.train()
        tic = time.perf_counter()
        batch_index = skip
        try:
            for images, labels in self.train_data.batches(trainer.batch_size, order, skip):
                if batch_index >= self.steps_per_epoch:
                    break
                if augment is not None:
                    images = augment(images, generator)
                loss, logits = self._step(images, labels)
                totals.add(logits, labels, loss)
                batch_index += 1
                progress.step += 1
                if progress.step % trainer.log_every_n_steps == 0:
                    loss_value = loss.item()
                    self._check_finite(loss_value, epoch)
                    for logger in loggers:
                        logger.log_metrics({"train/loss_step": loss_value, "lr": self._lr()}, progress.step)
                    bar.advance(loss_value)
                else:
                    bar.advance()
                if interruption.requested:
                    totals.seconds += time.perf_counter() - tic
                    tic = time.perf_counter()
                    self._save_interrupted(batch_index, totals, generator)
                    interruption.hand_over()
        finally:
            bar.close()
        metrics = totals.metrics("train", self.top5)  # .item() waits for the device: stop the clock after it
        totals.seconds += time.perf_counter() - tic
        self._check_finite(metrics["train/loss"], epoch)
        metrics["train/samples_per_s"] = round(totals.seen / max(totals.seconds, 1e-9), 1)
        return metrics

    def _step(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        autocast = (torch.autocast(self.device.type, dtype=self.autocast_dtype)
                    if self.autocast_dtype is not None else nullcontext())
        with autocast:
            logits = self.forward(images)
            loss = self.loss(logits, labels)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.trainer.gradient_clip_val is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.trainer.gradient_clip_val)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.scheduler is not None and self.scheduler_interval == "step":
            self.scheduler.step()
        return loss, logits.detach()

    def _save_interrupted(self, batch_index: int, totals: EpochTotals, generator: torch.Generator) -> None:
        progress = self.progress
        progress.batch_in_epoch = batch_index
        progress.partial = totals.state()
        progress.generator_state = generator.get_state()
        self.save("last.pt")
        log.warning("checkpoint saved mid-epoch %d at step %d: the run resumes from here",
                    progress.epoch + 1, progress.step)
        if self.on_interrupt is not None:
            self.on_interrupt()
        # a hand-over that returns (a signal submitit ignores) goes on with the same epoch
        progress.batch_in_epoch, progress.partial, progress.generator_state = 0, None, None

    @staticmethod
    def _check_finite(loss: float, epoch: int) -> None:
        if not math.isfinite(loss):
            raise TrialFailed(f"the training loss became {loss} in epoch {epoch}; lower optimizer.lr or "
                              f"set trainer.gradient_clip_val")

    @torch.inference_mode()
    def evaluate(self) -> dict[str, float]:
        self.model.eval()
        totals = EpochTotals.zeros(self.device)
        limit = self.trainer.limit_val_batches
        for index, (images, labels) in enumerate(self.val_data.batches(self.trainer.eval_batch_size)):
            if limit is not None and index >= limit:
                break
            with (torch.autocast(self.device.type, dtype=self.autocast_dtype)
                  if self.autocast_dtype is not None else nullcontext()):
                logits = self.forward(images)
                loss = self.loss(logits, labels)
            totals.add(logits.float(), labels, loss.float())
        self.model.train()
        return totals.metrics("val", self.top5)

    # ------------------------------------------------------------------ media
    def _log_histograms(self, loggers: list) -> None:
        tensors = {}
        for name, parameter in self.model.named_parameters():
            tensors[f"weights/{name}"] = parameter
            if parameter.grad is not None:
                tensors[f"gradients/{name}"] = parameter.grad
        for logger in loggers:
            logger.log_histograms(tensors, self.progress.step)

    @torch.inference_mode()
    def _log_predictions(self, loggers: list) -> None:
        if not loggers:
            return
        count = self.trainer.num_prediction_samples
        images, labels = next(iter(self.val_data.batches(count)))
        self.model.eval()
        predicted = self.model(images).argmax(1)
        self.model.train()
        names = self.dataset.class_names
        captions = [f"{names[p]} (true {names[t]}) {'✓' if p == t else '✗'}"
                    for p, t in zip(predicted.tolist(), labels.tolist())]
        low = images.amin(dim=(1, 2, 3), keepdim=True)
        high = images.amax(dim=(1, 2, 3), keepdim=True)
        shown = ((images - low) / (high - low).clamp_min(1e-8)).float().contiguous()
        for logger in loggers:
            logger.log_predictions("val/predictions", shown, captions, self.progress.step)
