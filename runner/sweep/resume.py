"""Resuming a sweep run again into its folder, from its journal (runner.sweep.journal).

The journal is taken up only if it searched the same space (and set aside if none of its trials
ever started). Every trial it had asked runs again, in ask order, under its number and overrides:
the trial function reads a finished trial's result.json back, and an unfinished one resumes from
its checkpoints/last.pt. Before that, the optimizer is asked and told what the journal says, in its
order, so it is where it was whatever order the relaunched trials end in.
"""

from __future__ import annotations

import logging
from collections import deque
from pathlib import Path

from runner.errors import ConfigError
from runner.sweep.journal import Journal, read_number
from runner.sweep.outcome import Told
from runner.sweep.search import Point

log = logging.getLogger(__name__)


class SweepResume:
    """What a sweep takes up from the journal in its folder; nothing when the folder holds none."""

    def __init__(self, journal: Journal, search, sweep_dir: Path) -> None:
        self.search, self.sweep_dir = search, sweep_dir
        self.history = self._same_space(journal)
        self.asked_overrides: dict[int, list[str]] = {e["number"]: e["overrides"] for e in self.history
                                                      if e["event"] == "ask"}
        # every trial asked before runs again, in ask order: the trial reads a finished result back
        self.relaunch = deque(sorted(self.asked_overrides))
        self.next_number = max(self.asked_overrides, default=-1) + 1

    def _same_space(self, journal: Journal) -> list[dict]:
        """The history to resume from: refused if it searched another space, empty if none of its
        trials ever started (its first config did not compose: nothing to resume)."""
        history = journal.read()
        starts = [e for e in history if e["event"] == "start"]
        if not starts:
            return history
        if not any(e["event"] in ("validated", "job", "tell") for e in history):
            log.info("no trial of the sweep in %s ever started: it starts afresh (its journal is kept as %s)",
                     self.sweep_dir, journal.set_aside().name)
            return []
        before, now_space = starts[0], self.search.describe()
        if (before["kind"], before["space"]) != (now_space["kind"], now_space["space"]):
            raise ConfigError(
                f"hydra.sweep.dir={self.sweep_dir} holds a {before['kind']} sweep over {before['space']}, not a "
                f"{now_space['kind']} sweep over {now_space['space']}: run it with the same search space and "
                f"arguments to resume it, or choose another hydra.sweep.dir")
        return history

    def replay(self, points: dict[int, Point], told: Told) -> int:
        """Ask and tell the optimizer what the journal says it was asked and told, in that order: it
        reaches the state it had. Fills `points` and `told`; returns how many points were asked."""
        asked = 0
        mismatch_warned = False
        for event in self.history:
            number = event.get("number")
            if event["event"] == "ask":
                point = self.search.ask()
                if point.overrides != event["overrides"]:
                    if not mismatch_warned:
                        log.warning("the optimizer asks other points than the sweep being resumed asked (no "
                                    "hydra.sweeper.optim.seed, or other optimizer settings): its trials keep the "
                                    "points they had")
                        mismatch_warned = True
                    point = self.search.recorded(event["overrides"], event.get("value"))
                points[number] = point
                asked += 1
            elif event["event"] == "tell":
                loss = read_number(event.get("loss"))
                losses = [read_number(x) for x in event["losses"]] if event.get("losses") else None
                violations = [read_number(x) for x in event["violations"]] if event.get("violations") else None
                self.search.tell(points[number], losses if losses is not None else loss, violations=violations)
                told.add(number, loss)
        return asked

    def in_flight(self, told: Told) -> int:
        """How many trials were running when the sweep stopped: those asked and not told about."""
        return len(set(self.asked_overrides) - set(told.losses))
