"""A sweep's dry run: `python -m runner --multirun ... --dry-run` (or `hydra.sweeper.dry_run=true`) prints
what the sweep would launch and runs none of it.

It checks what the sweep checks before its first trial (the workers' settings, the search space, the
first trial's config and each option of each swept config group composed) and prints the space, how
many trials run at once, the overrides of each trial it would launch and, from the durations of the
trials already in the sweep folder, an estimate of the wall time. A grid's trials are all known; a
Nevergrad sweep's are known only until the first result is told: it prints the points its optimizer
asks first (the trials in flight at the start, the same points with the same seed) and says that the
others depend on the results. Nothing is written: no sweep folder, journal or trial folder; no worker
starts, and no report is written at the end (runner.report.hydra_callback skips a dry run).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from runner.results import read_result
from runner.sweep.journal import Journal
from runner.sweep.outcome import Told
from runner.sweep.progress import clock
from runner.sweep.repeats import repeated
from runner.sweep.resume import SweepResume
from runner.sweep.space import make_search, validate_first_trials

DRY_RUN_FLAG = "--dry-run"
DRY_RUN_KEY = "hydra.sweeper.dry_run"
# an earlier trial that ended so counts towards the estimate of a trial's duration
TIMED_STATUSES = ("completed", "pruned")


def with_dry_run_override(argv: list[str]) -> list[str]:
    """The command line with --dry-run turned into hydra.sweeper.dry_run=true: Hydra's own parser refuses
    any flag it does not know."""
    if DRY_RUN_FLAG not in argv:
        return argv
    rest = [arg for arg in argv if arg != DRY_RUN_FLAG]
    return rest if any(arg.startswith(f"{DRY_RUN_KEY}=") for arg in rest) else [*rest, f"{DRY_RUN_KEY}=true"]


def is_dry_run(config: DictConfig) -> bool:
    return bool(OmegaConf.select(config, DRY_RUN_KEY, default=False))


class SweepPreview:
    """In place of runner.sweep.sweeper.StreamingSweeper for a dry run, with the same settings."""

    def __init__(self, kind: str, num_workers: int | None = None, params: Any = None, optim: Any = None,
                 repeats: Any = 1):
        self.kind, self.num_workers, self.params, self.optim = kind, num_workers, params, optim
        self.repeats = repeats

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        from runner.sweep.sweeper import trial_pool

        self.hydra_context, self.config = hydra_context, config
        wanted = self.optim.num_workers if self.kind == "nevergrad" else self.num_workers
        # built, and so checked, but not started: a dry run starts no worker
        self.pool, self.limit = trial_pool(self.kind, wanted, hydra_context, task_function, config)

    def sweep(self, arguments: list[str]) -> list:
        print(self.preview(list(arguments)), flush=True)
        return []

    def preview(self, arguments: list[str]) -> str:
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        search = repeated(make_search(self.kind, self.params, self.optim, arguments, self.hydra_context.config_loader,
                                      self.config), self.repeats, self.config)
        in_flight = self.limit or search.budget
        relaunch, asked, next_number, free = self._resumed(search, sweep_dir, in_flight)
        new = []
        # a grid's points are all known; an optimizer's only until it is told a result
        wanted = search.budget if self.kind == "grid" else min(free, search.budget)
        while asked < search.budget and len(new) < wanted:
            new.append((next_number, search.ask().overrides))
            next_number, asked = next_number + 1, asked + 1
        first = (relaunch or new or [(None, None)])[0][1]
        if first is not None:
            validate_first_trials(search, first, self.hydra_context.config_loader, self.config)

        lines = [f"Dry run: nothing is launched or written. Sweep folder: {sweep_dir}"
                 + ("" if sweep_dir.exists() else " (does not exist yet)"),
                 f"Search: {self._what(search)}, over:", *(f"  {line}" for line in search.describe()["space"]),
                 f"At once: {in_flight} trial(s) (the {self._launcher()} launcher)"]
        if first is not None:
            lines.append("Checked: the first trial's config, and each option of each swept config group, compose")
        if relaunch:
            lines.append(f"Resumes the sweep in the folder: its {len(relaunch)} trial(s) asked before run again "
                         f"(a finished one is read back, an unfinished one resumes from its checkpoint):")
            lines += [f"  #{number}  {' '.join(overrides)}" for number, overrides in relaunch]
        if new:
            lines.append("Trials it would launch:" if self.kind == "grid" else
                         f"Trials it would launch first (the points {self.optim.optimizer} asks before any "
                         f"result is told{self._seed_note()}):")
            lines += [f"  #{number}  {' '.join(overrides)}" for number, overrides in new]
        if asked < search.budget:
            lines.append(f"The other {search.budget - asked} trial(s) are asked as results come in: their points "
                         f"depend on the results told")
        lines.append(self._estimate(sweep_dir, relaunch, max(search.budget, asked), in_flight))
        return "\n".join(lines)

    def _what(self, search) -> str:
        if self.kind == "grid":
            return f"a grid of {search.budget} trial(s)"
        objective = self.config.get("objective") or {}
        return (f"Nevergrad {self.optim.optimizer} {'maximizing' if self.optim.maximize else 'minimizing'} "
                f"{objective.get('metric', 'the objective')}, budget {search.budget}")

    def _launcher(self) -> str:
        return OmegaConf.select(self.config, "hydra.runtime.choices.hydra/launcher", default=None) or "configured"

    def _seed_note(self) -> str:
        if self.optim.seed is None:
            return "; hydra.sweeper.optim.seed is null, so the sweep itself draws other points"
        return f", seed {self.optim.seed}"

    def _resumed(self, search, sweep_dir: Path, in_flight: int) -> tuple[list, int, int, int]:
        """What a sweep run into this folder takes up from its journal, as the sweeper would (refused if
        it searched another space): the trials it relaunches, how many points were asked, the next
        trial's number and the slots free for new points. Reads the journal, writes nothing."""
        history = Journal(sweep_dir).read()
        if not any(e["event"] in ("validated", "job", "tell") for e in history):
            return [], 0, 0, in_flight  # a sweep that never started a trial starts afresh
        resume = SweepResume(Journal(sweep_dir), search, sweep_dir)
        told = Told()
        asked = resume.replay({}, told)
        relaunch = [(number, resume.asked_overrides[number]) for number in resume.relaunch]
        return relaunch, asked, resume.next_number, max(0, in_flight - resume.in_flight(told))

    def _estimate(self, sweep_dir: Path, relaunch: list, budget: int, in_flight: int) -> str:
        """The wall time: the trials left times the mean duration of the folder's earlier trials, over the
        trials in flight."""
        durations, finished = [], set()
        for folder in sorted(sweep_dir.iterdir()) if sweep_dir.is_dir() else []:
            result = read_result(folder) if folder.is_dir() else None
            if result and result.get("status") in TIMED_STATUSES and result.get("duration_s") is not None:
                durations.append(float(result["duration_s"]))
                number = folder.name.split("_", 1)[0]
                finished.add(int(number) if number.isdigit() else None)
        if not durations:
            return (f"Estimated wall time: unknown, no finished trial in {sweep_dir} to time (a dry run into an "
                    f"earlier sweep's folder, hydra.sweep.dir=..., estimates from its trials)")
        left = budget - len({number for number, _ in relaunch} & finished)
        mean = sum(durations) / len(durations)
        return (f"Estimated wall time: {clock(left * mean / in_flight)} ({left} trial(s) to run, "
                f"{in_flight} at a time, {clock(mean)} each: the mean of the {len(durations)} finished trial(s) "
                f"in the folder)")
