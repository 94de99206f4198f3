"""The streaming sweeper: keeps N trials in flight and, the moment one ends, tells its result and
asks for the next point, so no slot waits for the slowest trial of a batch.

Behind the Hydra plugins in hydra_plugins/runner_plugins (the default grid sweeper and the
Nevergrad ask/tell sweeper of the `sweep=` presets). It runs trials through a pool
(launchers.pools) over whichever launcher `hydra/launcher` names, at most
min(num_workers, what the launcher runs at once) at a time.

Every ask and every tell is appended to SWEEP_DIR/.sweeper/journal.jsonl (runner.sweep.journal) before
it takes effect. Run again into the same sweep folder, the sweeper replays that journal: it asks
and tells the optimizer what the journal says, in its order, so the optimizer is where it was;
it launches every trial it had asked again, under its number and overrides (the trial function
reads a finished trial's result.json back; an unfinished one resumes from its checkpoints/last.pt),
and tells the optimizer only what it had not been told (a trial that was running, or a failed
one that now completes). Then it goes on asking.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from omegaconf import DictConfig, OmegaConf, open_dict

from runner.errors import ConfigError, RunnerError
from runner.sweep.journal import Journal
from runner.results import now, read_result, write_json_atomic
from runner.sweep.search import Point, each_value_once, make_search

log = logging.getLogger(__name__)

# how long the sweeper waits for a trial to end before it looks again (it wakes at once when one ends)
POLL_S = 1.0


@dataclass
class Outcome:
    """What a finished trial told the sweep."""

    number: int
    job_return: JobReturn | None
    status: str  # the trial's result.json status, "failed" for a failed or lost trial
    loss: float  # what the optimizer is told: the objective, negated when maximizing; inf if failed
    metric: str | None
    objective: float | None  # the trial's best objective value (result.json), None if it has none
    goal: str | None
    duration_s: float | None
    failed_job: bool  # the trial function raised (fail_fast, a config that does not compose)


def status_line(number: int, status: str, metric: str | None, objective: float | None,
                best: tuple[float, int] | None, in_flight: int, done: int, budget: int, elapsed_s: float,
                eta_s: float | None) -> str:
    """One line per finished trial: what it got, the best so far, and how far the sweep is."""
    value = "-" if objective is None else f"{objective:.4g}"
    best_text = "-" if best is None else f"{best[0]:.4g} (#{best[1]})"
    eta = "?" if eta_s is None else _clock(eta_s)
    return (f"trial {number} {status}: {metric or 'objective'}={value} | best {best_text} | in flight {in_flight} "
            f"| done {done}/{budget} | elapsed {_clock(elapsed_s)} | ETA {eta}")


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class StreamingSweeper:
    def __init__(self, kind: str, num_workers: int | None = None, params: Any = None, optim: Any = None):
        self.kind = kind
        self.num_workers = num_workers
        self.params = params
        self.optim = optim
        self.config: DictConfig | None = None

    # ------------------------------------------------------------------ setup
    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        from launchers.pools import pool_for

        self.hydra_context, self.config = hydra_context, config
        wanted = self.optim.num_workers if self.kind == "nevergrad" else self.num_workers
        if wanted is not None and not (isinstance(wanted, int) and wanted >= 1):
            key = "optim.num_workers" if self.kind == "nevergrad" else "num_workers"
            raise ConfigError(f"hydra.sweeper.{key}={wanted} must be a positive integer"
                              + ("" if self.kind == "nevergrad" else " or null (as many as the launcher runs)"))
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)
        self.pool = pool_for(self.launcher, hydra_context, task_function, config)
        limits = [n for n in (wanted, self.pool.capacity) if n is not None]
        self.limit = min(limits) if limits else None
        # workers start now: their Python and torch load while the search space is built
        self.pool.start(self.limit or 1)

    # ------------------------------------------------------------------ sweep
    def sweep(self, arguments: list[str]) -> list[JobReturn]:
        self.writer_lock = None
        try:
            return self._sweep(list(arguments))
        finally:
            self.pool.close()
            if self.writer_lock is not None:
                self.writer_lock.close()

    def _sweep(self, arguments: list[str]) -> list[JobReturn]:
        self.sweep_dir = Path(str(self.config.hydra.sweep.dir))
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        self.search = make_search(self.kind, self.params, self.optim, arguments, self.hydra_context.config_loader,
                                  self.config)
        self.in_flight = self.limit or self.search.budget
        OmegaConf.save(self.config, self.sweep_dir / "multirun.yaml")
        self.journal = Journal(self.sweep_dir)
        self.writer_lock = self.journal.hold()
        history = self.journal.read()
        history = self._check_same_space(history)
        self.journal.append({"event": "start", **self.search.describe(), "budget": self.search.budget,
                             "launcher": self.pool.describe(), "time": now()})

        self.asked_overrides = {e["number"]: e["overrides"] for e in history if e["event"] == "ask"}
        # every trial asked before runs again, in ask order: the trial reads a finished result back
        self.relaunch = deque(sorted(self.asked_overrides))
        self.next_number = max(self.asked_overrides, default=-1) + 1
        self.points: dict[int, Point] = {}
        self.told_losses: dict[int, float] = {}  # what the optimizer was last told for each trial
        self.running: dict[int, float] = {}
        self.asked = self.done = self.told = self.failures = 0
        self.best: tuple[float, int] | None = None
        self.best_loss: tuple[float, int] | None = None
        self.durations: list[float] = []
        self.returns: list[JobReturn] = []
        self.stop: Outcome | None = None
        self.lost_error: str | None = None
        self.validated = False
        self.started = time.monotonic()

        if self.asked_overrides:
            log.info("Resuming the sweep in %s: %d trial(s) asked before; each runs again (a finished one is read "
                     "back, an unfinished one resumes from its checkpoint)", self.sweep_dir, len(self.asked_overrides))
        log.info("Sweep %s: %d trial(s) of %s, %d at a time, %s", self.sweep_dir,
                 max(self.search.budget, len(self.asked_overrides)), self._what(), self.in_flight,
                 self.pool.describe())
        self._replay(history)
        while True:
            self._launch()
            if not self.running and (self.stop is not None or self._nothing_left()):
                break
            for finished in self.pool.wait(POLL_S):
                self._finish(finished)
        if self.stop is not None:
            self._raise_stop()
        self._write_results()
        return self.returns

    def _what(self) -> str:
        if self.kind == "grid":
            return "a grid"
        objective = self.config.get("objective") or {}
        return (f"Nevergrad {self.optim.optimizer} {'maximizing' if self.optim.maximize else 'minimizing'} "
                f"{objective.get('metric', 'the objective')}")

    def _nothing_left(self) -> bool:
        return not self.relaunch and self.asked >= self.search.budget

    def _check_same_space(self, history: list[dict]) -> list[dict]:
        """The history to resume from: refused if it searched another space, empty if none of its
        trials ever started (its first config did not compose: nothing to resume)."""
        starts = [e for e in history if e["event"] == "start"]
        if not starts:
            return history
        if not any(e["event"] in ("validated", "job", "tell") for e in history):
            log.info("no trial of the sweep in %s ever started: it starts afresh (its journal is kept as %s)",
                     self.sweep_dir, self.journal.set_aside().name)
            return []
        before, now_space = starts[0], self.search.describe()
        if (before["kind"], before["space"]) != (now_space["kind"], now_space["space"]):
            raise ConfigError(
                f"hydra.sweep.dir={self.sweep_dir} holds a {before['kind']} sweep over {before['space']}, not a "
                f"{now_space['kind']} sweep over {now_space['space']}: run it with the same search space and "
                f"arguments to resume it, or choose another hydra.sweep.dir")
        return history

    # ------------------------------------------------------------------ ask, launch
    def _replay(self, history: list[dict]) -> None:
        """Ask and tell the optimizer what the journal says it was asked and told, in that order: it
        reaches the state it had, whatever order the relaunched trials end in. Then go on as the
        stopped sweep would have: its free slots ask their next points first."""
        mismatch_warned = False
        for event in history:
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
                self.points[number] = point
                self.asked += 1
            elif event["event"] == "tell":
                loss = math.inf if event.get("loss") is None else event["loss"]
                self.search.tell(self.points[number], loss)
                self._count_told(number, loss)
        # when it stopped, the trials it had not been told about were in flight; the other slots were free
        untold = len(set(self.asked_overrides) - set(self.told_losses))
        for _ in range(max(0, self.in_flight - untold)):
            if not self._ask_new():
                break

    def _count_told(self, number: int, loss: float) -> None:
        self.told_losses[number] = loss
        self.told += 1
        if self.best_loss is None or loss < self.best_loss[0]:
            self.best_loss = (loss, number)

    def _launch(self) -> None:
        while len(self.running) < self.in_flight and self.stop is None:
            if self.relaunch:
                number = self.relaunch.popleft()
                self._submit(number, self.asked_overrides[number])
            elif not self._ask_new():
                return  # the budget is used

    def _ask_new(self) -> bool:
        if self.asked >= self.search.budget or self.stop is not None:
            return False
        point = self.search.ask()
        number, self.next_number = self.next_number, self.next_number + 1
        self.asked += 1
        self.points[number] = point
        self.journal.append({"event": "ask", "number": number, "overrides": point.overrides,
                             "value": point.value, "time": now()})
        self._submit(number, point.overrides)
        return True

    def _submit(self, number: int, overrides: list[str]) -> None:
        if not self.validated:
            self._validate(overrides)
        job_id = self.pool.submit(number, overrides)
        if job_id is not None:
            self.journal.append({"event": "job", "number": number, "job_id": job_id, "time": now()})
        self.running[number] = time.monotonic()

    def _validate(self, first: list[str]) -> None:
        """Compose the first trial, and each other choice of each config group once, before anything runs:
        a misspelt option stops the sweep now, not after the trials before it."""
        groups = {key: values for key, values in self.search.choices.items() if "." not in key}
        for overrides in each_value_once(first, groups):
            self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        self.validated = True
        self.journal.append({"event": "validated", "time": now()})

    # ------------------------------------------------------------------ results
    def _finish(self, finished) -> None:
        self.running.pop(finished.number, None)
        if self.stop is not None:
            return  # stopped on a failure: trials that end now were interrupted, and say so themselves
        outcome = self._outcome(finished)
        self.done += 1
        if outcome.job_return is not None:
            self.returns.append(outcome.job_return)
        if outcome.objective is not None and outcome.status != "failed" and (
                self.best is None or (outcome.objective > self.best[0] if outcome.goal == "maximize"
                                      else outcome.objective < self.best[0])):
            self.best = (outcome.objective, outcome.number)
        if outcome.duration_s:
            self.durations.append(outcome.duration_s)
        budget = max(self.search.budget, self.asked)
        remaining = budget - self.done
        eta = (remaining * sum(self.durations) / len(self.durations) / self.in_flight) if self.durations else None
        log.info(status_line(outcome.number, outcome.status, outcome.metric, outcome.objective, self.best, len(self.running),
                             self.done, budget, time.monotonic() - self.started, eta if remaining else 0.0))
        # a trial relaunched by a resume that ends as it had is not told twice
        if self.told_losses.get(outcome.number) != outcome.loss:
            self._tell(outcome)
        if outcome.failed_job:
            self.failures += 1
            rate = self.optim.max_failure_rate if self.kind == "nevergrad" else 0.0
            if self.failures / max(self.told, 1) > rate:
                self._stop_on(outcome)

    def _outcome(self, finished) -> Outcome:
        if finished.lost is not None:
            run_dir = self._record_lost(finished)
            log.error("trial %d is recorded failed: %s", finished.number, finished.lost)
            outcome = Outcome(finished.number, None, "failed", math.inf, None, None, None, None, failed_job=False)
            if self.config.get("fail_fast", False):
                self.lost_error = f"trial {finished.number} ({run_dir}): {finished.lost}"
                self._stop_on(outcome)
            return outcome
        ret = finished.job_return
        if ret.status != JobStatus.COMPLETED:
            return Outcome(finished.number, ret, "failed", math.inf, None, None, None, None, failed_job=True)
        result = (read_result(finished.run_dir) or {}) if finished.run_dir else {}
        objective = result.get("objective") or {}
        value = ret.return_value
        loss = math.inf
        if isinstance(value, (int, float)) and not math.isnan(value):
            loss = -float(value) if self._maximize(objective.get("goal")) else float(value)
        return Outcome(finished.number, ret, result.get("status", "completed"), loss, objective.get("metric"),
                       objective.get("value"), objective.get("goal"), result.get("duration_s"), failed_job=False)

    def _maximize(self, goal: str | None) -> bool:
        if self.kind == "nevergrad":
            return bool(self.optim.maximize)
        return goal == "maximize"

    def _tell(self, outcome: Outcome) -> None:
        self.journal.append({"event": "tell", "number": outcome.number, "status": outcome.status,
                             "loss": None if math.isinf(outcome.loss) else outcome.loss, "time": now()})
        self.search.tell(self.points[outcome.number], outcome.loss)
        self._count_told(outcome.number, outcome.loss)

    def _stop_on(self, outcome: Outcome) -> None:
        """No new trials; the running ones save a checkpoint and stop (they resume when the sweep runs again)."""
        self.stop = outcome
        if self.running:
            log.error("stopping the sweep: trial %d failed; interrupting %d running trial(s)", outcome.number,
                      len(self.running))
            self.pool.interrupt()

    def _raise_stop(self) -> None:
        if self.stop.job_return is not None:
            self.stop.job_return.return_value  # Hydra's way: prints the job's overrides, raises its error
        raise RunnerError(f"fail_fast: {self.lost_error}")

    # ------------------------------------------------------------------ run folders
    def _compose_run_dir(self, number: int, overrides: list[str]) -> tuple[Path, DictConfig]:
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(cfg):
            cfg.hydra.job.num = number
        return Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir), cfg

    def _record_lost(self, finished) -> Path:
        """A trial whose process or job ended without a result: its result.json says failed and why
        (what it had recorded is kept; its checkpoints stay, so running the sweep again resumes it)."""
        run_dir, cfg = self._compose_run_dir(finished.number, finished.overrides)
        result = read_result(run_dir) or {
            "objective": {"metric": cfg.objective.metric, "goal": cfg.objective.goal, "value": None, "epoch": None,
                          "last": None},
            "epochs": 0,
            "overrides": list(finished.overrides),
            "run_dir": str(run_dir.resolve()),
            "started_at": None,
        }
        result.update(status="failed", reason=finished.lost, finished_at=now())
        write_json_atomic(run_dir / "result.json", result)
        return run_dir

    def _write_results(self) -> None:
        log.info("Sweep done: %d trial(s) in %s", self.done, _clock(time.monotonic() - self.started))
        if self.kind != "nevergrad" or self.best_loss is None or math.isinf(self.best_loss[0]):
            return
        loss, number = self.best_loss
        direction = -1.0 if self.optim.maximize else 1.0
        OmegaConf.save(OmegaConf.create({
            "name": "nevergrad",
            "best_evaluated_params": self.points[number].value,
            "best_evaluated_result": direction * loss,
        }), self.sweep_dir / "optimization_results.yaml")
