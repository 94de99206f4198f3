"""One run on several processes, GPUs or nodes: data-parallel training with torch.distributed.

`trainer.strategy=ddp` trains the model wrapped in DistributedDataParallel on `world` ranks:
`trainer.devices` processes per node (auto: the visible GPUs, or 1 on a CPU) times `trainer.num_nodes`.

- A run started anywhere but inside a SLURM job of several tasks starts its ranks itself: the run's own
  process (the Hydra job) spawns them (torch.multiprocessing) and waits; rank 0 owns the run folder.
  Signals reaching that process are forwarded to the ranks, which agree on the step to stop at, write
  one checkpoint and end; the signal is then handed on (submitit requeues a SLURM job).
- In a SLURM job of several tasks (hydra/launcher=slurm_ddp) each task is a rank: submitit's
  TorchDistributedEnvironment gives its rank, the world and the job's first node as the rendezvous.

`trainer.batch_size` (and `eval_batch_size`) is the global batch: each rank takes its share of every
batch of the seeded epoch permutation, so the ranks together visit what one process would.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger(__name__)

# how long a rank that has timed out waits for the rendezvous store to say where the others are
STAGE_READ_TIMEOUT_S = 5


@dataclass
class Ranks:
    """The processes a run trains on, and the few collectives the loop needs. `Ranks()` is a run of one
    process without torch.distributed: every collective is then the identity.

    Each rank says what it is doing (`enter`) in the rendezvous store, so that a collective that fails
    can name where every rank was (`explain`): a collective that one rank enters alone otherwise just
    waits, and the message of the wait names only the rank that gave up."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1
    ddp: bool = False  # the model is wrapped in DistributedDataParallel (also with one rank)
    control: Any = None  # a gloo group for the decisions (CPU tensors: no GPU synchronisation)
    spawned: bool = False  # started by the run's own process (which hands signals on), not a SLURM task
    store: Any = None  # the rendezvous store (torch.distributed.TCPStore) the ranks met at
    timeout_s: float | None = None  # trainer.collective_timeout_s
    stage: str | None = field(default=None, repr=False)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def enter(self, stage: str) -> None:
        """Say what this rank is doing now (a stage of the loop, a callback's hook), for `explain`."""
        if self.store is None or self.world == 1 or stage == self.stage:
            return
        self.stage = stage
        self.store.set(f"runner/stage/{self.rank}", f"{time.time():.3f} {stage}")

    def collective_broke(self, error: BaseException) -> bool:
        """Whether `error` is, or was raised from, a collective that failed: it gave up waiting for the
        other ranks, or lost them (the one that gave up, or failed, has closed its connection)."""
        return self.world > 1 and any(_broken_collective(e) is not None for e in _chain(error))

    def explain(self, error: BaseException) -> BaseException:
        """A failed collective as a CollectiveFailed that names each rank's stage; any other error as is."""
        from runner.errors import CollectiveFailed

        kind = next((k for k in map(_broken_collective, _chain(error)) if k is not None), None) \
            if self.world > 1 else None
        if kind is None:
            return error
        what = (f"waited trainer.collective_timeout_s={self.timeout_s:g} s for the other ranks in a collective"
                if kind == "timeout" else
                "lost the other ranks in a collective (one gave up waiting, or failed: see its runner.rank<N>.log)")
        where = "; ".join(f"rank {rank} {stage}" for rank, stage in self._stages().items())
        failed = CollectiveFailed(
            f"rank {self.rank} {what}: {where}. A collective that one rank enters alone (in a callback, a logger "
            f"or the task's media, which run on rank 0 only) is never joined; if every rank was in the same "
            f"stage, one is only slower: raise trainer.collective_timeout_s (docs/distributed.md)")
        failed.__cause__ = error  # the log and result.json keep the collective's own traceback
        return failed

    def _stages(self) -> dict[int, str]:
        """Every rank's last stage and for how long it has been in it, as the store has them."""
        stages = {}
        try:
            self.store.set_timeout(timedelta(seconds=STAGE_READ_TIMEOUT_S))
            for rank in range(self.world):
                key = f"runner/stage/{rank}"
                if not self.store.check([key]):
                    stages[rank] = "had said nothing yet"
                    continue
                since, stage = self.store.get(key).decode().split(" ", 1)
                stages[rank] = f"was in {stage} (for {time.time() - float(since):.0f} s)"
        except Exception as error:  # the store lives in rank 0's process: it may be gone
            stages[self.rank] = f"was in {self.stage} (the others' stages could not be read: {error})"
        return stages

    def any(self, flag: bool) -> bool:
        """Whether any rank's flag is set (every rank gets the same answer)."""
        if self.world == 1:
            return flag
        import torch
        import torch.distributed as dist

        value = torch.tensor([int(flag)], dtype=torch.int32)
        dist.all_reduce(value, op=dist.ReduceOp.MAX, group=self.control)
        return bool(value.item())

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's object, on every rank."""
        if self.world == 1:
            return obj
        import torch.distributed as dist

        holder = [obj]
        dist.broadcast_object_list(holder, src=0, group=self.control)
        return holder[0]

    def gather(self, obj: Any) -> list | None:
        """Every rank's object, in rank order, on rank 0 (None elsewhere)."""
        if self.world == 1:
            return [obj]
        import torch.distributed as dist

        gathered = [None] * self.world if self.is_main else None
        dist.gather_object(obj, gathered, dst=0, group=self.control)
        return gathered

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier(group=self.control)

    def sum(self, tensor):
        """Summed over the ranks, in place (on the training device)."""
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(tensor)
        return tensor

    def share(self, n: int) -> tuple[int, int]:
        """This rank's part [start, stop) of n items split as evenly as can be (the first ranks one more)."""
        base, extra = divmod(n, self.world)
        start = self.rank * base + min(self.rank, extra)
        return start, start + base + (self.rank < extra)

    def close(self, finished: bool) -> None:
        """Leave the process group. A rank that finished waits for the others first: one that left while
        another still needed it would make gloo abort that one. A failed rank leaves at once."""
        if not self.ddp:
            return
        import torch.distributed as dist

        if not dist.is_initialized():
            return
        try:
            if finished:
                self.enter("the end of the run (waiting for every rank to finish)")
                try:
                    self.barrier()
                except Exception as error:
                    raise self.explain(error) from error
        finally:
            dist.destroy_process_group()


