"""Early termination of losing trials (ASHA, Hyperband, median rule), coordinated through files.

The runner builds one pruner per trial, only in a multirun and only when `cfg.pruner` has a
`_target_`::

    pruner = hydra.utils.instantiate(cfg.pruner, sweep_dir=..., trial=<trial folder name>,
                                     metric=cfg.objective.metric, goal=cfg.objective.goal)
    decision = pruner.report(epoch, value)   # after every evaluated epoch; epochs are 1-based
    if decision.stop: ...                    # end the trial cleanly, status "pruned"

Trials share no memory, server or database. They meet in one append-only file in the sweep folder,
`SWEEP_DIR/.pruning/rungs.jsonl` (one line per trial and rung), read and extended under a file lock
(runner.sweep.shared_log), so trials in threads, processes or on SLURM nodes sharing a filesystem see
each other's reports.
Each trial also keeps its own decision log, `SWEEP_DIR/<trial>/pruning.jsonl`, one line per report.

Rules every pruner here follows:
- Resource = epochs. A *rung* is an epoch at which trials are compared. A report at epoch e is
  compared at the highest rung r <= e that no earlier report of the trial had reached (with an
  evaluation every 2 epochs, the rung at epoch 3 is decided at epoch 4); other reports continue.
  No decision is taken at or after `max_t`: stopping a trial that has finished saves nothing.
- The value compared is the trial's *best value so far* (over its reports up to and including
  this one), not the value at the rung epoch. A sweep ranks a trial by its best value (that is
  what result.json's objective holds and the sweeper receives), so a trial is judged on that
  number, and one noisy evaluation at a rung cannot stop a trial that has already done well.
  For curves that only improve, the two are the same.
- A trial is compared with the values that *other* trials recorded at the same rung *before* it,
  in the order of the shared file: the file alone reproduces every decision. Ties continue.
  A trial whose overrides set trainer.seed (hydra.sweeper.repeats, or a swept seed) is compared
  only with trials of the same seed (its `cohort`): one seed's luck does not stop a configuration.
- NaN and infinite values are the worst values (they are written as null in the logs).
- Decisions are final. Reporting an epoch again (a resumed trial re-evaluating) returns the
  recorded decision; after a stop, every later report returns that stop. Nothing is recorded twice.
"""

from __future__ import annotations

import hashlib
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator

from runner.errors import ConfigError
from runner.resolvers import GOALS
from runner.sweep.shared_log import SharedLog, append_jsonl, finite_or_none, read_jsonl

SHARED_FILE = Path(".pruning") / "rungs.jsonl"
TRIAL_LOG = "pruning.jsonl"


