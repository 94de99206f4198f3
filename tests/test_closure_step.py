"""A closure optimizer through a task's own training_step: L-BFGS (conf/optimizer/lbfgs.yaml) fits a
logistic regression of the breast-cancer table in large batches, is interrupted by a signal mid-epoch
and resumes to the same metrics as an uninterrupted run; without a training_step it is refused."""

from __future__ import annotations

import signal

import pytest
import torch

from components.binary import Binary
from runner.errors import ConfigError
from runner.results import read_metrics, read_result
from runner.run.train import RunContext, train

# the training step after which a test's task sends itself SIGTERM (None: never)
SIGNAL_AFTER_STEP: dict[str, int | None] = {"step": None}


class ClosureBinary(Binary):
    """The binary task, stepped by L-BFGS: the closure re-evaluates the loss as often as the line search
    asks; the loss and output of its first evaluation are what train/loss and the train metrics get."""

    def training_step(self, model, inputs, target, optimizers):
        optimizer, first = optimizers["optimizer"], []

        def closure():
            optimizer.zero_grad(set_to_none=True)
            output = self.forward(model, inputs)
            loss = self.loss(output, target)
            loss.backward()
            first.append((loss, output))
            return loss

        optimizer.step(closure)
        self.steps = getattr(self, "steps", 0) + 1
        if SIGNAL_AFTER_STEP["step"] == self.steps:  # a scheduler's signal, at a known step
            signal.raise_signal(signal.SIGTERM)
        return first[0]


# 341 training rows in batches of 200: two steps an epoch
LOGISTIC_LBFGS = ["task=binary", "dataset=breast_cancer", "model=mlp", f"task._target_={__name__}.ClosureBinary", "optimizer=lbfgs",
                  "model.hidden_sizes=[]", "model.dropout=0.0", "trainer.batch_size=200", "trainer.max_epochs=3",
                  "trainer.test=false", "logger=none"]


def fit(compose_cfg, run_dir, overrides) -> float:
    return train(compose_cfg(overrides), RunContext(run_dir=run_dir))


def test_lbfgs_trains_and_resumes_exactly_after_a_signal(compose_cfg, tmp_path):
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    fit(compose_cfg, straight, LOGISTIC_LBFGS)
    rows = read_metrics(straight)
    assert rows[-1]["val/acc"] >= 0.95 and rows[-1]["train/loss"] < rows[0]["train/loss"], rows

    SIGNAL_AFTER_STEP["step"] = 3  # the first step of epoch 2
    try:
        with pytest.raises(SystemExit):
            fit(compose_cfg, interrupted, LOGISTIC_LBFGS)
    finally:
        SIGNAL_AFTER_STEP["step"] = None
    assert read_result(interrupted)["status"] == "interrupted"
    saved = torch.load(interrupted / "checkpoints" / "last.pt", weights_only=True)
    assert saved["progress"]["step"] == 3 and saved["optimizer"]["state"][0]["old_dirs"]
    fit(compose_cfg, interrupted, LOGISTIC_LBFGS)

    def comparable(rows):
        return [{k: v for k, v in row.items() if k not in ("time_s", "train/samples_per_s")} for row in rows]

    assert comparable(read_metrics(interrupted)) == comparable(rows)


def test_lbfgs_without_a_training_step_is_refused_before_training(compose_cfg, tmp_path):
    with pytest.raises(ConfigError, match=r"torch.optim.lbfgs.LBFGS steps with a closure.*'binary' has no training_step"):
        fit(compose_cfg, tmp_path, ["task=binary", "dataset=breast_cancer", "model=mlp", "optimizer=lbfgs", "logger=none"])
    assert not (tmp_path / "metrics.csv").exists()