def _chain(error: BaseException):
    """The error and the ones it was raised from (a callback's failure wraps the collective's)."""
    while error is not None:
        yield error
        error = error.__cause__


def _broken_collective(error: BaseException) -> str | None:
    """"timeout" when a collective gave up waiting, "lost" when its peers closed their connection, else
    None. gloo raises RuntimeErrors, NCCL DistBackendErrors; only their messages tell these apart."""
    import torch.distributed as dist

    if not isinstance(error, (RuntimeError, dist.DistError)):
        return None
    message = str(error).lower()
    if "timed out" in message or ("timeout" in message and isinstance(error, dist.DistError)):
        return "timeout"
    if any(marker in message for marker in ("connection closed by peer", "connection reset by peer",
                                             "broken pipe")):
        return "lost"
    return None


def world_size(trainer) -> int:
    """trainer.devices x trainer.num_nodes, devices=auto being the visible GPUs (1 without one)."""
    return local_world_size(trainer) * trainer.num_nodes


def local_world_size(trainer) -> int:
    if str(trainer.devices) != "auto":
        return int(trainer.devices)
    if os.environ.get("SLURM_NTASKS_PER_NODE"):
        return int(os.environ["SLURM_NTASKS_PER_NODE"].split("(")[0])
    import torch

    return max(torch.cuda.device_count(), 1) if trainer.device in ("auto", "cuda") else 1


def slurm_tasks() -> int:
    """How many tasks the SLURM job step this process belongs to has (1 outside one)."""
    return int(os.environ.get("SLURM_NTASKS", "1")) if os.environ.get("SLURM_PROCID") is not None else 1


def join(trainer, rank: int, world: int, local_rank: int, local_world: int, address: str, port: int) -> Ranks:
    """This process joins the run's process group as `rank`."""
    import torch
    import torch.distributed as dist

    from runner.errors import ConfigError

    cuda = torch.cuda.is_available() and trainer.device in ("auto", "cuda")
    if cuda:
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"rank {rank} needs GPU {local_rank} but {torch.cuda.device_count()} are visible; "
                              f"set trainer.devices to at most the GPUs per node")
        torch.cuda.set_device(local_rank)
    backend = "nccl" if cuda else "gloo"
    timeout = timedelta(seconds=trainer.collective_timeout_s)
    # the store of the rendezvous, made here so that the ranks can also say where they are (Ranks.enter)
    store = dist.TCPStore(address, port, world, is_master=rank == 0, timeout=timeout)
    dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=timeout)
    control = dist.new_group(backend="gloo") if backend != "gloo" else None
    log.info("rank %d of %d joined (%s, %s:%d)", rank, world, backend, address, port)
    return Ranks(rank, world, local_rank, local_world, ddp=True, control=control, store=store,
                 timeout_s=trainer.collective_timeout_s)