@dataclass(frozen=True)
class Decision:
    """What one report decided; one line of the trial's pruning.jsonl."""

    epoch: int
    # the metric's value reported at this epoch, and the trial's best up to it (the one compared);
    # NaN stands for every value that is not a finite number
    value: float
    best: float
    # bracket (ASHA: 0; Hyperband: the trial's; median: None) and the rung decided, None when
    # the report was at no rung
    bracket: int | None
    rung: int | None
    # the value the best had to reach to continue; None when there was nothing to compare with
    threshold: float | None
    stop: bool
    reason: str

    def to_record(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "value": finite_or_none(self.value),
            "best": finite_or_none(self.best),
            "bracket": self.bracket,
            "rung": self.rung,
            "threshold": finite_or_none(self.threshold),
            "decision": "stop" if self.stop else "continue",
            "reason": self.reason,
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Decision:
        return cls(
            epoch=int(record["epoch"]),
            value=_nan_if_none(record["value"]),
            best=_nan_if_none(record["best"]),
            bracket=record["bracket"],
            rung=record["rung"],
            threshold=record["threshold"],
            stop=record["decision"] == "stop",
            reason=record["reason"],
        )


class Pruner(ABC):
    """The report() protocol, both logs, best-so-far and the comparison at a rung.

    A rule fills in which epochs are rungs (`_highest_rung_at_or_below`), which fraction of the
    others a trial must reach (`quantile`) and how many others it needs before it can be
    stopped (`min_others`).
    """

    rule: str
    quantile: Fraction
    min_others: int
    bracket: int | None = None

    def __init__(self, *, sweep_dir: Path | str, trial: str, metric: str, goal: str,
                 grace_period: int, max_t: int, cohort: int | None = None) -> None:
        if goal not in GOALS:
            raise ConfigError(f"objective.goal={goal!r} is not allowed; use one of {', '.join(GOALS)}")
        if not trial or Path(trial).name != trial:
            raise ValueError(f"trial={trial!r} must be the trial's folder name inside the sweep folder")
        _require_int("grace_period", grace_period, minimum=1)
        _require_int("max_t", max_t, minimum=grace_period)
        self.sweep_dir = Path(sweep_dir)
        self.trial = trial
        self.metric = metric
        self.goal = goal
        self.grace_period = grace_period
        self.max_t = max_t
        # trials of a repeated sweep meet only the trials of their own seed (docs/sweeps.md)
        self.cohort = cohort
        self.trial_log = self.sweep_dir / trial / TRIAL_LOG
        self.shared = SharedLog(self.sweep_dir / SHARED_FILE)
        self._past: dict[int, Decision] | None = None

    @abstractmethod
    def _highest_rung_at_or_below(self, epoch: int) -> int | None:
        """The latest rung at or before `epoch`; None before the first."""

    @abstractmethod
    def _compared_with(self, n_others: int, rung: int) -> str:
        """Words for the reason: which of the others the trial was compared with."""

    @abstractmethod
    def _rungs_in_words(self) -> str:
        """Words for the reason: where the rungs are."""

    def report(self, epoch: int, value: float) -> Decision:
        """Record the objective's value after an evaluated epoch; say whether the trial should stop."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 1:
            raise ValueError(f"epoch={epoch!r} must be an int >= 1 (epochs are 1-based)")
        past = self._load_past()
        stops = [d for d in past.values() if d.stop and d.epoch <= epoch]
        if stops:
            return min(stops, key=lambda d: d.epoch)
        if epoch in past:
            return past[epoch]

        value = float(value)
        earlier = [d.value for d in past.values() if d.epoch < epoch]
        best = self._value(max(self._score(v) for v in [*earlier, value]))
        rung = self._rung_for(epoch, past)
        if rung is None:
            decision = Decision(epoch, value, best, self.bracket, None, None, False,
                                self._why_no_rung(epoch))
        else:
            decision = self._decide_at_rung(epoch, value, best, rung)
        append_jsonl(self.trial_log, decision.to_record())
        past[epoch] = decision
        return decision

    def _rung_for(self, epoch: int, past: dict[int, Decision]) -> int | None:
        if epoch >= self.max_t:
            return None
        rung = self._highest_rung_at_or_below(epoch)
        if rung is None or any(rung <= p < epoch for p in past):
            return None
        return rung

    def _why_no_rung(self, epoch: int) -> str:
        if epoch >= self.max_t:
            return f"epoch {epoch} reached max_t={self.max_t}: no decision at the end of the budget"
        return f"no new rung at epoch {epoch} ({self._rungs_in_words()})"

    def _decide_at_rung(self, epoch: int, value: float, best: float, rung: int) -> Decision:
        with self.shared.locked():
            at_rung = [r for r in self.shared.read()
                       if r.get("rule") == self.rule and r.get("bracket") == self.bracket
                       and r.get("rung") == rung and r.get("cohort") == self.cohort]
            mine = next((r for r in at_rung if r.get("trial") == self.trial), None)
            if mine is not None:
                # Decided before, and the trial's own log lost the line (a crash in between):
                # the shared record is the decision.
                return Decision(epoch, value, _nan_if_none(mine["best"]), self.bracket, rung,
                                mine["threshold"], mine["decision"] == "stop", mine["reason"])
            others = [self._score(_nan_if_none(r["best"])) for r in at_rung]
            threshold = None
            if len(others) >= self.min_others:
                threshold = self._value(_percentile(others, self.quantile))
            stop = threshold is not None and self._score(best) < self._score(threshold)
            reason = self._reason(best, threshold, stop, len(others), rung)
            decision = Decision(epoch, value, best, self.bracket, rung, threshold, stop, reason)
            cohort = {} if self.cohort is None else {"cohort": self.cohort}
            self.shared.append({"rule": self.rule, "trial": self.trial, **cohort, **decision.to_record()})
        return decision

    def _reason(self, best: float, threshold: float | None, stop: bool, n_others: int,
                rung: int) -> str:
        if threshold is None and n_others == 0:
            return f"first trial at rung {rung}: nothing to compare with, continue"
        if threshold is None:
            return (f"only {n_others} other trial(s) recorded at rung {rung} and comparing needs "
                    f"{self.min_others}: continue")
        verdict = "worse than" if stop else "not worse than"
        return (f"best {self.metric} {best:.6g} is {verdict} {threshold:.6g}, "
                f"{self._compared_with(n_others, rung)} ({self.goal})")

    def _score(self, value: float) -> float:
        """Higher is better whatever the goal; a value that is not a finite number is the worst."""
        if not math.isfinite(value):
            return -math.inf
        return value if self.goal == "maximize" else -value

    def _value(self, score: float) -> float:
        if not math.isfinite(score):
            return math.nan
        return score if self.goal == "maximize" else -score

    def _load_past(self) -> dict[int, Decision]:
        if self._past is None:
            self._past = {}
            for record in read_jsonl(self.trial_log):
                decision = Decision.from_record(record)
                self._past.setdefault(decision.epoch, decision)
        return self._past


class ASHA(Pruner):
    """Asynchronous successive halving, as Ray Tune's AsyncHyperBandScheduler with one bracket.

    Rungs are the epochs ceil(grace_period * reduction_factor**k) below max_t (1, 3, 9 for 1, 10,
    3). At a rung a trial continues if its best value so far reaches the (1 - 1/reduction_factor)
    percentile (linear interpolation, as numpy) of the values other trials recorded at that rung
    before it: it is in their top 1/reduction_factor. The first trial at a rung continues.
    """

    rule = "asha"
    min_others = 1

    def __init__(self, *, sweep_dir: Path | str, trial: str, metric: str, goal: str,
                 max_t: int, grace_period: int = 1, reduction_factor: float = 3, cohort: int | None = None) -> None:
        super().__init__(sweep_dir=sweep_dir, trial=trial, metric=metric, goal=goal,
                         grace_period=grace_period, max_t=max_t, cohort=cohort)
        if isinstance(reduction_factor, bool) or not isinstance(reduction_factor, (int, float)) \
                or not reduction_factor > 1:
            raise ConfigError(f"pruner.reduction_factor={reduction_factor!r} is not allowed; "
                              f"use a number > 1 (2, 3 or 4 are usual)")
        self.reduction_factor = reduction_factor
        self.quantile = 1 - 1 / Fraction(reduction_factor)
        self.bracket = 0
        self.rungs = self._rungs_from(0)

    def _milestones(self) -> Iterator[Fraction]:
        """grace_period * reduction_factor**k for k = 0, 1, ... while it is at most max_t."""
        milestone = Fraction(self.grace_period)
        while milestone <= self.max_t:
            yield milestone
            milestone *= Fraction(self.reduction_factor)

    def _rungs_from(self, k: int) -> list[int]:
        return sorted({math.ceil(m) for m in list(self._milestones())[k:] if m < self.max_t})

    def _highest_rung_at_or_below(self, epoch: int) -> int | None:
        return max((r for r in self.rungs if r <= epoch), default=None)

    def _rungs_in_words(self) -> str:
        return f"rungs: {', '.join(map(str, self.rungs))}" if self.rungs else "no rung below max_t"

    def _compared_with(self, n_others: int, rung: int) -> str:
        return (f"the cutoff for the top 1/{self.reduction_factor:g} of {n_others} other "
                f"trial(s) at rung {rung}")


class Hyperband(ASHA):
    """Several ASHA brackets (asynchronous Hyperband); each trial runs in one of them.

    Bracket s (s = 0 .. brackets-1) has its first rung at grace_period * reduction_factor**s, so
    higher brackets stop trials later and less often; a trial is compared only with trials of its
    own bracket. The bracket is a stable hash (SHA-256) of the trial's name modulo `brackets`: the
    same trial lands in the same bracket in every process, node and resumed sweep. By default
    there is a bracket for each s with grace_period * reduction_factor**s <= max_t; when that
    product equals max_t, the last bracket has no rung and never stops anyone (Hyperband's
    full-budget bracket).
    """

    rule = "hyperband"

    def __init__(self, *, sweep_dir: Path | str, trial: str, metric: str, goal: str,
                 max_t: int, grace_period: int = 1, reduction_factor: float = 3,
                 brackets: int | None = None, cohort: int | None = None) -> None:
        super().__init__(sweep_dir=sweep_dir, trial=trial, metric=metric, goal=goal, max_t=max_t,
                         grace_period=grace_period, reduction_factor=reduction_factor, cohort=cohort)
        most = len(list(self._milestones()))
        if brackets is None:
            brackets = most
        _require_int("brackets", brackets, minimum=1, maximum=most)
        self.brackets = brackets
        self.bracket = bracket_of(trial, brackets)
        self.rungs = self._rungs_from(self.bracket)

    def _compared_with(self, n_others: int, rung: int) -> str:
        return f"{super()._compared_with(n_others, rung)} of bracket {self.bracket}"


class Median(Pruner):
    """The median stopping rule (Optuna's MedianPruner, Ray Tune's MedianStoppingRule).

    Every epoch from grace_period on (below max_t) is a rung. A trial stops when its best value so
    far is worse than the median of the values other trials recorded at the same epoch, once at
    least `min_trials` other trials have recorded that epoch.
    """

    rule = "median"
    quantile = Fraction(1, 2)

    def __init__(self, *, sweep_dir: Path | str, trial: str, metric: str, goal: str,
                 max_t: int, grace_period: int = 1, min_trials: int = 3, cohort: int | None = None) -> None:
        super().__init__(sweep_dir=sweep_dir, trial=trial, metric=metric, goal=goal,
                         grace_period=grace_period, max_t=max_t, cohort=cohort)
        _require_int("min_trials", min_trials, minimum=1)
        self.min_others = min_trials

    def _highest_rung_at_or_below(self, epoch: int) -> int | None:
        return epoch if epoch >= self.grace_period else None

    def _rungs_in_words(self) -> str:
        return f"rungs: every epoch from {self.grace_period} to {self.max_t - 1}"

    def _compared_with(self, n_others: int, rung: int) -> str:
        return f"the median of {n_others} other trial(s) at epoch {rung}"


def bracket_of(trial: str, brackets: int) -> int:
    """The trial's Hyperband bracket: the same in every process (Python's hash() is salted)."""
    digest = hashlib.sha256(trial.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % brackets


def _percentile(scores: list[float], quantile: Fraction) -> float:
    """numpy's default (linear) percentile, with the position computed exactly.

    An exact position keeps ties exact: in floats the 2/3 position among 10 values is
    6.000000000000001, a hair past the 7th value, and a trial equal to it would be stopped.
    """
    ordered = sorted(scores)
    position = (len(ordered) - 1) * quantile
    low = math.floor(position)
    fraction = position - low
    if fraction == 0:
        return ordered[low]
    below, above = ordered[low], ordered[low + 1]
    if below == -math.inf:
        return below
    return below + (above - below) * float(fraction)


def _require_int(name: str, value: Any, *, minimum: int, maximum: int | None = None) -> None:
    bad = isinstance(value, bool) or not isinstance(value, int) or value < minimum
    if bad or (maximum is not None and value > maximum):
        allowed = f"an int from {minimum} to {maximum}" if maximum is not None else f"an int >= {minimum}"
        raise ConfigError(f"pruner.{name}={value!r} is not allowed; use {allowed}")


def _nan_if_none(value: float | None) -> float:
    return math.nan if value is None else float(value)
