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
one that now completes). Then it goes on asking. The resume is runner.sweep.resume's; what a
finished trial tells the sweep, runner.sweep.outcome's; how far the sweep is, runner.sweep.progress's.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn
from omegaconf import DictConfig, OmegaConf

from runner.config.checks import sweep_workers_problem
from runner.errors import ConfigError, RunnerError
from runner.results import now
from runner.sweep.journal import Journal
from runner.sweep.outcome import Outcome, Told, record_lost, returned_outcome
from runner.sweep.progress import SweepProgress
from runner.sweep.repeats import repeated
from runner.sweep.resume import SweepResume
from runner.sweep.search import Point
from runner.sweep.space import make_search, validate_first_trials

log = logging.getLogger(__name__)

# how long the sweeper waits for a trial to end before it looks again (it wakes at once when one ends)
POLL_S = 1.0


def notify_last_trials(callbacks, config: DictConfig) -> None:
    """Tell the Hydra callbacks that take it (runner.report.hydra_callback.SweepReport) that every trial
    of the sweep is launched."""
    for callback in getattr(callbacks, "callbacks", []):
        if hasattr(callback, "on_last_trials"):
            callback.on_last_trials(config=config)


def trial_pool(kind: str, wanted: int | None, hydra_context, task_function, config: DictConfig):
    """The pool the sweep's trials run in, over the launcher `hydra/launcher` names, not started yet, and
    how many trials run at once: min(wanted, what the launcher runs at once); None: no limit."""
    from hydra.core.plugins import Plugins

    from launchers.pools import pool_for

    if problem := sweep_workers_problem(kind, wanted):
        raise ConfigError(problem)
    launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context, task_function=task_function,
                                                       config=config)
    pool = pool_for(launcher, hydra_context, task_function, config)
    limits = [n for n in (wanted, pool.capacity) if n is not None]
    return pool, min(limits) if limits else None


class StreamingSweeper:
    def __init__(self, kind: str, num_workers: int | None = None, params: Any = None, optim: Any = None,
                 repeats: Any = 1):
        self.kind, self.repeats = kind, repeats
        self.num_workers = num_workers
        self.params = params
        self.optim = optim
        self.config: DictConfig | None = None

    # ------------------------------------------------------------------ setup
    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        self.hydra_context, self.config = hydra_context, config
        wanted = self.optim.num_workers if self.kind == "nevergrad" else self.num_workers
        self.pool, self.limit = trial_pool(self.kind, wanted, hydra_context, task_function, config)
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
        self.search = repeated(self.search, self.repeats, self.config)
        self.in_flight = self.limit or self.search.budget
        OmegaConf.save(self.config, self.sweep_dir / "multirun.yaml")
        self.journal = Journal(self.sweep_dir)
        self.writer_lock = self.journal.hold()
        self.resume = SweepResume(self.journal, self.search, self.sweep_dir)
        self.journal.append({"event": "start", **self.search.describe(), "budget": self.search.budget,
                             "launcher": self.pool.describe(), "time": now()})

        self.next_number = self.resume.next_number
        self.points: dict[int, Point] = {}
        self.told = Told()  # what the optimizer was last told for each trial
        self.running: dict[int, float] = {}
        self.failures = 0
        self.progress = SweepProgress(self.in_flight)
        self.returns: list[JobReturn] = []
        self.stop: Outcome | None = None
        self.lost_error: str | None = None
        self.validated = False

        asked_before = len(self.resume.asked_overrides)
        if asked_before:
            log.info("Resuming the sweep in %s: %d trial(s) asked before; each runs again (a finished one is read "
                     "back, an unfinished one resumes from its checkpoint)", self.sweep_dir, asked_before)
        log.info("Sweep %s: %d trial(s) of %s, %d at a time, %s", self.sweep_dir,
                 max(self.search.budget, asked_before), self._what(), self.in_flight, self.pool.describe())
        self.asked = self.resume.replay(self.points, self.told)
        # then on as the stopped sweep would have gone: the slots that were free ask their next points first
        for _ in range(max(0, self.in_flight - self.resume.in_flight(self.told))):
            if not self._ask_new():
                break
        tail = False
        while True:
            self._launch()
            if not self.running and (self.stop is not None or self._nothing_left()):
                break
            if self.stop is None and self._nothing_left():
                # the last trials run: free the idle slots, and let the report get ready beside them
                self.pool.release_idle()
                if not tail:
                    tail = True
                    notify_last_trials(self.hydra_context.callbacks, self.config)
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
        return not self.resume.relaunch and self.asked >= self.search.budget

    # ------------------------------------------------------------------ ask, launch
    def _launch(self) -> None:
        while len(self.running) < self.in_flight and self.stop is None:
            if self.resume.relaunch:
                number = self.resume.relaunch.popleft()
                self._submit(number, self.resume.asked_overrides[number])
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
        """Compose the first trial, and each other choice of each config group once (with its own keys,
        runner.sweep.space), before anything runs: a misspelt option stops the sweep now, not later; then
        check the first trial's config as the trial would (a mistake there fails every trial alike)."""
        validate_first_trials(self.search, first, self.hydra_context.config_loader, self.config)
        self.validated = True
        self.journal.append({"event": "validated", "time": now()})

    # ------------------------------------------------------------------ results
    def _finish(self, finished) -> None:
        self.running.pop(finished.number, None)
        if self.stop is not None:
            return  # stopped on a failure: trials that end now were interrupted, and say so themselves
        outcome = self._outcome(finished)
        if outcome.job_return is not None:
            self.returns.append(outcome.job_return)
        log.info(self.progress.finished(outcome, len(self.running), max(self.search.budget, self.asked)))
        # a trial relaunched by a resume that ends as it had is not told twice
        if self.told.losses.get(outcome.number) != outcome.loss:
            self._tell(outcome)
        if outcome.failed_job:
            self.failures += 1
            rate = self.optim.max_failure_rate if self.kind == "nevergrad" else 0.0
            if self.failures / max(self.told.count, 1) > rate:
                self._stop_on(outcome)

    def _outcome(self, finished) -> Outcome:
        if finished.lost is None:
            return returned_outcome(finished, bool(self.optim.maximize) if self.kind == "nevergrad" else None)
        run_dir = record_lost(self.hydra_context.config_loader, self.config, finished)
        log.error("trial %d is recorded failed: %s", finished.number, finished.lost)
        outcome = Outcome.failed(finished.number, None, failed_job=False)
        if self.config.get("fail_fast", False):
            self.lost_error = f"trial {finished.number} ({run_dir}): {finished.lost}"
            self._stop_on(outcome)
        return outcome

    def _tell(self, outcome: Outcome) -> None:
        self.journal.append(outcome.tell_event(now()))
        self.search.tell(self.points[outcome.number], outcome.told_loss, violations=outcome.violations)
        self.told.add(outcome.number, outcome.loss)

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

    def _write_results(self) -> None:
        log.info(self.progress.ended())
        if self.kind != "nevergrad" or self.told.best is None or math.isinf(self.told.best[0]):
            return
        OmegaConf.save(OmegaConf.create(self.search.results(self.points[self.told.best[1]], self.told.best[0])),
                       self.sweep_dir / "optimization_results.yaml")
