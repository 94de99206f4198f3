"""The training loop: train and evaluate each epoch, step the optimizer and the scheduler, ask the callbacks.

The loop knows no task: the task (components.tasks or a user's own) says what a batch means, runs the
model, computes the loss and updates the metrics; callbacks (runner.run.callbacks) decide when to stop,
save and log. What the loop owns is the order of things; its collaborators own the rest: the device and
the model's placement (runner.run.device), an epoch's sums (runner.run.totals), an evaluation
(runner.run.evaluation), what a checkpoint holds and restores (runner.run.run_state) and calling the
callbacks (runner.run.callbacks.dispatch).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from runner.config.checks import TrainerConfig
from runner.errors import TrialFailed
from runner.results import CHECKPOINT_DIR
from runner.run import checkpoint, run_state
from runner.run.build import (build, build_scheduler, build_task, extra_metric_values, extra_metrics, probe,
                              recorded_metrics)
from runner.run.callbacks.base import Stop
from runner.run.callbacks.dispatch import CallbackDispatch
from runner.run.data import batches_per_epoch, epoch_generator, make_sources
from runner.run.device import autocast, mixed_precision, place_model, prepare_device
from runner.run.distributed import Ranks
from runner.run.evaluation import evaluate
from runner.run.interrupt import Interruption, answer_signal
from runner.run.objective import Objective
from runner.run.progress import EpochProgress
from runner.run.run_state import Progress
from runner.run.steps import build_optimizers, own_step
from runner.run.totals import EpochTotals, batch_size_of

log = logging.getLogger(__name__)

# samples of the training split that the pre-training check runs through model, loss and metrics
PROBE_BATCH = 16


@dataclass
class Outcome:
    status: str  # completed | pruned
    reason: str | None
    progress: Progress
    objective: Objective
    # the test stage's metrics (`test/<name>`) and the epoch of the checkpoint they were measured with
    test_metrics: dict[str, float] | None = None
    test_epoch: int | None = None


class Fit:
    """One run's training: built from the config, resumable from its own checkpoints."""

    def __init__(self, cfg: DictConfig, trainer: TrainerConfig, run_dir: Path, callbacks: dict[str, Any],
                 ranks: Ranks | None = None, git_commit: str | None = None):
        self.cfg, self.trainer, self.run_dir = cfg, trainer, run_dir
        self.git_commit = git_commit  # stored in every checkpoint
        self.checkpoints = run_dir / CHECKPOINT_DIR
        self.callbacks = callbacks
        # the processes of the run (runner.run.distributed); rank 0 runs every callback and writes the files
        self.ranks = ranks or Ranks()
        self.ranks.enter("building the run (model, data, DistributedDataParallel)")
        self.device = prepare_device(trainer, self.ranks)

        self.task = build_task(cfg)
        self.extra_metrics = extra_metrics(cfg)
        self.csv_columns = ["epoch", "step", "time_s", "lr", *recorded_metrics(self.task.metrics), *self.extra_metrics]
        self.objective = Objective(cfg.objective.metric, cfg.objective.goal)

        self.model = build(cfg.model, "model")
        self.data = build(cfg.dataset, "dataset")
        self.channels_last = self.device.type == "cuda" if trainer.channels_last == "auto" else trainer.channels_last == "true"
        self.train_data, self.val_data, self.test_data = make_sources(self.data, self.device, trainer,
                                                                      self.channels_last)
        self.steps_per_epoch = batches_per_epoch(len(self.train_data), trainer.batch_size, trainer.limit_train_batches,
                                                 self.ranks.world)

        self.model.to(self.device)
        example = getattr(self.data, "example", None)
        probe(self.model, self.task, example if example is not None else next(self.train_data.batches(PROBE_BATCH)), cfg)
        self.forward, self.eval_forward = place_model(self.model, self.device, self.ranks, self.channels_last,
                                                      trainer.compile)
        # one optimizer unless the task builds its own (runner.run.steps), the first the scheduler's
        self.optimizers = build_optimizers(self.task, self.model, build(cfg.optimizer, "optimizer"), cfg.optimizer._target_)
        self.optimizer = next(iter(self.optimizers.values()))
        self.scheduler = build_scheduler(cfg, self.optimizer, self.steps_per_epoch)
        self.scheduler_interval = cfg.scheduler.get("interval") if cfg.scheduler else None
        self.scheduler_monitor = cfg.scheduler.get("monitor") if cfg.scheduler else None
        self.autocast_dtype, self.scaler = mixed_precision(trainer.precision, self.device)
        # a task's own training_step replaces the default batch step (chosen once: no cost per batch)
        if (step := own_step(self)) is not None:
            self._step = step
        self.train_metrics = self.task.new_metrics().to(self.device)
        self.eval_metrics = self.task.new_metrics().to(self.device)
        self.progress = Progress()
        # set after each epoch, for the callbacks
        self.evaluated = self.is_best = False
        self.stop: Stop | None = None
        self.hooks = CallbackDispatch(self, callbacks)
        # every rank's random generators and unfinished epoch, on rank 0 at each save (several ranks only)
        self.rank_states: list | None = None

    # ------------------------------------------------------------------ checkpoints (runner.run.run_state)
    def resume_from(self, state: dict[str, Any], path: Path) -> None:
        """Continue from a checkpoint's state (runner.run.checkpoint.load; runner.config.resume checked its config)."""
        run_state.resume(self, state, path)

    def take_over(self, state: dict[str, Any]) -> None:
        """Go on from another run's checkpoint (PBT's exploit): its weights, optimizer and step, not its history."""
        run_state.take_over(self, state)

    def state_dict(self) -> dict[str, Any]:
        return run_state.state_of(self)

    def save(self, *names: str) -> None:
        """Write the run's state (rank 0; with several ranks, after run_state.gather_rank_states)."""
        state = self.state_dict()
        for name in names:
            checkpoint.save_atomic(state, self.checkpoints / name)

    def set_batch_size(self, batch_size: int) -> None:
        """Train the next epochs with batches of `batch_size` (PBT); an epoch's steps follow."""
        self.trainer.batch_size = batch_size
        self.steps_per_epoch = batches_per_epoch(len(self.train_data), batch_size, self.trainer.limit_train_batches,
                                                 self.ranks.world)

    # ------------------------------------------------------------------ the loop
    def run(self) -> Outcome:
        trainer = self.trainer
        started = time.monotonic() - self.progress.train_seconds
        try:
            self.hooks.call("on_fit_start")
            with Interruption() as interruption:
                while self.progress.epoch < trainer.max_epochs:
                    epoch = self.progress.epoch + 1
                    train_metrics = self._train_epoch(epoch, interruption)
                    row = {"epoch": epoch, "step": self.progress.step, "lr": learning_rate(self.optimizer), **train_metrics}
                    self.evaluated = epoch % trainer.eval_every_n_epochs == 0 or epoch == trainer.max_epochs
                    if self.evaluated:
                        row.update(self.evaluate(self.val_data, "val"), **extra_metric_values(self.extra_metrics, self.model))
                    self.progress.epoch, self.progress.batch_in_epoch = epoch, 0
                    self.progress.partial = self.progress.generator_state = None
                    self.progress.train_seconds = time.monotonic() - started
                    row["time_s"] = round(self.progress.train_seconds, 3)
                    self.progress.history.append(row)
                    self._after_epoch(row)
                    if self.stop is not None:
                        break
        except BaseException as error:
            self.hooks.call_quietly("on_exception", error)
            raise
        outcome = Outcome(self.stop.status if self.stop else "completed", self.stop.reason if self.stop else None,
                          self.progress, self.objective)
        self.hooks.call("on_fit_end", outcome)
        return outcome

    def _after_epoch(self, row: dict) -> None:
        """Track the objective, step the scheduler, then ask the callbacks (the first Stop ends the run)."""
        self.is_best, self.stop = False, None
        log.info("epoch %d/%d  %s", row["epoch"], self.trainer.max_epochs,
                 "  ".join(f"{k}={v:.4g}" for k, v in row.items() if "/" in k))
        if self.evaluated:
            self.is_best = self.objective.update(row[self.objective.metric], row["epoch"], row)
            if self.scheduler is not None and self.scheduler_monitor:
                self.scheduler.step(row[self.scheduler_monitor])
        if self.scheduler is not None and self.scheduler_interval == "epoch" and not self.scheduler_monitor:
            self.scheduler.step()
        self.ranks.enter(f"gathering every rank's state after epoch {row['epoch']}")
        run_state.gather_rank_states(self)
        self.hooks.epoch_end(row)
        self.ranks.enter(f"the stop decision after epoch {row['epoch']} (rank 0 decides)")
        self.stop = self.ranks.broadcast(self.stop)  # rank 0 decides for every rank

    def _train_epoch(self, epoch: int, interruption: Interruption) -> dict[str, float]:
        trainer, progress, task = self.trainer, self.progress, self.task
        self.ranks.enter(f"training epoch {epoch}")
        generator = epoch_generator(trainer.seed, epoch)
        order = torch.randperm(len(self.train_data), generator=generator)
        skip = progress.batch_in_epoch
        if skip:
            generator.set_state(progress.generator_state)
            totals = EpochTotals.from_state(progress.partial, self.train_metrics, self.device)
        else:
            totals = EpochTotals.zeros(self.train_metrics, self.device)
        augment = getattr(self.data, "augment", None)
        bar = EpochProgress(epoch, trainer.max_epochs, self.steps_per_epoch, skip, show=self.ranks.is_main)
        self.model.train()
        tic = time.perf_counter()
        batch_index = skip
        try:
            for batch in self.train_data.batches(trainer.batch_size, order, skip, self.ranks):
                if batch_index >= self.steps_per_epoch:
                    break
                inputs, target = task.unpack(batch)
                if augment is not None:
                    inputs = augment(inputs, generator)
                loss, output = self._step(inputs, target, self._share_weight(target, batch_index))
                totals.add(task, output, target, loss)
                batch_index += 1
                progress.step += 1
                if progress.step % trainer.log_every_n_steps == 0:
                    loss_value = loss.item()
                    check_finite(loss_value, epoch)
                    self.hooks.call("on_log_step", {"train/loss_step": loss_value, "lr": learning_rate(self.optimizer)})
                    bar.advance(loss_value)
                else:
                    bar.advance()
                if self.ranks.any(interruption.requested):  # every rank stops at the same step
                    totals.seconds += time.perf_counter() - tic
                    tic = time.perf_counter()
                    answer_signal(self, interruption, batch_index, totals, generator)
        finally:
            bar.close()
        metrics = totals.compute("train", self.ranks)  # .item() waits for the device: stop the clock after it
        totals.seconds += time.perf_counter() - tic
        check_finite(metrics["train/loss"], epoch)
        metrics["train/samples_per_s"] = round(totals.seen / max(totals.seconds, 1e-9), 1)
        return metrics

    def _share_weight(self, target: Any, batch_index: int) -> float | None:
        """What a rank's mean loss is weighted by so that DistributedDataParallel's average over the ranks
        is the mean over the whole batch: 1 when the ranks' shares are equal, None with one process."""
        if self.ranks.world == 1:
            return None
        whole = min(self.trainer.batch_size, len(self.train_data) - batch_index * self.trainer.batch_size)
        return batch_size_of(target) * self.ranks.world / whole

    def _step(self, inputs: Any, target: Any, weight: float | None = None) -> tuple[torch.Tensor, Any]:
        with autocast(self.device, self.autocast_dtype):
            output = self.task.forward(self.forward, inputs)
            loss = self.task.loss(output, target)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss if weight is None else loss * weight).backward()
        if self.trainer.gradient_clip_val is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.trainer.gradient_clip_val)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.scheduler is not None and self.scheduler_interval == "step":
            self.scheduler.step()
        return loss, output.detach() if isinstance(output, torch.Tensor) else output

    def evaluate(self, source, split: str) -> dict[str, float]:
        """The loss and every metric of the task over a split, `<split>/<name>`; the model in eval mode."""
        self.ranks.enter(f"evaluating the {split} split after epoch {self.progress.epoch}")
        metrics = evaluate(self.model, self.eval_forward, self.task, source, self.eval_metrics, split,
                           self.trainer.eval_batch_size, self.trainer.limit_val_batches, self.autocast_dtype,
                           self.hooks.eval_batch(split), self.ranks)
        self.model.train()
        return metrics


def learning_rate(optimizer: torch.optim.Optimizer) -> float:
    """The first parameter group's rate: the one metrics.csv and the loggers show."""
    return float(optimizer.param_groups[0]["lr"])


def check_finite(loss: float, epoch: int) -> None:
    if not math.isfinite(loss):
        raise TrialFailed(f"the training loss became {loss} in epoch {epoch}; lower optimizer.lr or "
                          f"set trainer.gradient_clip_val")
