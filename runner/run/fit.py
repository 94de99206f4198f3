"""The training loop: train and evaluate each epoch, step the optimizer and the scheduler, ask the callbacks.

The loop knows no task: the task (components.tasks or a user's own) says what a batch means, runs the
model, computes the loss and updates the metrics; callbacks (runner.run.callbacks) decide when to stop,
save and log. What the loop owns is the order of things and the state an exact resume needs.
"""

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

from runner.run import checkpoint
from runner.run.build import build, build_scheduler, build_task, complete, probe, recorded_metrics
from runner.run.callbacks import Callback, Stop
from runner.config.checks import TrainerConfig
from runner.run.data import batches_per_epoch, epoch_generator, make_source
from runner.errors import ConfigError, RunnerError, TrialFailed
from runner.run.distributed import Ranks
from runner.run.interrupt import Interruption, RunInterrupted
from runner.run.objective import Objective
from runner.run.progress import EpochProgress
from runner.results import CHECKPOINT_DIR, LAST_CHECKPOINT

log = logging.getLogger(__name__)

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "16": torch.float16}
# samples of the training split that the pre-training check runs through model, loss and metrics
PROBE_BATCH = 16


def resolve_device(requested: str, local_rank: int | None = None) -> torch.device:
    """The training device; a rank of a data-parallel run on GPUs takes the GPU of its local rank."""
    if local_rank is not None and torch.cuda.is_available() and requested in ("auto", "cuda"):
        return torch.device("cuda", local_rank)
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


def batch_size_of(target: Any) -> int:
    """Samples in a batch, from its target (a tensor, or a tuple or dict of them)."""
    if isinstance(target, torch.Tensor):
        return len(target)
    first = next(iter(target.values() if isinstance(target, dict) else target))
    return batch_size_of(first)


@dataclass
class EpochTotals:
    """An epoch's loss sum, sample count and metrics, accumulated on the device so steps need not synchronise."""

    loss: torch.Tensor
    metrics: Any  # the task's MetricCollection for this split
    seen: int = 0
    seconds: float = 0.0

    @classmethod
    def zeros(cls, metrics, device: torch.device) -> "EpochTotals":
        metrics.reset()
        return cls(torch.zeros((), dtype=torch.float64, device=device), metrics)

    def add(self, task, output: Any, target: Any, loss: torch.Tensor) -> None:
        n = batch_size_of(target)
        self.loss.add_(loss.detach(), alpha=n)  # one kernel; the same float64 sum as .double() * n
        task.update_metrics(self.metrics, output, target)
        self.seen += n

    def compute(self, split: str, ranks: Ranks) -> dict[str, float]:
        """The epoch's values under `<split>/<name>`, over every rank's samples; waits for the device once.

        Also sets `seen` to the samples of every rank."""
        sums = ranks.sum(torch.stack([self.loss, torch.tensor(float(self.seen), dtype=torch.float64,
                                                                device=self.loss.device)]))
        loss, self.seen = sums.tolist()[0], int(sums[1].item())
        out = {f"{split}/loss": loss / max(self.seen, 1)}
        if self.seen:  # torchmetrics reduces the metric states across the ranks
            out.update({f"{split}/{name}": float(value) for name, value in self.metrics.compute().items()})
        return out

    def state(self) -> dict[str, Any]:
        """Plain data for a mid-epoch checkpoint: the sums, and each metric's states and update count."""
        metrics = {}
        for name, metric in self.metrics.items():
            metric.persistent(True)
            metrics[name] = {"states": metric.state_dict(), "updates": metric._update_count}
        return {"loss": self.loss.cpu(), "seen": self.seen, "seconds": self.seconds, "metrics": metrics}

    @classmethod
    def from_state(cls, state: dict[str, Any], metrics, device: torch.device) -> "EpochTotals":
        metrics.reset()
        for name, metric in metrics.items():
            metric.persistent(True)
            metric.load_state_dict(state["metrics"][name]["states"])
            # torchmetrics counts updates to warn of a compute() before any: the restored ones count
            metric._update_count = state["metrics"][name]["updates"]
        return cls(state["loss"].to(device), metrics.to(device), state["seen"], state["seconds"])


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

    def state(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "step": self.step, "batch_in_epoch": self.batch_in_epoch,
                "partial": self.partial, "generator_state": self.generator_state,
                "history": [dict(row) for row in self.history], "train_seconds": self.train_seconds}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "Progress":
        return cls(**state)


