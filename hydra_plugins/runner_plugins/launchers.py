"""The `parallel` and `slurm_workers` launchers as Hydra plugins: thin shells around launchers.workers and
launchers.slurm_workers."""

from typing import Any, Sequence

from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class _WarmWorkersLauncher(Launcher):
    """A launcher over a trial pool of warm workers (launchers.pools.PoolLauncher), the pool class
    `pool_class()` names."""

    @staticmethod
    def pool_class() -> type:
        raise NotImplementedError

    def __init__(self, **settings: Any) -> None:
        # imported here: Hydra imports this module at every start, even for --help
        from launchers.pools import PoolLauncher

        self.impl = PoolLauncher(self.pool_class(), **settings)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.impl.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        return self.impl.launch(job_overrides, initial_job_idx)

    def trial_pool(self) -> Any:
        """The pool the streaming sweepers feed one trial at a time (launchers.pools.TrialPool)."""
        return self.impl.pool


class ParallelLauncher(_WarmWorkersLauncher):
    """Warm worker processes on this machine, one per slot; Hydra's own sweepers get batches run on them."""

    @staticmethod
    def pool_class() -> type:
        from launchers.workers import WorkerPool

        return WorkerPool


class SlurmWorkersLauncher(_WarmWorkersLauncher):
    """Warm SLURM worker jobs that pull trials from the sweep folder, each running trial after trial."""

    @staticmethod
    def pool_class() -> type:
        from launchers.slurm_workers import SlurmWorkerPool

        return SlurmWorkerPool
