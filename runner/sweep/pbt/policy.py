"""A PBT trial's TRIAL/pbt_policy.jsonl: the lineage of its weights (the start line, then every
exploit, copied from the donor's and extended) and the hyperparameter schedule it amounts to."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.errors import ConfigError
from runner.files import write_text_atomic
from runner.sweep.shared_log import read_jsonl

POLICY_FILE = "pbt_policy.jsonl"


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


def write_policy(run_dir: Path, policy: list[dict[str, Any]]) -> None:
    write_text_atomic(run_dir / POLICY_FILE, "".join(json.dumps(e) + "\n" for e in policy))


def policy_path(path: Path | str) -> Path:
    path = Path(path)
    return path / POLICY_FILE if path.is_dir() else path


def previous_attempt(run_dir: Path, trial: str) -> str | None:
    """The attempt of a run that started in this folder and was cut before its first checkpoint:
    its policy file is still there (trainer.resume=never moves it to archive/)."""
    path = run_dir / POLICY_FILE
    if not path.is_file():
        return None
    own = [e for e in read_jsonl(path) if e.get("trial") == trial and e.get("attempt")]
    return own[-1]["attempt"] if own else None


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
