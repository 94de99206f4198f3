"""The files through which a sweep hands trials to warm SLURM workers: SWEEP_DIR/.workers/queue/.

The sweep folder is on a filesystem every node sees; there is no server and no open port. A rename
within one folder tree is atomic, so ownership moves by renaming a trial's file:

    pending/<number>.json            the sweep wrote it (number, overrides); any worker may take it
    running/<number>@<worker>.json   a worker took it by renaming it here; its mtime is the lease,
                                     renewed by the worker every few seconds
    done/<number>.pkl                the worker's result, renamed into place whole
    ready/<worker>                   the worker has loaded the sweep and can run trials
    driver                           touched by the sweep's process while it runs
    stop, drain, closed              the sweep is stopping (running trials save and stop) / has
                                     launched its last trial (idle workers end) / has ended
    jobs.jsonl                       every worker job the sweep submitted, one JSON line each

A lease that is not renewed for `lease_s` (seconds of the sweep's own clock, so clocks of other
nodes do not matter) has expired: the sweep renames the file back to pending/ and another worker
resumes the trial from its checkpoint. A worker whose file is gone stops at once (it lost its
lease), so a trial never runs in two places at once.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cloudpickle

from runner.files import open_atomic, write_text_atomic

log = logging.getLogger(__name__)

QUEUE_DIR = Path(".workers") / "queue"


@dataclass
class Claim:
    """A trial a worker took: its number, overrides and the file that is its lease."""

    number: int
    overrides: list[str]
    path: Path


def _number(path: Path) -> int:
    return int(path.name.partition(".")[0].partition("@")[0])


class TrialQueue:
    def __init__(self, sweep_dir: Path | str):
        self.root = Path(sweep_dir) / QUEUE_DIR
        self.pending, self.running, self.done = self.root / "pending", self.root / "running", self.root / "done"
        self.ready = self.root / "ready"

    def create(self) -> None:
        for folder in (self.pending, self.running, self.done, self.ready):
            folder.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ the sweep's side
    def put(self, number: int, overrides: list[str]) -> None:
        write_text_atomic(self.pending / f"{number}.json", json.dumps({"number": number, "overrides": overrides}))

    def where(self, number: int) -> str | None:
        """"done", "running", "pending", or None for a trial the queue does not hold."""
        if (self.done / f"{number}.pkl").exists():
            return "done"
        if any(self.running.glob(f"{number}@*.json")):
            return "running"
        return "pending" if (self.pending / f"{number}.json").exists() else None

    def results(self) -> list[int]:
        return sorted(_number(p) for p in self.done.glob("*.pkl"))

    def read_result(self, number: int) -> Any:
        with open(self.done / f"{number}.pkl", "rb") as f:
            return cloudpickle.load(f)

    def set_aside(self, number: int) -> None:
        """Keep a result out of the way (a failed trial a resumed sweep runs again), renamed, never deleted."""
        path = self.done / f"{number}.pkl"
        path.rename(path.with_name(f"{number}.pkl.{time.strftime('%Y%m%d-%H%M%S')}.old"))

    def leases(self) -> list[tuple[int, str, Path]]:
        """(number, worker, file) of every trial a worker holds."""
        held = []
        for path in self.running.glob("*@*.json"):
            number, _, worker = path.name[: -len(".json")].partition("@")
            held.append((int(number), worker, path))
        return held

    def give_back(self, path: Path) -> bool:
        """A trial whose worker is gone goes back to pending/ (False: it was finished or given back meanwhile)."""
        try:
            os.rename(path, self.pending / f"{_number(path)}.json")
            return True
        except FileNotFoundError:
            return False

    def forget(self, number: int) -> None:
        """A trial that has its result: no file of it is left in pending/ or running/."""
        (self.pending / f"{number}.json").unlink(missing_ok=True)
        for path in self.running.glob(f"{number}@*.json"):
            path.unlink(missing_ok=True)

    def unclaimed(self) -> list[int]:
        return sorted(_number(p) for p in self.pending.glob("*.json"))

    def mark(self, name: str) -> None:
        write_text_atomic(self.root / name, f"{time.time()}\n")

    def unmark(self, name: str) -> None:
        (self.root / name).unlink(missing_ok=True)

    def register_job(self, job_id: str) -> None:
        with open(self.root / "jobs.jsonl", "a") as f:
            f.write(json.dumps({"job_id": job_id, "time": time.time()}) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def registered_jobs(self) -> list[str]:
        try:
            lines = (self.root / "jobs.jsonl").read_text().splitlines()
        except FileNotFoundError:
            return []
        return [json.loads(line)["job_id"] for line in lines if line.strip()]

    # ------------------------------------------------------------------ a worker's side
    def claim(self, worker: str) -> Claim | None:
        """Take the pending trial with the lowest number, or None when there is none."""
        for number in self.unclaimed():
            mine = self.running / f"{number}@{worker}.json"
            try:
                os.rename(self.pending / f"{number}.json", mine)
            except FileNotFoundError:
                continue  # another worker took it first
            os.utime(mine)  # the lease starts now, not when the sweep wrote the file
            entry = json.loads(mine.read_text())
            return Claim(entry["number"], entry["overrides"], mine)
        return None

    def renew(self, claim: Claim) -> bool:
        """Renew a lease; False when it is gone (the sweep gave the trial to another worker)."""
        try:
            os.utime(claim.path)
            return True
        except FileNotFoundError:
            return False

    def finish(self, claim: Claim, payload: Any) -> None:
        """The trial's result, renamed into done/ whole; then the lease is let go."""
        with open_atomic(self.done / f"{claim.number}.pkl") as f:
            cloudpickle.dump(payload, f)
        claim.path.unlink(missing_ok=True)

    def release(self, claim: Claim) -> None:
        """Hand a trial back unfinished (preempted, stopped): any worker resumes it from its checkpoint."""
        try:
            os.rename(claim.path, self.pending / f"{claim.number}.json")
        except FileNotFoundError:
            pass

    def is_marked(self, name: str) -> bool:
        return (self.root / name).exists()

    def mtime_ns(self, name: str) -> int | None:
        try:
            return (self.root / name).stat().st_mtime_ns
        except FileNotFoundError:
            return None


class Heartbeats:
    """How long each file's mtime has not changed, on this process's own clock: a lease held by a
    node whose clock is off by minutes still expires after exactly `lease_s` of silence."""

    def __init__(self):
        self.seen: dict[Path, tuple[int, float]] = {}

    def silent_for(self, path: Path) -> float | None:
        try:
            mtime = path.stat().st_mtime_ns
        except FileNotFoundError:
            self.seen.pop(path, None)
            return None
        now = time.monotonic()
        last = self.seen.get(path)
        if last is None or last[0] != mtime:
            self.seen[path] = (mtime, now)
            return 0.0
        return now - last[1]
