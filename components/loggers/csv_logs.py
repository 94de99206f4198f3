"""A CSV file of every scalar, one (step, tag, value) row each."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from components.loggers.base import FreshSteps, Logger
from components.loggers.records import replace_file


class CSVLogger(Logger):
    """Every scalar as a (step, tag, value) row of one long CSV file, flushed as it goes."""

    def __init__(self, run_dir: str | Path, filename: str = "scalars.csv", start_step: int = 0):
        path = Path(run_dir) / filename
        self.fresh = FreshSteps(start_step)
        if path.exists():
            _keep_rows_up_to(path, start_step)
        is_new = not path.exists()
        self.file = path.open("a", newline="", encoding="utf-8")
        self.writer = csv.writer(self.file)
        if is_new:
            self.writer.writerow(["step", "tag", "value"])

    def log_metrics(self, metrics, step):
        self.writer.writerows([step, tag, value] for tag, value in self.fresh(metrics, step).items())
        self.file.flush()

    def close(self):
        self.file.close()


def _keep_rows_up_to(path: Path, step: int) -> None:
    """Drop the rows an earlier attempt wrote after `step`; the file is replaced whole, or left as it was."""
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    kept = rows[:1] + [row for row in rows[1:] if row and int(row[0]) <= step]
    if len(kept) < len(rows):
        buffer = io.StringIO()
        csv.writer(buffer).writerows(kept)
        replace_file(path, buffer.getvalue())
