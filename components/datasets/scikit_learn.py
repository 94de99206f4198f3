"""The data sets bundled with scikit-learn (digits images, classification and regression tables) and
its multilabel generator: offline, no download."""

from __future__ import annotations

import torch
from torch import Tensor

from components.datasets.data import Data, channel_stats, check_images, check_width, feature_stats
from components.datasets.splits import fraction_sizes, split_indices, take


def sklearn_digits(channels: int, image_size: int, num_classes: int, val_fraction: float = 0.2,
                   test_fraction: float = 0.2, split_seed: int = 0) -> Data:
    """scikit-learn's bundled handwritten digits: 1,797 images of 8x8 pixels in 17 grey levels, 10 classes;
    a stratified train/val/test split."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(bunch.images).to(torch.uint8).unsqueeze(1)
    labels = torch.from_numpy(bunch.target).long()
    val_size, test_size = fraction_sizes(len(labels), val_fraction, test_fraction)
    train_idx, val_idx, test_idx = split_indices(len(labels), val_size, test_size, split_seed, labels)
    train = take(images, labels, train_idx)
    data = Data(train, take(images, labels, val_idx), take(images, labels, test_idx) if test_size else None,
                preprocess=channel_stats(train.inputs, max_value=16), class_names=[str(c) for c in bunch.target_names])
    return check_images(data, channels, image_size, num_classes)

def split_table(features, targets, labels: Tensor | None, val_fraction: float, test_fraction: float,
                split_seed: int, class_names: list[str]) -> Data:
    """Features standardised with the training split's statistics; a seeded (stratified) split."""
    val_size, test_size = fraction_sizes(len(targets), val_fraction, test_fraction)
    train_idx, val_idx, test_idx = split_indices(len(targets), val_size, test_size, split_seed, labels)
    train = take(features, targets, train_idx)
    return Data(train, take(features, targets, val_idx), take(features, targets, test_idx) if test_size else None,
                preprocess=feature_stats(train.inputs), class_names=class_names)


def sklearn_bundled(name: str):
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
    bunch = sklearn_bundled(name)
    features = torch.from_numpy(bunch.data).float()
    labels = torch.from_numpy(bunch.target).long()
    check_width("features", features.shape[1], "input_dim", input_dim)
    check_width("classes", len(bunch.target_names), "num_classes", num_classes)
    return split_table(features, labels, labels, val_fraction, test_fraction, split_seed,
                       [str(c) for c in bunch.target_names])


def sklearn_regression(name: str, input_dim: int, num_outputs: int, val_fraction: float = 0.2,
                       test_fraction: float = 0.2, split_seed: int = 0) -> Data:
    """A regression table bundled with scikit-learn (`diabetes`: one target; `linnerud`: three):
    float features and targets, a seeded train/val/test split."""
    bunch = sklearn_bundled(name)
    features = torch.from_numpy(bunch.data).float()
    targets = torch.from_numpy(bunch.target).float()
    check_width("features", features.shape[1], "input_dim", input_dim)
    check_width("targets per sample", 1 if targets.dim() == 1 else targets.shape[1], "num_outputs", num_outputs)
    names = list(getattr(bunch, "target_names", None) or [])
    return split_table(features, targets, None, val_fraction, test_fraction, split_seed, [str(n) for n in names])


def sklearn_multilabel(input_dim: int, num_labels: int, num_samples: int = 2000, labels_per_sample: int = 2,
                       val_fraction: float = 0.2, test_fraction: float = 0.2, seed: int = 0) -> Data:
    """scikit-learn's multilabel generator (`make_multilabel_classification`, a seeded mixture of bag-of-words
    documents): count features, multi-hot targets, a seeded train/val/test split."""
    from sklearn.datasets import make_multilabel_classification

    x, y = make_multilabel_classification(n_samples=num_samples, n_features=input_dim, n_classes=num_labels,
                                          n_labels=labels_per_sample, random_state=seed)
    return split_table(torch.from_numpy(x).float(), torch.from_numpy(y).float(), None, val_fraction, test_fraction,
                       seed, [f"label_{i}" for i in range(num_labels)])
