"""How far a sweep is: trials done, the best objective so far, the time taken and the time left, as
the one line each finished trial gets and the line the sweep ends with."""

from __future__ import annotations

import time

from runner.sweep.outcome import Outcome


class SweepProgress:
    """The trials done, the best objective among them, and their durations for an ETA."""

    def __init__(self, in_flight: int) -> None:
        self.in_flight = in_flight  # the trials the sweep runs at once, which the ETA divides by
        self.done = 0
        self.best: tuple[float, int] | None = None
        self.durations: list[float] = []
        self.started = time.monotonic()

    def finished(self, outcome: Outcome, running: int, budget: int) -> str:
        """Count a finished trial; its status line."""
        self.done += 1
        if outcome.objective is not None and outcome.status != "failed" and (
                self.best is None or (outcome.objective > self.best[0] if outcome.goal == "maximize"
                                      else outcome.objective < self.best[0])):
            self.best = (outcome.objective, outcome.number)
        if outcome.duration_s:
            self.durations.append(outcome.duration_s)
        remaining = budget - self.done
        eta = (remaining * sum(self.durations) / len(self.durations) / self.in_flight) if self.durations else None
        return status_line(outcome.number, outcome.status, outcome.metric, outcome.objective, self.best, running,
                           self.done, budget, time.monotonic() - self.started, eta if remaining else 0.0)

    def ended(self) -> str:
        return f"Sweep done: {self.done} trial(s) in {clock(time.monotonic() - self.started)}"


def status_line(number: int, status: str, metric: str | None, objective: float | None,
                best: tuple[float, int] | None, in_flight: int, done: int, budget: int, elapsed_s: float,
                eta_s: float | None) -> str:
    """One line per finished trial: what it got, the best so far, and how far the sweep is."""
    value = "-" if objective is None else f"{objective:.4g}"
    best_text = "-" if best is None else f"{best[0]:.4g} (#{best[1]})"
    eta = "?" if eta_s is None else clock(eta_s)
    return (f"trial {number} {status}: {metric or 'objective'}={value} | best {best_text} | in flight {in_flight} "
            f"| done {done}/{budget} | elapsed {clock(elapsed_s)} | ETA {eta}")


def clock(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
