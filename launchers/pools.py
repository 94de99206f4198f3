"""Trial pools: run one trial at a time on a launcher and report each one the moment it ends.

Hydra's Launcher interface runs a batch and returns when all of it has ended. A streaming sweeper
(runner.sweep.sweeper) needs the opposite: submit one trial, be told as soon as any trial ends, submit
the next. A pool is that interface over each launcher:

- InProcessPool: Hydra's basic launcher (`hydra/launcher=local`): in this process, one at a time;
- WorkerPool (launchers/workers.py): `hydra/launcher=parallel`, warm worker processes;
- SubmititPool: hydra-submitit-launcher's launchers (`slurm`, `slurm_gpu`, `submitit_local`):
  one submitit job per trial, with every field the launcher config sets;
- ThreadedPool: any other Hydra launcher, one `launch()` of one trial on a thread of a ThreadPoolExecutor.
"""

from __future__ import annotations

import logging
import time
import traceback
from abc import ABC, abstractmethod
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass
from typing import Any, Sequence

from hydra.core.utils import JobReturn, JobStatus, run_job, setup_globals
from omegaconf import DictConfig, open_dict

from runner.errors import RunnerError

log = logging.getLogger(__name__)


class TrialError(RunnerError):
    """A trial's exception, carried back from the process that ran it."""


@dataclass
class Finished:
    """A trial that ended: its JobReturn, or why none came back (a worker died, a job was cancelled)."""

    number: int
    overrides: list[str]
    job_return: JobReturn | None = None
    lost: str | None = None
    run_dir: str | None = None  # the trial's folder, when the trial got as far as having one

    @classmethod
    def returned(cls, number: int, overrides: list[str], ret: JobReturn) -> "Finished":
        run_dir = ret.hydra_cfg.hydra.runtime.output_dir if ret.hydra_cfg is not None else None
        return cls(number, overrides, ret, run_dir=run_dir)


def failed_return(overrides: Sequence[str], error: BaseException) -> JobReturn:
    ret = JobReturn(overrides=list(overrides), status=JobStatus.FAILED)
    ret.return_value = error
    return ret


def submitit_executor(cluster: str, params: dict[str, Any]):
    """A submitit executor from a hydra-submitit-launcher config's fields, translated into submitit's
    parameters as that launcher's launch() does: its own fields as they are, the rest `<cluster>_<field>`."""
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf

    init = {"folder": params["submitit_folder"]}
    if "max_num_timeout" in params:
        init[f"{cluster}_max_num_timeout"] = params["max_num_timeout"]
    executor = submitit.AutoExecutor(cluster=cluster, **init)
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{key if key in base else f"{cluster}_{key}": value for key, value in params.items()
                                  if key not in ("submitit_folder", "max_num_timeout")})
    return executor


