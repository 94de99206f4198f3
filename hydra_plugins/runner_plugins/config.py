"""The typed schemas of the runner's sweepers and of the `parallel` and `slurm_workers` launchers,
registered with Hydra.

`python -m runner -m sweep=nevergrad --cfg hydra -p hydra.sweeper` shows every field with its value;
the presets in conf/hydra/sweeper/ and conf/hydra/launcher/parallel.yaml document them.
"""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from hydra_plugins.hydra_nevergrad_sweeper.config import OptimConf
from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf


@dataclass
class GridSweeperConf:
    """Every combination of the swept values, streamed: a new trial starts the moment one ends."""

    _target_: str = "hydra_plugins.runner_plugins.sweepers.GridSweeper"
    # at most this many trials at once; null: as many as the launcher runs at once
    # (local: 1, parallel: its slots, slurm: array_parallelism)
    num_workers: Optional[int] = None
    # the grid, in Hydra's override syntax (`model: lenet,mlp`); the command line adds to it. A config
    # group may instead hold one block per option, each with its own keys (`model: {lenet: {}, mlp:
    # {model.dropout: 0.0,0.3}}`): a conditional space (runner.sweep.space, docs/sweeps.md)
    params: Optional[Dict[str, Any]] = None
    # print the trials the sweep would launch and run none (`python -m runner -m ... --dry-run`)
    dry_run: bool = False
    # run each configuration this many times, trainer.seed=seed..seed+repeats-1 (docs/sweeps.md)
    repeats: Any = 1


@dataclass
class AskTellSweeperConf:
    """Nevergrad's ask/tell, trial by trial: the moment a trial ends its result is told and the next
    point asked, with at most optim.num_workers trials in flight."""

    _target_: str = "hydra_plugins.runner_plugins.sweepers.AskTellSweeper"
    # the same fields as Hydra's Nevergrad sweeper: optimizer, budget, num_workers, noisy,
    # maximize, seed, max_failure_rate (over every trial told so far, not per batch)
    optim: OptimConf = field(default_factory=OptimConf)
    # the search space, in Hydra's override syntax (`optimizer.lr: tag(log, interval(1e-4, 1e-1))`); a
    # config group may hold one block per option with its own keys, as for the grid (docs/sweeps.md)
    params: Optional[Dict[str, Any]] = None
    # print the first points the sweep would launch and run none (`python -m runner -m ... --dry-run`)
    dry_run: bool = False
    # run each configuration this many times (seeds seed..seed+repeats-1), tell the mean; the
    # budget counts configurations (docs/sweeps.md)
    repeats: Any = 1


@dataclass
class ParallelLauncherConf:
    """Trials on this machine in warm worker processes, one per slot, each running trial after trial."""

    _target_: str = "hydra_plugins.runner_plugins.launchers.ParallelLauncher"
    # cores per trial (its OMP_NUM_THREADS); slots = usable cores // cpus_per_task, at most one per GPU
    cpus_per_task: int = 1
    # GPUs to hand out, one per slot: comma-separated ids, "all" (every GPU nvidia-smi lists) or ""
    gpus: str = "all"
    # a trial that runs longer than this is stopped (it saves a checkpoint first) and recorded failed
    timeout_min: float = 10080
    # a worker runs this many trials, then is replaced by a fresh process; null: no limit (1: cold)
    max_trials_per_worker: Optional[int] = None
    # a worker whose resident memory is above this after a trial is replaced; null: this
    # machine's memory divided by the number of slots
    worker_max_rss_gb: Optional[float] = None
    # modules each worker imports once, before its first trial
    preload: List[str] = field(default_factory=list)


@dataclass
class SlurmWorkersLauncherConf(SlurmQueueConf):
    """Warm SLURM worker jobs (each with the resources of hydra-submitit-launcher's fields) that take
    the sweep's trials one after another from files in the sweep folder."""

    _target_: str = "hydra_plugins.runner_plugins.launchers.SlurmWorkersLauncher"
    # worker jobs at once (a job array); the sweep runs at most this many trials at a time
    num_workers: int = 4
    # a worker runs this many trials, then ends and a fresh job takes its place; null: no limit
    max_trials_per_worker: Optional[int] = None
    # a worker whose resident memory is above this after a trial ends and is replaced; null: no cap
    worker_max_rss_gb: Optional[float] = None
    # a trial whose worker has not renewed its lease for this long goes to another worker
    lease_s: float = 60.0
    # an idle worker ends when the sweep's process has been silent this long (killed, not restarted)
    idle_timeout_min: float = 10.0
    # modules each worker imports once, before its first trial
    preload: List[str] = field(default_factory=list)


store = ConfigStore.instance()
store.store(group="hydra/sweeper", name="runner_grid", node=GridSweeperConf, provider="runner")
store.store(group="hydra/sweeper", name="runner_ask_tell", node=AskTellSweeperConf, provider="runner")
store.store(group="hydra/launcher", name="runner_parallel", node=ParallelLauncherConf, provider="runner")
store.store(group="hydra/launcher", name="runner_slurm_workers", node=SlurmWorkersLauncherConf, provider="runner")
