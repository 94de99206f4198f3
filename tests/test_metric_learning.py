"""Metric learning: triplets and pairs formed inside a batch, retrieval metrics over a split (held to
torchmetrics' own values), each of the three losses training on digits, an exact resume, and the
mismatches refused before training (a triplet loss on a classification task, targets that are not
classes, an embedding of the wrong size, a setting the task does not have)."""

from __future__ import annotations

import pytest
import torch
from torchmetrics.retrieval import RetrievalHitRate, RetrievalMAP

from components.metric_learning import MetricLearning, NeighbourRetrieval, all_triplets, hardest_triplets
from runner.errors import ConfigError
from runner.results import read_metrics, read_result
from runner.run.build import build, build_task, probe
from runner.run.train import RunContext, train
from tests.test_cli import assert_clean_error, only_run

PRESET = ["experiment=metric_learning", "logger=none"]


@pytest.mark.parametrize("make", [
    lambda: RetrievalHitRate(top_k=1), lambda: RetrievalHitRate(top_k=5), lambda: RetrievalMAP(),
    lambda: RetrievalMAP(top_k=10), lambda: RetrievalMAP(empty_target_action="skip"),
    lambda: RetrievalHitRate(top_k=3, empty_target_action="pos"),
], ids=["hit1", "hit5", "map", "map10", "map_skip", "hit3_pos"])
def test_the_batched_scores_equal_torchmetrics_one_query_at_a_time(make):
    torch.manual_seed(0)
    # class 10 has one sample: a query with nothing relevant, scored by empty_target_action
    embeddings, labels = torch.randn(150, 4), torch.cat([torch.randint(0, 10, (149,)), torch.tensor([10])])
    values = []
    for batched in (True, False):
        metric = NeighbourRetrieval(make(), query_chunk=40, batched=batched)
        metric.update(embeddings[:70], labels[:70])
        metric.update(embeddings[70:], labels[70:])
        values.append(float(metric.compute()))
    assert values[0] == pytest.approx(values[1], abs=1e-6) and 0 < values[0] < 1


def test_leave_one_out_retrieval_never_finds_the_query_itself():
    # two tight clusters of classes 0 and 1, but every sample's nearest other sample is of the other class
    embeddings = torch.tensor([[1.0, 0.0], [1.0, 0.01], [0.0, 1.0], [0.01, 1.0]])
    metric = NeighbourRetrieval(RetrievalHitRate(top_k=1))
    metric.update(embeddings, torch.tensor([0, 1, 0, 1]))
    assert float(metric.compute()) == 0.0
    metric.reset()
    metric.update(embeddings, torch.tensor([0, 0, 1, 1]))
    assert float(metric.compute()) == 1.0


def test_batch_hard_mining_takes_the_farthest_positive_and_the_closest_negative():
    points = torch.tensor([[0.0], [1.0], [3.0], [1.5], [10.0]])
    labels = torch.tensor([0, 0, 0, 1, 2])
    anchors, positives, negatives = hardest_triplets(points, labels)
    # samples 3 and 4 have no positive: no triplet of theirs
    assert anchors.tolist() == [0, 1, 2]
    assert positives.tolist() == [2, 2, 0] and negatives.tolist() == [3, 3, 3]
    anchor, positive, negative = all_triplets(points, labels)
    assert len(anchor) == 3 * 2 * 2 and bool((labels[anchor] == labels[positive]).all())
    assert bool((anchor != positive).all()) and bool((labels[anchor] != labels[negative]).all())


@pytest.mark.parametrize("criterion,settings", [
    (torch.nn.TripletMarginLoss(), {"form": "triplets", "mining": "hard"}),
    (torch.nn.TripletMarginLoss(), {"form": "triplets", "mining": "all"}),
    (torch.nn.CosineEmbeddingLoss(), {"form": "pairs", "compare": "cosine"}),
    (torch.nn.HingeEmbeddingLoss(), {"form": "pairs", "compare": "distance"}),
])
def test_a_batch_with_no_triplet_gives_a_zero_loss_that_still_backpropagates(criterion, settings):
    task = MetricLearning(num_outputs=3)
    task.bind_loss(criterion, **settings)
    embeddings = torch.randn(4, 3, requires_grad=True)
    no_positive = task.loss(embeddings, torch.tensor([0, 1, 2, 3]))
    no_negative = task.loss(embeddings, torch.tensor([5, 5, 5, 5]))
    single = task.loss(embeddings[:1], torch.tensor([0]))
    if settings["form"] == "triplets":
        assert no_positive.item() == no_negative.item() == single.item() == 0.0
    for loss in (no_positive, no_negative, single):
        assert torch.isfinite(loss)
        loss.backward()
    assert torch.isfinite(embeddings.grad).all()


