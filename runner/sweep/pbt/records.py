"""PBT's shared records: SWEEP_DIR/pbt_global.jsonl, one line per trial attempt and perturbation
point, and the decision a trial takes on them under the lock (continue, or exploit a donor).

A trial is compared only with its population (the trials whose weights fit its own) at the same
epoch; the donor's checkpoint is linked into the trial's folder before the record naming it is
written, so nothing a decision refers to can disappear.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from runner.config.problems import leaves
from runner.errors import ConfigError
from runner.files import link_or_copy
from runner.resolvers import GOALS
from runner.results import now
from runner.sweep.shared_log import SharedLog, finite_or_none, read_jsonl

GLOBAL_LOG = "pbt_global.jsonl"


def checkpoint_name(epoch: int) -> str:
    return f"pbt_epoch_{epoch:04d}.pt"


def donor_name(epoch: int) -> str:
    return f"pbt_donor_epoch_{epoch:04d}.pt"


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


def read_records(sweep_dir: Path) -> list[dict[str, Any]]:
    """The sweep's global log (every trial's latest attempt); [] for a sweep without PBT."""
    return latest_attempts(read_jsonl(Path(sweep_dir) / GLOBAL_LOG))


def _own(records: list[dict[str, Any]], trial: str, attempt: str, epoch: int) -> dict[str, Any] | None:
    return next((r for r in records if r.get("trial") == trial and r.get("attempt") == attempt
                 and r.get("epoch") == epoch), None)


def _relative(path: Path, root: Path) -> str:
    return str(Path(path).resolve().relative_to(Path(root).resolve()))
