"""The printed report: the ranked table with the status counts above it, and what `--watch` shows of
the trials in flight under it."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timezone

from runner.report.cells import cell_text, duration_text, number_text, shorten
from runner.report.importance import format_importance
from runner.report.groups import format_groups, rank_groups
from runner.report.pbt import format_pbt
from runner.report.ranking import Sweep, by_number, describe
from runner.report.trials import STATUSES, rerun_command
from runner.sweep.journal import Journal


def objective_on_test(sweep: "Sweep") -> str:
    """The objective's metric on the test split: `val/acc` -> `test/acc`."""
    return "test/" + sweep.metric.split("/", 1)[-1]


def format_table(sweep: Sweep) -> str:
    """The ranked table as plain fixed-width text, with the status counts above it (as Ray Tune shows)."""
    counts = Counter(t.status for t in sweep.trials)
    lines = [
        f"Sweep {sweep.path}: {len(sweep.trials)} trials: "
        + ", ".join(f"{counts[s]} {s}" for s in STATUSES),
        f"Objective{'s' if sweep.objectives.several else ''}: {describe(sweep.objectives)}",
    ]
    several = sweep.objectives.several
    if several and sweep.front:
        lines.append(f"Pareto front: {len(sweep.front)} trial(s), no one better on every objective: "
                     + ", ".join(f"#{t.number}" for t in sweep.front) + f" (best.yaml has each one's command)")
    elif sweep.best:
        lines.append(f"Best: #{sweep.best.number} {sweep.best.name}  {sweep.metric}={number_text(sweep.best.value)}")
        lines.append(f"Rerun: {rerun_command(sweep.best)}")
        if sweep.best.started_in:
            lines.append(f"  (from {sweep.best.started_in})")
    else:
        lines.append("Best: none yet (no trial has an objective value)")
    lines += [line for line in [format_importance(sweep)] if line]
    if (groups := rank_groups(sweep)) is not None:
        lines.append(format_groups(groups, sweep.metric))
    tested = any(t.test_metrics for t in sweep.trials)
    constrained = bool(sweep.objectives.constraints)
    header = ["rank", "#", "status", *(["front"] if several else []), *sweep.objectives.metrics, "at epoch",
              *([objective_on_test(sweep)] if tested else []), *(["broken"] if constrained else []), "epochs",
              "time", *sweep.parameters, "reason"]
    body = [
        [
            cell_text(sweep.rank_of(trial)),
            cell_text(trial.number),
            trial.status,
            *([cell_text(sweep.fronts.get(trial.name))] if several else []),
            *(number_text(value) for value in sweep.values(trial)),
            cell_text(trial.best_epoch),
            *([number_text(trial.test_metrics.get(objective_on_test(sweep)))] if tested else []),
            *([shorten("; ".join(sweep.broken.get(trial.name, [])), 32)] if constrained else []),
            cell_text(trial.epochs),
            duration_text(trial.duration_s),
            *(cell_text(values.get(trial.name)) for values in sweep.parameters.values()),
            shorten(trial.reason or "", 48),
        ]
        for trial in sweep.trials
    ]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    lines.append("")
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [header, *body]]
    pbt_text = format_pbt(sweep)
    if pbt_text:
        lines += ["", pbt_text]
    return "\n".join(lines)


def format_in_flight(sweep: Sweep, now: datetime | None = None) -> str:
    """What --watch shows under the table: each trial in flight, how far it is and for how long; with
    the runner's sweepers, also the trials asked but not started yet and how many are done."""
    now = now or datetime.now(timezone.utc)
    running = sorted((t for t in sweep.trials if t.status == "running"), key=by_number)
    events = Journal(sweep.path).read()
    with_folder = {t.number for t in sweep.trials}
    told = {e["number"] for e in events if e["event"] == "tell"}
    queued = [e for e in events if e["event"] == "ask" and e["number"] not in with_folder and e["number"] not in told]
    lines = [f"In flight: {len(running) + len(queued)}"]
    for trial in running:
        if trial.started_at is None:
            where = "starting"
        else:
            started = datetime.fromisoformat(trial.started_at)
            if started.tzinfo is None:  # result.json writes UTC times
                started = started.replace(tzinfo=timezone.utc)
            seconds = (now - started).total_seconds()
            where = f"epoch {trial.epochs or 0}/{cell_text(trial.max_epochs)}, running for {duration_text(seconds)}"
        lines.append(f"  #{cell_text(trial.number)}  {trial.name}  {where}")
    lines += [f"  #{e['number']}  asked, not started yet: {' '.join(e['overrides'])}" for e in queued]
    budgets = [e["budget"] for e in events if e["event"] == "start" and "budget" in e]
    if budgets:
        lines.append(f"Done: {len(told)} of {budgets[-1]} trials")
    return "\n".join(lines)
