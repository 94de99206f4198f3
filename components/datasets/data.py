"""What every dataset builds (`Data`, its splits, its preprocessing) and the checks of the data against
the sizes its config declares."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor
from torch.utils.data import Dataset


class DatasetNotFound(RuntimeError):
    """The data is neither on disk nor downloadable from here."""


@dataclass
class TensorSplit:
    """A whole split in memory: `inputs` [N, ...] and `targets` [N, ...]."""

    inputs: Tensor
    targets: Tensor

    def __post_init__(self):
        if len(self.inputs) != len(self.targets):
            raise ValueError(f"{len(self.inputs)} inputs but {len(self.targets)} targets")

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index):
        return self.inputs[index], self.targets[index]


Split = TensorSplit | Dataset


@dataclass
class Standardize:
    """x -> (x * scale - mean) / std. `mean` and `std` broadcast over one sample: one value per channel
    of an image ([C, 1, 1]) or per feature ([D]); `scale` maps raw values to [0, 1] (1/255 for uint8
    pixels) or is 1."""

    mean: Tensor
    std: Tensor
    scale: float = 1.0

    def __call__(self, inputs: Tensor) -> Tensor:
        multiplier, shift = self.affine(inputs.device)
        return torch.addcmul(shift, inputs.float(), multiplier)

    def affine(self, device: torch.device | str) -> tuple[Tensor, Tensor]:
        """(multiplier, shift) with x -> x * multiplier + shift, shaped to broadcast over a batch."""
        std = self.std.to(device, torch.float32)
        mean = self.mean.to(device, torch.float32)
        return (self.scale / std).unsqueeze(0), (-mean / std).unsqueeze(0)

    def state_dict(self) -> dict[str, Any]:
        """Plain data (tensors and a number), stored with the run to redo the preprocessing elsewhere."""
        return {"kind": "standardize", "mean": self.mean.clone(), "std": self.std.clone(), "scale": float(self.scale)}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> "Standardize":
        return cls(state["mean"], state["std"], state["scale"])


@dataclass
class Data:
    """What every dataset config builds."""

    train: Split
    val: Split
    # held out from training and from model selection; evaluated once, with the best checkpoint
    test: Split | None = None
    # raw inputs -> model inputs, applied on the device to in-memory splits
    preprocess: Standardize | None = None
    # applied to each preprocessed training batch of an in-memory split: (inputs, generator) -> inputs
    augment: Callable | None = None
    class_names: list[str] = field(default_factory=list)


def channel_stats(images: Tensor, max_value: int = 255) -> Standardize:
    """Per-channel mean and std (unbiased) of integer pixels in [0, max_value], scaled to [0, 1].

    From a histogram per channel: exact, and ten times faster than converting every pixel to
    float64 (which took seconds and gigabytes for CIFAR-10).
    """
    counts = torch.stack([torch.bincount(channel.flatten().long(), minlength=max_value + 1)
                          for channel in images.unbind(1)]).double()
    values = torch.arange(max_value + 1, dtype=torch.float64) / max_value
    n = counts.sum(1, keepdim=True)
    mean = (counts * values).sum(1, keepdim=True) / n
    var = (counts * (values - mean).square()).sum(1, keepdim=True) / (n - 1)
    shape = (-1, 1, 1)
    return Standardize(mean.float().view(shape), var.sqrt().float().view(shape), 1.0 / max_value)


def feature_stats(features: Tensor) -> Standardize:
    """Per-feature mean and std of the training features; a constant feature keeps std 1."""
    features = features.double()
    std = features.std(0)
    return Standardize(features.mean(0).float(), torch.where(std > 0, std, torch.ones_like(std)).float())


def check_images(data: Data, channels: int, image_size: int, num_classes: int) -> Data:
    for name in ("train", "val", "test"):
        split = getattr(data, name)
        if not isinstance(split, TensorSplit):
            continue
        found = tuple(split.inputs.shape[1:])
        if found != (channels, image_size, image_size):
            raise ValueError(f"the {name} images have shape {found} (C, H, W) but the config declares "
                             f"channels={channels}, image_size={image_size}")
        check_classes(split.targets, num_classes, name)
    return data


def check_classes(targets: Tensor, num_classes: int, name: str) -> None:
    top = int(targets.max()) if len(targets) else -1
    if top >= num_classes:
        raise ValueError(f"the {name} labels go up to {top} but the config declares num_classes={num_classes}")


def check_width(what: str, found: int, declared: str, value: int) -> None:
    if found != value:
        raise ValueError(f"the data has {found} {what} but the config declares {declared}={value}")



def from_datasets(train: Dataset, val: Dataset, test: Dataset | None = None, class_names: list[str] | None = None,
                  **declared: Any) -> Data:
    """Bring your own: map-style Datasets returning (inputs, target), batched by a DataLoader.

    `declared` takes the sizes the config declares for the models and the task to read by
    interpolation (`channels`, `input_dim`, `num_classes`, ...); they are not used here.
    """
    return Data(train=train, val=val, test=test, class_names=list(class_names or []))
