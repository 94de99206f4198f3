"""Metric learning: a model that embeds samples so that those of one class lie close together, trained
on pairs or triplets formed inside each batch of any labelled dataset, and scored by retrieval.

A batch is `(inputs, class index)`, as for classification; the model outputs an embedding
`(batch, num_outputs)`. The loss's inputs are formed from the batch itself, deterministically (the
seeded shuffle already samples the batches, and a resumed run restores it, so nothing new needs
saving): triplets (anchor, positive, negative) for torch.nn.TripletMarginLoss, or every pair of the
batch with +1 (same class) or -1 for torch.nn.CosineEmbeddingLoss and torch.nn.HingeEmbeddingLoss.
The metrics treat each sample of a split as a query against all the others (NeighbourRetrieval).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.retrieval import RetrievalHitRate, RetrievalMAP
from torchmetrics.retrieval.base import RetrievalMetric
from torchmetrics.utilities import dim_zero_cat

from components.media import describe
from components.tasks import Task


class MetricLearning(Task):
    """Embeddings of labelled samples: same class close, different classes far.

    `num_outputs` is the embedding size; `normalize` L2-normalises the embeddings before the loss
    (the retrieval metrics compare directions, cosine similarity, either way).

    Loss settings (`loss.tasks.metric_learning`): `form: triplets` with `mining`: `hard` (each
    anchor's farthest positive and closest negative in the batch, "batch hard") or `all` (every
    anchor, positive, negative of the batch; their number grows as the batch size cubed); or
    `form: pairs` (every two samples of the batch, y = +1 for the same class, -1 otherwise) with
    `compare`: `cosine` (the criterion gets (x1, x2, y): CosineEmbeddingLoss) or `distance` (it gets
    the pairs' Euclidean distances and y: HingeEmbeddingLoss). A batch that forms no triplet (no two
    samples of one class, or a single class) gives a loss of zero that still backpropagates.
    """

    name = "metric_learning"
    FORMS = {"triplets": ("mining", ("hard", "all")), "pairs": ("compare", ("cosine", "distance"))}

    def __init__(self, num_outputs: int, metrics: dict[str, Any] | None = None, normalize: bool = True):
        super().__init__(num_outputs, metrics)
        for name, metric in self.metrics.items():
            if not isinstance(metric, NeighbourRetrieval):
                raise ValueError(f"metric task.metrics.{name} ({type(metric).__name__}) is not a "
                                 f"components.metric_learning.NeighbourRetrieval: task 'metric_learning' feeds its "
                                 f"metrics embeddings and class indices; wrap a torchmetrics.retrieval metric in one")
        self.normalize = normalize
        self.form, self.mining, self.compare = "triplets", "hard", None

    def bind_loss(self, criterion: Callable, form: str = "triplets", mining: str | None = None,
                  compare: str | None = None) -> None:
        if form not in self.FORMS:
            raise ValueError(f"form={form!r} is not allowed; use one of: {', '.join(self.FORMS)}")
        given = {"mining": mining, "compare": compare}
        key, allowed = self.FORMS[form]
        for other, value in given.items():
            if other != key and value is not None:
                raise ValueError(f"{other}={value!r} does not apply to form={form!r}; it takes {key} "
                                 f"({', '.join(allowed)})")
        value = given[key] or allowed[0]
        if value not in allowed:
            raise ValueError(f"{key}={value!r} is not allowed with form={form!r}; use one of: {', '.join(allowed)}")
        self.criterion, self.form = criterion, form
        self.mining, self.compare = (value, None) if form == "triplets" else (None, value)

    def embed(self, output: Tensor) -> Tensor:
        output = output.float()
        return torch.nn.functional.normalize(output, dim=1) if self.normalize else output

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        embeddings = self.embed(output)
        if self.form == "triplets":
            anchor, positive, negative = (hardest_triplets if self.mining == "hard" else all_triplets)(
                embeddings.detach(), target)
            if not len(anchor):
                return embeddings.sum() * 0.0  # no triplet in this batch: nothing to learn, but a graph to step
            return self.criterion(embeddings[anchor], embeddings[positive], embeddings[negative])
        first, second = torch.triu_indices(len(target), len(target), offset=1, device=target.device)
        if not len(first):
            return embeddings.sum() * 0.0
        same = (target[first] == target[second]).to(embeddings.dtype) * 2 - 1
        if self.compare == "cosine":
            return self.criterion(embeddings[first], embeddings[second], same)
        return self.criterion((embeddings[first] - embeddings[second]).norm(dim=1), same)

    def update_metrics(self, metrics, output: Tensor, target: Tensor) -> None:
        metrics.update(output.float(), target)

    def check(self, output: Any, target: Any) -> None:
        n = self.num_outputs
        if not isinstance(target, Tensor) or target.dim() != 1 or target.is_floating_point():
            raise ValueError(f"task 'metric_learning' needs class indices, integers of shape (batch,), to tell which "
                             f"samples belong together; the dataset gives {describe(target)} (real-valued "
                             f"targets: task=regression)")
        if not isinstance(output, Tensor) or output.dim() != 2 or output.shape[1] != n:
            raise ValueError(f"an embedding model must output (batch, {n}) (task.num_outputs={n}); the model "
                             f"outputs {describe(output)}")


# ---------------------------------------------------------------- forming triplets from a batch


def hardest_triplets(embeddings: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Batch-hard mining: for every anchor with a positive and a negative in the batch, its farthest
    positive and its closest negative (indices into the batch)."""
    distances = torch.cdist(embeddings, embeddings)
    same = labels[:, None] == labels[None, :]
    positive = same & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    negative = ~same
    valid = positive.any(1) & negative.any(1)
    farthest = distances.masked_fill(~positive, -1.0).argmax(1)
    closest = distances.masked_fill(~negative, float("inf")).argmin(1)
    anchors = valid.nonzero().squeeze(1)
    return anchors, farthest[anchors], closest[anchors]


