"""Sequence tasks and models: CTC over variable-length frames (labels without alignment), and next-token
prediction (a language model's logits over a vocabulary at every step)."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn

from components.datasets.sequences import BLANK, check_alignable
from components.media import describe
from components.tasks import Task


# ---------------------------------------------------------------- models


class FrameRecognizer(nn.Module):
    """Frames -> per-frame class scores for CTC: a 1-d convolution over time (`stride` frames per output
    frame), a bidirectional GRU over the valid frames, a linear layer. Called with `(frames [B, T, F],
    lengths [B])`, returns `(logits [B, T', C], output_lengths [B])`."""

    def __init__(self, frame_dim: int, num_classes: int, hidden_size: int = 64, stride: int = 1):
        super().__init__()
        if stride < 1:
            raise ValueError(f"stride={stride} must be >= 1")
        self.stride = stride
        self.conv = nn.Conv1d(frame_dim, hidden_size, kernel_size=3, stride=stride, padding=1)
        self.rnn = nn.GRU(hidden_size, hidden_size, batch_first=True, bidirectional=True)
        self.head = nn.Linear(2 * hidden_size, num_classes)

    def forward(self, frames: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        x = torch.relu(self.conv(frames.transpose(1, 2))).transpose(1, 2)
        out_lengths = torch.div(lengths - 1, self.stride, rounding_mode="floor") + 1
        packed = nn.utils.rnn.pack_padded_sequence(x, out_lengths.cpu(), batch_first=True, enforce_sorted=False)
        x, _ = nn.utils.rnn.pad_packed_sequence(self.rnn(packed)[0], batch_first=True, total_length=x.shape[1])
        return self.head(x), out_lengths


class TokenGRU(nn.Module):
    """A small recurrent language model: token embedding, GRU layers, a linear layer to the vocabulary.
    `(tokens [B, T])` -> logits `[B, T, vocab_size]`."""

    def __init__(self, vocab_size: int, embedding_dim: int = 64, hidden_size: int = 128, num_layers: int = 1,
                 dropout: float = 0.0):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.rnn = nn.GRU(embedding_dim, hidden_size, num_layers, batch_first=True,
                          dropout=dropout if num_layers > 1 else 0.0)
        self.head = nn.Linear(hidden_size, vocab_size)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.head(self.rnn(self.embedding(tokens))[0])


# ---------------------------------------------------------------- CTC


def greedy_decode(logits: Tensor, lengths: Tensor, blank: int = BLANK) -> list[list[int]]:
    """Best path decoding: the top class per frame, repeats merged, blanks dropped."""
    best = logits.argmax(-1).cpu()
    keep = torch.ones_like(best, dtype=torch.bool)
    keep[:, 1:] = best[:, 1:] != best[:, :-1]
    keep &= best != blank
    return [best[i, :n][keep[i, :n]].tolist() for i, n in enumerate(lengths.tolist())]


def as_text(labels: list[int]) -> str:
    """One character per label, so that character error rates count label edits."""
    return "".join(chr(0x30 + label) for label in labels)


class CTCSequence(Task):
    """Unaligned label sequences over variable-length inputs (Connectionist Temporal Classification).

    A batch is `((inputs, input_lengths), (targets [B, L] padded, target_lengths [B]))` (e.g.
    `DigitStrings.collate`); the model returns `(logits [B, T, C], output_lengths [B])`, C counting the
    blank. The criterion (torch.nn.CTCLoss) gets log-probabilities [T, B, C] in float32. The metrics get
    the greedy decoding and the targets as text (torchmetrics.text.CharErrorRate, EditDistance). The check
    before training refuses a target that cannot fit its output frames, naming both lengths.
    """

    name = "ctc"

    def __init__(self, num_outputs: int, metrics: dict[str, Any] | None = None):
        super().__init__(num_outputs, metrics)
        self.blank = BLANK

    def bind_loss(self, criterion: Callable) -> None:
        self.criterion = criterion
        self.blank = getattr(criterion, "blank", BLANK)

    def loss(self, output: tuple[Tensor, Tensor], target: tuple[Tensor, Tensor]) -> Tensor:
        logits, lengths = output
        labels, label_lengths = target
        log_probs = torch.log_softmax(logits.float(), dim=-1).transpose(0, 1)
        return self.criterion(log_probs, labels, lengths, label_lengths)

    def decode(self, output: tuple[Tensor, Tensor]) -> list[str]:
        return [as_text(labels) for labels in greedy_decode(output[0].detach(), output[1], self.blank)]

    def update_metrics(self, metrics, output, target) -> None:
        labels, lengths = target
        truth = [as_text(row[:n]) for row, n in zip(labels.tolist(), lengths.tolist())]
        metrics.update(self.decode(output), truth)

    def check(self, output: Any, target: Any) -> None:
        if not (isinstance(output, tuple) and len(output) == 2 and isinstance(output[0], Tensor)
                and output[0].dim() == 3 and output[0].shape[-1] == self.num_outputs):
            raise ValueError(f"a CTC model must return (logits [batch, frames, {self.num_outputs}], output lengths "
                             f"[batch]); the model outputs {describe(output)}")
        if not (isinstance(target, (tuple, list)) and len(target) == 2):
            raise ValueError(f"CTC targets must be (labels [batch, length], lengths [batch]); the dataset gives "
                             f"{describe(target)}")
        labels, label_lengths = target
        if len(labels) and int(labels.max()) >= self.num_outputs:
            raise ValueError(f"the labels go up to {int(labels.max())} but there are {self.num_outputs} classes")
        check_alignable(output[1].cpu(), label_lengths.cpu(), labels.cpu(), what="model's output")


# ---------------------------------------------------------------- next token


class TokenSequence(Task):
    """A class per step: the model outputs logits over `num_outputs` tokens at every position, [B, T, V];
    the target is the token index per position, [B, T]. The criterion (cross-entropy) gets every step's
    logits and token; the metrics get (logits [B, T, V], tokens [B, T]) as torchmetrics.text.Perplexity takes
    them."""

    name = "token_sequence"

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        return self.criterion(output.flatten(0, 1).float(), target.flatten())

    def update_metrics(self, metrics, output: Tensor, target: Tensor) -> None:
        metrics.update(output.float(), target)

    def check(self, output: Any, target: Any) -> None:
        v = self.num_outputs
        if not isinstance(target, Tensor) or target.dim() != 2 or target.is_floating_point():
            raise ValueError(f"token targets must be token indices, integers [batch, steps]; the dataset gives "
                             f"{describe(target)}")
        if not isinstance(output, Tensor) or tuple(output.shape) != (*target.shape, v):
            raise ValueError(f"a model over {v} tokens must output [batch, steps, {v}] = {(*target.shape, v)}; "
                             f"the model outputs {describe(output)}")
        if len(target) and int(target.max()) >= v:
            raise ValueError(f"the tokens go up to {int(target.max())} but the vocabulary has {v}")