@dataclass
class Outcome:
    status: str  # completed | pruned
    reason: str | None
    progress: Progress
    objective: Objective
    # the test stage's metrics (`test/<name>`) and the epoch of the checkpoint they were measured with
    test_metrics: dict[str, float] | None = None
    test_epoch: int | None = None


class CallbackFailed(RunnerError):
    """A callback raised: the run fails with the callback's name in the reason."""


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
        self.device = resolve_device(trainer.device, self.ranks.local_rank if self.ranks.ddp else None)
        seed_everything(trainer.seed, trainer.deterministic)
        if self.device.type == "cpu":
            keep_cpu_buffers_mapped()

        self.task = build_task(cfg)
        self.csv_columns = ["epoch", "step", "time_s", "lr", *recorded_metrics(self.task)]
        self.objective = Objective(cfg.objective.metric, cfg.objective.goal)

        self.model = build(cfg.model, "model")
        self.data = build(cfg.dataset, "dataset")
        self.channels_last = self.device.type == "cuda" if trainer.channels_last == "auto" else trainer.channels_last == "true"
        self.train_data = make_source(self.data.train, self.data, self.device, trainer, self.channels_last)
        self.val_data = make_source(self.data.val, self.data, self.device, trainer, self.channels_last)
        test = getattr(self.data, "test", None)
        self.test_data = make_source(test, self.data, self.device, trainer, self.channels_last) \
            if trainer.test and test is not None else None
        self.steps_per_epoch = batches_per_epoch(len(self.train_data), trainer.batch_size, trainer.limit_train_batches,
                                                 self.ranks.world)

        self.model.to(self.device)
        example = getattr(self.data, "example", None)
        probe(self.model, self.task, example if example is not None else next(self.train_data.batches(PROBE_BATCH)), cfg)
        if self.channels_last:  # after the probe: lazy layers have their sizes only then
            self.model.to(memory_format=torch.channels_last)
        trained = self.model
        if self.ranks.ddp:  # after the probe too: DistributedDataParallel needs every parameter's size
            from torch.nn.parallel import DistributedDataParallel

            trained = DistributedDataParallel(self.model, device_ids=[self.device.index] if self.device.type == "cuda"
                                              else None)
        self.forward = torch.compile(trained) if trainer.compile else trained
        # evaluation runs the model itself: each rank its own share, no gradients to reduce
        self.eval_forward = self.forward if not self.ranks.ddp else self.model
        self.optimizer = complete(build(cfg.optimizer, "optimizer"), "optimizer", cfg.optimizer._target_,
                                  self.model.parameters())
        self.scheduler = build_scheduler(cfg, self.optimizer, self.steps_per_epoch)
        self.scheduler_interval = cfg.scheduler.get("interval") if cfg.scheduler else None
        self.scheduler_monitor = cfg.scheduler.get("monitor") if cfg.scheduler else None
        precision = str(trainer.precision)
        self.autocast_dtype = AUTOCAST_DTYPES.get(precision)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=precision == "16")
        self.train_metrics = self.task.new_metrics().to(self.device)
        self.eval_metrics = self.task.new_metrics().to(self.device)
        self.progress = Progress()
        # set after each epoch, for the callbacks
        self.evaluated = False
        self.is_best = False
        self.stop: Stop | None = None
        self.eval_batch_hooks = self._hooked("on_eval_batch")
        # every rank's random generators and unfinished epoch, on rank 0 at each save (several ranks only)
        self.rank_states: list | None = None

    # ------------------------------------------------------------------ checkpoints
    def resume_from(self, state: dict[str, Any], path: Path) -> None:
        """Continue from a checkpoint's state (runner.run.checkpoint.load; runner.config.resume checked its config)."""
        from runner.config.resume import scheduler_changed

        try:
            self._load_training_state(state, rebuild_scheduler=scheduler_changed(OmegaConf.create(state["config"]),
                                                                                 self.cfg))
        except (RuntimeError, KeyError, ValueError) as error:
            raise ConfigError(
                f"cannot resume from {path}: it was saved by a different model or optimizer ({error}). "
                f"Use a new run folder, or trainer.resume=never to start over (the old results are kept)."
            ) from error
        self.progress = Progress.from_state(state["progress"])
        self.objective.load_state(state["objective"])
        for name, callback_state in state.get("callbacks", {}).items():
            if name in self.callbacks and hasattr(self.callbacks[name], "load_state_dict"):
                self.callbacks[name].load_state_dict(callback_state)
        own = state["ranks"][self.ranks.rank] if "ranks" in state else {"rng": state["rng"]}
        if "ranks" in state:
            self.progress.partial = own["partial"]
        checkpoint.restore_rng_state(own["rng"])
        log.info("resumed from %s at epoch %d, step %d", path, self.progress.epoch, self.progress.step)

    def take_over(self, state: dict[str, Any]) -> None:
        """Go on from another run's checkpoint (PBT's exploit): its weights, optimizer, scheduler, grad
        scaler, epoch, step and random states. This run keeps its own history, objective, callbacks
        and config; the caller made sure the other run trains the same model (no config check here)."""
        self._load_training_state(state, rebuild_scheduler=False)
        self.progress.epoch, self.progress.step = state["progress"]["epoch"], state["progress"]["step"]
        checkpoint.restore_rng_state(state["rng"])

    def _load_training_state(self, state: dict[str, Any], rebuild_scheduler: bool) -> None:
        """The model's weights, the optimizer's, scheduler's and grad scaler's states; a scheduler built for
        a new length continues at the saved one's step instead (runner.config.resume)."""
        from runner.run.resume import continue_scheduler

        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            if rebuild_scheduler:
                continue_scheduler(self.scheduler, state["scheduler"])
            else:
                self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])

    def set_batch_size(self, batch_size: int) -> None:
        """Train the next epochs with batches of `batch_size` (PBT); an epoch's steps follow."""
        self.trainer.batch_size = batch_size
        self.steps_per_epoch = batches_per_epoch(len(self.train_data), batch_size, self.trainer.limit_train_batches,
                                                 self.ranks.world)

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict(),
            "epoch": self.progress.epoch,
            "step": self.progress.step,
            "progress": self.progress.state(),
            "objective": self.objective.state(),
            "callbacks": {name: callback.state_dict() for name, callback in self.callbacks.items()
                          if hasattr(callback, "state_dict")},
            "rng": checkpoint.rng_state(),
            **({"ranks": self.rank_states} if self.ranks.world > 1 else {}),
            "data": self.data_state(),
            "config": OmegaConf.to_yaml(self.cfg),
            "git_commit": self.git_commit,
        }

    def data_state(self) -> dict[str, Any]:
        """What code outside the runner needs to feed the model: the preprocessing (its class and plain
        state) and the class names."""
        preprocess = getattr(self.data, "preprocess", None)
        stored = None
        if preprocess is not None and hasattr(preprocess, "state_dict"):
            kind = type(preprocess)
            stored = {"target": f"{kind.__module__}.{kind.__qualname__}", "state": preprocess.state_dict()}
        return {"preprocess": stored, "class_names": list(getattr(self.data, "class_names", None) or [])}

    def gather_rank_states(self) -> None:
        """Every rank's generators and unfinished epoch to rank 0, for the next save (a collective)."""
        if self.ranks.world > 1:
            self.rank_states = self.ranks.gather({"rng": checkpoint.rng_state(), "partial": self.progress.partial})

    def save(self, *names: str) -> None:
        """Write the run's state (rank 0; with several ranks, after gather_rank_states)."""
        state = self.state_dict()
        for name in names:
            checkpoint.save_atomic(state, self.checkpoints / name)

    # ------------------------------------------------------------------ callbacks
    def _call(self, hook: str, *args) -> None:
        for name, callback in self.callbacks.items():
            self._call_one(name, callback, hook, *args)

    def _call_one(self, name: str, callback: Any, hook: str, *args):
        method = getattr(callback, hook, None)
        if method is None:
            return None
        stage = self.ranks.stage
        self.ranks.enter(f"callback {name} ({hook})")
        try:
            decision = method(self, *args)
        except Exception as error:  # the stage stays the callback's, for the message of a failed collective
            detail = error if isinstance(error, RunnerError) else f"{type(error).__name__}: {error}"
            raise CallbackFailed(f"callback {name} failed in {hook}: {detail}") from error
        self.ranks.enter(stage)
        return decision

    def _call_quietly(self, hook: str, *args) -> None:
        """For hooks that run while the run is already failing: their own errors are logged, not raised."""
        for name, callback in self.callbacks.items():
            method = getattr(callback, hook, None)
            if method is not None:
                try:
                    method(self, *args)
                except Exception:
                    log.exception("callback %s failed in %s", name, hook)

    def _hooked(self, hook: str) -> list:
        """The callbacks that do something in `hook` (called in the hot loop: skip the ones that do not)."""
        return [(name, callback) for name, callback in self.callbacks.items()
                if getattr(type(callback), hook, None) not in (None, getattr(Callback, hook))]

    # ------------------------------------------------------------------ the loop
    def run(self) -> Outcome:
        trainer = self.trainer
        started = time.monotonic() - self.progress.train_seconds
        try:
            self._call("on_fit_start")
            with Interruption() as interruption:
                while self.progress.epoch < trainer.max_epochs:
                    epoch = self.progress.epoch + 1
                    train_metrics = self._train_epoch(epoch, interruption)
                    row = {"epoch": epoch, "step": self.progress.step, "lr": self._lr(), **train_metrics}
                    self.evaluated = epoch % trainer.eval_every_n_epochs == 0 or epoch == trainer.max_epochs
                    if self.evaluated:
                        row.update(self.evaluate(self.val_data, "val"))
                    self.progress.epoch, self.progress.batch_in_epoch = epoch, 0
                    self.progress.partial = self.progress.generator_state = None
                    self.progress.train_seconds = time.monotonic() - started
                    row["time_s"] = round(self.progress.train_seconds, 3)
                    self.progress.history.append(row)
                    self._after_epoch(row)
                    if self.stop is not None:
                        break
        except BaseException as error:
            self._call_quietly("on_exception", error)
            raise
        outcome = Outcome(self.stop.status if self.stop else "completed", self.stop.reason if self.stop else None,
                          self.progress, self.objective)
        self._call("on_fit_end", outcome)
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
        self.gather_rank_states()
        for name, callback in self.callbacks.items():
            decision = self._call_one(name, callback, "on_epoch_end", row)
            if self.stop is None and decision:
                self.stop = decision if isinstance(decision, Stop) else Stop(str(decision))
        self.ranks.enter(f"the stop decision after epoch {row['epoch']} (rank 0 decides)")
        self.stop = self.ranks.broadcast(self.stop)  # rank 0 decides for every rank

    def _lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

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
                    self._check_finite(loss_value, epoch)
                    self._call("on_log_step", {"train/loss_step": loss_value, "lr": self._lr()})
                    bar.advance(loss_value)
                else:
                    bar.advance()
                if self.ranks.any(interruption.requested):  # every rank stops at the same step
                    totals.seconds += time.perf_counter() - tic
                    tic = time.perf_counter()
                    self._save_interrupted(batch_index, totals, generator)
                    if self.ranks.ddp:
                        # the checkpoint is written: every rank stops; a spawned rank leaves the signal to
                        # the run's own process, a SLURM task hands it to submitit (rank 0 requeues)
                        if interruption.requested and not self.ranks.spawned:
                            interruption.hand_over()
                        raise RunInterrupted
                    interruption.hand_over()
        finally:
            bar.close()
        metrics = totals.compute("train", self.ranks)  # .item() waits for the device: stop the clock after it
        totals.seconds += time.perf_counter() - tic
        self._check_finite(metrics["train/loss"], epoch)
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

    def _save_interrupted(self, batch_index: int, totals: EpochTotals, generator: torch.Generator) -> None:
        progress = self.progress
        progress.batch_in_epoch = batch_index
        progress.partial = totals.state()
        progress.generator_state = generator.get_state()
        self.gather_rank_states()
        if self.ranks.is_main:
            self.save(LAST_CHECKPOINT)
            log.warning("checkpoint saved mid-epoch %d at step %d: the run resumes from here",
                        progress.epoch + 1, progress.step)
        # called before the signal is handed on: on SLURM the job may be killed soon after the hand-over
        self._call("on_interrupt")
        # a hand-over that returns (a signal submitit ignores) goes on with the same epoch
        progress.batch_in_epoch, progress.partial, progress.generator_state = 0, None, None

    @staticmethod
    def _check_finite(loss: float, epoch: int) -> None:
        if not math.isfinite(loss):
            raise TrialFailed(f"the training loss became {loss} in epoch {epoch}; lower optimizer.lr or "
                              f"set trainer.gradient_clip_val")

    def evaluate(self, source, split: str) -> dict[str, float]:
        """The loss and every metric of the task over a split, `<split>/<name>`; the model in eval mode."""
        self.ranks.enter(f"evaluating the {split} split after epoch {self.progress.epoch}")

        def on_batch(inputs, output, target):
            for name, callback in self.eval_batch_hooks:
                self._call_one(name, callback, "on_eval_batch", split, inputs, output, target)

        metrics = evaluate(self.model, self.eval_forward, self.task, source, self.eval_metrics, split,
                           self.trainer.eval_batch_size, self.trainer.limit_val_batches, self.autocast_dtype,
                           on_batch if self.eval_batch_hooks else None, self.ranks)
        self.model.train()
        return metrics


@torch.inference_mode()
def evaluate(model: torch.nn.Module, forward, task, source, metrics, split: str, batch_size: int,
             limit: int | None = None, autocast_dtype: torch.dtype | None = None, on_batch=None,
             ranks: Ranks | None = None) -> dict[str, float]:
    """The loss and every metric of `task` over `source`'s batches, as `<split>/<name>`; leaves the model in eval mode.

    `forward` is the model or its compiled form; `metrics` a MetricCollection, reset first. With
    several ranks each evaluates its share of every batch, and the sums and metrics are reduced.
    """
    ranks = ranks or Ranks()
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    totals = EpochTotals.zeros(metrics, device)
    for index, batch in enumerate(source.batches(batch_size, ranks=ranks)):
        if limit is not None and index >= limit:
            break
        inputs, target = task.unpack(batch)
        with autocast(device, autocast_dtype):
            output = task.forward(forward, inputs)
            loss = task.loss(output, target)
        output = output.float() if isinstance(output, torch.Tensor) else output
        totals.add(task, output, target, loss.float())
        if on_batch is not None:
            on_batch(inputs, output, target)
    return totals.compute(split, ranks)


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Mixed precision in `dtype` on the device, or nothing."""
    return nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)
