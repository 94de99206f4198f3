"""A run's record on disk: result.json and metrics.csv, written whole (runner.files), read back by sweeps."""

from __future__ import annotations

import csv
import io
import json
import math
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from runner.files import write_text_atomic

RESULT_FILE = "result.json"
METRICS_FILE = "metrics.csv"
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.pt"
BEST_CHECKPOINT = "best.pt"
FINAL_STATUSES = ("completed", "pruned")
# in a sweep folder: present once a trial failed while fail_fast is on; later trials do not start
FAIL_FAST_MARKER = ".fail_fast"


def git_state(folder: Path) -> dict[str, Any]:
    """The commit checked out where `folder` is, and whether tracked files differ from it; Nones
    outside a git checkout (or without git)."""
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, cwd=folder)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "--verify", "-q", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None, "root": None}
    changes = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(changes) if changes is not None else None,
            "root": git("rev-parse", "--show-toplevel")}


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def blank_result(*, metric: str, goal: str, overrides: list[str], run_dir: Path | str, max_epochs: int | None = None,
                 started_at: str | None = None, started_in: str | None = None, command: str | None = None,
                 git_commit: str | None = None, project_git: dict[str, Any] | None = None) -> dict[str, Any]:
    """The record of a run that has trained nothing yet: what every run's result.json starts from
    (runner.run.callbacks.ResultRecord), and what a trial lost before it wrote one is recorded
    failed with (runner.sweep.outcome)."""
    return {
        "status": "running",
        "reason": None,
        "objective": {"metric": metric, "goal": goal, "value": None, "epoch": None, "last": None},
        "final_metrics": {},
        "best_metrics": {},
        # filled by the test stage when the run ends: the best checkpoint on the test split
        "test_metrics": None,
        "test_epoch": None,
        "epochs": 0,
        "max_epochs": max_epochs,
        "steps": 0,
        "duration_s": None,
        "overrides": list(overrides),
        "run_dir": str(run_dir),
        # the folder the run was started from and the command that runs it again from there
        "started_in": started_in,
        "command": command,
        # the runner's own commit, and the state of the user's project (the folder started from)
        "git_commit": git_commit,
        "project_git": project_git,
        "started_at": started_at,
        "finished_at": None,
        "pruned_at_epoch": None,
    }


def _json_safe(value: Any) -> Any:
    """JSON has no NaN or infinity: store them as null rather than write invalid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_json_atomic(path: Path | str, obj: Any) -> None:
    write_text_atomic(path, json.dumps(_json_safe(obj), indent=2, sort_keys=False) + "\n")


def read_result(run_dir: Path | str) -> dict | None:
    """The run's result.json, or None when the run has not written one (or it is unreadable)."""
    path = Path(run_dir) / RESULT_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def write_metrics(run_dir: Path | str, rows: Iterable[dict], columns: list[str]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    write_text_atomic(Path(run_dir) / METRICS_FILE, buffer.getvalue())


def read_metrics(run_dir: Path | str) -> list[dict]:
    """metrics.csv as a list of rows; numbers parsed, empty cells as None."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    with path.open(encoding="utf-8", newline="") as f:
        return [{k: _parse_number(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _parse_number(text: str) -> float | int | None:
    if text == "":
        return None
    try:
        return int(text)
    except ValueError:
        return float(text)
