"""The `parallel` launcher: warm worker processes on this machine, one per slot, trial after trial.

A slot is a share of the machine: `cpus_per_task` cores (the worker's OMP_NUM_THREADS and
MKL_NUM_THREADS) and, when GPUs are visible, one GPU of its own (its CUDA_VISIBLE_DEVICES).
There are usable cores // cpus_per_task slots, at most one per GPU. Each worker
(launchers/worker.py) imports Python, torch and the runner once and then runs the trials it is
handed, each from the same fresh process state. A worker that dies is replaced and its trial
reported lost (the sweeper records it failed); one that holds more memory than
`worker_max_rss_gb` after a trial, or has run `max_trials_per_worker` trials, is replaced
before its next trial. Values reach the workers through their environment, never a shell line.
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait as wait_for_any
from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig

from launchers.worker_io import job_return, write_boot_file
from launchers.pools import Finished, TrialPool
from runner.errors import ConfigError

log = logging.getLogger(__name__)

WORKERS_DIR = ".workers"
# a trial stopped for its time limit gets this long to save its checkpoint before it is killed
STOP_GRACE_S = 30.0


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # taskset and cgroup cpusets count
    except AttributeError:
        return os.cpu_count() or 1


def visible_gpus(gpus: str) -> list[str]:
    """The GPU ids to hand out: "all" asks nvidia-smi (none without it), else the comma-separated ids given."""
    if gpus == "all":
        if shutil.which("nvidia-smi") is None:
            return []
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
                             capture_output=True, text=True, check=False)
        return [line.strip() for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else []
    ids = [gpu.strip() for gpu in str(gpus).split(",") if gpu.strip()]
    # what CUDA_VISIBLE_DEVICES takes; anything else would hide every GPU and train on the CPU
    wrong = [gpu for gpu in ids if not (gpu.lstrip("-").isdigit() or gpu.startswith(("GPU-", "MIG-")))]
    if wrong:
        raise ConfigError(f"hydra.launcher.gpus={gpus!r}: {', '.join(wrong)} is not a GPU; use all (every GPU "
                          f"nvidia-smi lists), comma-separated indices or UUIDs (0,1 or GPU-...), or '' for none")
    # as CUDA reads the list: a negative index (CUDA_VISIBLE_DEVICES=-1) hides it and every one after
    return list(itertools.takewhile(lambda gpu: not gpu.startswith("-"), ids))


def check_preload(modules: list[str]) -> None:
    """Each module's package must be installed: a typo would otherwise stop every worker as it starts.
    (Only the top-level package is looked up here, so that this process need not import torch.)"""
    import importlib.util

    missing = [name for name in modules if importlib.util.find_spec(str(name).partition(".")[0]) is None]
    if missing:
        raise ConfigError(f"hydra.launcher.preload names {', '.join(map(repr, missing))}, which this Python cannot "
                          f"import ({sys.executable}); list modules each worker imports once, such as torch")


@dataclass
class Slot:
    """A share of the machine: its index, cores and GPU (None: no GPU)."""

    index: int
    cpus: int
    gpu: str | None

    def environment(self, base: dict[str, str]) -> dict[str, str]:
        env = dict(base)
        # torch (and MKL/OpenMP) size their thread pools from these when the worker imports them
        env.update(OMP_NUM_THREADS=str(self.cpus), MKL_NUM_THREADS=str(self.cpus), RUNNER_SLOT=str(self.index),
                   CUDA_VISIBLE_DEVICES=self.gpu or "")
        return env


def make_slots(cpus_per_task: Any, gpus: str) -> list[Slot]:
    if isinstance(cpus_per_task, bool) or not isinstance(cpus_per_task, int) or cpus_per_task < 1:
        raise ConfigError(f"hydra.launcher.cpus_per_task must be a positive integer, got {cpus_per_task!r}")
    cores = usable_cores()
    if cpus_per_task > cores:
        raise ConfigError(f"hydra.launcher.cpus_per_task={cpus_per_task} is more than the {cores} core(s) this "
                          f"process may use; use at most {cores}")
    gpu_ids = visible_gpus(gpus)
    count = cores // cpus_per_task
    if gpu_ids:
        count = min(count, len(gpu_ids))
    return [Slot(i, cpus_per_task, gpu_ids[i] if gpu_ids else None) for i in range(count)]


@dataclass
class Worker:
    slot: Slot
    process: subprocess.Popen
    conn: Connection
    pid: int | None = None  # set once it has said it is ready
    trial: tuple[int, list[str]] | None = None
    started: float = 0.0  # when its trial was handed to it (monotonic)
    trials: int = 0
    stop_sent: float | None = None  # when it was asked to stop its trial (time limit)
    retire: str | None = None  # why it is replaced after its trial
    log_file: Any = None


def checked_limits(settings: DictConfig, slots: int) -> int:
    """The launcher's per-worker limits, refused clearly when out of range; returns the memory cap in bytes."""
    per_worker = settings.max_trials_per_worker
    if per_worker is not None and not (isinstance(per_worker, int) and per_worker >= 1):
        raise ConfigError(f"hydra.launcher.max_trials_per_worker must be a positive integer or null, got {per_worker}")
    if not settings.timeout_min > 0:
        raise ConfigError(f"hydra.launcher.timeout_min must be a positive number of minutes, got {settings.timeout_min}")
    limit = settings.worker_max_rss_gb
    if limit is None:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // slots
    if not limit > 0:
        raise ConfigError(f"hydra.launcher.worker_max_rss_gb must be a positive number of GB or null, got {limit}")
    return int(limit * 2**30)


