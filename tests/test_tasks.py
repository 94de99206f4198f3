"""Tasks through the real CLI: every task on its offline dataset, a user's own task, metric, model and
dataset from a package outside the repository swept toward that metric; and, composed in-process,
mismatches refused before training with one clear message."""

from __future__ import annotations

import json
import textwrap

import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from runner.results import read_metrics, read_result
from tests.conftest import refused_before_training
from tests.test_cli import only_run


def tensorboard_tags(run):
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0, "scalars": 0}).Reload()
    return events.Tags()


# two epochs: every metric and the media are recorded (media on the last epoch whatever the interval);
# whether each task learns is for the tests of its own (regression: the test below)
@pytest.mark.parametrize("experiment,epochs,objective,metrics,media", [
    ("tabular_classification", 2, "val/acc", ["val/acc"], ["val/confusion_matrix"]),
    ("digits", 2, "val/acc", ["val/acc", "val/acc_top5"], ["val/predictions", "val/confusion_matrix"]),
    ("multilabel", 2, "val/loss", ["val/f1", "val/auroc", "val/map"], []),
    ("multioutput_regression", 2, "val/loss", ["val/mae", "val/rmse", "val/r2"], ["val/predicted_vs_true"]),
])
def test_every_task_trains_on_its_offline_dataset(run_cli, tmp_path, data_dir, experiment, epochs, objective,
                                                  metrics, media):
    done = run_cli(f"experiment={experiment}", f"trainer.max_epochs={epochs}", f"paths.data_dir={data_dir}")
    assert done.returncode == 0, done.stderr
    assert_records(only_run(tmp_path), epochs, objective, metrics, media)


def assert_records(run, epochs, objective, metrics, media) -> None:
    """The run completed its epochs toward `objective`, recording each metric (train and val) and each
    medium in TensorBoard."""
    result, rows = read_result(run), read_metrics(run)
    assert result["status"] == "completed" and result["epochs"] == epochs == len(rows)
    assert result["objective"]["metric"] == objective
    for name in metrics:
        assert name in result["final_metrics"] and name in rows[-1] and name.replace("val/", "train/") in rows[-1]
    assert "val/acc" in rows[-1] or "val/acc" not in metrics  # a regression records no accuracy
    tags = tensorboard_tags(run)
    assert set(metrics) <= set(tags["scalars"])
    assert set(media) <= set(tags["images"]), tags["images"]


def test_regression_records_no_accuracy_and_keeps_the_lowest_loss_as_best(run_cli, tmp_path, data_dir):
    done = run_cli("experiment=regression", "trainer.max_epochs=15", f"paths.data_dir={data_dir}")
    assert done.returncode == 0, done.stderr
    run = only_run(tmp_path)
    rows, result = read_metrics(run), read_result(run)
    assert not any("acc" in column for column in rows[0])
    best = min(rows, key=lambda row: row["val/loss"])
    assert result["objective"] == {"metric": "val/loss", "goal": "minimize", "value": best["val/loss"],
                                   "epoch": best["epoch"], "last": rows[-1]["val/loss"]}
    assert_records(run, 15, "val/loss", ["val/mae", "val/rmse", "val/r2"], ["val/predicted_vs_true"])


def test_metrics_are_added_and_dropped_from_the_command_line(run_cli, tmp_path):
    done = run_cli("dataset=synthetic", "trainer.max_epochs=2", "logger=none", "~task.metrics.acc_top5",
                   "+task.metrics.f1={_target_: torchmetrics.classification.MulticlassF1Score, num_classes: 10}",
                   "objective.metric=val/f1")
    assert done.returncode == 0, done.stderr
    run = only_run(tmp_path)
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "val/f1" in header and "train/f1" in header and "val/acc_top5" not in header
    result = read_result(run)
    assert result["objective"]["metric"] == "val/f1"
    assert result["objective"]["value"] == max(row["val/f1"] for row in read_metrics(run))


@pytest.mark.parametrize("args,fragments", [
    (["experiment=regression", "loss=cross_entropy"],
     ["loss torch.nn.CrossEntropyLoss does not fit task 'regression'", "it fits classification",
      "Losses for regression: huber, l1, mse, poisson_nll, smooth_l1"]),
    (["task=multilabel", "dataset=synthetic_multilabel", "model=mlp", "loss=mse"],
     ["loss torch.nn.MSELoss does not fit task 'multilabel'", "Losses for multilabel: bce_with_logits"]),
    (["dataset=synthetic", "objective.metric=val/f1"],
     ["objective.metric='val/f1' is not a metric this run records", "val/acc, val/acc_top5", "task.metrics"]),
    (["experiment=regression", "model.num_outputs=3"],
     ["model components.models.MLP does not fit task 'regression'", "(batch, 1)", "float32 (16, 3)"]),
    (["experiment=tabular_classification", "dataset=diabetes"],
     ["refers to dataset.num_classes, which the composed config does not have",
      "needs a dataset that declares num_classes"]),
    (["experiment=tabular_classification", "dataset=diabetes", "task.num_outputs=2"],
     ["targets must be class indices", "task=regression"]),
    (["dataset=synthetic", "model=mlp", "+task.metrics.per_class={_target_: torchmetrics.classification.MulticlassAccuracy, num_classes: 10, average: none}"],
     ["metric task.metrics.per_class gives float32 (10,), not one number"]),
])
def test_mismatches_are_refused_before_training(tmp_path, args, fragments):
    message = refused_before_training([*args, "trainer.max_epochs=1", "logger=none"], tmp_path / "run")
    assert all(fragment in message for fragment in fragments), message


