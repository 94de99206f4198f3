"""Batches for the training loop: sliced from tensors on the device, or drawn through a DataLoader.

Both paths visit the same samples in the same order: a permutation seeded by (seed, epoch). That
makes an epoch reproducible from its number alone, so a resumed run can skip the batches it did.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset

Batch = tuple[torch.Tensor, torch.Tensor]


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


@dataclass
class DeviceTensors:
    """A whole split held as uint8 on the device; batches are normalised there as they are cut."""

    images: torch.Tensor
    labels: torch.Tensor
    scale: torch.Tensor
    shift: torch.Tensor
    channels_last: bool = False

    @classmethod
    def from_split(cls, split, mean, std, device: torch.device, channels_last: bool) -> "DeviceTensors":
        std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        # (x / 255 - mean) / std as one multiply-add
        return cls(
            images=split.images.to(device, non_blocking=True),
            labels=split.labels.to(device, non_blocking=True),
            scale=1.0 / (255.0 * std_t),
            shift=-mean_t / std_t,
            channels_last=channels_last,
        )

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, batch_size: int, order: torch.Tensor | None = None, skip: int = 0) -> Iterator[Batch]:
        n = len(self)
        order = order.to(self.images.device) if order is not None else None
        for start in range(skip * batch_size, n, batch_size):
            if order is None:
                images, labels = self.images[start : start + batch_size], self.labels[start : start + batch_size]
            else:
                # index_select copies whole rows: half the time of indexing with a tensor (uint8 images)
                rows = order[start : start + batch_size]
                images, labels = self.images.index_select(0, rows), self.labels.index_select(0, rows)
            images = torch.addcmul(self.shift, images.float(), self.scale)
            if self.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            yield images, labels


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
    """A map-style Dataset read by a DataLoader (workers, pinned memory), moved to the device per batch."""

    dataset: Dataset
    device: torch.device
    num_workers: int
    pin_memory: bool
    persistent_workers: bool

    def __post_init__(self):
        self._index_batches = _IndexBatches()
        self._loader = DataLoader(
            self.dataset,
            batch_sampler=self._index_batches,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers and self.num_workers > 0,
        )

    def __len__(self) -> int:
        return len(self.dataset)

    def batches(self, batch_size: int, order: torch.Tensor | None = None, skip: int = 0) -> Iterator[Batch]:
        indices = order.tolist() if order is not None else list(range(len(self)))
        self._index_batches.chunks = [indices[i : i + batch_size] for i in range(skip * batch_size, len(indices), batch_size)]
        for images, labels in self._loader:
            yield images.to(self.device, non_blocking=True), torch.as_tensor(labels).to(self.device, non_blocking=True)


def batches_per_epoch(n: int, batch_size: int, limit: int | None) -> int:
    full = -(-n // batch_size)
    return min(full, limit) if limit else full


def is_in_memory(split) -> bool:
    """A split that carries its whole data as tensors (duck-typed: uint8 `images` and `labels`)."""
    images = getattr(split, "images", None)
    return isinstance(images, torch.Tensor) and images.dtype == torch.uint8 and hasattr(split, "labels")


def make_source(split, dataset, device: torch.device, trainer, channels_last: bool) -> DeviceTensors | LoaderBatches:
    """In-memory splits are sliced on the training device (or on the CPU with data_on_device=false)."""
    if is_in_memory(split):
        home = device if str(trainer.data_on_device).lower() != "false" else torch.device("cpu")
        source = DeviceTensors.from_split(split, dataset.mean, dataset.std, home, channels_last)
        return source if home == device else _Moved(source, device)
    pin = str(trainer.pin_memory).lower()
    return LoaderBatches(
        split,
        device,
        num_workers=trainer.num_workers,
        pin_memory=device.type == "cuda" if pin == "auto" else pin == "true",
        persistent_workers=trainer.persistent_workers,
    )


@dataclass
class _Moved:
    """Batches cut on the CPU and copied to the device one at a time."""

    source: DeviceTensors
    device: torch.device

    def __len__(self) -> int:
        return len(self.source)

    def batches(self, batch_size: int, order: torch.Tensor | None = None, skip: int = 0) -> Iterator[Batch]:
        for images, labels in self.source.batches(batch_size, order, skip):
            yield images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