def from_slurm(trainer) -> Ranks:
    """A task of a SLURM job of several tasks (started by submitit), as one rank."""
    from submitit.helpers import TorchDistributedEnvironment

    from runner.errors import ConfigError

    # submitit reads the task's rank, the job's nodes and a port derived from the job id (the same in
    # every task, different between jobs sharing a node) from the job's environment
    job = TorchDistributedEnvironment()
    local_world = local_world_size(trainer)
    expected = local_world * trainer.num_nodes
    if expected != job.world_size:
        raise ConfigError(f"the SLURM job has {job.world_size} tasks but trainer.devices={trainer.devices} x "
                          f"trainer.num_nodes={trainer.num_nodes} asks for {expected} ranks; set them to match "
                          f"hydra.launcher.tasks_per_node and hydra.launcher.nodes")
    if job.rank > 0:  # the run's log is rank 0's; SLURM keeps each task's output besides
        handler = next((h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)), None)
        if handler is not None:
            _log_to(Path(handler.baseFilename).with_name(f"runner.rank{job.rank}.log"), console=True)
    return join(trainer, job.rank, job.world_size, job.local_rank, local_world, job.master_addr, job.master_port)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- ranks started by the run itself


def spawn(main: Callable[[Any, dict[str, Any], Ranks], None], cfg_yaml: str, context: dict[str, Any], trainer,
          world: int) -> None:
    """Start `world` ranks of the run on this machine, each running `main(cfg, context, ranks)` (a
    module-level function: spawned processes import it), and wait for them; forward signals to them,
    and hand a signal on once they have stopped at it. Raises RankFailed when a rank fails."""
    import torch.multiprocessing as mp

    from runner.errors import TrialFailed
    from runner.run.interrupt import Interruption

    port = free_port()
    with Interruption() as interruption:
        processes = mp.start_processes(_rank_main, args=(world, port, main, cfg_yaml, context), nprocs=world, join=False,
                                       start_method="spawn")
        forwarded = None
        try:
            while not processes.join(timeout=0.2, grace_period=10):
                if interruption.requested and interruption.signum != forwarded:
                    forwarded = interruption.signum
                    for pid in processes.pids():
                        _kill(pid, forwarded)
        except mp.ProcessRaisedException as error:
            raise RankFailed(error.error_index, str(error)) from None
        except mp.ProcessExitedException as error:
            raise TrialFailed(f"rank {error.error_index} of the run died ({error}); see "
                              f"runner.rank{error.error_index}.log in the run folder") from None
        if interruption.requested:
            interruption.hand_over()


def _kill(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass  # that rank has ended already


class RankFailed(Exception):
    """A rank raised: `rank` and the traceback it printed."""

    def __init__(self, rank: int, traceback_text: str):
        lines = [line for line in traceback_text.strip().splitlines() if line.strip()]
        self.rank, self.traceback_text = rank, traceback_text
        # the exception's last line, `Class: message`; the runner's own errors speak for themselves
        last = lines[-1] if lines else "failed"
        self.message = last.split(": ", 1)[-1] if last.startswith("runner.errors.") else last
        super().__init__(f"rank {rank} failed: {self.message}")


def _rank_main(rank: int, world: int, port: int, main: Callable, cfg_yaml: str, context: dict[str, Any]) -> None:
    """A spawned rank: its own logs, its share of the CPU, the process group, then the run's training."""
    import torch
    from omegaconf import OmegaConf

    from runner.config.checks import typed_trainer
    from runner.run.interrupt import RunInterrupted

    run_dir = Path(context["run_dir"])
    _log_to(run_dir / ("runner.log" if rank == 0 else f"runner.rank{rank}.log"), console=rank == 0)
    cfg = OmegaConf.create(cfg_yaml)
    trainer = typed_trainer(cfg)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if not os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(max(1, cores // world))
    ranks = join(trainer, rank, world, rank, world, "127.0.0.1", port)
    ranks.spawned = True
    finished = False
    try:
        main(cfg, context, ranks)
        finished = True
    except RunInterrupted:
        finished = True  # the checkpoint is written; the run's own process hands the signal on
    finally:
        ranks.close(finished)


def _log_to(path: Path, console: bool) -> None:
    from runner.logs import NotFileOnly, WithoutTraceback

    fmt = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"
    root = logging.getLogger()
    root.handlers.clear()
    root.setLevel(logging.INFO)
    file_handler = logging.FileHandler(path)
    file_handler.setFormatter(logging.Formatter(fmt))
    root.addHandler(file_handler)
    if console:
        stream = logging.StreamHandler(sys.stdout)
        stream.setFormatter(WithoutTraceback(fmt))
        stream.addFilter(NotFileOnly())
        root.addHandler(stream)