def launch_batch(pool: TrialPool, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[JobReturn]:
    """Hydra's Launcher.launch() on a pool, for Hydra's own sweepers: run a batch, wait for all of it.
    A trial that comes back without a JobReturn (its worker died) is a failed one."""
    numbers = [initial_job_idx + i for i in range(len(job_overrides))]
    for number, overrides in zip(numbers, job_overrides):
        log.info("\t#%d : %s", number, " ".join(overrides))
        pool.submit(number, overrides)
    returns: dict[int, JobReturn] = {}
    try:
        while len(returns) < len(numbers):
            for finished in pool.wait(None):
                returns[finished.number] = finished.job_return or failed_return(
                    finished.overrides, TrialError(f"trial {finished.number}: {finished.lost}"))
    except BaseException:
        pool.close()
        raise
    return [returns[number] for number in numbers]


class PoolLauncher:
    """Hydra's Launcher interface over a trial pool of warm workers (the `parallel` and `slurm_workers`
    plugins): the streaming sweepers take the pool itself; Hydra's own sweepers get each batch run on
    it and waited for whole. `make_pool(settings, hydra_context, task_function, config)` builds it."""

    def __init__(self, make_pool, **settings: Any):
        from omegaconf import OmegaConf

        self.make_pool = make_pool
        self.settings = OmegaConf.create(settings)
        self.pool: TrialPool | None = None
        self.close_at_exit = False

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        self.pool = self.make_pool(self.settings, hydra_context, task_function, config)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[JobReturn]:
        # every batch tops the workers up (a first batch starts them all)
        self.pool.start(self.pool.capacity)
        if not self.close_at_exit:
            import atexit

            atexit.register(self.pool.close)
            self.close_at_exit = True
        return launch_batch(self.pool, job_overrides, initial_job_idx)

class TrialPool(ABC):
    """Where a streaming sweep's trials run."""

    # how many trials it runs at once; None: as many as it is given
    capacity: int | None = None

    @abstractmethod
    def describe(self) -> str:
        """Where the trials run, in words, for the sweep's log."""

    def start(self, size: int) -> None:
        """Get ready to run `size` trials at once (start workers early); optional."""

    @abstractmethod
    def submit(self, number: int, overrides: Sequence[str]) -> str | None:
        """Start trial `number` (Hydra's job number) with these overrides; returns a job id, if it has one."""

    @abstractmethod
    def wait(self, timeout: float | None) -> list[Finished]:
        """Trials that ended since the last call; blocks until one ends or `timeout` seconds passed."""

    def release_idle(self) -> None:
        """The sweep has no trial left to give: free what waits idle (a warm worker), so that the
        last trials and the report have the machine; optional."""

    def interrupt(self) -> None:
        """Ask every running trial to stop now: it saves a checkpoint and records `interrupted`."""

    def close(self) -> None:
        """Stop whatever still runs and free the pool's resources."""


class InProcessPool(TrialPool):
    """Hydra's basic launcher, one trial after another in this process (each from a fresh process state)."""

    capacity = 1

    def __init__(self, hydra_context, task_function, config: DictConfig):
        self.hydra_context, self.task_function, self.config = hydra_context, task_function, config
        self.queue: list[tuple[int, list[str]]] = []
        self.baseline = None

    def describe(self) -> str:
        return "in this process"

    def submit(self, number: int, overrides: Sequence[str]) -> None:
        self.queue.append((number, list(overrides)))

    def wait(self, timeout: float | None) -> list[Finished]:
        if not self.queue:
            return []
        if self.baseline is None:
            from launchers.process_state import ProcessState

            # captured only now, when a trial is about to run: the sweep's own checks come first,
            # without waiting for torch to load
            setup_globals()
            self.baseline = ProcessState.capture()
        number, overrides = self.queue.pop(0)
        try:
            ret = run_trial(self.hydra_context, self.task_function, self.config, number, overrides, job_id=str(number))
        finally:
            # the trial's logging, working directory, torch settings... do not leak into the sweep or the next trial
            self.baseline.restore()
        return [Finished.returned(number, overrides, ret)]


def run_trial(hydra_context, task_function, config: DictConfig, number: int, overrides: list[str],
              job_id: str) -> JobReturn:
    """Compose trial `number`'s config and run it as Hydra's launchers do (run_job); a config that
    does not compose comes back as a failed JobReturn."""
    try:
        sweep_config = hydra_context.config_loader.load_sweep_config(config, list(overrides))
    except Exception as error:
        return failed_return(overrides, error)
    with open_dict(sweep_config):
        sweep_config.hydra.job.id = job_id
        sweep_config.hydra.job.num = number
    return run_job(hydra_context=hydra_context, task_function=task_function, config=sweep_config,
                   job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")


class SubmititPool(TrialPool):
    """One submitit job per trial, on the executor a hydra-submitit-launcher config describes.

    The launcher object itself is what each job runs (as the launcher does for a job array), so
    its checkpoint() requeues a preempted or timed-out trial and every field of its config holds:
    resources, partition, setup lines, time limit, max_num_timeout, additional_parameters.
    """

    POLL_S = 0.25

    def __init__(self, launcher):
        self.launcher = launcher
        self.cluster = launcher._EXECUTOR
        params = dict(launcher.params)
        # one job per trial: the array's parallelism is this pool's capacity instead
        self.capacity = params.pop("array_parallelism", None)
        self.executor = submitit_executor(self.cluster, params)
        self.jobs: dict[int, tuple[Any, list[str]]] = {}

    def describe(self) -> str:
        return f"{self.cluster} jobs (submitit), one per trial"

    def submit(self, number: int, overrides: Sequence[str]) -> str:
        from hydra.core.singleton import Singleton

        job = self.executor.submit(self.launcher, list(overrides), "hydra.sweep.dir", number,
                                   f"job_id_for_{number}", Singleton.get_state())
        self.jobs[number] = (job, list(overrides))
        return str(job.job_id)

    def wait(self, timeout: float | None) -> list[Finished]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            finished = [self._collect(number) for number, (job, _) in list(self.jobs.items()) if job.done()]
            if finished or not self.jobs or (deadline is not None and time.monotonic() >= deadline):
                return finished
            time.sleep(self.POLL_S)

    def _collect(self, number: int) -> Finished:
        from submitit.core.utils import FailedJobError, UncompletedJobError

        job, overrides = self.jobs.pop(number)
        try:
            # a job of several tasks (one per rank) returns one result per task: rank 0's is the trial's
            return Finished.returned(number, overrides, job.results()[0])
        except UncompletedJobError as error:
            state = job.state
            return Finished(number, overrides, lost=f"{self.cluster} job {job.job_id} ended {state} without a "
                            f"result ({str(error).splitlines()[0]}); its log: {job.paths.stdout}")
        except FailedJobError as error:
            return Finished(number, overrides, lost=f"{self.cluster} job {job.job_id} failed outside the trial: "
                            f"{str(error).strip().splitlines()[-1]}; its log: {job.paths.stdout}")

    def interrupt(self) -> None:
        for job, _ in self.jobs.values():
            job.cancel(check=False)

    def close(self) -> None:
        # trials still in the queue keep running on the cluster, as they did under Hydra's launcher:
        # `scancel --name <hydra.launcher.name>` stops them
        if self.jobs:
            log.warning("%d trial job(s) still submitted: %s", len(self.jobs),
                        " ".join(str(job.job_id) for job, _ in self.jobs.values()))


class ThreadedPool(TrialPool):
    """Any Hydra launcher: each trial is a launch() of one job, on a thread of a ThreadPoolExecutor."""

    def __init__(self, launcher):
        self.launcher = launcher
        # a thread is started only when no idle one is left, so the sweeper's in-flight limit bounds
        # the threads; the executor's own bound only has to be above any limit a sweep sets
        self.executor = ThreadPoolExecutor(max_workers=1024, thread_name_prefix="trial")
        self.running: dict[Future, tuple[int, list[str]]] = {}

    def describe(self) -> str:
        return f"{type(self.launcher).__name__}, one launch per trial"

    def submit(self, number: int, overrides: Sequence[str]) -> None:
        overrides = list(overrides)
        future = self.executor.submit(self.launcher.launch, [overrides], initial_job_idx=number)
        self.running[future] = (number, overrides)

    def wait(self, timeout: float | None) -> list[Finished]:
        if not self.running:
            return []
        ended, _ = futures_wait(self.running, timeout, return_when=FIRST_COMPLETED)
        return [self._finished(future, *self.running.pop(future)) for future in ended]

    @staticmethod
    def _finished(future: Future, number: int, overrides: list[str]) -> Finished:
        try:
            (ret,) = future.result()
        except Exception as error:
            trace = "".join(traceback.format_exception(error))
            return Finished(number, overrides, lost=f"the launcher failed: {error}\n{trace}")
        return Finished.returned(number, overrides, ret)

    def close(self) -> None:
        # nothing new starts; a launch already running ends on its launcher (the process waits for it)
        self.executor.shutdown(wait=False, cancel_futures=True)


def pool_for(launcher, hydra_context, task_function, config: DictConfig) -> TrialPool:
    """The pool that runs one trial at a time on this (already set up) Hydra launcher."""
    from hydra._internal.core_plugins.basic_launcher import BasicLauncher

    if hasattr(launcher, "trial_pool"):
        return launcher.trial_pool()
    if isinstance(launcher, BasicLauncher):
        return InProcessPool(hydra_context, task_function, config)
    try:
        from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher
    except ImportError:
        BaseSubmititLauncher = ()  # noqa: N806  (the plugin is not installed)
    if isinstance(launcher, BaseSubmititLauncher):
        return SubmititPool(launcher)
    return ThreadedPool(launcher)