USER_PACKAGE = '''
"""A lab's own ordinal-rating problem: sequences of token ids, a rating 0..4 per sequence."""
import torch
import torchmetrics
from torch import nn
from torch.utils.data import Dataset

from components.tasks import Task


class Reviews(Dataset):
    """Token sequences of length 12 over a vocabulary of 20; the rating is how many of the tokens
    0..4 appear at even positions, capped at 4. Each item: ({"tokens": ..., "lengths": ...}, rating)."""

    def __init__(self, size, seed):
        generator = torch.Generator().manual_seed(seed)
        self.tokens = torch.randint(0, 20, (size, 12), generator=generator)
        self.ratings = (self.tokens[:, ::2] < 5).sum(1).clamp(max=4)

    def __len__(self):
        return len(self.ratings)

    def __getitem__(self, index):
        return {"tokens": self.tokens[index], "lengths": torch.tensor(12)}, self.ratings[index]


class BagOfTokens(nn.Module):
    def __init__(self, vocabulary, num_outputs):
        super().__init__()
        self.embed = nn.EmbeddingBag(vocabulary * 2, 32, mode="sum")
        self.head = nn.Linear(32, num_outputs)

    def forward(self, tokens, lengths):
        positions = torch.arange(tokens.shape[1], device=tokens.device) % 2
        return self.head(self.embed(tokens + positions * 20))


class Ordinal(Task):
    """Ratings as classes, scored by how far the predicted rating is from the true one."""

    name = "ordinal"

    def check(self, output, target):
        if output.shape[1:] != (self.num_outputs,):
            raise ValueError(f"expected one score per rating, (batch, {self.num_outputs})")

    def update_metrics(self, metrics, output, target):
        metrics.update(output.argmax(1), target)


class WithinOne(torchmetrics.Metric):
    """Share of predictions at most one rating away from the truth."""

    def __init__(self):
        super().__init__()
        self.add_state("close", default=torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, predicted, target):
        self.close += ((predicted - target).abs() <= 1).sum()
        self.total += target.numel()

    def compute(self):
        return self.close.float() / self.total
'''

USER_CONFIGS = {
    "dataset/reviews.yaml": """
        _target_: components.datasets.from_datasets
        train: {_target_: mylab.Reviews, size: 512, seed: 0}
        val: {_target_: mylab.Reviews, size: 128, seed: 1}
        num_classes: 5
        vocabulary: 20
    """,
    "model/bag.yaml": """
        _target_: mylab.BagOfTokens
        vocabulary: ${dataset.vocabulary}
        num_outputs: ${task.num_outputs}
    """,
    "task/ordinal.yaml": """
        _target_: mylab.Ordinal
        num_outputs: ${dataset.num_classes}
        metrics:
          within_one: {_target_: mylab.WithinOne}
    """,
    "loss/ordinal_ce.yaml": """
        criterion: {_target_: torch.nn.CrossEntropyLoss}
        tasks:
          ordinal: {}
    """,
}


def test_users_own_task_metric_model_and_data_sweep_toward_the_custom_metric(run_cli, tmp_path):
    (tmp_path / "mylab.py").write_text(USER_PACKAGE)
    conf = tmp_path / "myconf"
    for name, text in USER_CONFIGS.items():
        (conf / name).parent.mkdir(parents=True, exist_ok=True)
        (conf / name).write_text(textwrap.dedent(text))
    sweep = tmp_path / "sweep"
    done = run_cli("--multirun", "--config-dir", str(conf), "dataset=reviews", "model=bag", "task=ordinal",
                   "loss=ordinal_ce", "objective.metric=val/within_one", "optimizer.lr=0.03,0.00001",
                   "trainer.max_epochs=3", "trainer.batch_size=32", "logger=none", f"hydra.sweep.dir={sweep}",
                   env={"PYTHONPATH": str(tmp_path)}, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    best = yaml.safe_load((sweep / "best.yaml").read_text())
    assert best["objective"]["metric"] == "val/within_one"
    assert "optimizer.lr=0.03" in best["overrides"]  # the learning rate that learns wins
    values = {}
    for trial in sorted(p for p in sweep.iterdir() if (p / "result.json").exists()):
        result = json.loads((trial / "result.json").read_text())
        values[trial.name] = result["objective"]["value"]
        assert result["status"] == "completed" and "train/within_one" in result["final_metrics"]
    assert max(values.values()) == best["objective"]["value"] > 0.8
