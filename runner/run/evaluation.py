"""Evaluation: the loss and every metric of a task over one split's batches, without gradients."""

from __future__ import annotations

import torch

from runner.run.device import autocast
from runner.run.distributed import Ranks
from runner.run.totals import EpochTotals


@torch.inference_mode()
def evaluate(model: torch.nn.Module, forward, task, source, metrics, split: str, batch_size: int,
             limit: int | None = None, autocast_dtype: torch.dtype | None = None, on_batch=None,
             ranks: Ranks | None = None) -> dict[str, float]:
    """The loss and every metric of `task` over `source`'s batches, as `<split>/<name>`; leaves the model in eval mode.

    `forward` is the model or its compiled form; `metrics` a MetricCollection, reset first. With
    several ranks each evaluates its share of every batch, and the sums and metrics are reduced.
    """
    ranks = ranks or Ranks()
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    totals = EpochTotals.zeros(metrics, device)
    for index, batch in enumerate(source.batches(batch_size, ranks=ranks)):
        if limit is not None and index >= limit:
            break
        inputs, target = task.unpack(batch)
        with autocast(device, autocast_dtype):
            output = task.forward(forward, inputs)
            loss = task.loss(output, target)
        output = output.float() if isinstance(output, torch.Tensor) else output
        totals.add(task, output, target, loss.float())
        if on_batch is not None:
            on_batch(inputs, output, target)
    return totals.compute(split, ranks)
