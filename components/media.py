"""What a task draws on media epochs: sample images with captions, a confusion matrix, predicted vs
true values, each a `MediaCollector` that sees the validation batches and returns `Images` or
`Figure`s. Drawing is on `matplotlib.figure.Figure` objects (never pyplot, never a backend switch),
and nothing here enters a collective: under DDP only rank 0 draws.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor


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


def _label_captions(output: Tensor, target: Tensor, class_names: list[str] | None) -> list[str]:
    names = class_names or [str(i) for i in range(output.shape[1])]
    captions = []
    for predicted, true in zip((output > 0).tolist(), target.bool().tolist()):
        shown = [names[i] for i, on in enumerate(predicted) if on]
        captions.append(f"{','.join(shown) or '-'} {'✓' if predicted == true else '✗'}")
    return captions


class PredictedVsTrue(MediaCollector):
    """A scatter of predicted against true values, one panel per output (the first four); `diagonal`
    draws the line where they are equal (meaningless for a ranking's scores, which only order)."""

    def __init__(self, task: Regression, tag: str = "val/predicted_vs_true", ylabel: str = "predicted",
                 diagonal: bool = True):
        self.task, self.tag, self.ylabel, self.diagonal = task, tag, ylabel, diagonal
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
            if self.diagonal:
                low, high = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
                ax.plot([low, high], [low, high], color="gray", linewidth=1, linestyle="--")
            ax.set_xlabel(f"true{f' [{i}]' if panels > 1 else ''}")
            ax.set_ylabel(self.ylabel)
        return [Figure(self.tag, figure)]
