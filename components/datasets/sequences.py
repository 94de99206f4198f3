"""Sequence data sets, offline: strings of scikit-learn's digit images read column by column (for CTC),
and a byte-level text corpus from the documentation files that ship inside scikit-learn (for language models)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

from components.datasets.data import Data, TensorSplit
from components.datasets.splits import fraction_sizes, split_indices

# CTC's blank is label 0: digit d is label d + 1
BLANK = 0


def check_alignable(input_lengths: Tensor, target_lengths: Tensor, targets: Tensor | None = None,
                    what: str = "input") -> None:
    """Raise ValueError naming the first sample whose target cannot be aligned to its frames: CTC needs
    a frame per label, plus one between two equal labels in a row."""
    needed = target_lengths.clone()
    if targets is not None:
        for i, length in enumerate(target_lengths.tolist()):
            row = targets[i, :length]
            needed[i] += int((row[1:] == row[:-1]).sum()) if length > 1 else 0
    short = (needed > input_lengths).nonzero().flatten()
    if len(short):
        i = int(short[0])
        raise ValueError(f"sample {i}: its CTC target has {int(target_lengths[i])} labels (needs {int(needed[i])} "
                         f"frames with its repeats) but its {what} has {int(input_lengths[i])} frames; "
                         f"{len(short)} of {len(input_lengths)} samples are too short")


class DigitStrings(Dataset):
    """Strings of digit images side by side, each item `(frames [T, 8], labels [L])`: the columns of the
    8-pixel-high strip as frames (pixels scaled to [0, 1]), the digits as labels d + 1 (0 is the blank).
    `collate` pads a batch: `((frames [B, T, 8], frame_lengths [B]), (labels [B, L], label_lengths [B]))`."""

    def __init__(self, images: Tensor, digits: Tensor, num_strings: int, min_digits: int, max_digits: int,
                 frames_per_digit: int, seed: int):
        generator = torch.Generator().manual_seed(seed)
        lengths = torch.randint(min_digits, max_digits + 1, (num_strings,), generator=generator)
        columns = images.float().div(16.0)  # [N, 8, 8], 17 grey levels
        if frames_per_digit != columns.shape[-1]:
            columns = torch.nn.functional.interpolate(columns.unsqueeze(1), size=(8, frames_per_digit),
                                                      mode="bilinear", align_corners=False).squeeze(1)
        self.frames, self.labels = [], []
        for length in lengths.tolist():
            picks = torch.randint(len(digits), (length,), generator=generator)
            self.frames.append(torch.cat(list(columns[picks]), dim=1).T.contiguous())  # [T, 8]
            self.labels.append(digits[picks] + 1)
        check_alignable(torch.tensor([len(f) for f in self.frames]), lengths,
                        torch.nn.utils.rnn.pad_sequence(self.labels, batch_first=True))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.frames[index], self.labels[index]

    @staticmethod
    def collate(items: list[tuple[Tensor, Tensor]]):
        frames, labels = zip(*items)
        return ((torch.nn.utils.rnn.pad_sequence(frames, batch_first=True), torch.tensor([len(f) for f in frames])),
                (torch.nn.utils.rnn.pad_sequence(labels, batch_first=True), torch.tensor([len(t) for t in labels])))


def digit_strings(num_classes: int, frame_dim: int = 8, num_train: int = 2000, num_val: int = 400,
                  num_test: int = 400, min_digits: int = 1, max_digits: int = 5, frames_per_digit: int = 8,
                  split_seed: int = 0, seed: int = 0) -> Data:
    """Digit strings for CTC from scikit-learn's digits: the train, val and test strings are drawn from
    disjoint images (a stratified 60/20/20 split of the 1,797). `num_classes` is 11: ten digits and the blank."""
    from sklearn.datasets import load_digits

    if num_classes != 11 or frame_dim != 8:
        raise ValueError(f"digit strings have 8 values per frame and 11 classes (blank + 10 digits); the config "
                         f"declares frame_dim={frame_dim}, num_classes={num_classes}")
    if not 1 <= min_digits <= max_digits or frames_per_digit < 1:
        raise ValueError(f"min_digits={min_digits}, max_digits={max_digits}, frames_per_digit={frames_per_digit}: "
                         f"need 1 <= min_digits <= max_digits and frames_per_digit >= 1")
    bunch = load_digits()
    images, digits = torch.from_numpy(bunch.images).to(torch.uint8), torch.from_numpy(bunch.target).long()
    val_size, test_size = fraction_sizes(len(digits), 0.2, 0.2)
    parts = split_indices(len(digits), val_size, test_size, split_seed, digits)
    splits = [DigitStrings(images[idx], digits[idx], n, min_digits, max_digits, frames_per_digit, seed + k)
              for k, (idx, n) in enumerate(zip(parts, (num_train, num_val, num_test)))]
    return Data(splits[0], splits[1], splits[2] if num_test else None, class_names=["<blank>", *map(str, range(10))])


def sklearn_docs_text() -> bytes:
    """The reStructuredText descriptions of scikit-learn's data sets (on disk inside its wheel), joined."""
    import sklearn.datasets

    folder = Path(sklearn.datasets.__file__).parent / "descr"
    return b"\n".join(path.read_bytes() for path in sorted(folder.glob("*.rst")))


def byte_corpus(vocab_size: int = 256, seq_len: int = 64, val_fraction: float = 0.1, test_fraction: float = 0.1,
                split_seed: int = 0) -> Data:
    """Next-byte prediction on scikit-learn's bundled data set descriptions (about 100 KB of English):
    windows of `seq_len` bytes as inputs, the same windows shifted by one as targets, split at random by window."""
    if vocab_size != 256:
        raise ValueError(f"a byte corpus has 256 tokens; the config declares vocab_size={vocab_size}")
    data = torch.frombuffer(bytearray(sklearn_docs_text()), dtype=torch.uint8).long()
    windows = (len(data) - 1) // seq_len
    if windows < 3:
        raise ValueError(f"seq_len={seq_len} leaves {windows} windows of the {len(data)}-byte corpus")
    inputs = data[: windows * seq_len].view(windows, seq_len)
    targets = data[1 : windows * seq_len + 1].view(windows, seq_len)
    val_size, test_size = fraction_sizes(windows, val_fraction, test_fraction)
    train, val, test = split_indices(windows, val_size, test_size, split_seed)
    return Data(TensorSplit(inputs[train], targets[train]), TensorSplit(inputs[val], targets[val]),
                TensorSplit(inputs[test], targets[test]) if test_size else None)
