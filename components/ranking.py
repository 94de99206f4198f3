"""Learning to rank: one score per sample, trained on the pairs of a batch, scored by rank correlation.

Any dataset of one real-valued target per sample is a ranking problem (diabetes: patients ordered by
disease progression). The model outputs one score per sample; the loss compares every pair of the
batch whose targets differ, asking the sample with the larger target for the larger score
(torch.nn.MarginRankingLoss). The metrics read the scores of a whole split against the targets:
Spearman's and Kendall's rank correlation, which see only the order, never the scale.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from components.media import MediaCollector, PredictedVsTrue, describe
from components.tasks import Task


def batch_pairs(target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Every pair (i, j), i < j, of the batch whose targets differ, and which should rank higher:
    y = +1 where target i is larger, -1 where target j is. Fixed by the batch alone (the loader's
    seeded shuffle decides which samples meet, and resume replays it)."""
    first, second = torch.triu_indices(len(target), len(target), offset=1, device=target.device)
    sign = torch.sign(target[first] - target[second])
    distinct = sign != 0
    return first[distinct], second[distinct], sign[distinct]


class Ranking(Task):
    """One score per sample, `(batch, 1)` or `(batch,)`; the target is one real number per sample,
    `(batch,)` or `(batch, 1)`, and only its order matters.

    The loss is the criterion on (score_i, score_j, y) over batch_pairs (MarginRankingLoss: mean of
    max(0, -y (score_i - score_j) + margin)). A batch without such a pair (one sample, or every target
    tied) has nothing to order: its loss is 0, with a zero gradient. The metrics are fed the scores and
    the targets as two flat float vectors.
    """

    name = "ranking"
    MAX_POINTS_DRAWN = 5000

    def __init__(self, num_outputs: int = 1, metrics: dict[str, Any] | None = None):
        if num_outputs != 1:
            raise ValueError(f"task 'ranking' takes a model of one score per sample, not task.num_outputs="
                             f"{num_outputs!r}; for several real-valued outputs use task=regression")
        super().__init__(num_outputs, metrics)

    def predict(self, output: Tensor, target: Tensor) -> Tensor:
        """The scores as a vector, (batch,)."""
        return output.reshape(len(output))

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        scores = self.predict(output, target)
        first, second, sign = batch_pairs(target.reshape(len(target)))
        if not len(sign):
            return scores.sum() * 0.0  # a mean over no pairs would be NaN
        return self.criterion(scores[first], scores[second], sign.to(scores.dtype))

    def update_metrics(self, metrics, output: Tensor, target: Tensor) -> None:
        metrics.update(self.predict(output, target).float(), target.reshape(len(target)).float())

    def check(self, output: Any, target: Any) -> None:
        if not isinstance(target, Tensor) or not target.is_floating_point():
            raise ValueError(f"ranking targets must be real numbers, one per sample (a float tensor (batch,) or "
                             f"(batch, 1)); the dataset gives {describe(target)} (class indices: "
                             f"task=classification, or task=binary for two classes)")
        if target.dim() not in (1, 2) or target.shape[1:] not in ((), (1,)):
            raise ValueError(f"ranking targets must be one real number per sample, (batch,) or (batch, 1); the "
                             f"dataset gives {describe(target)} (several targets per sample: task=regression)")
        if not isinstance(output, Tensor) or output.dim() not in (1, 2) or output.shape[1:] not in ((), (1,)) \
                or len(output) != len(target):
            raise ValueError(f"a ranking model must output one score per sample, (batch, 1) or (batch,), for "
                             f"targets {describe(target)}; the model outputs {describe(output)}")

    def media(self, num_samples: int) -> MediaCollector:
        return PredictedVsTrue(self, tag="val/score_vs_true", ylabel="score", diagonal=False)
