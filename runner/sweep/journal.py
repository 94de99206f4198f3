"""A sweep's journal: SWEEP_DIR/.sweeper/journal.jsonl, every ask and tell of the sweeper, in order.

One JSON object per line, appended and synced before the ask or tell takes effect:
`start` (each time the sweep starts: what it searches, its budget, where trials run), `ask`
(number, overrides, the optimizer's value), `validated` (the first trial's config, and each
option of each swept group, composed: trials may start), `job` (number, the cluster's job id),
`tell` (number, status, loss; with several objectives every objective's `losses`, with constraints
how far each is broken, `violations`). runner.sweep.sweeper replays it to resume a sweep; `runner.report --watch`
reads it to show the trials asked but not started yet.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import IO

from runner.errors import ConfigError

log = logging.getLogger(__name__)

JOURNAL = Path(".sweeper") / "journal.jsonl"
# held by the sweeper writing the journal, as long as its sweep runs
WRITER_LOCK = Path(".sweeper") / "writer.lock"


def json_number(value: float) -> float | None:
    """A loss as the journal holds it: JSON has no infinity, a failed trial's inf is written null."""
    return None if math.isinf(value) else value


def read_number(value: float | None) -> float:
    return math.inf if value is None else value


class Journal:
    """SWEEP_DIR/.sweeper/journal.jsonl: the sweep's asks and tells, one JSON line each, in order."""

    def __init__(self, sweep_dir: Path):
        self.path = sweep_dir / JOURNAL

    def hold(self) -> IO:
        """Become the journal's only writer, or refuse: two sweepers in one folder would ask the same
        numbers twice and train the same trial folders at once. Closing the file lets go."""
        lock_path = self.path.parent.parent / WRITER_LOCK
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        f = lock_path.open("a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise ConfigError(f"another sweep runs in {self.path.parent.parent} ({holder}): wait for it to end or stop "
                              f"it before running this sweep there again, or choose another hydra.sweep.dir") from None
        except OSError as error:
            # a filesystem without flock (Lustre mounted without -o flock): the sweep runs unguarded, as
            # before. Not a lock file that outlives its holder: a sweep killed with it held could never resume.
            log.warning("cannot lock %s (%s): nothing stops a second sweep from running in this folder at once",
                        lock_path, error)
        f.truncate(0)
        f.write(f"pid {os.getpid()} on {os.uname().nodename}\n")
        f.flush()
        return f

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

    def set_aside(self) -> Path:
        """Move the journal out of the way (kept, never deleted); the next append starts a new one."""
        kept = self.path.with_name(f"journal.set-aside-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.jsonl")
        self.path.rename(kept)
        return kept

    def append(self, event: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a+b") as f:
            # a line torn by a kill must not glue itself to the next one
            torn = f.tell() > 0 and f.seek(-1, os.SEEK_END) >= 0 and f.read(1) != b"\n"
            f.write(("\n" if torn else "").encode() + json.dumps(event).encode() + b"\n")
            f.flush()
            os.fsync(f.fileno())
