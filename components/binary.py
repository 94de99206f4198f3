"""Binary classification: a model of one logit or two, the metrics fed the positive class's probability.

torchmetrics' Binary* metrics (BinaryAUROC, BinaryF1Score, BinaryAveragePrecision, BinaryAccuracy)
take one probability per sample and 0/1 targets; a multiclass task would hand them a score per
class and fail on the shapes. This task turns either model into that probability: with one
output it is the positive class's logit, with two it is the difference of the two logits (the
softmax of two logits is the sigmoid of their difference).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from components.media import ClassificationMedia, MediaCollector, describe
from components.tasks import Task


def is_binary_metric(metric: Any) -> bool:
    """A torchmetrics Binary* metric (they share no base class of their own, only the name prefix)."""
    return type(metric).__name__.startswith("Binary") and type(metric).__module__.startswith("torchmetrics")


class Binary(Task):
    """Two classes: the target is 0 or 1, the model outputs one logit (the positive class's) or two.

    Loss settings (`loss.tasks.binary`): `input`, what the criterion gets: `logit` (the positive
    class's logit, shape (batch,): BCEWithLogitsLoss, SoftMarginLoss), `logits` (two columns:
    CrossEntropyLoss) or `log_probs` (two columns of log-probabilities: NLLLoss); `target`, how the
    labels are given: `index` (0/1 integers), `float` (0./1.) or `sign` (-1./+1., SoftMarginLoss).
    """

    name = "binary"
    INPUTS = ("logit", "logits", "log_probs")
    TARGETS = ("index", "float", "sign")

    def __init__(self, num_outputs: int, metrics: dict[str, Any] | None = None):
        if num_outputs not in (1, 2):
            raise ValueError(f"task 'binary' takes a model of 1 output (the positive class's logit) or 2 (one per "
                             f"class), not task.num_outputs={num_outputs!r}; for {num_outputs} classes use "
                             f"task=classification")
        super().__init__(num_outputs, metrics)
        for name, metric in self.metrics.items():
            if not is_binary_metric(metric):
                raise ValueError(f"metric task.metrics.{name} ({type(metric).__name__}) is not a binary metric: "
                                 f"task 'binary' feeds its metrics one probability per sample; use a "
                                 f"torchmetrics.classification.Binary* metric")
        self.input, self.target = "logits", "index"

    def bind_loss(self, criterion: Callable, input: str = "logits", target: str = "index") -> None:
        for key, value, allowed in (("input", input, self.INPUTS), ("target", target, self.TARGETS)):
            if value not in allowed:
                raise ValueError(f"{key}={value!r} is not allowed; use one of: {', '.join(allowed)}")
        self.criterion, self.input, self.target = criterion, input, target

    def positive_logit(self, output: Tensor) -> Tensor:
        """The logit of class 1, shape (batch,)."""
        output = output.float()
        if output.dim() == 1:
            return output
        return output[:, 0] if output.shape[1] == 1 else output[:, 1] - output[:, 0]

    def two_logits(self, output: Tensor) -> Tensor:
        """Two columns whose softmax is the model's (0 and the logit for a one-output model)."""
        if output.dim() == 2 and output.shape[1] == 2:
            return output
        logit = self.positive_logit(output)
        return torch.stack([torch.zeros_like(logit), logit], dim=1)

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        if self.input == "logit":
            prediction = self.positive_logit(output)
        else:
            prediction = self.two_logits(output)
            if self.input == "log_probs":
                prediction = torch.log_softmax(prediction.float(), dim=1)
        if self.target == "float":
            target = target.to(prediction.dtype)
        elif self.target == "sign":
            target = target.to(prediction.dtype) * 2 - 1
        return self.criterion(prediction, target)

    def update_metrics(self, metrics, output: Tensor, target: Tensor) -> None:
        metrics.update(torch.sigmoid(self.positive_logit(output)), target.long())

    def check(self, output: Any, target: Any) -> None:
        n = self.num_outputs
        fits = isinstance(output, Tensor) and (
            output.dim() == 2 and output.shape[1] == n or n == 1 and output.dim() == 1)
        if not fits:
            shapes = "(batch, 2)" if n == 2 else "(batch, 1) or (batch,)"
            raise ValueError(f"a binary model of {n} output(s) must output {shapes}; the model outputs {describe(output)}")
        if not isinstance(target, Tensor) or target.dim() != 1 or target.is_floating_point():
            raise ValueError(f"binary targets must be class indices 0 or 1, integers of shape (batch,); "
                             f"the dataset gives {describe(target)} (real-valued targets: task=regression)")
        if len(target) and (int(target.min()) < 0 or int(target.max()) > 1):
            raise ValueError(f"the targets go from {int(target.min())} to {int(target.max())} but task 'binary' "
                             f"has 2 classes (0 and 1); for more classes use task=classification")

    def media(self, num_samples: int) -> MediaCollector:
        return _TwoClassMedia(self, ClassificationMedia(2, num_samples))


class _TwoClassMedia(MediaCollector):
    """The classification drawings (samples, confusion matrix) of a one- or two-output binary model."""

    def __init__(self, task: Binary, media: ClassificationMedia):
        self.task, self.media = task, media

    def add(self, inputs, output, target) -> None:
        self.media.add(inputs, self.task.two_logits(output), target)

    def render(self, class_names) -> list:
        return self.media.render(class_names)
