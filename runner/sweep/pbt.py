"""Population Based Training across a sweep's trials, coordinated through files in the sweep folder.

PBT (Jaderberg et al. 2017; Ray Tune's PopulationBasedTraining) trains a sweep's trials side by
side. At each perturbation point (every `perturbation_interval` epochs from `burn_in` on, below
`trainer.max_epochs`) a trial saves its checkpoint, records its objective and decides on its own,
never waiting for another trial: if it is in the bottom `quantile_fraction` of the trials that
recorded the same epoch, it copies a random top-quantile trial's checkpoint (weights, optimizer,
scheduler, step and random states) with that trial's hyperparameters ("exploit"), perturbs them
("explore") and trains on from there in its own folder.

Trials share no memory, server or database. They meet in one append-only file,
`SWEEP_DIR/pbt_global.jsonl`, read and extended under a file lock (runner.sweep.shared_log.SharedLog): one
line per trial and perturbation point with its value, its hyperparameters, its checkpoint and the
decision. A trial compares itself with the records of the *same epoch*: trials of one sweep may run
all at once, two at a time or one after another (a local sweep), and a trial at epoch 2 is
compared with what others had at epoch 2, never with a trial that has already finished.

Files:
- `SWEEP_DIR/pbt_global.jsonl`: the global log, every perturbation point of every trial;
- `TRIAL/checkpoints/pbt_epoch_NNNN.pt`: the trial's state at each perturbation point, what donors
  are copied from (written atomically before the record that names it);
- `TRIAL/checkpoints/pbt_donor_epoch_NNNN.pt`: the donor's checkpoint, hard-linked (or copied)
  under the lock when the decision is made, so nothing it refers to can disappear;
- `TRIAL/pbt_policy.jsonl`: the lineage of the trial's weights: where it started and every exploit
  (epoch, trial, donor, old, copied and new values), copied from the donor's and extended. It is
  the schedule a replay (`pbt=replay pbt.policy=TRIAL`) trains with.

Decisions are final: a resumed trial that reaches a perturbation point it recorded before applies
the recorded decision again (from the donor checkpoint it linked) instead of deciding anew.
Only trials of one *population* are compared: trials whose configs are the same apart from the
mutated keys and what a resume may change (runner.config.resume.MAY_CHANGE, trainer.max_epochs
excepted), since only their weights fit each other.

This module imports no torch at load time: the config checks run before torch is imported.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import random
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, ListConfig, OmegaConf

from runner.run.callbacks import Callback
from runner.config.problems import bullets, leaves
from runner.config.pbt import explore, parse_mutations, settings_problems
from runner.errors import ConfigError, TrialFailed
from runner.sweep.shared_log import SharedLog, finite_or_none, read_jsonl
from runner.resolvers import GOALS
from runner.results import BEST_CHECKPOINT, now, write_text_atomic

log = logging.getLogger(__name__)

GLOBAL_LOG = "pbt_global.jsonl"
POLICY_FILE = "pbt_policy.jsonl"
CALLBACK_NAME = "pbt"


def checkpoint_name(epoch: int) -> str:
    return f"pbt_epoch_{epoch:04d}.pt"


def donor_name(epoch: int) -> str:
    return f"pbt_donor_epoch_{epoch:04d}.pt"


# ---------------------------------------------------------------- the population and its records


def population_config(cfg: DictConfig, keys: list[str]) -> dict[str, Any]:
    """The config's leaves (as written) that trials must share to copy weights from each other:
    all but the mutated keys, `pbt` itself and what a resume may change, except the run's length."""
    from runner.config.resume import may_change

    def shared(key: str) -> bool:
        if key == "pbt" or key.startswith(("pbt.", "pbt[")):
            return False
        if any(key == k or key.startswith((k + ".", k + "[")) for k in keys):
            return False
        return key == "trainer.max_epochs" or not may_change(key)

    return {key: value for key, value in leaves(OmegaConf.to_container(cfg, resolve=False)) if shared(key)}


