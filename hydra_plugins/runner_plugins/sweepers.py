"""The runner's sweepers as Hydra plugins: thin shells around runner.sweep.sweeper.StreamingSweeper."""

from abc import abstractmethod
from typing import Any, List

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class _Streaming(Sweeper):
    @property
    @abstractmethod
    def kind(self) -> str:
        """What is searched: "grid" or "nevergrad"."""

    def __init__(self, dry_run: bool = False, **settings: Any) -> None:
        # imported here: Hydra imports this module at every start, even for --help
        from runner.sweep.dry_run import SweepPreview
        from runner.sweep.sweeper import StreamingSweeper

        self.impl = (SweepPreview if dry_run else StreamingSweeper)(kind=self.kind, **settings)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.impl.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: List[str]) -> Any:
        return self.impl.sweep(arguments)


class GridSweeper(_Streaming):
    """Every combination of the swept values, at most num_workers trials in flight."""

    kind = "grid"


class AskTellSweeper(_Streaming):
    """Nevergrad's ask/tell: the moment a trial ends, tell its result and ask the next point."""

    kind = "nevergrad"
