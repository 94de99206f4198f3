"""The report as one JSON document, for scripts (`python -m runner.report SWEEP_DIR --json`): the
objective, the status counts, the best trial, the parameters' importance and every trial ranked, with
its status, objective value and swept values."""

from __future__ import annotations

from collections import Counter

from runner.report.importance import importance_record
from runner.report.ranking import Sweep
from runner.report.trials import STATUSES, Trial, rerun_command


def report_document(sweep: Sweep) -> dict:
    """Plain data (JSON-able) holding what the printed report shows, from the same ranking."""
    counts = Counter(t.status for t in sweep.trials)
    return {
        "sweep_dir": str(sweep.path),
        "objective": {"metric": sweep.metric, "goal": sweep.goal},
        # every objective (one unless objective.metrics names several) and the constraints
        "objectives": [{"metric": m, "goal": g} for m, g in zip(sweep.objectives.metrics, sweep.objectives.goals)],
        "constraints": [str(c) for c in sweep.objectives.constraints],
        "pareto_front": [t.number for t in sweep.front] if sweep.objectives.several else None,
        "counts": {status: counts[status] for status in STATUSES},
        "parameters": list(sweep.parameters),
        "best": trial_record(sweep, sweep.best) if sweep.best is not None else None,
        "importance": importance_record(sweep),
        "trials": [trial_record(sweep, trial) for trial in sweep.trials],
    }


def trial_record(sweep: Sweep, trial: Trial) -> dict:
    """One trial: rank (None for failed trials and trials without a value), value, swept values."""
    return {
        "rank": sweep.rank_of(trial),
        "number": trial.number,
        "name": trial.name,
        "status": trial.status,
        "value": trial.value,
        "values": dict(zip(sweep.objectives.metrics, sweep.values(trial))),
        "front": sweep.fronts.get(trial.name),
        "constraints_broken": sweep.broken.get(trial.name, []),
        "best_epoch": trial.best_epoch,
        "epochs": trial.epochs,
        "duration_s": trial.duration_s,
        "reason": trial.reason,
        # the swept values the trial set, typed as the table shows them; a key it does not set is absent
        "parameters": {key: values[trial.name] for key, values in sweep.parameters.items() if trial.name in values},
        "overrides": list(trial.overrides),
        "test_metrics": trial.test_metrics,
        "command": rerun_command(trial),
        "path": str(trial.path),
    }
