"""A warm worker: one process that runs trial after trial for the `parallel` launcher.

    python -m launchers.worker FD BOOT_FILE     (started by launchers.workers.WorkerPool)

It loads the sweep's Hydra context from BOOT_FILE, imports the preload modules (torch...) once,
captures its process state, then for each trial the pool sends over the socket FD: composes the
trial's config, runs it with Hydra's run_job (as every Hydra launcher does), sends the result
back, and puts the captured state back (launchers.process_state) so the next trial starts as in
a fresh process. The trial's stdout and stderr go to .workers/<number>.out in the sweep folder.

It exits when the pool says stop, when the pool's end of the socket closes, on SIGTERM (a running
trial saves its checkpoint first, see runner.run.interrupt) and when the sweep's process dies.
"""

from __future__ import annotations

import ctypes
import gc
import importlib
import os
import signal
import sys
import threading
import traceback
from multiprocessing.connection import Connection
from pathlib import Path


class Stop(BaseException):
    """SIGTERM: stop after the current trial has saved what it can (not an Exception: no trial catches it)."""


class _Termination:
    """What SIGTERM does to a worker. Waiting for a trial, it stops at once. In a trial's training
    loop the trial saves its checkpoint first and then hands the signal over (runner.run.interrupt,
    calling this with no frame): the worker stops there. Anywhere else (loading torch, building a
    model) an exception raised from a signal handler could cross C++ code and abort the process:
    the request is kept, and the worker stops once the trial ends."""

    def __init__(self):
        self.waiting = False
        self.requested = False

    def __call__(self, signum, frame) -> None:
        if self.waiting or frame is None:
            raise Stop(signal.Signals(signum).name)
        self.requested = True


termination = _Termination()


def die_with_parent() -> None:
    """Ask Linux for SIGTERM when the sweep's process dies, so no worker outlives its sweep."""
    if sys.platform != "linux":
        return
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before the request was made
        raise Stop("the sweep's process is gone")


def resident_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class _Output:
    """Send this process's stdout and stderr (file descriptors 1 and 2) to a file for a while."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        sys.stdout.flush()
        sys.stderr.flush()
        self.saved = os.dup(1), os.dup(2)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        return self

    def __exit__(self, *exc):
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, saved in zip((1, 2), self.saved):
            os.dup2(saved, fd)
            os.close(saved)


def _plain(config):
    from omegaconf import OmegaConf

    return None if config is None else OmegaConf.to_container(config, resolve=False)


class BootedSweep:
    """The sweep as a worker loads it once from its boot file (launchers.worker_io): Hydra's state, the
    preloaded modules, and the process state every trial starts from. Used by this module's workers
    and by the warm SLURM workers (launchers.slurm_worker)."""

    def __init__(self, boot_file: Path):
        import cloudpickle
        from hydra.core.singleton import Singleton
        from hydra.core.utils import setup_globals

        from launchers.process_state import ProcessState

        with open(boot_file, "rb") as f:
            self.boot = cloudpickle.load(f)
        Singleton.set_state(self.boot["singleton_state"])
        setup_globals()
        for module in self.boot["preload"]:
            importlib.import_module(module)
        self.output_dir = Path(self.boot["output_dir"])
        self.baseline = ProcessState.capture()
        # what is loaded now stays for good: the collection after each trial need not walk it again
        gc.freeze()

    def run(self, number: int, overrides: list[str], job_id: str) -> tuple:
        """Run one trial from the baseline state, its output in OUTPUT_DIR/<number>.out, and put the
        baseline back. Returns what launchers.worker_io.job_return rebuilds the JobReturn from:
        (status, value), the trial's folder, this process's resident bytes, the threads it left
        running, and its job description."""
        from hydra.core.utils import JobStatus

        from launchers.pools import run_trial

        error_text = None
        try:
            with _Output(self.output_dir / f"{number}.out"):
                print(f"=== trial {number}, worker pid {os.getpid()}: {' '.join(overrides)}", flush=True)
                ret = run_trial(self.boot["hydra_context"], self.boot["task_function"], self.boot["config"], number,
                                overrides, job_id=job_id)
                if ret.status == JobStatus.FAILED:
                    error = ret._return_value
                    traceback.print_exception(error)
                    error_text = (type(error).__name__, str(error), _is_compact(error))
        finally:
            self.baseline.restore()
        result = ("failed", error_text) if ret.status == JobStatus.FAILED else ("completed", ret.return_value)
        run_dir = ret.hydra_cfg.hydra.runtime.output_dir if ret.hydra_cfg is not None else None
        stray = [t.name for t in self.baseline.stray_threads()]
        # what Hydra's launchers give back with every job: its task config, Hydra config, folder and name
        # (as plain containers: a config holding the job's runtime objects need not pickle)
        job = {"cfg": _plain(ret.cfg), "hydra_cfg": _plain(ret.hydra_cfg), "working_dir": ret.working_dir,
               "task_name": ret.task_name}
        return result, run_dir, resident_bytes(), stray, job


def run(conn: Connection, boot_file: Path) -> int:
    sweep = BootedSweep(boot_file)
    conn.send(("ready", os.getpid()))
    while True:
        if termination.requested:
            raise Stop("SIGTERM")
        termination.waiting = True
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return 0  # the sweep's end of the socket closed
        finally:
            termination.waiting = False
        if message[0] == "stop":
            return 0
        _, number, overrides = message
        result, run_dir, rss, stray, job = sweep.run(number, overrides, job_id=f"{os.getpid()}_{number}")
        conn.send(("done", number, result, run_dir, rss, stray, job))
        if stray:
            return 0  # a thread the trial left running would run on into the next trial: be replaced


def _is_compact(error: BaseException) -> bool:
    from hydra.errors import CompactHydraException

    return isinstance(error, CompactHydraException)


def main(argv: list[str]) -> int:
    conn = Connection(int(argv[0]))
    boot_file = Path(argv[1])
    # a trial sees the same sys.argv in every worker, whatever the socket and the boot file
    del sys.argv[1:]
    signal.signal(signal.SIGTERM, termination)
    # Ctrl-C reaches the workers too (one process group): between trials there is nothing to save.
    # A sweep started with SIGINT ignored (in the background of a script) keeps it ignored here too,
    # or a Ctrl-C meant for the script would stop the trials and not the sweep.
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        die_with_parent()
        return run(conn, boot_file)
    except (Stop, KeyboardInterrupt) as why:
        try:
            conn.send(("stopped", f"{type(why).__name__} {why}".strip()))
        except OSError:
            pass
        return 0
    finally:
        # a trial's non-daemon threads must not keep a stopped worker alive
        if threading.active_count() > 1:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
