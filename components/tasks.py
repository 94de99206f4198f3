"""Tasks: what a batch means for a kind of problem, how its loss is fed, its metrics and its media.

A task config builds one of these (or a user's own class with the same methods). The runner's loop
knows no task: for every batch it asks the task to split it, run the model, compute the loss and
update the metrics; before training it asks the task to check the model's output against a real
batch; on media epochs it asks the task what to draw. Metrics are torchmetrics objects named in the
config (`task.metrics.<name>`); each split (train, val, test) gets its own copies.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- media


@dataclass
class Images:
    """A grid of images with a caption each; pixels scaled to [0, 1], shape [N, C, H, W]."""

    tag: str
    images: Tensor
    captions: list[str]

    def log_to(self, logger, step: int) -> None:
        logger.log_images(self.tag, self.images, self.captions, step)


@dataclass
class Figure:
    """A matplotlib figure (a confusion matrix, a scatter plot)."""

    tag: str
    figure: Any

    def log_to(self, logger, step: int) -> None:
        logger.log_figure(self.tag, self.figure, step)


def as_image_batch(inputs: Any) -> Tensor | None:
    """Inputs that are images ([N, C, H, W] with 1 or 3 channels, or [N, H, W]), scaled per image to
    [0, 1] for display; None for anything else (features, sequences, several tensors)."""
    if not isinstance(inputs, Tensor) or (not inputs.is_floating_point() and inputs.dtype != torch.uint8):
        return None
    images = inputs.unsqueeze(1) if inputs.dim() == 3 else inputs
    if images.dim() != 4 or images.shape[1] not in (1, 3) or min(images.shape[2:]) < 4:
        return None
    images = images.detach().float().cpu()
    low = images.amin(dim=(1, 2, 3), keepdim=True)
    high = images.amax(dim=(1, 2, 3), keepdim=True)
    return ((images - low) / (high - low).clamp_min(1e-8)).contiguous()


def describe(value: Any) -> str:
    """A tensor's shape and dtype, or a structure's, for error messages."""
    if isinstance(value, Tensor):
        return f"{str(value.dtype).removeprefix('torch.')} {tuple(value.shape)}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {describe(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (tuple, list)):
        return "(" + ", ".join(describe(v) for v in value) + ")"
    return type(value).__name__


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


class MediaCollector:
    """Gathers what a task draws from the validation batches of one evaluation, then draws it."""

    def add(self, inputs: Any, output: Tensor, target: Tensor) -> None: ...

    def render(self, class_names: list[str] | None) -> list:
        return []


class SampleImages(MediaCollector):
    """The first `count` validation inputs, if they are images, with a caption each."""

    def __init__(self, count: int, caption: Callable[[Tensor, Tensor, list[str] | None], list[str]]):
        self.count, self.caption = count, caption
        self.inputs: Tensor | None = None
        self.outputs: list[Tensor] = []
        self.targets: list[Tensor] = []

    def add(self, inputs, output, target) -> None:
        taken = sum(len(t) for t in self.targets)
        if taken >= self.count:
            return
        images = as_image_batch(inputs[: self.count - taken] if isinstance(inputs, Tensor) else inputs)
        if images is None:
            self.count = 0  # not images: nothing to show
            return
        self.inputs = images if self.inputs is None else torch.cat([self.inputs, images])
        self.outputs.append(output[: len(images)].detach().float().cpu())
        self.targets.append(target[: len(images)].detach().cpu())

    def render(self, class_names) -> list:
        if self.inputs is None:
            return []
        captions = self.caption(torch.cat(self.outputs), torch.cat(self.targets), class_names)
        return [Images("val/predictions", self.inputs, captions)]


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


class ClassificationMedia(MediaCollector):
    """Sample images captioned with prediction and truth, and the confusion matrix of the validation set.

    Media are drawn by one process: in a data-parallel run, rank 0 from its share of the batches. The
    matrix is therefore computed locally (`sync_on_compute=False`): a torchmetrics sync is a collective
    that the other ranks would never join, and the run would hang in it.
    """

    MAX_CLASSES_DRAWN = 50

    def __init__(self, num_classes: int, num_samples: int):
        from torchmetrics.classification import MulticlassConfusionMatrix

        self.samples = SampleImages(num_samples, _class_captions)
        self.confusion = (MulticlassConfusionMatrix(num_classes, validate_args=False, sync_on_compute=False)
                          if num_classes <= self.MAX_CLASSES_DRAWN else None)

    def add(self, inputs, output, target) -> None:
        self.samples.add(inputs, output, target)
        if self.confusion is not None:
            self.confusion.to(output.device).update(output, target)

    def render(self, class_names) -> list:
        media = self.samples.render(class_names)
        if self.confusion is not None and self.confusion.update_called:
            from matplotlib.figure import Figure as MatplotlibFigure

            # a Figure of its own, not pyplot's: drawing leaves the process's backend and figures alone
            side = max(4.0, 0.45 * self.confusion.num_classes + 2)
            figure = MatplotlibFigure(figsize=(side, side), layout="constrained")
            with warnings.catch_warnings():
                # torchmetrics hands matplotlib tensors, which numpy 2 converts with a deprecation warning
                warnings.simplefilter("ignore", DeprecationWarning)
                self.confusion.plot(ax=figure.subplots(), labels=class_names or None)
            media.append(Figure("val/confusion_matrix", figure))
        return media


def _class_captions(output: Tensor, target: Tensor, class_names: list[str] | None) -> list[str]:
    names = class_names or [str(i) for i in range(output.shape[1])]
    predicted = output.argmax(1).tolist()
    return [f"{names[p]} (true {names[t]}) {'✓' if p == t else '✗'}" for p, t in zip(predicted, target.tolist())]


# ---------------------------------------------------------------- multilabel


class Multilabel(Task):
    """Any number of labels per sample: the model outputs one logit per label, the target is multi-hot
    (1 where the label applies). The criterion gets the logits and the target as floats; the metrics
    get the target as integers."""

    name = "multilabel"

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
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


def _label_captions(output: Tensor, target: Tensor, class_names: list[str] | None) -> list[str]:
    names = class_names or [str(i) for i in range(output.shape[1])]
    captions = []
    for predicted, true in zip((output > 0).tolist(), target.bool().tolist()):
        shown = [names[i] for i, on in enumerate(predicted) if on]
        captions.append(f"{','.join(shown) or '-'} {'✓' if predicted == true else '✗'}")
    return captions


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


class PredictedVsTrue(MediaCollector):
    """A scatter of predicted against true values, one panel per output (the first four)."""

    def __init__(self, task: Regression):
        self.task = task
        self.predicted: list[Tensor] = []
        self.true: list[Tensor] = []

    def add(self, inputs, output, target) -> None:
        if sum(len(t) for t in self.true) < self.task.MAX_POINTS_DRAWN:
            self.predicted.append(self.task.predict(output, target).detach().float().cpu())
            self.true.append(target.detach().float().cpu())

    def render(self, class_names) -> list:
        if not self.true:
            return []
        from matplotlib.figure import Figure as MatplotlibFigure

        predicted = torch.cat(self.predicted)[: self.task.MAX_POINTS_DRAWN]
        true = torch.cat(self.true)[: self.task.MAX_POINTS_DRAWN]
        predicted, true = predicted.reshape(len(true), -1), true.reshape(len(true), -1)
        panels = min(true.shape[1], 4)
        figure = MatplotlibFigure(figsize=(4 * panels, 4), layout="constrained")
        for i, ax in enumerate(figure.subplots(1, panels, squeeze=False)[0]):
            x, y = true[:, i].numpy(), predicted[:, i].numpy()
            ax.scatter(x, y, s=8, alpha=0.6)
            low, high = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
            ax.plot([low, high], [low, high], color="gray", linewidth=1, linestyle="--")
            ax.set_xlabel(f"true{f' [{i}]' if panels > 1 else ''}")
            ax.set_ylabel("predicted")
        return [Figure("val/predicted_vs_true", figure)]
