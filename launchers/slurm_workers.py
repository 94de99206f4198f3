"""The `slurm_workers` launcher: warm SLURM worker jobs that pull a sweep's trials from files in its folder.

The sweep submits `num_workers` worker jobs at once (one job array, each job with the preset's
resources); each runs trial after trial (launchers.slurm_worker) with Python, torch and the
runner loaded once, as the `parallel` launcher's workers do on one machine. Trials change hands
through SWEEP_DIR/.workers/queue (launchers.trial_queue): the sweep writes a pending trial, a
worker takes it by an atomic rename and holds a lease on it while it runs, and renames its
result back. No server, no open port: only a folder every node sees.

- A worker that is preempted or reaches its time limit hands its trial back (after its
  checkpoint is saved) and is requeued; a worker that dies (kill -9, a lost node) stops renewing
  its lease: after `lease_s`, or as soon as SLURM reports its job ended, its trial goes back to
  the queue and another worker resumes it from its checkpoint. A trial given back more than
  MAX_ATTEMPTS times is recorded lost.
- A worker that ended (its limits, a failure) is replaced while the sweep has work.
- The sweep ends only when every worker job has ended: it marks the queue closed, the idle
  workers exit, and jobs still waiting in SLURM's queue are cancelled.
- A sweep killed and run again with the same command finds the queue as it was: results written
  meanwhile are read back, trials still running are left to their workers, and only the missing
  workers are submitted.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf

from launchers.pools import Finished, TrialPool, submitit_executor
from launchers.trial_queue import Heartbeats, TrialQueue
from launchers.worker_io import job_return, write_boot_file
from runner.errors import ConfigError

log = logging.getLogger(__name__)

# the launcher's own fields; every other one is a submitit field for each worker job
WORKER_FIELDS = ("num_workers", "max_trials_per_worker", "worker_max_rss_gb", "lease_s", "idle_timeout_min",
                 "preload", "array_parallelism")
# a trial whose worker died this many times is recorded lost (it may be the trial that kills them)
MAX_ATTEMPTS = 3
POLL_S = 0.05
# how often SLURM is asked which worker jobs ended (one sacct call for all of them)
JOBS_CHECK_S = 3.0
DRIVER_BEAT_S = 1.0


def checked_settings(settings: DictConfig) -> None:
    for name in ("num_workers", "max_trials_per_worker"):
        value = settings[name]
        if value is None and name == "max_trials_per_worker":
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"hydra.launcher.{name} must be a positive integer{' or null' if name != 'num_workers' else ''}, "
                              f"got {value!r}")
    for name in ("lease_s", "idle_timeout_min", "worker_max_rss_gb"):
        value = settings[name]
        if value is None and name == "worker_max_rss_gb":
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ConfigError(f"hydra.launcher.{name} must be a positive number, got {value!r}")


class WorkerJobs:
    """The sweep's worker jobs on SLURM: submitted as one array, adopted from an earlier run of the
    sweep, asked (one sacct call for all, every JOBS_CHECK_S) which ones ended, waited for at the end."""

    def __init__(self, executor: Any, queue: TrialQueue, submitit_folder: str):
        self.executor, self.queue, self.submitit_folder = executor, queue, submitit_folder
        self.jobs: dict[str, Any] = {}  # the ones that have not ended, by job id
        self.checked_at = 0.0

    def __len__(self) -> int:
        return len(self.jobs)

    @staticmethod
    def watcher():
        from submitit import SlurmJob

        return SlurmJob.watcher

    def adopt(self) -> None:
        """The worker jobs of an earlier run of this sweep that still run go on serving it."""
        from submitit import SlurmJob

        jobs = {job_id: SlurmJob(folder=self.submitit_folder, job_id=job_id) for job_id in self.queue.registered_jobs()}
        if not jobs:
            return
        self.watcher().update()
        alive = {job_id: job for job_id, job in jobs.items() if not self.watcher().is_done(job_id, mode="cache")}
        if alive:
            log.info("%d worker job(s) of this sweep still run and go on: %s", len(alive), " ".join(alive))
        self.jobs.update(alive)

    def submit(self, count: int, worker: Any) -> None:
        if count <= 0:
            return
        with self.executor.batch():
            jobs = [self.executor.submit(worker) for _ in range(count)]
        for job in jobs:
            self.queue.register_job(job.job_id)
            self.jobs[job.job_id] = job
        log.info("submitted %d worker job(s): %s", count, " ".join(job.job_id for job in jobs))

    def ended(self, force: bool = False, by_sacct: bool = False) -> list[tuple[Any, str]]:
        """(job, its final state) of each job that ended since the last call: its result written (its
        Python is done), or SLURM's accounting says so; `by_sacct`: only the latter (the job left the queue)."""
        if not self.jobs or (not force and time.monotonic() - self.checked_at < JOBS_CHECK_S):
            return []
        self.checked_at = time.monotonic()
        self.watcher().update()
        ended = []
        for job_id, job in list(self.jobs.items()):
            if (not by_sacct and job.paths.result_pickle.exists()) or self.watcher().is_done(job_id, mode="cache"):
                del self.jobs[job_id]
                ended.append((job, self.watcher().get_state(job_id, mode="cache")))
        return ended

    def end(self, give_up_s: float) -> None:
        """Wait for every job to exit (an idle worker sees the queue closed at once). A job that never
        started is cancelled now: there is nothing left for it. The others (one requeued after a
        preemption, one finishing a trial's checkpoint) get `give_up_s`, then they are cancelled."""
        give_up = time.monotonic() + give_up_s
        cancelled: set[str] = set()
        while self.jobs:
            for job_id, job in list(self.jobs.items()):
                never_ran = not (self.queue.ready / job_id).exists()
                late = time.monotonic() > give_up
                if job_id not in cancelled and (late or (never_ran and self.watcher().get_state(job_id, mode="cache") == "PENDING")):
                    log.info("worker job %s has not ended (%s): cancelled", job_id, self.watcher().get_state(job_id, mode="cache"))
                    job.cancel(check=False)
                    cancelled.add(job_id)
            self.ended(force=True, by_sacct=True)
            if self.jobs:
                time.sleep(0.5)


