"""Batches for the training loop: sliced from tensors on the device, or drawn through a DataLoader.

Both paths visit the same samples in the same order: a permutation seeded by (seed, epoch). That
makes an epoch reproducible from its number alone, so a resumed run can skip the batches it did.
A batch is `(inputs, target)`; the dataset's preprocessing (`Data.preprocess`) is applied to tensor
inputs on the device, as one multiply-add when it is affine (standardisation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

Batch = tuple[Any, Any]


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def to_device(value: Any, device: torch.device) -> Any:
    """Tensors moved to the device, inside tuples, lists and dicts too."""
    if isinstance(value, Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(to_device(v, device) for v in value)
    return value


@dataclass
class Preprocess:
    """The dataset's preprocessing on the device: x * multiplier + shift when it is affine, else any callable."""

    multiplier: Tensor | None = None
    shift: Tensor | None = None
    transform: Callable | None = None
    channels_last: bool = False

    @classmethod
    def of(cls, preprocess: Any, device: torch.device, channels_last: bool) -> "Preprocess":
        if preprocess is not None and hasattr(preprocess, "affine"):
            multiplier, shift = preprocess.affine(device)
            return cls(multiplier, shift, channels_last=channels_last)
        return cls(transform=preprocess, channels_last=channels_last)

    def __call__(self, inputs: Any) -> Any:
        if not isinstance(inputs, Tensor):
            return inputs
        if self.multiplier is not None:
            inputs = torch.addcmul(self.shift, inputs.float(), self.multiplier)
        elif self.transform is not None:
            inputs = self.transform(inputs)
        if self.channels_last and inputs.dim() == 4:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        return inputs


@dataclass
class DeviceTensors:
    """A whole split held on the device as it is stored (uint8 images stay uint8); batches are
    cut by index and preprocessed there."""

    inputs: Tensor
    targets: Tensor
    preprocess: Preprocess

    def __len__(self) -> int:
        return len(self.targets)

    def batches(self, batch_size: int, order: Tensor | None = None, skip: int = 0, ranks=None) -> Iterator[Batch]:
        order = order.to(self.inputs.device) if order is not None else None
        for start, stop in shares(len(self), batch_size, skip, ranks):
            if order is None:
                inputs, targets = self.inputs[start:stop], self.targets[start:stop]
            else:
                # index_select copies whole rows: half the time of indexing with a tensor (uint8 images)
                rows = order[start:stop]
                inputs, targets = self.inputs.index_select(0, rows), self.targets.index_select(0, rows)
            yield self.preprocess(inputs), targets


class _IndexBatches:
    """The batch sampler of a DataLoader that lives as long as the run: each pass sets its index
    lists first, so persistent workers serve every epoch instead of being started anew."""

    def __init__(self):
        self.chunks: list[list[int]] = []

    def __iter__(self):
        return iter(self.chunks)

    def __len__(self) -> int:
        return len(self.chunks)


@dataclass
class LoaderBatches:
    """A map-style Dataset read by a DataLoader (workers, pinned memory), moved to the device per batch;
    the dataset's own `collate(items)`, if it has one, makes its batches."""

    dataset: Dataset
    device: torch.device
    preprocess: Preprocess
    num_workers: int
    pin_memory: bool
    persistent_workers: bool

    def __post_init__(self):
        self._index_batches = _IndexBatches()
        self._loader = DataLoader(
            self.dataset,
            batch_sampler=self._index_batches,
            # a dataset of variable-length items pads its own batches (`collate`, e.g. sequences)
            collate_fn=getattr(self.dataset, "collate", None),
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers and self.num_workers > 0,
        )

    def __len__(self) -> int:
        return len(self.dataset)

    def batches(self, batch_size: int, order: Tensor | None = None, skip: int = 0, ranks=None) -> Iterator[Batch]:
        indices = order.tolist() if order is not None else list(range(len(self)))
        self._index_batches.chunks = [indices[start:stop] for start, stop in shares(len(indices), batch_size, skip, ranks)]
        for inputs, targets in self._loader:
            yield self.preprocess(to_device(inputs, self.device)), to_device(targets, self.device)


def shares(n: int, batch_size: int, skip: int = 0, ranks=None) -> Iterator[tuple[int, int]]:
    """[start, stop) of each batch of n items in order, from batch `skip` on; with several ranks
    (runner.run.distributed.Ranks), this rank's share of each batch (a rank with no share skips it)."""
    for start in range(skip * batch_size, n, batch_size):
        size = min(batch_size, n - start)
        low, high = ranks.share(size) if ranks is not None and ranks.world > 1 else (0, size)
        if high > low:
            yield start + low, start + high


def batches_per_epoch(n: int, batch_size: int, limit: int | None, world: int = 1) -> int:
    """Training steps per epoch; with several ranks a last batch smaller than the ranks is left out
    (some rank would have no sample to step on)."""
    full = -(-n // batch_size)
    if world > 1 and 0 < n % batch_size < world:
        full -= 1
    return min(full, limit) if limit else full


def is_in_memory(split) -> bool:
    """A split that carries its whole data as two tensors (duck-typed: `inputs` and `targets`)."""
    return isinstance(getattr(split, "inputs", None), Tensor) and isinstance(getattr(split, "targets", None), Tensor)


def make_source(split, data, device: torch.device, trainer, channels_last: bool) -> DeviceTensors | LoaderBatches | "_Moved":
    """In-memory splits are sliced on the training device (or on the CPU with data_on_device=false)."""
    preprocess = getattr(data, "preprocess", None)
    if is_in_memory(split):
        home = device if str(trainer.data_on_device).lower() != "false" else torch.device("cpu")
        source = DeviceTensors(split.inputs.to(home, non_blocking=True), split.targets.to(home, non_blocking=True),
                               Preprocess.of(preprocess, home, channels_last))
        return source if home == device else _Moved(source, device)
    pin = str(trainer.pin_memory).lower()
    return LoaderBatches(
        split,
        device,
        Preprocess.of(preprocess, device, channels_last),
        num_workers=trainer.num_workers,
        pin_memory=device.type == "cuda" if pin == "auto" else pin == "true",
        persistent_workers=trainer.persistent_workers,
    )


def make_sources(data, device: torch.device, trainer, channels_last: bool) -> tuple[Any, Any, Any]:
    """The dataset's train, val and test sources; no test source (None) unless trainer.test and the
    dataset has a test split."""
    test = getattr(data, "test", None)
    return (make_source(data.train, data, device, trainer, channels_last),
            make_source(data.val, data, device, trainer, channels_last),
            make_source(test, data, device, trainer, channels_last) if trainer.test and test is not None else None)


@dataclass
class _Moved:
    """Batches cut on the CPU and copied to the device one at a time."""

    source: DeviceTensors
    device: torch.device

    def __len__(self) -> int:
        return len(self.source)

    def batches(self, batch_size: int, order: Tensor | None = None, skip: int = 0, ranks=None) -> Iterator[Batch]:
        for inputs, targets in self.source.batches(batch_size, order, skip, ranks):
            yield inputs.to(self.device, non_blocking=True), targets.to(self.device, non_blocking=True)
