"""Tasks: what a batch means for a kind of problem, how its loss is fed, its metrics and its media.

A task config builds one of these (or a user's own class with the same methods). The runner's loop
knows no task: for every batch it asks the task to split it, run the model, compute the loss and
update the metrics; before training it asks the task to check the model's output against a real
batch; on media epochs it asks the task what to draw. Metrics are torchmetrics objects named in the
config (`task.metrics.<name>`); each split (train, val, test) gets its own copies.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import torch
from torch import Tensor

# the media a task returns, importable from here as before
from components.media import (  # noqa: F401
    ClassificationMedia, Figure, Images, MediaCollector, PredictedVsTrue, SampleImages, _class_captions,
    _label_captions, as_image_batch, describe)

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- the base


class Task:
    """What every task does by default: a batch is `(inputs, target)`; the model is called with the
    inputs (a tensor, a tuple of tensors as positional arguments, or a dict as keyword arguments);
    the loss is the criterion on (output, target); the metrics are updated with (output, target).

    Subclasses set `name` (the loss configs' `tasks` entries refer to it), check the model's output in
    `check`, and feed the criterion and the metrics in `loss` and `update_metrics` as their problem needs.
    """

    name = "task"

    def __init__(self, num_outputs: int, metrics: dict[str, Any] | None = None):
        if isinstance(num_outputs, bool) or not isinstance(num_outputs, int) or num_outputs < 1:
            raise ValueError(f"num_outputs={num_outputs!r} must be an int >= 1")
        self.num_outputs = num_outputs
        self.metrics = {str(name): metric for name, metric in (metrics or {}).items() if metric is not None}
        for name in self.metrics:
            if not name or "/" in name:
                raise ValueError(f"metric name {name!r} must be non-empty and contain no '/'")
        self.criterion: Callable | None = None

    # -- a batch
    def unpack(self, batch: Any) -> tuple[Any, Any]:
        """(inputs, target) of a batch."""
        inputs, target = batch
        return inputs, target

    def forward(self, model: torch.nn.Module, inputs: Any) -> Any:
        if isinstance(inputs, dict):
            return model(**inputs)
        if isinstance(inputs, (tuple, list)):
            return model(*inputs)
        return model(inputs)

    # -- the loss
    def bind_loss(self, criterion: Callable) -> None:
        """Take the criterion; subclasses take the settings of the loss config's entry for this task."""
        self.criterion = criterion

    def loss(self, output: Any, target: Any) -> Tensor:
        return self.criterion(output, target)

    # -- metrics
    def new_metrics(self):
        """A fresh MetricCollection of the configured metrics (copies: each split keeps its own)."""
        from torchmetrics import MetricCollection

        return MetricCollection({name: metric.clone() for name, metric in self.metrics.items()},
                                compute_groups=False)

    def update_metrics(self, metrics, output: Any, target: Any) -> None:
        metrics.update(output, target)

    # -- checks and media
    def check(self, output: Any, target: Any) -> None:
        """Raise ValueError, saying what was expected, when the output cannot be compared with the target."""

    def media(self, num_samples: int) -> "MediaCollector | None":
        """What to draw on a media epoch, from the validation batches; None: nothing."""
        return None


# ---------------------------------------------------------------- classification


class Classification(Task):
    """One class per sample: the model outputs one score (logit) per class, the target is the class index.

    Loss settings (`loss.tasks.classification`): `input` is what the criterion gets from the
    logits (`logits`, `log_probs` or `probs`), `target` how the labels are given to it (`index` or
    `one_hot`). A metric whose `top_k` is at least the number of classes is left out: it would
    always be 1 (acc_top5 with 5 classes or fewer).
    """

    name = "classification"
    INPUTS = ("logits", "log_probs", "probs")
    TARGETS = ("index", "one_hot")

    def __init__(self, num_outputs: int, metrics: dict[str, Any] | None = None):
        super().__init__(num_outputs, metrics)
        for name, metric in list(self.metrics.items()):
            top_k = getattr(metric, "top_k", None)
            if top_k is not None and top_k > 1 and top_k >= num_outputs:
                log.info("metric %s left out: top_k=%d is not below the %d classes", name, top_k, num_outputs)
                del self.metrics[name]
        self.input, self.target = "logits", "index"
        refuse_binary_metrics(self.metrics, num_outputs)

    def bind_loss(self, criterion: Callable, input: str = "logits", target: str = "index") -> None:
        for key, value, allowed in (("input", input, self.INPUTS), ("target", target, self.TARGETS)):
            if value not in allowed:
                raise ValueError(f"{key}={value!r} is not allowed; use one of: {', '.join(allowed)}")
        self.criterion, self.input, self.target = criterion, input, target

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        if self.input == "log_probs":
            output = torch.log_softmax(output.float(), dim=1)
        elif self.input == "probs":
            output = torch.softmax(output.float(), dim=1)
        if self.target == "one_hot":
            target = torch.nn.functional.one_hot(target, self.num_outputs).to(output.dtype)
        return self.criterion(output, target)

    def check(self, output: Any, target: Any) -> None:
        n = self.num_outputs
        if not isinstance(output, Tensor) or output.dim() != 2 or output.shape[1] != n:
            raise ValueError(f"a classifier of {n} classes must output one score per class, (batch, {n}); "
                             f"the model outputs {describe(output)}")
        if not isinstance(target, Tensor) or target.dim() != 1 or target.is_floating_point():
            raise ValueError(f"classification targets must be class indices, integers of shape (batch,); "
                             f"the dataset gives {describe(target)} (real-valued targets: task=regression; "
                             f"several labels per sample: task=multilabel)")
        if len(target) and (int(target.min()) < 0 or int(target.max()) >= n):
            raise ValueError(f"the targets go from {int(target.min())} to {int(target.max())} but there are "
                             f"{n} classes (0 to {n - 1})")

    def media(self, num_samples: int) -> MediaCollector:
        return ClassificationMedia(self.num_outputs, num_samples)


def refuse_binary_metrics(metrics: dict[str, Any], num_classes: int) -> None:
    """A Binary* metric takes one probability per sample: it cannot read a score per class."""
    for name, metric in metrics.items():
        if type(metric).__name__.startswith("Binary"):
            advice = ("use task=binary, which feeds it the positive class's probability" if num_classes <= 2 else
                      f"use the Multiclass metric with num_classes={num_classes}, or task=binary for two classes")
            raise ValueError(f"metric task.metrics.{name} ({type(metric).__name__}) is a binary metric, but task "
                             f"'classification' gives it {num_classes} class scores per sample (a model of "
                             f"{num_classes} outputs): {advice}")


# ---------------------------------------------------------------- multilabel


class Multilabel(Task):
    """Any number of labels per sample: the model outputs one logit per label, the target is multi-hot
    (1 where the label applies). The metrics get the target as integers.

    Loss setting (`loss.tasks.multilabel`): `target`, how the criterion gets the labels: `multi_hot`
    (floats, BCEWithLogitsLoss) or `indices` (each sample's labels as class indices, padded with -1 to
    the number of labels: MultiLabelMarginLoss).
    """

    name = "multilabel"
    TARGETS = ("multi_hot", "indices")

    def __init__(self, num_outputs: int, metrics: dict[str, Any] | None = None):
        super().__init__(num_outputs, metrics)
        self.target = "multi_hot"

    def bind_loss(self, criterion: Callable, target: str = "multi_hot") -> None:
        if target not in self.TARGETS:
            raise ValueError(f"target={target!r} is not allowed; use one of: {', '.join(self.TARGETS)}")
        self.criterion, self.target = criterion, target

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        if self.target == "indices":
            return self.criterion(output, label_indices(target))
        return self.criterion(output, target.to(output.dtype))

    def update_metrics(self, metrics, output: Tensor, target: Tensor) -> None:
        metrics.update(output, target.long())

    def check(self, output: Any, target: Any) -> None:
        n = self.num_outputs
        if not isinstance(output, Tensor) or output.dim() != 2 or output.shape[1] != n:
            raise ValueError(f"a multilabel model of {n} labels must output one logit per label, (batch, {n}); "
                             f"the model outputs {describe(output)}")
        if not isinstance(target, Tensor) or tuple(target.shape) != tuple(output.shape):
            raise ValueError(f"multilabel targets must be multi-hot, (batch, {n}); the dataset gives {describe(target)}")
        if not bool(((target == 0) | (target == 1)).all()):
            raise ValueError("multilabel targets must be 0 or 1 (multi-hot)")

    def media(self, num_samples: int) -> MediaCollector:
        return SampleImages(num_samples, _label_captions)


def label_indices(multi_hot: Tensor) -> Tensor:
    """Each row's present labels as ascending class indices, then -1 to the row's end: [0, 1, 0, 1] ->
    [1, 3, -1, -1], the form MultiLabelMarginLoss reads (up to the first -1)."""
    labels = torch.arange(multi_hot.shape[-1], device=multi_hot.device).expand_as(multi_hot)
    # absent labels sort after every present one, keeping both in class order
    ordered = torch.where(multi_hot > 0, labels, labels + multi_hot.shape[-1]).sort(dim=-1).values
    return torch.where(ordered < multi_hot.shape[-1], ordered, -1)


# ---------------------------------------------------------------- regression


class Regression(Task):
    """Real-valued targets, one or several per sample: the model outputs `num_outputs` numbers.

    A single target may come as shape (batch,) or (batch, 1); the model's (batch, 1) output is matched
    to it. Loss setting (`loss.tasks.regression`): `prediction`, how the output turns into a
    prediction for the metrics and plots: `identity`, or `exp` when the model outputs a log (as
    PoissonNLLLoss with log_input=true expects).
    """

    name = "regression"
    PREDICTIONS = ("identity", "exp")
    MAX_POINTS_DRAWN = 5000

    def __init__(self, num_outputs: int, metrics: dict[str, Any] | None = None):
        super().__init__(num_outputs, metrics)
        self.prediction = "identity"

    def bind_loss(self, criterion: Callable, prediction: str = "identity") -> None:
        if prediction not in self.PREDICTIONS:
            raise ValueError(f"prediction={prediction!r} is not allowed; use one of: {', '.join(self.PREDICTIONS)}")
        self.criterion, self.prediction = criterion, prediction

    def _matched(self, output: Tensor, target: Tensor) -> Tensor:
        if output.dim() == 2 and output.shape[1] == 1 and target.dim() == 1:
            return output.squeeze(1)
        return output

    def predict(self, output: Tensor, target: Tensor) -> Tensor:
        output = self._matched(output, target)
        return output.exp() if self.prediction == "exp" else output

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        return self.criterion(self._matched(output, target), target)

    def update_metrics(self, metrics, output: Tensor, target: Tensor) -> None:
        metrics.update(self.predict(output, target).float(), target.float())

    def check(self, output: Any, target: Any) -> None:
        n = self.num_outputs
        allowed = ((n,), ()) if n == 1 else ((n,),)
        shapes = f"(batch, {n})" + (" or (batch,)" if n == 1 else "")
        if not isinstance(target, Tensor) or not target.is_floating_point():
            raise ValueError(f"regression targets must be real numbers (a float tensor); the dataset gives "
                             f"{describe(target)} (class indices: task=classification)")
        if target.dim() not in (1, 2) or target.shape[1:] not in allowed:
            raise ValueError(f"the dataset gives targets {describe(target)}, but task.num_outputs={n} expects {shapes}")
        if not isinstance(output, Tensor) or output.dim() not in (1, 2) or output.shape[1:] not in allowed:
            raise ValueError(f"a regression model of {n} output(s) must output {shapes}; "
                             f"the model outputs {describe(output)}")

    def media(self, num_samples: int) -> MediaCollector:
        return PredictedVsTrue(self)


