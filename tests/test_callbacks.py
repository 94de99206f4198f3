"""Callbacks in-process: a user's own stop the run with a reason, fail it with their name, keep their
state across a resume; media never fail a run; any metric drives the best checkpoint."""

from __future__ import annotations

import re

import pytest
import torch

from components.tasks import Classification
from runner.errors import ConfigError, RunnerError
from runner.results import read_metrics, read_result
from runner.run.train import RunContext, train
from tests.conftest import TINY


def fit(compose_cfg, run_dir, overrides) -> float:
    return train(compose_cfg(overrides), RunContext(run_dir=run_dir))


class StopAtEpoch:
    """Duck-typed: no base class, only the hook it needs."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_epoch_end(self, fit, metrics):
        return f"asked to stop at epoch {self.epoch}" if fit.progress.epoch >= self.epoch else None


class Boom:
    def on_epoch_end(self, fit, metrics):
        raise ZeroDivisionError("the callback's own bug")


class CountEpochs:
    """Counts the epochs it has seen; the count lives in the checkpoint."""

    def __init__(self):
        self.seen = 0

    def on_epoch_end(self, fit, metrics):
        self.seen += 1
        fit.run_dir.joinpath("count.txt").write_text(str(self.seen))

    def state_dict(self):
        return {"seen": self.seen}

    def load_state_dict(self, state):
        self.seen = state["seen"]


class BrokenMedia(Classification):
    def media(self, num_samples):
        raise RuntimeError("cannot draw this")


def test_a_users_callback_stops_the_run_with_its_reason(compose_cfg, tmp_path):
    fit(compose_cfg, tmp_path, [*TINY, "trainer.max_epochs=5",
                                "+callbacks.stopper={_target_: tests.test_callbacks.StopAtEpoch, epoch: 2}"])
    result = read_result(tmp_path)
    assert (result["status"], result["reason"], result["epochs"]) == ("completed", "asked to stop at epoch 2", 2)
    # the stopping epoch is checkpointed as every stop is
    assert torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 2


def test_a_callback_that_raises_fails_the_run_with_its_name(compose_cfg, tmp_path):
    with pytest.raises(RunnerError, match="callback boom failed in on_epoch_end: ZeroDivisionError: the callback's own bug"):
        fit(compose_cfg, tmp_path, [*TINY, "+callbacks.boom={_target_: tests.test_callbacks.Boom}"])
    assert "callback boom failed" in read_result(tmp_path)["reason"]


def test_a_callbacks_state_is_restored_on_resume(compose_cfg, tmp_path):
    counter = "+callbacks.counter={_target_: tests.test_callbacks.CountEpochs}"
    fit(compose_cfg, tmp_path, [*TINY, "trainer.max_epochs=2", counter])
    fit(compose_cfg, tmp_path, [*TINY, "trainer.max_epochs=3", counter])  # resumes from last.pt
    assert (tmp_path / "count.txt").read_text() == "3"


def test_a_callback_may_not_take_a_built_in_name(compose_cfg, tmp_path):
    with pytest.raises(RunnerError, match="callbacks.checkpoint: the name is taken by a built-in callback"):
        fit(compose_cfg, tmp_path, [*TINY, "+callbacks.checkpoint={_target_: tests.test_callbacks.CountEpochs}"])


@pytest.mark.parametrize("entry,message", [
    ("+callbacks.x=nope", "callbacks.x=nope must name what to build with _target_"),
    ("+callbacks.x={patience: 2}", "callbacks.x={'patience': 2} must name what to build with _target_"),
])
def test_a_callback_entry_that_names_nothing_to_build_is_refused(compose_cfg, tmp_path, entry, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        train(compose_cfg([*TINY, entry]), RunContext(run_dir=tmp_path))


def test_an_object_with_no_hook_is_refused_as_a_callback(compose_cfg, tmp_path):
    with pytest.raises(RunnerError, match="callbacks.x: collections.OrderedDict has none of the hooks"):
        train(compose_cfg([*TINY, "+callbacks.x={_target_: collections.OrderedDict}"]), RunContext(run_dir=tmp_path))


def test_epoch_checkpoints_keep_every_nth_epoch(compose_cfg, tmp_path):
    fit(compose_cfg, tmp_path, [*TINY, "trainer.max_epochs=4", "callbacks=epoch_checkpoints",
                                "callbacks.epoch_checkpoints.every_n_epochs=2"])
    kept = sorted(p.name for p in (tmp_path / "checkpoints").glob("epoch_*.pt"))
    assert kept == ["epoch_0002.pt", "epoch_0004.pt"]
    assert torch.load(tmp_path / "checkpoints" / "epoch_0002.pt", weights_only=True)["epoch"] == 2


def test_media_that_cannot_be_drawn_are_a_warning_not_a_failure(compose_cfg, tmp_path, caplog):
    fit(compose_cfg, tmp_path, ["dataset=synthetic", "trainer.max_epochs=2", "trainer.predictions_every_n_epochs=1",
                                "task._target_=tests.test_callbacks.BrokenMedia"])
    assert read_result(tmp_path)["status"] == "completed"
    warnings = [r.message for r in caplog.records if "could not log media" in r.message]
    assert len(warnings) == 1 and "cannot draw this" in warnings[0]  # once, not every epoch


def test_any_metric_drives_the_best_checkpoint(compose_cfg, tmp_path):
    fit(compose_cfg, tmp_path, [*TINY, "trainer.max_epochs=4", "objective.metric=val/loss", "objective.goal=minimize",
                                "+task.metrics.f1={_target_: torchmetrics.classification.MulticlassF1Score, num_classes: 10}"])
    rows = read_metrics(tmp_path)
    best = min(rows, key=lambda row: row["val/loss"])
    assert torch.load(tmp_path / "checkpoints" / "best.pt", weights_only=True)["epoch"] == best["epoch"]
    assert "val/f1" in rows[-1] and "train/f1" in rows[-1]


def test_an_unknown_loss_setting_for_the_task_is_named(compose_cfg, tmp_path):
    with pytest.raises(ConfigError, match=r"loss.tasks.classification.reduction is not a setting of task "
                                          r"'classification' \(its settings: input, target\)"):
        fit(compose_cfg, tmp_path, [*TINY, "+loss.tasks.classification.reduction=sum"])
