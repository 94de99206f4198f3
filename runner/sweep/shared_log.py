"""The files that a sweep's trials share: append-only JSONL, read and extended under a file lock.

Trials share no memory, server or database; pruning (runner.sweep.pruning) and PBT
(runner.sweep.pbt) meet in such a file in the sweep folder, so trials in threads, processes or on
SLURM nodes sharing a filesystem see each other's records.
"""

from __future__ import annotations

import json
import logging
import math
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import filelock

from runner.errors import TrialFailed

log = logging.getLogger(__name__)

# A report holds the lock for milliseconds; a wait this long means a dead lock holder or a hung
# filesystem, which the error message helps the user resolve.
LOCK_TIMEOUT_S = 600.0


class SharedLog:
    """An append-only JSONL file that processes on several machines read and extend under a lock.

    The lock is filelock.FileLock: flock(2), which Linux emulates on NFS with POSIX byte-range
    locks that the server arbitrates between nodes. Unlike an O_EXCL marker file
    (SoftFileLock), the kernel drops it when its holder dies, and SLURM kills jobs (time limits,
    preemption) at any moment: a marker left behind would hang every later trial. Where the
    filesystem has no flock at all (Lustre mounted without `-o flock`), filelock (3.24 and later, the
    declared floor) falls back to a marker by itself, with a warning.
    The file is opened after the lock is taken and closed (after fsync) before it is released:
    NFS close-to-open consistency then shows every reader every line written before.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock_path = path.with_name(path.name + ".lock")

    @contextmanager
    def locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = filelock.FileLock(self.lock_path, timeout=LOCK_TIMEOUT_S)
        try:
            lock.acquire()
        except filelock.Timeout as error:
            raise TrialFailed(
                f"waited {LOCK_TIMEOUT_S:g} s for the lock {self.lock_path}; if no trial of "
                f"this sweep is running, a killed one left it behind: delete it and run again"
            ) from error
        try:
            yield
        finally:
            lock.release()

    def read(self) -> list[dict[str, Any]]:
        """Every record; call it holding the lock."""
        return read_jsonl(self.path)

    def append(self, record: dict[str, Any]) -> None:
        """Add one record; call it holding the lock."""
        append_jsonl(self.path, record)


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line and fsync it; a line torn by a crash before it is closed off first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, allow_nan=False) + "\n"
    with path.open("a+b") as f:
        if f.tell() > 0:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                line = "\n" + line
        f.write(line.encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The file's records, skipping a line a crash tore (with a warning); [] if there is no file."""
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return []
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict):
            records.append(record)
        else:
            log.warning("%s:%d is not a JSON record (a write cut short?); skipped", path, number)
    return records


def finite_or_none(value: float | None) -> float | None:
    """A value as a shared record holds it: JSON has no NaN or infinity, so those are null."""
    return value if value is not None and math.isfinite(value) else None
