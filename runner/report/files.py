"""The report's tables and record in the sweep folder: summary.csv, history.csv and best.yaml."""

from __future__ import annotations

import csv
import io
import math
import shlex
from pathlib import Path

import yaml

from runner.report.groups import GROUP_COLUMNS, group_columns, group_record, rank_groups
from runner.report.pbt import pbt_lineage
from runner.report.ranking import Sweep, by_number
from runner.report.trials import rerun_command
from runner.files import write_text_atomic

SUMMARY_FILE = "summary.csv"
HISTORY_FILE = "history.csv"
BEST_FILE = "best.yaml"


def write_summary_csv(sweep: Sweep) -> None:
    """One row per trial, ranked; final/<metric> and best/<metric> columns for every metric any trial has."""
    metrics = union(list(t.final_metrics) + list(t.best_metrics) for t in sweep.trials)
    tests = union(list(t.test_metrics) for t in sweep.trials)
    several, constrained = sweep.objectives.several, bool(sweep.objectives.constraints)
    groups = rank_groups(sweep)
    columns = [*(GROUP_COLUMNS if groups else []),
        "rank", "number", "name", "status", *(["front"] if several else []), "objective",
        *(["constraints_broken"] if constrained else []), "best_epoch", "epochs", "duration_s", "reason", "overrides",
        *(f"final/{m}" for m in metrics), *(f"best/{m}" for m in metrics), *tests,
    ]  # fmt: skip
    rows = []
    for trial in sweep.trials:
        row = {
            "rank": sweep.rank_of(trial),
            "number": trial.number,
            "name": trial.name,
            "status": trial.status,
            "objective": trial.value,
            "best_epoch": trial.best_epoch,
            "epochs": trial.epochs,
            "duration_s": trial.duration_s,
            "reason": trial.reason,
            "overrides": shlex.join(trial.overrides),
        }
        if several:
            row["front"] = sweep.fronts.get(trial.name)
        if constrained:
            row["constraints_broken"] = "; ".join(sweep.broken.get(trial.name, []))
        row.update({f"final/{m}": v for m, v in trial.final_metrics.items()})
        row.update({f"best/{m}": v for m, v in trial.best_metrics.items()})
        row.update(trial.test_metrics)
        row.update(group_columns(groups, trial))
        rows.append(row)
    _write_csv(sweep.path / SUMMARY_FILE, columns, rows)


def write_history_csv(sweep: Sweep) -> None:
    """Every trial's metrics.csv rows in one long table, keyed by trial name and number."""
    columns = ["name", "number", *union(list(row) for t in sweep.trials for row in t.history)]
    rows = [{"name": t.name, "number": t.number, **row} for t in sorted(sweep.trials, key=by_number) for row in t.history]
    _write_csv(sweep.path / HISTORY_FILE, columns, rows)


def write_best_yaml(sweep: Sweep) -> None:
    """The best trial and the command that reruns it (with several objectives: every trial of the Pareto
    front, each with its command); no file while no trial has a value."""
    path = sweep.path / BEST_FILE
    best = sweep.best
    if best is None:
        path.unlink(missing_ok=True)
        return
    record = _front_record(sweep) if sweep.objectives.several else _best_record(sweep, best)
    # no line wrapping: the command is meant to be copied whole
    write_text_atomic(path, yaml.safe_dump(record, sort_keys=False, allow_unicode=True, width=math.inf))


def _front_record(sweep: Sweep) -> dict:
    objectives = sweep.objectives
    members = []
    for trial in sweep.front:
        members.append({
            "name": trial.name,
            "number": trial.number,
            "status": trial.status,
            "objectives": dict(zip(objectives.metrics, sweep.values(trial))),
            "epoch": trial.best_epoch,
            "overrides": list(trial.overrides),
            "command": rerun_command(trial),
            "cwd": trial.started_in,
            "test_metrics": trial.test_metrics or None,
            "run_dir": str(trial.path),
        })
    return {
        "objectives": [{"metric": m, "goal": g} for m, g in zip(objectives.metrics, objectives.goals)],
        "constraints": [str(c) for c in objectives.constraints],
        # no member beats another on every objective: which to pick is the user's trade-off
        "pareto_front": members,
    }


def _best_record(sweep: Sweep, best) -> dict:
    record = {
        "name": best.name,
        "number": best.number,
        "status": best.status,
        "objective": {"metric": sweep.metric, "goal": sweep.goal, "value": best.value, "epoch": best.best_epoch},
        "overrides": list(best.overrides),
        "command": rerun_command(best),
        # the folder to run the command from (where the sweep was started)
        "cwd": best.started_in,
        "test_metrics": best.test_metrics or None,
        "run_dir": str(best.path),
    }
    if sweep.objectives.constraints:
        record["constraints"] = [str(c) for c in sweep.objectives.constraints]
    groups = rank_groups(sweep)
    if groups is not None:
        record["group"] = group_record(groups)
    lineage = pbt_lineage(best)
    if lineage is not None:
        record["pbt"] = lineage
    return record


def _write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    write_text_atomic(path, buffer.getvalue())


def union(key_lists) -> list[str]:
    """Keys in first-seen order, each once."""
    return list(dict.fromkeys(key for keys in key_lists for key in keys))