@pytest.mark.parametrize("loss", ["triplet_margin", "cosine_embedding", "hinge_embedding"])
def test_each_loss_learns_digit_embeddings(compose_cfg, tmp_path, loss):
    train(compose_cfg([*PRESET, f"loss={loss}", "trainer.max_epochs=2", "trainer.test=false"]),
          RunContext(run_dir=tmp_path))
    rows = read_metrics(tmp_path)
    assert len(rows) == 2 and rows[-1]["val/map"] > rows[0]["val/map"], [r["val/map"] for r in rows]
    assert rows[-1]["val/recall_at_1"] > 0.9 and rows[-1]["val/recall_at_5"] >= rows[-1]["val/recall_at_1"]


def test_an_interrupted_run_resumes_to_the_same_metrics(compose_cfg, tmp_path, signal_at_step):
    overrides = [*PRESET, "trainer.max_epochs=2", "trainer.test=false"]
    train(compose_cfg(overrides), RunContext(run_dir=tmp_path / "straight"))
    signal_at_step(25)  # in the second of two epochs of 17 steps
    with pytest.raises(SystemExit):
        train(compose_cfg(overrides), RunContext(run_dir=tmp_path / "interrupted"))
    saved = torch.load(tmp_path / "interrupted" / "checkpoints" / "last.pt", weights_only=True)
    assert saved["progress"]["partial"]["metrics"]["recall_at_1"]["states"]["embeddings"]
    signal_at_step.disarm()
    train(compose_cfg(overrides), RunContext(run_dir=tmp_path / "interrupted"))

    def comparable(rows):
        return [{k: v for k, v in row.items() if k not in ("time_s", "train/samples_per_s")} for row in rows]

    assert comparable(read_metrics(tmp_path / "interrupted")) == comparable(read_metrics(tmp_path / "straight"))


@pytest.mark.parametrize("overrides,message", [
    (["loss.tasks.metric_learning.form=quads"], "loss.tasks.metric_learning: form='quads' is not allowed; use one of: "
                                                "triplets, pairs"),
    (["loss=cosine_embedding", "+loss.tasks.metric_learning.mining=hard"],
     "mining='hard' does not apply to form='pairs'; it takes compare (cosine, distance)"),
    (["loss.tasks.metric_learning.mining=soft"], "mining='soft' is not allowed with form='triplets'; use one of: hard, all"),
    (["loss=cross_entropy"], "Losses for metric_learning: cosine_embedding, hinge_embedding, triplet_margin"),
    (["+task.metrics.acc={_target_: torchmetrics.classification.MulticlassAccuracy, num_classes: 10}"],
     "metric task.metrics.acc (MulticlassAccuracy) is not a components.metric_learning.NeighbourRetrieval"),
])
def test_settings_that_do_not_fit_are_refused_with_what_is_allowed(compose_cfg, overrides, message):
    with pytest.raises(ConfigError) as error:
        build_task(compose_cfg([*PRESET, *overrides]))
    assert message in str(error.value)


def test_an_embedding_of_the_wrong_size_is_refused_on_a_real_batch(compose_cfg):
    from runner.config import typed_trainer
    from runner.run.data import make_source

    cfg = compose_cfg([*PRESET, "model.num_outputs=5"])
    data = build(cfg.dataset, "dataset")
    batch = next(make_source(data.train, data, torch.device("cpu"), typed_trainer(cfg), channels_last=False).batches(16))
    with pytest.raises(ConfigError, match=r"an embedding model must output \(batch, 32\) \(task.num_outputs=32\); "
                                          r"the model outputs float32 \(16, 5\)"):
        probe(build(cfg.model, "model"), build_task(cfg), batch, cfg)


@pytest.mark.parametrize("args,fragments", [
    (["loss=triplet_margin"], ["loss torch.nn.TripletMarginLoss does not fit task 'classification'",
                               "it fits metric_learning (loss.tasks); with it, pick task=metric_learning.", "Losses for classification:"]),
    (["experiment=metric_learning", "dataset=diabetes"],
     ["does not fit task 'metric_learning' on dataset components.datasets.sklearn_regression",
      "task 'metric_learning' needs class indices", "the dataset gives float32 (16,)"]),
])
def test_mismatches_are_refused_through_the_cli_before_training(run_cli, tmp_path, data_dir, args, fragments):
    done = run_cli(*args, "logger=none", f"paths.data_dir={data_dir}")
    assert_clean_error(done, *fragments)
    assert not (only_run(tmp_path) / "metrics.csv").exists()


def test_the_preset_trains_through_the_cli_toward_val_recall_at_1(run_cli, tmp_path):
    done = run_cli("experiment=metric_learning", "trainer.max_epochs=3", "logger=none")
    assert done.returncode == 0, done.stderr
    run = only_run(tmp_path)
    result = read_result(run)
    assert result["status"] == "completed" and result["objective"]["metric"] == "val/recall_at_1"
    assert result["objective"]["value"] >= 0.95
    assert {"test/recall_at_1", "test/recall_at_5", "test/map"} <= set(result["test_metrics"])