def digest(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(sorted(config.items()), default=str).encode("utf-8")).hexdigest()[:16]


def current_values(cfg: DictConfig, keys: list[str]) -> dict[str, Any]:
    return {key: _plain(OmegaConf.select(cfg, key)) for key in keys}


def quantile_count(n: int, fraction: float) -> int:
    """How many trials of `n` are in the bottom (and the top) quantile: ceil(n * fraction), at most half."""
    return min(math.ceil(n * fraction - 1e-9), n // 2)


class Population:
    """One trial's side of the shared records: what it recorded before, and its decisions.

    A record (one line of pbt_global.jsonl) is written once per trial attempt and perturbation
    point, under the lock, with its decision; a trial's attempt changes only when it starts over
    (trainer.resume=never), and only each trial's latest attempt counts.
    """

    def __init__(self, sweep_dir: Path, trial: str, goal: str, population: str, quantile_fraction: float,
                 seed: int) -> None:
        if goal not in GOALS:
            raise ConfigError(f"objective.goal={goal!r} is not allowed; use one of {', '.join(GOALS)}")
        self.sweep_dir, self.trial, self.goal = Path(sweep_dir), trial, goal
        self.population, self.quantile_fraction, self.seed = population, quantile_fraction, seed
        self.shared = SharedLog(self.sweep_dir / GLOBAL_LOG)

    def recorded(self, epoch: int, attempt: str) -> dict[str, Any] | None:
        """This attempt's record at `epoch`, if it made one before (a resumed trial)."""
        with self.shared.locked():
            records = self.shared.read()
        return _own(records, self.trial, attempt, epoch)

    def score(self, value: float | None) -> float:
        """Higher is better whatever the goal; a value that is not a finite number is the worst."""
        if value is None or not math.isfinite(value):
            return -math.inf
        return value if self.goal == "maximize" else -value

    def rng(self, epoch: int) -> random.Random:
        """The random state of this trial's decision at `epoch`: the same in every process and resume."""
        seed = hashlib.sha256(f"{self.seed}/{self.trial}/{epoch}".encode("utf-8")).digest()
        return random.Random(int.from_bytes(seed[:8], "big"))

    def record(self, *, epoch: int, attempt: str, value: float, values: dict[str, Any], checkpoint: Path,
               choose_new: Callable[[dict[str, Any], random.Random], dict[str, Any]]) -> dict[str, Any]:
        """Record this trial's objective at `epoch` (its checkpoint is written) and decide, under the lock.

        In the bottom quantile of the population's records at this epoch, it takes a random
        top-quantile record as donor: the donor's checkpoint is linked into this trial's folder
        before the record is written, and `choose_new(donor_record, rng)` explores its values.
        """
        run_dir = self.sweep_dir / self.trial
        with self.shared.locked():
            records = self.shared.read()
            mine = _own(records, self.trial, attempt, epoch)
            if mine is not None:
                return mine
            others = [r for r in latest_attempts(records) if r.get("epoch") == epoch
                      and r.get("population") == self.population and r.get("trial") != self.trial]
            own = self.score(value)
            n = len(others) + 1
            k = quantile_count(n, self.quantile_fraction)
            better = [r for r in others if self.score(r.get("value")) > own]
            record = {
                "trial": self.trial, "attempt": attempt, "epoch": epoch, "value": finite_or_none(value),
                "population": self.population, "checkpoint": _relative(checkpoint, self.sweep_dir),
                "values": values, "decision": "continue", "donor": None, "donor_value": None,
                "donor_checkpoint": None, "copied": None, "new": None, "reason": "", "time": now(),
            }
            rank = f"{len(better) + 1} of {n} at epoch {epoch}"
            if k == 0:
                record["reason"] = f"{n} trial(s) recorded epoch {epoch}: too few to take a bottom quantile from"
            elif len(better) < n - k:
                record["reason"] = f"rank {rank}: not in the bottom {k}"
            else:
                top = sorted(others, key=lambda r: self.score(r.get("value")), reverse=True)[:k]
                rng = self.rng(epoch)
                candidates, missing = list(top), []
                while candidates:
                    donor = rng.choice(candidates)
                    link = run_dir / "checkpoints" / donor_name(epoch)
                    try:
                        link_or_copy(self.sweep_dir / donor["checkpoint"], link)
                    except FileNotFoundError:
                        candidates.remove(donor)
                        missing.append(donor["trial"])
                        continue
                    record.update(
                        decision="exploit", donor=donor["trial"], donor_value=donor.get("value"),
                        donor_checkpoint=_relative(link, self.sweep_dir), copied=donor["values"],
                        new=choose_new(donor["values"], rng),
                        reason=f"rank {rank}: in the bottom {k}, copied {donor['trial']} (top {k})")
                    break
                else:
                    record["reason"] = (f"rank {rank}: in the bottom {k}, but no usable donor: the checkpoints of "
                                        f"{', '.join(missing)} are gone; continuing")
            self.shared.append(record)
        return record


def latest_attempts(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records of each trial's latest attempt (the attempt of its last line)."""
    latest = {r.get("trial"): r.get("attempt") for r in records}
    return [r for r in records if latest.get(r.get("trial")) == r.get("attempt")]


def link_or_copy(source: Path, target: Path) -> None:
    """`target` becomes `source`'s content: a hard link (no copy, and it stays if `source` is deleted),
    or a copy where the filesystem has none; either way renamed into place whole."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    try:
        try:
            os.link(source, temporary)
        except FileNotFoundError:
            raise
        except OSError:  # no hard links here (some network filesystems): copy
            with open(source, "rb") as src, open(temporary, "wb") as dst:
                shutil.copyfileobj(src, dst)
                dst.flush()
                os.fsync(dst.fileno())
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


# ---------------------------------------------------------------- applying values to a live run


def apply_values(fit, new: dict[str, Any], live: dict[str, Any]) -> None:
    """Give the running `fit` the values `new`; it trains with `live` now.

    optimizer.<setting> goes into every param group. With a learning-rate scheduler,
    `optimizer.lr` is the schedule's base: a new value scales the schedule (its base rates and the
    current rate) by new / old. trainer.batch_size takes effect from the next epoch;
    loss.criterion.<setting> sets the criterion's attribute. The run's config (stored in every
    checkpoint) gets the new values too.
    """
    for key, value in new.items():
        section, _, name = key.partition(".")
        if section == "optimizer":
            _set_optimizer_setting(fit, name, value, live.get(key))
        elif key == "trainer.batch_size":
            fit.set_batch_size(int(value))
        elif key == "trainer.gradient_clip_val":
            fit.trainer.gradient_clip_val = value
        else:
            setattr(fit.task.criterion, key.removeprefix("loss.criterion."), value)
        OmegaConf.update(fit.cfg, key, value, merge=False)


def _set_optimizer_setting(fit, name: str, value: Any, old: Any) -> None:
    groups = fit.optimizer.param_groups
    if name == "lr" and fit.scheduler is not None and _is_number(old) and old > 0:
        ratio = value / old
        for group in groups:
            for rate in ("lr", "initial_lr", "max_lr", "min_lr"):
                if _is_number(group.get(rate)):
                    group[rate] *= ratio
        if hasattr(fit.scheduler, "base_lrs"):
            fit.scheduler.base_lrs = [rate * ratio for rate in fit.scheduler.base_lrs]
        if hasattr(fit.scheduler, "_last_lr"):
            fit.scheduler._last_lr = [group["lr"] for group in groups]
        return
    for group in groups:
        group[name] = value


def check_live_keys(fit, keys: list[str]) -> None:
    """Every optimizer and loss key must be a setting the built objects hold."""
    problems = []
    groups = fit.optimizer.param_groups
    for key in keys:
        section, _, name = key.partition(".")
        if section == "optimizer" and name not in groups[0]:
            settings = ", ".join(k for k in groups[0] if k != "params")
            problems.append(f"pbt.mutations: {key} is not a setting of {type(fit.optimizer).__name__}'s param "
                            f"groups, which PBT changes (they have: {settings})")
        if key.startswith("loss.criterion.") and not hasattr(fit.task.criterion, key.removeprefix("loss.criterion.")):
            problems.append(f"pbt.mutations: {key} is not an attribute of the loss "
                            f"{type(fit.task.criterion).__name__}, so it cannot change while the run trains")
    if problems:
        raise ConfigError(bullets(problems))


def resumed_config(cfg: DictConfig, saved_yaml: str, keys: list[str]) -> DictConfig:
    """The config a PBT trial (or a replay) resumes with: the composed one, with the mutated keys'
    values from the checkpoint (the run's effective config). Everything else must still match."""
    saved = OmegaConf.create(saved_yaml)
    effective = copy.deepcopy(cfg)
    for key in keys:
        OmegaConf.update(effective, key, OmegaConf.select(saved, key), merge=False)
    return effective


# ---------------------------------------------------------------- the policy file: lineage and schedule


def read_policy(path: Path) -> list[dict[str, Any]]:
    """A pbt_policy.jsonl: its start line, then every exploit of the lineage in order."""
    if path.is_dir():
        path = path / POLICY_FILE
    if not path.is_file():
        raise ConfigError(f"pbt.policy={path}: no such file; give a PBT trial's folder or its {POLICY_FILE}")
    entries = read_jsonl(path)
    if not entries or entries[0].get("event") != "start" or any(e.get("event") != "exploit" for e in entries[1:]):
        raise ConfigError(f"pbt.policy={path} is not a PBT policy (a start line, then one line per exploit)")
    return entries


def policy_path(path: Path | str) -> Path:
    path = Path(path)
    return path / POLICY_FILE if path.is_dir() else path


@dataclass(frozen=True)
class Segment:
    """Epochs `first` to `last` (None: to the end) of a lineage, trained by `trial` with `values`."""

    first: int
    last: int | None
    trial: str
    values: dict[str, Any]


def schedule(policy: list[dict[str, Any]]) -> list[Segment]:
    """The hyperparameters over epochs along a policy's lineage, and which trial trained each part.

    The start line's trial trained from epoch 1 with its values; at each exploit at epoch e the
    exploiting trial took the weights and trained epochs e+1 on with the new values.
    """
    segments = []
    first, trial, values = 1, policy[0]["trial"], policy[0]["values"]
    for entry in policy[1:]:
        segments.append(Segment(first, entry["epoch"], trial, values))
        first, trial, values = entry["epoch"] + 1, entry["trial"], entry["new"]
    segments.append(Segment(first, None, trial, values))
    return segments


def read_records(sweep_dir: Path) -> list[dict[str, Any]]:
    """The sweep's global log (every trial's latest attempt); [] for a sweep without PBT."""
    return latest_attempts(read_jsonl(Path(sweep_dir) / GLOBAL_LOG))


# ---------------------------------------------------------------- the callbacks


class PopulationBasedTraining(Callback):
    """PBT for one trial of a sweep (conf/pbt/async.yaml): record, decide, exploit and explore."""

    needs_sweep = True

    def __init__(self, *, cfg: DictConfig, sweep_dir: Path | str, trial: str, mutations: Any,
                 perturbation_interval: int = 2, burn_in: int = 0, quantile_fraction: float = 0.25,
                 resample_probability: float = 0.25, perturbation_factors: Any = (0.8, 1.2)) -> None:
        problems = settings_problems(perturbation_interval, burn_in, quantile_fraction, resample_probability,
                                     perturbation_factors)
        if problems:
            raise ConfigError(bullets(problems))
        self.spaces = parse_mutations(mutations, cfg)
        self.keys = sorted(self.spaces)
        self.interval, self.burn_in = perturbation_interval, burn_in
        self.resample_probability = resample_probability
        self.factors = tuple(float(f) for f in perturbation_factors)
        self.metric = cfg.objective.metric
        self.run_dir = Path(sweep_dir) / trial
        self.trial = trial
        self.config = population_config(cfg, self.keys)
        self.population = Population(Path(sweep_dir), trial, cfg.objective.goal, digest(self.config),
                                     quantile_fraction, cfg.trainer.seed)
        # restored from a checkpoint, or set when a fresh run starts
        self.attempt: str | None = None
        self.values: dict[str, Any] | None = None
        self.policy: list[dict[str, Any]] | None = None

    def resumed_config(self, cfg: DictConfig, saved_yaml: str) -> DictConfig:
        return resumed_config(cfg, saved_yaml, self.keys)

    def is_point(self, epoch: int, max_epochs: int) -> bool:
        """A perturbation point: every `perturbation_interval` epochs from `burn_in` on, before the last epoch."""
        return epoch % self.interval == 0 and epoch >= self.burn_in and epoch < max_epochs

    def on_fit_start(self, fit):
        check_live_keys(fit, self.keys)
        if self.policy is not None:
            return  # resumed
        self.attempt = _previous_attempt(self.run_dir, self.trial) or uuid.uuid4().hex
        self.values = current_values(fit.cfg, self.keys)
        self.policy = [{"event": "start", "epoch": 0, "trial": self.trial, "attempt": self.attempt,
                        "values": self.values, "mutations": self.keys, "config": self.config}]
        self._write_policy()

    def on_epoch_end(self, fit, metrics):
        epoch = fit.progress.epoch
        if fit.stop is not None or not fit.evaluated or not self.is_point(epoch, fit.trainer.max_epochs):
            return None
        record = self.population.recorded(epoch, self.attempt)
        if record is None:
            own = fit.checkpoints / checkpoint_name(epoch)
            fit.save(own.name)
            record = self.population.record(
                epoch=epoch, attempt=self.attempt, value=float(metrics[self.metric]), values=dict(self.values),
                checkpoint=own,
                choose_new=lambda values, rng: explore(values, self.spaces, rng, self.factors,
                                                       self.resample_probability))
        else:
            log.info("PBT epoch %d: decided before (%s), applying that decision", epoch, record["decision"])
        if record["decision"] == "exploit":
            self._exploit(fit, record)
        else:
            log.info("PBT epoch %d: %s=%s, %s", epoch, self.metric, _text(record["value"]), record["reason"])
        return None

    def _exploit(self, fit, record: dict[str, Any]) -> None:
        from runner.run import checkpoint

        epoch = record["epoch"]
        if fit.is_best:
            # best.pt is this trial's own best: its weights before they are replaced (the checkpoint
            # of this perturbation point holds exactly them)
            link_or_copy(fit.checkpoints / checkpoint_name(epoch), fit.checkpoints / BEST_CHECKPOINT)
            fit.is_best = False
        path = self.population.sweep_dir / record["donor_checkpoint"]
        if not path.is_file():
            raise TrialFailed(f"PBT: the donor checkpoint {path} of the exploit recorded at epoch {epoch} is gone; "
                              f"start this trial over with trainer.resume=never")
        state = checkpoint.load(path)
        donor = state["callbacks"][CALLBACK_NAME]
        fit.take_over(state)
        apply_values(fit, record["new"], donor["values"])
        old, self.values = self.values, dict(record["new"])
        self.policy = [*donor["policy"], {
            "event": "exploit", "epoch": epoch, "trial": self.trial, "attempt": self.attempt,
            "donor": record["donor"], "value": record["value"], "donor_value": record["donor_value"],
            "old": old, "copied": donor["values"], "new": self.values}]
        self._write_policy()
        changes = ", ".join(f"{k} {_text(donor['values'].get(k))} -> {_text(v)}" for k, v in self.values.items())
        log.info("PBT epoch %d: %s=%s, %s (%s=%s); now %s", epoch, self.metric, _text(record["value"]),
                 record["reason"], self.metric, _text(record["donor_value"]), changes)

    def _write_policy(self) -> None:
        write_text_atomic(self.run_dir / POLICY_FILE, "".join(json.dumps(e) + "\n" for e in self.policy))

    def state_dict(self):
        return {"attempt": self.attempt, "values": self.values, "policy": self.policy}

    def load_state_dict(self, state):
        self.attempt, self.values, self.policy = state["attempt"], state["values"], state["policy"]


class Replay(Callback):
    """Train one run on the schedule a PBT trial's weights went through (conf/pbt/replay.yaml):
    the lineage's start values from the first epoch, and each exploit's new values after its epoch."""

    needs_sweep = False

    def __init__(self, *, cfg: DictConfig, policy: str | None) -> None:
        if not policy:
            raise ConfigError("pbt=replay needs pbt.policy=<a PBT trial's folder or its pbt_policy.jsonl>")
        self.path = policy_path(policy)
        entries = read_policy(self.path)
        start = entries[0]
        self.keys = list(start["mutations"])
        differences = _config_differences(start["config"], population_config(cfg, self.keys))
        if differences:
            lines = "\n".join(f"  - {key}: {_shown(old)} in the schedule, {_shown(new)} now"
                              for key, old, new in differences)
            raise ConfigError(
                f"pbt.policy={self.path}: the run's config differs from the one the schedule was trained with "
                f"(apart from {', '.join(self.keys)}, which the schedule sets):\n{lines}\n"
                f"Replay with the sweep's settings: the command the sweep report prints after 'Replay:'.")
        self.start = start["values"]
        self.changes = {entry["epoch"]: entry for entry in entries[1:]}
        self.values: dict[str, Any] = dict(self.start)

    def resumed_config(self, cfg: DictConfig, saved_yaml: str) -> DictConfig:
        return resumed_config(cfg, saved_yaml, self.keys)

    def on_fit_start(self, fit):
        check_live_keys(fit, self.keys)
        if fit.progress.epoch == 0:
            apply_values(fit, self.start, current_values(fit.cfg, self.keys))
            log.info("PBT replay of %s: starting with %s", self.path, _values_text(self.start))
        self.values = current_values(fit.cfg, self.keys)

    def on_epoch_end(self, fit, metrics):
        entry = self.changes.get(fit.progress.epoch)
        if entry is None or fit.stop is not None:
            return None
        apply_values(fit, entry["new"], self.values)
        self.values = dict(entry["new"])
        log.info("PBT replay, epoch %d (exploit of %s from %s): now %s", entry["epoch"], entry["trial"],
                 entry["donor"], _values_text(self.values))
        return None


# ---------------------------------------------------------------- small helpers


def _own(records: list[dict[str, Any]], trial: str, attempt: str, epoch: int) -> dict[str, Any] | None:
    return next((r for r in records if r.get("trial") == trial and r.get("attempt") == attempt
                 and r.get("epoch") == epoch), None)


def _previous_attempt(run_dir: Path, trial: str) -> str | None:
    """The attempt of a run that started in this folder and was cut before its first checkpoint:
    its policy file is still there (trainer.resume=never moves it to archive/)."""
    path = run_dir / POLICY_FILE
    if not path.is_file():
        return None
    own = [e for e in read_jsonl(path) if e.get("trial") == trial and e.get("attempt")]
    return own[-1]["attempt"] if own else None


def _config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    missing = object()
    return [(key, saved.get(key, missing), current.get(key, missing)) for key in sorted(saved.keys() | current.keys())
            if saved.get(key, missing) != current.get(key, missing)]


def _shown(value: Any) -> str:
    return repr(value) if isinstance(value, (str, int, float, bool, type(None), list, dict)) else "(absent)"


def _relative(path: Path, root: Path) -> str:
    return str(Path(path).resolve().relative_to(Path(root).resolve()))


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value) if isinstance(value, (DictConfig, ListConfig)) else value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _text(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _values_text(values: dict[str, Any]) -> str:
    return ", ".join(f"{key}={_text(value)}" for key, value in values.items())

