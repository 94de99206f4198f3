"""A warm SLURM worker: one job of a `slurm_workers` sweep, running trial after trial from the sweep's queue.

submitit runs a SlurmWorker object in each worker job (launchers.slurm_workers submits them). It
loads the sweep once (launchers.worker.BootedSweep: Hydra's state, torch and the preloaded modules,
the process state each trial starts from), then takes pending trials from SWEEP_DIR/.workers/queue
(launchers.trial_queue) one at a time, runs each with Hydra's run_job into its own folder, and
renames its result into the queue. A thread renews the lease of the trial it runs.

- Preempted or at its time limit (USR2): the trial saves its checkpoint (runner.run.interrupt),
  submitit calls checkpoint(), which hands the trial back to the queue, and the job is requeued.
  Whichever worker takes the trial next resumes it exactly from its checkpoint.
- SIGTERM (scancel, or the sweep stopping): the trial saves its checkpoint, goes back to the queue,
  and the worker exits.
- It exits after `max_trials_per_worker` trials, above `worker_max_rss_gb` after a trial, or when a
  trial left threads running (the sweep submits a fresh worker if there is work left); when the
  sweep has ended; and when nothing is pending and the sweep's process has been silent for
  `idle_timeout_min` (a sweep killed and not restarted).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from launchers.trial_queue import Claim, Heartbeats, TrialQueue

log = logging.getLogger(__name__)

# how often an idle worker looks for a pending trial: the sweep's side of a trial's start-up
POLL_S = 0.05


class Stop(BaseException):
    """SIGTERM: the worker stops once its trial has saved what it can (not an Exception: no trial catches it)."""


class SlurmWorker:
    """What each worker job runs; submitit pickles it (only its settings) and calls it."""

    def __init__(self, sweep_dir: str, boot_file: str, settings: dict[str, Any]):
        self.sweep_dir, self.boot_file, self.settings = sweep_dir, boot_file, settings
        self._reset()

    def _reset(self) -> None:
        self.claim: Claim | None = None
        # reentrant: checkpoint() runs in a signal handler, on the main thread, which may hold it already
        self.lock = threading.RLock()
        self.stop_requested = False
        self.in_trial = False

    def __getstate__(self) -> dict:
        return {"sweep_dir": self.sweep_dir, "boot_file": self.boot_file, "settings": self.settings}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reset()

    # ------------------------------------------------------------------ the job
    def __call__(self) -> str:
        import submitit

        from launchers.worker import BootedSweep

        worker = submitit.JobEnvironment().job_id
        queue = TrialQueue(self.sweep_dir)
        signal.signal(signal.SIGTERM, self._terminate)
        # started first, so that the process state each trial starts from includes it
        threading.Thread(target=self._keep_lease, args=(queue,), name="lease", daemon=True).start()
        try:
            sweep = BootedSweep(Path(self.boot_file))
            (queue.ready / worker).touch()
            why = self._serve(worker, queue, sweep)
        except Stop:
            why = "stopped (SIGTERM) between trials"
        print(f"worker {worker} ends: {why}", flush=True)
        return why

    def _serve(self, worker: str, queue: TrialQueue, sweep) -> str:
        """Trial after trial; returns why it stopped."""
        ran, idle = 0, Heartbeats()
        max_trials, max_rss = self.settings["max_trials_per_worker"], self.settings["worker_max_rss_gb"]
        while True:
            if self.stop_requested or queue.is_marked("stop"):
                return f"stopped after {ran} trial(s): the sweep is stopping"
            with self.lock:
                self.claim = queue.claim(worker)
            if self.claim is None:
                if queue.is_marked("closed"):
                    return f"ran {ran} trial(s); the sweep has ended"
                if queue.is_marked("drain"):
                    return f"ran {ran} trial(s); the sweep has launched its last trial"
                silent = idle.silent_for(queue.root / "driver")
                if silent is None or silent > self.settings["idle_timeout_min"] * 60:
                    return f"ran {ran} trial(s); the sweep's process is gone and nothing is pending"
                time.sleep(POLL_S)
                continue
            claim = self.claim
            print(f"trial {claim.number} taken at {time.time():.3f}", flush=True)
            try:
                self.in_trial = True
                outcome = sweep.run(claim.number, claim.overrides, job_id=f"{worker}_{claim.number}")
            except Stop:
                with self.lock:
                    queue.release(claim)
                    self.claim = None
                return f"stopped during trial {claim.number} (SIGTERM); it goes back to the queue"
            finally:
                self.in_trial = False
            with self.lock:
                queue.finish(claim, outcome)
                self.claim = None
            ran += 1
            _, _, rss, stray, _ = outcome
            if stray:
                return f"trial {claim.number} left thread(s) running ({', '.join(stray)}): a fresh worker takes over"
            if max_rss is not None and rss > max_rss * 2**30:
                return (f"it holds {rss / 2**30:.2f} GB after trial {claim.number}, more than "
                        f"hydra.launcher.worker_max_rss_gb={max_rss}: a fresh worker takes over")
            if max_trials is not None and ran >= max_trials:
                return f"it ran hydra.launcher.max_trials_per_worker={max_trials} trial(s): a fresh worker takes over"

    def _keep_lease(self, queue: TrialQueue) -> None:
        """Renew the lease of the trial this worker runs; stop the process at once if it was lost, and
        ask the trial to save and stop when the sweep is stopping."""
        every = max(0.2, self.settings["lease_s"] / 6)
        while True:
            time.sleep(every)
            with self.lock:
                if self.claim is not None and not queue.renew(self.claim):
                    print(f"trial {self.claim.number}: lease lost (the sweep gave it to another worker); "
                          f"stopping now", flush=True)
                    os._exit(3)
            if queue.is_marked("stop") and not self.stop_requested:
                os.kill(os.getpid(), signal.SIGTERM)

    def _terminate(self, signum, frame) -> None:
        """SIGTERM. In a trial's training loop the trial saves its checkpoint first and then hands the
        signal over (runner.run.interrupt, calling this with no frame): stop there. Waiting for a trial:
        stop at once. Anywhere else (building a model) raising here could cross C++ code: the request
        is kept and the worker stops once the trial ends."""
        self.stop_requested = True
        if frame is None or not self.in_trial:
            raise Stop("SIGTERM")

    def checkpoint(self, *args, **kwargs):
        """submitit calls this on USR2 (preemption, time limit) once the trial has saved its checkpoint:
        the trial goes back to the queue, and the requeued job starts as a fresh worker."""
        import submitit

        with self.lock:
            if self.claim is not None:
                TrialQueue(self.sweep_dir).release(self.claim)
                print(f"trial {self.claim.number} handed back to the queue: this job is requeued", flush=True)
                self.claim = None
        return submitit.helpers.DelayedSubmission(SlurmWorker(self.sweep_dir, self.boot_file, self.settings))