def start_worker(slot: Slot, log_path: Path, boot_file: Path) -> Worker:
    """A worker process on `slot`, talking over a socket pair, its output in `log_path`."""
    ours, theirs = socket.socketpair()
    log_file = open(log_path, "ab")
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "launchers.worker", str(theirs.fileno()), str(boot_file)],
            pass_fds=[theirs.fileno()], env=slot.environment(dict(os.environ)), stdin=subprocess.DEVNULL,
            stdout=log_file, stderr=subprocess.STDOUT)
    finally:
        theirs.close()
    return Worker(slot, process, Connection(ours.detach()), log_file=log_file)


def ask_to_stop(worker: Worker) -> None:
    """Ask a worker to exit (one still loading is killed: it has nothing to save); returns at once."""
    if worker.process.poll() is None:
        if worker.pid is None:
            worker.process.kill()
        try:
            worker.conn.send(("stop",))
        except OSError:
            pass


def end_worker(worker: Worker, timeout: float = 10.0) -> None:
    """Ask a worker to exit and wait for it, at most `timeout` seconds before it is killed."""
    ask_to_stop(worker)
    if worker.process.poll() is None:
        try:
            worker.process.wait(timeout)
        except subprocess.TimeoutExpired:
            worker.process.kill()
            worker.process.wait()
    worker.conn.close()
    worker.log_file.close()


