"""Binary classification through the real CLI: one logit or two, each binary loss, Binary* metrics fed
the positive class's probability; and, composed in-process, binary metrics on a multiclass model
refused before training."""

from __future__ import annotations

import pytest

from runner.results import read_metrics, read_result
from tests.conftest import refused_before_training
from tests.test_cli import only_run


@pytest.mark.parametrize("args", [
    [],  # two logits, cross-entropy
    ["task.num_outputs=1", "loss=bce_with_logits"],
    ["task.num_outputs=1", "loss=soft_margin"],
])
def test_breast_cancer_trains_toward_val_auroc_with_one_logit_or_two(run_cli, tmp_path, args):
    done = run_cli("experiment=tabular_classification", "trainer.max_epochs=3", "logger=none",
                   "objective.metric=val/auroc", *args)
    assert done.returncode == 0, done.stderr
    run = only_run(tmp_path)
    rows, result = read_metrics(run), read_result(run)
    assert result["status"] == "completed" and len(rows) == 3
    for name in ("val/acc", "val/auroc", "val/f1", "val/ap"):
        assert 0.0 <= rows[-1][name] <= 1.0
    # a small MLP separates breast cancer well after 3 epochs: a metric fed the wrong class would be near 0
    assert rows[-1]["val/auroc"] > 0.9
    assert result["objective"]["value"] == max(row["val/auroc"] for row in rows)


@pytest.mark.parametrize("args,fragments", [
    (["experiment=digits", "+task.metrics.f1={_target_: torchmetrics.classification.BinaryF1Score}"],
     ["metric task.metrics.f1 (BinaryF1Score) is a binary metric", "task 'classification'",
      "a model of 10 outputs", "num_classes=10"]),
    (["experiment=tabular_classification", "task=classification",
      "+task.metrics.f1={_target_: torchmetrics.classification.BinaryF1Score}"],
     ["metric task.metrics.f1 (BinaryF1Score) is a binary metric", "a model of 2 outputs", "use task=binary"]),
    (["experiment=digits", "task=binary"],
     ["task 'binary' takes a model of 1 output", "not task.num_outputs=10", "task=classification"]),
    (["experiment=tabular_classification",
      "+task.metrics.acc10={_target_: torchmetrics.classification.MulticlassAccuracy, num_classes: 10}"],
     ["metric task.metrics.acc10 (MulticlassAccuracy) is not a binary metric", "task 'binary'"]),
    (["experiment=tabular_classification", "loss=kl_div"],
     ["loss torch.nn.KLDivLoss does not fit task 'binary'",
      "Losses for binary: bce_with_logits, cross_entropy, multi_margin, nll, soft_margin"]),
])
def test_binary_mismatches_are_refused_before_training(tmp_path, args, fragments):
    message = refused_before_training([*args, "trainer.max_epochs=1", "logger=none"], tmp_path / "run")
    assert all(fragment in message for fragment in fragments), message
