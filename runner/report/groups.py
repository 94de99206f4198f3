"""Trials grouped by configuration (their overrides without the seed): the ranking of a repeated sweep.

A sweep run with `hydra.sweeper.repeats=k` (runner.sweep.repeats) holds k trials per configuration,
one per seed. Its configurations are ranked by the mean objective of their ranked trials, each with a
95% Student-t interval (scipy.stats). The best configuration is a clear winner only when its interval
is clear of the runner-up's; otherwise the report says "no clear winner: #a and #b overlap".
"""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass

from scipy import stats

from runner.report.ranking import Sweep, by_number
from runner.report.trials import Trial
from runner.sweep.repeats import SEED_KEY, without_seed

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Group:
    """One configuration's trials, its mean objective and the 95% interval of that mean."""

    rank: int | None
    overrides: tuple[str, ...]
    trials: list[Trial]
    mean: float | None
    low: float | None
    high: float | None

    @property
    def numbers(self) -> list[int | None]:
        return [t.number for t in self.trials]

    @property
    def label(self) -> str:
        return f"#{self.rank} ({shlex.join(self.overrides)})"


@dataclass(frozen=True)
class GroupRanking:
    """The configurations best first, and whether the best one's interval is clear of the runner-up's."""

    groups: list[Group]
    clear_winner: bool
    verdict: str

    def group_of(self, trial: Trial) -> Group:
        return next(g for g in self.groups if trial in g.trials)


def is_repeated(sweep: Sweep) -> bool:
    """Whether the sweep ran configurations with several seeds each (its trials set the seed)."""
    return any(any(o.partition("=")[0].lstrip("+~") == SEED_KEY for o in t.overrides) for t in sweep.trials) and \
        len({tuple(without_seed(t.overrides)) for t in sweep.trials}) < len(sweep.trials)


def mean_interval(values: list[float]) -> tuple[float | None, float | None, float | None]:
    """The mean and its 95% Student-t interval; no interval from fewer than two values."""
    if not values:
        return None, None, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None, None
    sem = stats.sem(values)
    if sem == 0:
        return mean, mean, mean
    low, high = stats.t.interval(CONFIDENCE, len(values) - 1, loc=mean, scale=sem)
    return mean, float(low), float(high)


def rank_groups(sweep: Sweep) -> GroupRanking | None:
    """The configurations of a repeated sweep, best mean first; None for a sweep without repeats."""
    if not is_repeated(sweep):
        return None
    members: dict[tuple[str, ...], list[Trial]] = {}
    for trial in sorted(sweep.trials, key=by_number):
        members.setdefault(tuple(without_seed(trial.overrides)), []).append(trial)
    sign = -1.0 if sweep.goal == "maximize" else 1.0
    scored = []
    for overrides, trials in members.items():
        values = [t.value for t in trials if t.ranked and math.isfinite(t.value)]
        scored.append((overrides, trials, *mean_interval(values)))
    scored.sort(key=lambda s: (s[2] is None, sign * s[2] if s[2] is not None else 0.0))
    groups = [Group(i + 1 if s[2] is not None else None, *s) for i, s in enumerate(scored)]
    clear, verdict = _verdict([g for g in groups if g.rank is not None], sign)
    return GroupRanking(groups, clear, verdict)


def _verdict(ranked: list[Group], sign: float) -> tuple[bool, str]:
    if not ranked:
        return False, "no configuration has a value yet"
    if len(ranked) == 1:
        return True, f"one configuration: #{ranked[0].rank}"
    best, runner_up = ranked[0], ranked[1]
    if best.low is None or runner_up.low is None:
        return False, f"no clear winner: #{best.rank} and #{runner_up.rank} have too few trials for an interval"
    # the best's worst end against the runner-up's best end, in the goal's direction
    best_worst = max(sign * best.low, sign * best.high)
    other_best = min(sign * runner_up.low, sign * runner_up.high)
    if best_worst < other_best:
        return True, f"clear winner: #{best.rank}, its 95% interval is clear of #{runner_up.rank}'s"
    return False, f"no clear winner: #{best.rank} and #{runner_up.rank} overlap"


def format_groups(ranking: GroupRanking, metric: str) -> str:
    """The configurations table printed above the trials in a repeated sweep's report."""
    lines = [f"Configurations by mean {metric} (95% interval over seeds): {ranking.verdict}"]
    for group in ranking.groups:
        mean = "-" if group.mean is None else f"{group.mean:.4g}"
        interval = "" if group.low is None else f" [{group.low:.4g}, {group.high:.4g}]"
        trials = ",".join(str(n) for n in group.numbers)
        lines.append(f"  {'-' if group.rank is None else group.rank}  {mean}{interval}  trials {trials}  "
                     f"{shlex.join(group.overrides)}")
    return "\n".join(lines)


def group_record(ranking: GroupRanking) -> dict:
    """best.yaml's `group`: the best configuration, its member trials, mean, interval and verdict."""
    best = ranking.groups[0]
    return {"rank": best.rank, "overrides": list(best.overrides), "trials": best.numbers, "mean": best.mean,
            "interval": None if best.low is None else [best.low, best.high], "confidence": CONFIDENCE,
            "clear_winner": ranking.clear_winner, "verdict": ranking.verdict}


def group_columns(ranking: GroupRanking | None, trial: Trial) -> dict:
    """summary.csv's group columns for one trial (empty for a sweep without repeats)."""
    if ranking is None:
        return {}
    group = ranking.group_of(trial)
    return {"group_rank": group.rank, "group_mean": group.mean, "group_low": group.low, "group_high": group.high,
            "group_trials": " ".join(str(n) for n in group.numbers)}


GROUP_COLUMNS = ["group_rank", "group_mean", "group_low", "group_high", "group_trials"]