@dataclass
class WorkerPool(TrialPool):
    """Warm workers, one per slot, fed one trial at a time."""

    settings: DictConfig
    hydra_context: Any
    task_function: Any
    config: DictConfig
    slots: list[Slot] = field(init=False)
    workers: list[Worker] = field(default_factory=list, init=False)
    leaving: list[Worker] = field(default_factory=list, init=False)  # released, not yet waited for
    queue: list[tuple[int, list[str]]] = field(default_factory=list, init=False)
    finished: list[Finished] = field(default_factory=list, init=False)
    size: int = field(default=0, init=False)
    closing: bool = field(default=False, init=False)
    boot_file: Path | None = field(default=None, init=False)

    def __post_init__(self):
        self.slots = make_slots(self.settings.cpus_per_task, self.settings.gpus)
        self.capacity = len(self.slots)
        self.max_rss = checked_limits(self.settings, len(self.slots))
        self.sweep_dir = Path(str(self.config.hydra.sweep.dir))

    def describe(self) -> str:
        gpus = [s.gpu for s in self.slots if s.gpu is not None]
        return (f"{self.size} warm worker(s) on this machine, {self.slots[0].cpus} core(s) each"
                + (f", GPUs {','.join(gpus[: self.size])}" if gpus else ""))

    # ------------------------------------------------------------------ workers
    def start(self, size: int) -> None:
        self.size = max(1, min(size, self.capacity))
        if self.boot_file is None:
            check_preload(list(self.settings.preload or []))
            self.boot_file = write_boot_file(self.sweep_dir / WORKERS_DIR, self.hydra_context, self.task_function,
                                             self.config, list(self.settings.preload or []))
        while len(self.workers) < self.size:
            self._start_worker(self.slots[len(self.workers)])

    def _start_worker(self, slot: Slot) -> Worker:
        worker = start_worker(slot, self.sweep_dir / WORKERS_DIR / f"worker-{slot.index}.log", self.boot_file)
        self.workers.append(worker)
        return worker

    def _replace(self, worker: Worker) -> None:
        end_worker(worker)
        self.workers.remove(worker)
        if not self.closing and len(self.workers) < self.size:
            self._start_worker(worker.slot)

    # ------------------------------------------------------------------ trials
    def submit(self, number: int, overrides: Sequence[str]) -> None:
        if not self.workers:
            self.start(self.capacity)
        self.queue.append((number, list(overrides)))
        self._dispatch()

    def _dispatch(self) -> None:
        for worker in self.workers:
            if not self.queue:
                return
            if worker.pid is not None and worker.trial is None and worker.retire is None:
                number, overrides = self.queue.pop(0)
                try:
                    worker.conn.send(("run", number, overrides))
                except OSError:
                    self.queue.insert(0, (number, overrides))
                    continue  # it died: wait() notices and replaces it
                worker.trial, worker.started, worker.stop_sent = (number, overrides), time.monotonic(), None

    def wait(self, timeout: float | None) -> list[Finished]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.finished:
            busy = [w for w in self.workers if w.trial is not None]
            if not busy and not self.queue:
                break
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            # wake up at least once a second to enforce time limits
            ready = wait_for_any([w.conn for w in self.workers], timeout=min(1.0, remaining if remaining is not None else 1.0))
            for worker in [w for w in self.workers if w.conn in ready]:
                self._receive(worker)
            self._enforce_time_limits()
            self._dispatch()
            if deadline is not None and time.monotonic() >= deadline:
                break
        finished, self.finished = self.finished, []
        return finished

    def _receive(self, worker: Worker) -> None:
        try:
            message = worker.conn.recv()
        except (EOFError, OSError):
            self._died(worker)
            return
        kind = message[0]
        if kind == "ready":
            worker.pid = message[1]
        elif kind == "done":
            _, number, (status, value), run_dir, rss, stray, job = message
            number, overrides = worker.trial
            worker.trial, worker.trials = None, worker.trials + 1
            self.finished.append(Finished(number, overrides, job_return(overrides, status, value, job),
                                          run_dir=run_dir))
            if stray:
                worker.retire = f"the trial left thread(s) running: {', '.join(stray)}"
            elif rss > self.max_rss:
                worker.retire = (f"it holds {rss / 2**30:.2f} GB after trial {number}, more than "
                                 f"hydra.launcher.worker_max_rss_gb={self.max_rss / 2**30:.2f}")
            elif self.settings.max_trials_per_worker and worker.trials >= self.settings.max_trials_per_worker:
                worker.retire = f"it ran hydra.launcher.max_trials_per_worker={self.settings.max_trials_per_worker} trial(s)"
            if worker.retire:
                log.info("worker %d (pid %s) is replaced: %s", worker.slot.index, worker.pid, worker.retire)
                self._replace(worker)
        elif kind == "stopped":
            self._died(worker, stopped=message[1])

    def _died(self, worker: Worker, stopped: str | None = None) -> None:
        code = worker.process.wait()
        log_path = self.sweep_dir / WORKERS_DIR / f"worker-{worker.slot.index}.log"
        if worker.pid is None and stopped is None:
            # it never got ready: starting another would fail the same way
            self.close()
            tail = log_path.read_text(errors="replace").strip().splitlines()[-15:]
            raise ConfigError(f"a worker of the parallel launcher could not start (exit status {code}) while it "
                              f"loaded the sweep and imported hydra.launcher.preload={list(self.settings.preload or [])};"
                              f" the end of {log_path}:\n" + "\n".join(tail))
        if worker.trial is not None:
            number, overrides = worker.trial
            if stopped is not None:
                why = f"its worker (pid {worker.pid}) stopped it ({stopped})"
            elif code < 0:
                why = f"its worker (pid {worker.pid}) was killed by {signal.Signals(-code).name}"
            else:
                why = f"its worker (pid {worker.pid}) exited with status {code}"
            if worker.stop_sent is not None:
                why += f" after hydra.launcher.timeout_min={self.settings.timeout_min} minutes"
            output = self.sweep_dir / WORKERS_DIR / f"{number}.out"
            self.finished.append(Finished(number, overrides, lost=f"{why}; its output: {output}"))
            worker.trial = None
        elif not self.closing:
            log.warning("worker %d exited between trials (status %s); see %s", worker.slot.index, code, log_path)
        log.info("worker %d (pid %s) is replaced", worker.slot.index, worker.pid)
        self._replace(worker)

    def _enforce_time_limits(self) -> None:
        limit = self.settings.timeout_min * 60
        now = time.monotonic()
        for worker in self.workers:
            if worker.trial is None:
                continue
            if worker.stop_sent is None and now - worker.started > limit:
                log.warning("trial %d ran longer than hydra.launcher.timeout_min=%s: stopping it",
                            worker.trial[0], self.settings.timeout_min)
                worker.process.send_signal(signal.SIGTERM)
                worker.stop_sent = now
            elif worker.stop_sent is not None and now - worker.stop_sent > STOP_GRACE_S:
                worker.process.kill()

    def release_idle(self) -> None:
        if self.queue:
            return
        for worker in [w for w in self.workers if w.trial is None and w.pid is not None]:
            log.info("worker %d (pid %s) stops: the sweep has no trial left for it", worker.slot.index, worker.pid)
            self.workers.remove(worker)
            self.leaving.append(worker)
            ask_to_stop(worker)
        self.size = len(self.workers)

    def interrupt(self) -> None:
        # trials still queued never start; the sweep hears of them as it hears of every other
        self.finished += [Finished(number, overrides, lost="not started: the sweep is stopping")
                          for number, overrides in self.queue]
        self.queue.clear()
        for worker in self.workers:
            if worker.trial is not None and worker.process.poll() is None:
                worker.process.send_signal(signal.SIGTERM)
                worker.stop_sent = time.monotonic()

    def close(self) -> None:
        self.closing = True
        self.queue.clear()
        self.interrupt()
        # one grace period for all: the busy workers got SIGTERM together and save their trials side by
        # side, and every worker is asked to exit before any is waited for, so that they exit side by side
        deadline = time.monotonic() + (STOP_GRACE_S if any(w.trial is not None for w in self.workers) else 10.0)
        ending, self.workers, self.leaving = self.leaving + self.workers, [], []
        for worker in ending:
            ask_to_stop(worker)
        for worker in ending:
            end_worker(worker, timeout=max(0.0, deadline - time.monotonic()))
        if self.boot_file is not None:
            self.boot_file.unlink(missing_ok=True)
            self.boot_file = None
