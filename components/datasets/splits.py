"""Seeded (stratified) train/val/test splits of in-memory tensors."""

from __future__ import annotations

import torch
from torch import Tensor

from components.datasets.data import TensorSplit


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


def fraction_sizes(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 <= value < 1:
            raise ValueError(f"{name}={value} must be in [0, 1)")
    return max(1, round(n * val_fraction)), round(n * test_fraction)


def take(inputs: Tensor, targets: Tensor, indices: Tensor) -> TensorSplit:
    return TensorSplit(inputs[indices], targets[indices])
