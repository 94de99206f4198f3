"""Which swept parameter mattered: a random forest fitted to the completed trials' objective, and each
parameter's permutation importance in it (how much worse the forest predicts the objective when that
parameter's values are shuffled among the trials), as W&B's importance panel and Optuna's importance
module estimate it. Written to importance.csv, shown above the ranked table and drawn in parameters.png.

Only completed trials count: a pruned trial's objective is its best over the epochs it had, not
comparable with a finished trial's (Optuna's importance reads completed trials too). Below
MIN_TRIALS of them the estimate is noise, and the report says so instead of printing it.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field

from runner.files import write_text_atomic

# runner.report.ranking imports this module (Sweep.importance): "Sweep" and "Trial" stay names here
IMPORTANCE_FILE = "importance.csv"
# fewer completed trials than this: a forest over a handful of points ranks noise
MIN_TRIALS = 10
TREES = 100
SHUFFLES = 10
# one fixed seed for the forest and the shuffles: the same sweep always gets the same importances
SEED = 0
METHOD = "random forest, permutation importance"


@dataclass(frozen=True)
class Importance:
    """Each swept parameter's share of the objective's explained variation, most important first; no
    shares and a `note` saying why when it could not be estimated."""

    trials: int
    # parameter -> share of the summed importance (the shares add up to 1)
    shares: dict[str, float] = field(default_factory=dict)
    # parameter -> mean drop of the forest's R² over the trials when the parameter is shuffled, and its spread
    drops: dict[str, float] = field(default_factory=dict)
    spreads: dict[str, float] = field(default_factory=dict)
    note: str | None = None

    @property
    def estimated(self) -> bool:
        return bool(self.shares)


def completed_trials(sweep: "Sweep") -> list["Trial"]:
    return [t for t in sweep.trials if t.status == "completed" and t.value is not None]


def parameter_importance(sweep: "Sweep") -> Importance:
    """The importance of every parameter the sweep varied for its objective, over its completed trials."""
    trials = completed_trials(sweep)
    if not sweep.parameters:
        return Importance(len(trials), note="the sweep varied no parameter")
    if len(trials) < MIN_TRIALS:
        return Importance(len(trials), note=f"needs at least {MIN_TRIALS} completed trials with a value, "
                                            f"the sweep has {len(trials)}")
    values = [t.value for t in trials]
    if min(values) == max(values):
        return Importance(len(trials), note=f"the objective is {values[0]:.4g} in every completed trial: "
                                            f"nothing to explain")
    import numpy as np
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.inspection import permutation_importance

    keys = list(sweep.parameters)
    names = [t.name for t in trials]
    features = np.column_stack([encoded(sweep.parameters[key], names) for key in keys])
    forest = RandomForestRegressor(n_estimators=TREES, random_state=SEED).fit(features, values)
    shuffled = permutation_importance(forest, features, values, n_repeats=SHUFFLES, random_state=SEED)
    # a parameter whose shuffling helps the forest by chance explains nothing: 0, not a negative share
    drops = np.clip(shuffled.importances_mean, 0.0, None)
    total = float(drops.sum())
    order = sorted(range(len(keys)), key=lambda i: (-drops[i], keys[i]))
    return Importance(
        trials=len(trials),
        shares={keys[i]: float(drops[i]) / total if total > 0 else 0.0 for i in order},
        drops={keys[i]: float(shuffled.importances_mean[i]) for i in order},
        spreads={keys[i]: float(shuffled.importances_std[i]) for i in order},
    )


def encoded(values: dict[str, object], names: list[str]) -> list[float]:
    """One parameter as the forest's numeric feature over the trials `names`: numbers as they are, text
    and booleans as the index of their sorted value, a trial that does not set it (a key only some
    trials have) below every value, where a tree splits it off as a value of its own."""
    present = [values[name] for name in names if name in values]
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        codes = {name: float(values[name]) for name in names if name in values}
    else:
        order = sorted({str(v) for v in present})
        codes = {name: float(order.index(str(values[name]))) for name in names if name in values}
    low, high = min(codes.values(), default=0.0), max(codes.values(), default=0.0)
    absent = low - 1.0 - (high - low)
    return [codes.get(name, absent) for name in names]


def format_importance(sweep: "Sweep") -> str | None:
    """The line above the ranked table: each parameter's share, or why there is none; None when the
    sweep varied nothing."""
    importance = sweep.importance
    if not sweep.parameters:
        return None
    if not importance.estimated:
        return f"Importance: not estimated: {importance.note}"
    shares = ", ".join(f"{key} {share:.2f}" for key, share in importance.shares.items())
    return f"Importance ({METHOD}, {importance.trials} completed trials): {shares}"


def importance_record(sweep: "Sweep") -> dict:
    """The importance as plain data (for `--json`)."""
    importance = sweep.importance
    return {
        "method": METHOD,
        "trials": importance.trials,
        "min_trials": MIN_TRIALS,
        "parameters": [
            {"parameter": key, "importance": share, "r2_drop": importance.drops[key],
             "r2_drop_std": importance.spreads[key]}
            for key, share in importance.shares.items()
        ],
        "note": importance.note,
    }


def write_importance_csv(sweep: "Sweep") -> None:
    """importance.csv, most important first; no file while the importance cannot be estimated."""
    path = sweep.path / IMPORTANCE_FILE
    record = importance_record(sweep)
    if not record["parameters"]:
        path.unlink(missing_ok=True)
        return
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["rank", "parameter", "importance", "r2_drop", "r2_drop_std",
                                                "trials"], lineterminator="\n")
    writer.writeheader()
    for rank, row in enumerate(record["parameters"], start=1):
        writer.writerow({"rank": rank, **{k: _rounded(v) for k, v in row.items()}, "trials": record["trials"]})
    write_text_atomic(path, buffer.getvalue())


def _rounded(value):
    return round(value, 6) if isinstance(value, float) and math.isfinite(value) else value
