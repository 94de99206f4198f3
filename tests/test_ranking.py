"""Ranking losses: task=ranking (pairs of a batch, MarginRankingLoss, rank correlations) through its
preset on the CLI and in-process, and MultiLabelMarginLoss on the multilabel task."""

from __future__ import annotations

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from components.ranking import Ranking
from components.tasks import label_indices
from runner.errors import ConfigError
from runner.results import read_metrics, read_result
from tests.test_cli import only_run


def ranking_task(margin: float = 1.0) -> Ranking:
    task = Ranking(1)
    task.bind_loss(torch.nn.MarginRankingLoss(margin=margin))
    return task


def test_the_loss_orders_every_pair_with_distinct_targets():
    scores = torch.tensor([[3.0], [0.2], [1.0], [0.5]])
    target = torch.tensor([3.0, 1.0, 1.0, 2.0])
    # the pairs i < j whose targets differ, y = +1 when i's target is the larger: (0,1) +1, (0,2) +1,
    # (0,3) +1, (1,3) -1, (2,3) -1; (1,2) is tied and left out
    hinge = [max(0.0, -y * (scores[i, 0].item() - scores[j, 0].item()) + 0.5)
             for i, j, y in [(0, 1, 1), (0, 2, 1), (0, 3, 1), (1, 3, -1), (2, 3, -1)]]
    assert ranking_task(margin=0.5).loss(scores, target).item() == pytest.approx(sum(hinge) / len(hinge))


@pytest.mark.parametrize("target", [torch.full((5,), 2.5), torch.tensor([1.0])])
def test_a_batch_with_nothing_to_order_gives_a_zero_loss_that_backpropagates(target):
    scores = torch.randn(len(target), 1, requires_grad=True)
    loss = ranking_task().loss(scores, target)
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(scores.grad, torch.zeros_like(scores))


def test_multi_hot_targets_become_label_indices_padded_with_minus_one():
    multi_hot = torch.tensor([[0.0, 1.0, 0.0, 1.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    assert label_indices(multi_hot).tolist() == [[1, 3, -1, -1], [0, -1, -1, -1], [-1, -1, -1, -1]]


def probe_config(compose_cfg, overrides):
    from runner.config import typed_trainer
    from runner.run.build import build, build_task, probe
    from runner.run.data import make_source

    cfg = compose_cfg(overrides)
    task = build_task(cfg)
    data = build(cfg.dataset, "dataset")
    source = make_source(data.train, data, torch.device("cpu"), typed_trainer(cfg), channels_last=False)
    probe(build(cfg.model, "model"), task, next(source.batches(16)), cfg)


@pytest.mark.parametrize("overrides,fragments", [
    (["experiment=ranking", "model.num_outputs=3"],
     ["does not fit task 'ranking'", "one score per sample, (batch, 1) or (batch,)", "float32 (16,)",
      "the model outputs float32 (16, 3)"]),
    (["task=ranking", "dataset=breast_cancer", "model=mlp"],
     ["ranking targets must be real numbers", "the dataset gives int64 (16,)", "class indices: task=classification"]),
    (["task=ranking", "dataset=linnerud", "model=mlp"],
     ["one real number per sample", "the dataset gives float32 (12, 3)", "task=regression"]),
    (["loss=margin_ranking"],
     ["loss torch.nn.MarginRankingLoss does not fit task 'classification'", "it fits ranking",
      "Losses for classification"]),
    (["task=multilabel", "dataset=synthetic_multilabel", "model=mlp", "loss=multilabel_margin",
      "loss.tasks.multilabel.target=index"],
     ["loss.tasks.multilabel: target='index' is not allowed; use one of: multi_hot, indices"]),
])
def test_what_does_not_fit_a_ranking_loss_is_refused_naming_both_sides(compose_cfg, overrides, fragments):
    with pytest.raises(ConfigError) as error:
        probe_config(compose_cfg, [*overrides, "logger=none"])
    for fragment in fragments:
        assert fragment in str(error.value)


def test_multilabel_margin_loss_trains_on_label_indices(compose_cfg, tmp_path):
    from runner.run.train import RunContext, train

    train(compose_cfg(["task=multilabel", "dataset=synthetic_multilabel", "model=mlp", "loss=multilabel_margin",
                       "trainer.max_epochs=3", "logger=none"]), RunContext(run_dir=tmp_path))
    rows = read_metrics(tmp_path)
    assert read_result(tmp_path)["status"] == "completed" and len(rows) == 3
    assert rows[-1]["train/loss"] < rows[0]["train/loss"] and rows[-1]["val/loss"] < rows[0]["val/loss"]
    # the hinge pushes present labels above absent ones: the label ranking is far better than chance
    assert rows[-1]["val/auroc"] > 0.75


@pytest.mark.e2e
def test_ranking_preset_learns_the_order_of_diabetes_progression(run_cli, tmp_path):
    done = run_cli("experiment=ranking", "trainer.max_epochs=4")
    assert done.returncode == 0, done.stderr
    run = only_run(tmp_path)
    rows, result = read_metrics(run), read_result(run)
    assert result["status"] == "completed" and len(rows) == 4
    assert {k: result["objective"][k] for k in ("metric", "goal")} == {"metric": "val/spearman", "goal": "maximize"}
    assert result["objective"]["value"] == max(row["val/spearman"] for row in rows)
    # an untrained score orders patients at random; four epochs already rank them well (0.73 measured)
    assert rows[-1]["val/spearman"] > 0.6 and rows[-1]["val/kendall"] > 0.4
    assert rows[-1]["val/loss"] < rows[0]["val/loss"]
    tags = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0}).Reload().Tags()
    assert "val/score_vs_true" in tags["images"]
