"""The push to a tracker (MLflow, W&B): the logger options that take a sweep's summary, the summary
as plain data, and sending it."""

from __future__ import annotations

import csv
from collections import Counter

import yaml

from runner.paths import CONF_DIR
from runner.report.drawing import PLOT_FILE
from runner.report.files import BEST_FILE, SUMMARY_FILE
from runner.report.ranking import Sweep, set_values
from runner.report.table import format_table
from runner.report.trials import STATUSES, SweepReportError, Trial

# the logger options; those whose class has `log_sweep` can take a sweep's summary
LOGGER_CONFIGS = CONF_DIR / "logger"


def trackers() -> dict[str, str]:
    """Logger options (conf/logger/NAME.yaml) whose class takes a sweep's summary: name -> `_target_`."""
    found = {}
    for path in sorted(LOGGER_CONFIGS.glob("*.yaml")):
        for node in (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).values():
            if isinstance(node, dict) and takes_sweeps(node.get("_target_")):
                found[path.stem] = node["_target_"]
    return found


def takes_sweeps(target: str | None) -> bool:
    from hydra.utils import get_object

    return target is not None and hasattr(get_object(target), "log_sweep")


def tracker_summary(sweep: Sweep) -> dict:
    """The sweep as plain data for a tracker: its objective, best trial, status counts, settings every
    trial shares (the parent run's params), each trial's rank, the ranked table as summary.csv holds
    it, the printed table, and the report files to attach."""
    counts = Counter(t.status for t in sweep.trials)
    shared = _shared_overrides(sweep.trials)
    with (sweep.path / SUMMARY_FILE).open(newline="", encoding="utf-8") as f:
        columns, *rows = list(csv.reader(f))
    best = sweep.best
    return {
        "name": sweep.path.name,
        "metric": sweep.metric,
        "goal": sweep.goal,
        "best": None if best is None else {"name": best.name, "value": best.value, "epoch": best.best_epoch},
        "counts": {status: counts[status] for status in STATUSES},
        "params": {"objective.metric": sweep.metric, "objective.goal": sweep.goal, **shared},
        "trials": [{"name": t.name, "run_dir": str(t.path), "status": t.status, "value": t.value,
                    "rank": sweep.rank_of(t)} for t in sweep.trials],
        "table": {"columns": columns, "rows": rows},
        "text": format_table(sweep),
        "files": [str(sweep.path / name) for name in (SUMMARY_FILE, BEST_FILE, PLOT_FILE) if (sweep.path / name).is_file()],
    }


def _shared_overrides(trials: list[Trial]) -> dict[str, str]:
    """The values every trial's overrides set alike: the sweep's fixed settings."""
    first, *others = [set_values(trial) for trial in trials]
    return {key: value for key, value in sorted(first.items()) if all(o.get(key) == value for o in others)}


def push_to_tracker(sweep: Sweep, target: str) -> str:
    """Send the sweep's summary (tracker_summary) to the tracker whose logger class is `target`; says where it went."""
    from hydra.utils import get_object

    try:
        return get_object(target).log_sweep(sweep.path, tracker_summary(sweep))
    except Exception as error:
        raise SweepReportError(f"could not send the sweep's summary to {target}: {error}") from error