class SlurmWorkerPool(TrialPool):
    """Warm worker jobs on SLURM, fed through the sweep folder's trial queue."""

    def __init__(self, settings: DictConfig, hydra_context: Any, task_function: Any, config: DictConfig):
        checked_settings(settings)
        self.settings, self.hydra_context, self.task_function, self.config = settings, hydra_context, task_function, config
        self.sweep_dir = Path(str(config.hydra.sweep.dir))
        self.queue = TrialQueue(self.sweep_dir)
        params = OmegaConf.to_container(settings, resolve=True)
        executor = submitit_executor("slurm", {k: v for k, v in params.items() if k not in WORKER_FIELDS})
        self.workers = WorkerJobs(executor, self.queue, str(settings.submitit_folder))
        self.capacity = settings.num_workers
        self.size = 0
        self.trials: dict[int, list[str]] = {}  # given to this pool and not reported yet
        self.attempts: Counter = Counter()
        self.heartbeats = Heartbeats()
        self.boot_file: Path | None = None
        self.stopping = self.closing = self.draining = False
        self.finished: list[Finished] = []
        self.beat_at = self.leases_at = 0.0

    def describe(self) -> str:
        return (f"{self.size} warm SLURM worker job(s), {self.settings.cpus_per_task or 1} core(s) each, "
                f"trials through {self.queue.root}")

    # ------------------------------------------------------------------ workers
    def start(self, size: int) -> None:
        self.size = max(1, min(size, self.capacity))
        if self.boot_file is None:
            from launchers.workers import check_preload

            check_preload(list(self.settings.preload or []))
            self.queue.create()
            for mark in ("stop", "closed", "drain"):
                self.queue.unmark(mark)
            self._beat(force=True)
            self.boot_file = write_boot_file(self.sweep_dir / ".workers", self.hydra_context, self.task_function,
                                             self.config, list(self.settings.preload or []))
            self.workers.adopt()
        self._top_up()

    def _top_up(self) -> None:
        from launchers.slurm_worker import SlurmWorker

        settings = {name: self.settings[name] for name in
                    ("max_trials_per_worker", "worker_max_rss_gb", "lease_s", "idle_timeout_min")}
        missing = self.size - len(self.workers)
        if self.draining:  # no new trials will come: a worker only for each trial waiting for one
            missing = min(missing, len(self.queue.unclaimed()))
        self.workers.submit(missing, SlurmWorker(str(self.sweep_dir), str(self.boot_file), settings))

    def _check_jobs(self) -> None:
        """Ended worker jobs: their leases are void now, and they are replaced while there is work."""
        ended = self.workers.ended()
        for job, state in ended:
            if not (self.queue.ready / job.job_id).exists() and not self.closing:
                self._failed_to_start(job, state)
            log.info("worker job %s ended (%s)", job.job_id, state)
            for number, worker, path in self.queue.leases():
                if worker == job.job_id:
                    self._give_back(number, path, f"its worker job {job.job_id} ended ({state})")
        if ended and self.trials and not self.stopping and not self.closing:
            self._top_up()

    def _failed_to_start(self, job: Any, state: str) -> None:
        if any(self.queue.ready.iterdir()):
            log.warning("worker job %s ended (%s) before it could run a trial; its log: %s", job.job_id, state,
                        job.paths.stdout)
            return
        # no worker ever got ready: another would fail the same way
        try:
            tail = job.paths.stdout.read_text(errors="replace").strip().splitlines()[-15:]
        except FileNotFoundError:
            tail = ["(no log written)"]
        self.close()
        raise ConfigError(f"a worker job of the slurm_workers launcher ({job.job_id}, {state}) ended before it could "
                          f"run a trial, while it loaded the sweep and imported hydra.launcher.preload="
                          f"{list(self.settings.preload or [])}; the end of {job.paths.stdout}:\n" + "\n".join(tail))

    # ------------------------------------------------------------------ trials
    def submit(self, number: int, overrides: Sequence[str]) -> None:
        if self.boot_file is None:
            self.start(self.capacity)
        self.trials[number] = list(overrides)
        where = self.queue.where(number)
        if where == "done" and self.queue.read_result(number)[0][0] != "completed":
            self.queue.set_aside(number)  # a failed trial that a resumed sweep runs again
            where = None
        if where is None:
            self.queue.put(number, list(overrides))
        elif where != "done":
            log.info("trial %d is %s in the queue already (a worker of this sweep's earlier run)", number, where)

    def wait(self, timeout: float | None) -> list[Finished]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self._beat()
            self._collect()
            if time.monotonic() - self.leases_at >= 1.0:
                self.leases_at = time.monotonic()
                self._check_leases()
            self._check_jobs()
            if self.finished or not self.trials or (deadline is not None and time.monotonic() >= deadline):
                finished, self.finished = self.finished, []
                return finished
            time.sleep(POLL_S)

    def _collect(self) -> None:
        for number in self.queue.results():
            if number not in self.trials:
                continue
            overrides = self.trials.pop(number)
            (status, value), run_dir, _rss, _stray, job = self.queue.read_result(number)
            self.queue.forget(number)
            self.finished.append(Finished(number, overrides, job_return(overrides, status, value, job), run_dir=run_dir))
        if self.stopping:
            # trials handed back by stopping workers, and trials no worker had taken: both end here
            for number in self.queue.unclaimed():
                if number in self.trials:
                    self.queue.forget(number)
                    self.finished.append(Finished(number, self.trials.pop(number),
                                                  lost="interrupted: the sweep is stopping (it resumes from its "
                                                       "checkpoint when the sweep runs again)"))

    def _check_leases(self) -> None:
        for number, worker, path in self.queue.leases():
            silent = self.heartbeats.silent_for(path)
            if silent is not None and silent > self.settings.lease_s:
                self._give_back(number, path, f"its lease ran out: worker {worker} was silent for {silent:.0f} s "
                                              f"(hydra.launcher.lease_s={self.settings.lease_s})")

    def _give_back(self, number: int, path: Path, why: str) -> None:
        if not self.queue.give_back(path):
            return
        self.attempts[number] += 1
        if self.attempts[number] >= MAX_ATTEMPTS and number in self.trials:
            self.queue.forget(number)
            self.finished.append(Finished(number, self.trials.pop(number),
                                          lost=f"{why}; its workers were lost {MAX_ATTEMPTS} times while they ran it"))
            log.error("trial %d: %s; recorded lost after %d attempts", number, why, MAX_ATTEMPTS)
            return
        log.warning("trial %d goes back to the queue: %s; another worker resumes it", number, why)
        if self.draining and not (self.stopping or self.closing):
            self._top_up()  # idle workers may have ended already

    def _beat(self, force: bool = False) -> None:
        if force or time.monotonic() - self.beat_at >= DRIVER_BEAT_S:
            self.beat_at = time.monotonic()
            self.queue.mark("driver")

    def release_idle(self) -> None:
        """The sweep has launched its last trial: idle workers end now and give their allocation back."""
        if not self.draining:
            self.draining = True
            self.queue.mark("drain")

    def interrupt(self) -> None:
        self.stopping = True
        self.queue.mark("stop")

    def close(self) -> None:
        if self.closing:
            return
        self.closing = True
        if self.trials and not self.stopping:
            self.interrupt()
        self.queue.mark("closed")
        # the command ends only when every worker job has: the idle ones see `closed` and exit
        self.workers.end(give_up_s=self.settings.lease_s)
        self.queue.unmark("driver")
        if self.boot_file is not None:
            self.boot_file.unlink(missing_ok=True)
