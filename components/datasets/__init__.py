"""Datasets: each config builds a `Data`, its splits held as tensors in memory or as map-style Datasets.

An in-memory split is a `TensorSplit` (inputs of any shape and dtype: uint8 images, float features;
targets: class indices, real values or multi-hot rows), which the trainer keeps on its device and
batches by slicing. Any map-style `torch.utils.data.Dataset` returning `(inputs, target)` works too,
batched by a DataLoader. `Data.preprocess` says how raw inputs become model inputs (`Standardize`,
statistics of the training split only); the runner applies it on the device and stores it with the run.

Every builder is told the sizes its config declares (`channels`, `image_size`, `input_dim`,
`num_classes`, `num_outputs`, `num_labels`: what the models and the task read by interpolation) and
checks the data against them, so the config is the single source of truth.

One module per job: `data` (what a builder returns, the checks), `splits`, `cache`, `images`, `scikit_learn`.
Configs name the builders here (`components.datasets.mnist_5k`), whichever module holds them.
"""

from components.datasets.data import Data, DatasetNotFound, Split, Standardize, TensorSplit, from_datasets
from components.datasets.images import mnist_5k, synthetic, torchvision_images
from components.datasets.scikit_learn import (
    sklearn_classification,
    sklearn_digits,
    sklearn_multilabel,
    sklearn_regression,
)
from components.datasets.splits import split_indices

__all__ = [
    "Data", "DatasetNotFound", "Split", "Standardize", "TensorSplit", "from_datasets", "mnist_5k", "synthetic",
    "torchvision_images", "sklearn_classification", "sklearn_digits", "sklearn_multilabel", "sklearn_regression",
    "split_indices",
]