def all_triplets(embeddings: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Every (anchor, positive, negative) of the batch: a positive of the anchor's class (not itself),
    a negative of another."""
    same = labels[:, None] == labels[None, :]
    positive = same & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    valid = positive[:, :, None] & ~same[:, None, :]
    anchor, pos, neg = valid.nonzero(as_tuple=True)
    return anchor, pos, neg


# ---------------------------------------------------------------- retrieval metrics


class NeighbourRetrieval(Metric):
    """A torchmetrics retrieval metric over a split's embeddings: every sample is a query against all
    the others (leave-one-out), ranked by cosine similarity; the relevant ones share its class.

    `metric` is any torchmetrics.retrieval metric averaged over queries (`aggregation="mean"`):
    RetrievalHitRate(top_k=k) is recall@k as metric learning means it (a relevant sample among the k
    nearest), RetrievalMAP the mean average precision. Embeddings and labels accumulate as cat states
    (DistributedDataParallel gathers them). `compute` ranks the queries `query_chunk` at a time, so
    memory grows with chunk x split size, not with the split size squared. torchmetrics scores one
    query at a time (about a millisecond each on a CPU, every epoch, for each split); RetrievalHitRate
    and RetrievalMAP are computed for all the chunk's queries at once instead, by the same definition
    (tests/test_metric_learning.py holds them to torchmetrics' own values).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    BATCHED = (RetrievalHitRate, RetrievalMAP)

    def __init__(self, metric: RetrievalMetric, query_chunk: int = 1024, batched: bool = True, **kwargs: Any):
        super().__init__(**kwargs)
        if not isinstance(metric, RetrievalMetric):
            raise ValueError(f"metric must be a torchmetrics.retrieval metric (RetrievalHitRate, RetrievalMAP, ...), "
                             f"not {type(metric).__name__}")
        if getattr(metric, "aggregation", "mean") != "mean":
            raise ValueError(f"metric {type(metric).__name__} has aggregation={metric.aggregation!r}; "
                             f"NeighbourRetrieval averages over queries in chunks, so it takes only 'mean'")
        if query_chunk < 1:
            raise ValueError(f"query_chunk={query_chunk} must be >= 1")
        # the states are gathered before compute; the wrapped metric sees only what this one gives it,
        # the same on every rank, and must not gather it once more
        metric.sync_on_compute = metric._to_sync = False
        self.metric, self.query_chunk = metric, query_chunk
        self.batched = batched and type(metric) in self.BATCHED and metric.ignore_index is None
        self.add_state("embeddings", default=[], dist_reduce_fx="cat")
        self.add_state("labels", default=[], dist_reduce_fx="cat")

    def update(self, embeddings: Tensor, labels: Tensor) -> None:
        self.embeddings.append(embeddings.detach().float())
        self.labels.append(labels.detach())

    def compute(self) -> Tensor:
        embeddings = torch.nn.functional.normalize(dim_zero_cat(self.embeddings), dim=1)
        labels = dim_zero_cat(self.labels)
        n = len(labels)
        if n < 2:
            return torch.tensor(0.0, device=embeddings.device)
        total, counted = torch.zeros((), dtype=torch.float64, device=embeddings.device), 0
        for start in range(0, n, self.query_chunk):
            queries = torch.arange(start, min(start + self.query_chunk, n), device=labels.device)
            similarity = embeddings[queries] @ embeddings.T
            relevant = labels[queries, None] == labels[None, :]
            relevant[torch.arange(len(queries)), queries] = False  # a query is not its own answer
            scores, counts = (self._batched if self.batched else self._one_by_one)(queries, similarity, relevant)
            total += scores.double().sum()
            counted += counts
        return (total / max(counted, 1)).float()

    def _one_by_one(self, queries: Tensor, similarity: Tensor, relevant: Tensor) -> tuple[Tensor, int]:
        """torchmetrics' own computation; the sum of the chunk's scores and how many queries count."""
        others = torch.ones_like(relevant)
        others[torch.arange(len(queries)), queries] = False
        indexes = queries[:, None].expand_as(similarity)
        self.metric.reset()
        # scores above 0: RetrievalMAP takes a candidate scored <= 0 for irrelevant, whatever its label
        self.metric.update(similarity[others] + 2, relevant[others], indexes=indexes[others])
        # a query without a relevant sample counts unless the metric skips it (empty_target_action)
        counted = int(relevant.any(1).sum()) if self.metric.empty_target_action == "skip" else len(queries)
        return self.metric.compute() * counted if counted else torch.zeros(()), counted

    def _batched(self, queries: Tensor, similarity: Tensor, relevant: Tensor) -> tuple[Tensor, int]:
        """RetrievalHitRate and RetrievalMAP of every query of the chunk at once; their sum and count."""
        similarity[torch.arange(len(queries)), queries] = -torch.inf
        order = similarity.argsort(dim=1, descending=True, stable=True)[:, :-1]  # the query itself is last
        ranked = relevant.gather(1, order)
        top_k = self.metric.top_k if isinstance(self.metric, RetrievalHitRate) else self.metric.k
        ranked = ranked[:, :top_k] if top_k else ranked
        found = ranked.sum(1)
        if isinstance(self.metric, RetrievalHitRate):
            scores = (found > 0).float()
        else:  # the precision at each relevant rank, averaged over the relevant found
            ranks = torch.arange(1, ranked.shape[1] + 1, device=ranked.device)
            scores = (ranked.cumsum(1) / ranks * ranked).sum(1) / found.clamp(min=1)
        has_relevant = relevant.any(1)
        action = self.metric.empty_target_action
        if action == "error" and not bool(has_relevant.all()):
            raise ValueError("`compute` method was provided with a query with no positive target.")
        if action == "skip":
            return scores[has_relevant].sum(), int(has_relevant.sum())
        return torch.where(has_relevant, scores, float(action == "pos")).sum(), len(queries)
