"""A sweep's journal: SWEEP_DIR/.sweeper/journal.jsonl, every ask and tell of the sweeper, in order.

One JSON object per line, appended and synced before the ask or tell takes effect:
`start` (each time the sweep starts: what it searches, its budget, where trials run), `ask`
(number, overrides, the optimizer's value), `job` (number, the cluster's job id), `tell`
(number, status, loss). runner.sweeper replays it to resume a sweep; `runner.report --watch`
reads it to show the trials asked but not started yet.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

JOURNAL = Path(".sweeper") / "journal.jsonl"


class Journal:
    """SWEEP_DIR/.sweeper/journal.jsonl: the sweep's asks and tells, one JSON line each, in order."""

    def __init__(self, sweep_dir: Path):
        self.path = sweep_dir / JOURNAL

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        events = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # the last line of a sweep killed while writing it
        return events

    def append(self, event: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a+b") as f:
            # a line torn by a kill must not glue itself to the next one
            torn = f.tell() > 0 and f.seek(-1, os.SEEK_END) >= 0 and f.read(1) != b"\n"
            f.write(("\n" if torn else "").encode() + json.dumps(event).encode() + b"\n")
            f.flush()
            os.fsync(f.fileno())
