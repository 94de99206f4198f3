"""Training in-process on composed configs: losses learn, every optimizer and scheduler steps,
results agree with each other, and a resumed run ends exactly where an uninterrupted one does."""

from __future__ import annotations

import json
import math

import pytest
import torch

from runner.errors import CheckpointError, TrialFailed
from runner.results import read_metrics, read_result
from runner.run.train import RunContext, train
from tests.conftest import TINY

LOSSES = ["cross_entropy", "nll", "mse", "l1", "smooth_l1", "bce_with_logits", "kl_div", "multi_margin"]


def fit(compose_cfg, run_dir, overrides, sweep_dir=None) -> float:
    return train(compose_cfg(overrides), RunContext(run_dir=run_dir, sweep_dir=sweep_dir))


@pytest.mark.parametrize("loss", LOSSES)
def test_every_loss_trains_lenet_on_mnist_5k_well_above_chance(compose_cfg, tmp_path, data_dir, loss):
    value = fit(compose_cfg, tmp_path, [
        f"loss={loss}", "model=lenet", "optimizer=adam", "optimizer.lr=0.002", "trainer.max_epochs=2",
        "logger=none", f"paths.data_dir={data_dir}",
    ])
    assert value > 0.5, f"{loss}: val/acc {value} (chance is 0.1)"


def initial_weights(cfg) -> dict[str, torch.Tensor]:
    """The model's weights as the run starts from them: the same seed, the same construction."""
    from hydra.utils import instantiate

    from runner.run.device import seed_everything

    seed_everything(cfg.trainer.seed, cfg.trainer.deterministic)
    return instantiate(cfg.model).state_dict()


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw", "rmsprop", "adagrad", "adadelta"])
def test_every_optimizer_steps(compose_cfg, tmp_path, optimizer):
    overrides = [*TINY, f"optimizer={optimizer}"]
    fit(compose_cfg, tmp_path, overrides)
    assert read_result(tmp_path)["steps"] == 8
    before = initial_weights(compose_cfg(overrides))
    after = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert before.keys() == after.keys()
    assert all(not torch.equal(before[k], after[k]) for k in before if k.endswith("weight")), optimizer


@pytest.mark.parametrize("scheduler", ["none", "step", "cosine", "onecycle"])
def test_every_scheduler_steps(compose_cfg, tmp_path, scheduler):
    fit(compose_cfg, tmp_path, [*TINY, f"scheduler={scheduler}", "trainer.max_epochs=4", "scheduler.fn.step_size=1"
                                 if scheduler == "step" else "trainer.seed=0"])
    rates = [row["lr"] for row in read_metrics(tmp_path)]
    if scheduler == "none":
        assert len(set(rates)) == 1
    else:
        assert len(set(rates)) > 1, rates


def test_plateau_scheduler_lowers_the_rate_once_the_objective_stalls(compose_cfg, tmp_path):
    # a rate this small changes no prediction: val/acc stalls from the first epoch; patience 1 halves the
    # rate after the second evaluation without improvement (plateau ignores changes below its eps, 1e-8)
    fit(compose_cfg, tmp_path, [*TINY, "scheduler=plateau", "scheduler.fn.patience=1", "optimizer.lr=1e-6",
                                "trainer.max_epochs=5"])
    rates = [row["lr"] for row in read_metrics(tmp_path)]
    assert rates[:3] == [1e-6] * 3 and rates[3] == pytest.approx(5e-7), rates


def test_result_metrics_csv_and_return_value_agree(compose_cfg, tmp_path):
    value = fit(compose_cfg, tmp_path, [*TINY, "trainer.max_epochs=3"])
    result, rows = read_result(tmp_path), read_metrics(tmp_path)
    assert result["status"] == "completed" and result["epochs"] == 3 == len(rows)
    best = max(rows, key=lambda r: r["val/acc"])
    assert value == result["objective"]["value"] == best["val/acc"]
    assert result["objective"]["epoch"] == best["epoch"]
    assert result["final_metrics"]["val/loss"] == rows[-1]["val/loss"]
    assert result["steps"] == rows[-1]["step"] == 24
    assert (tmp_path / "checkpoints" / "last.pt").exists() and (tmp_path / "checkpoints" / "best.pt").exists()


def test_minimizing_an_objective_returns_the_lowest_value(compose_cfg, tmp_path):
    value = fit(compose_cfg, tmp_path, [*TINY, "trainer.max_epochs=3", "objective=val_loss"])
    assert value == min(row["val/loss"] for row in read_metrics(tmp_path))


def test_tensorboard_events_have_scalars_hparams_images_histograms_and_text(compose_cfg, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    fit(compose_cfg, tmp_path, ["dataset=synthetic", "trainer.max_epochs=2", "trainer.log_every_n_steps=2",
                                "trainer.histograms_every_n_epochs=1", "logger=tensorboard"])
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"scalars": 0, "images": 0}).Reload()
    tags = events.Tags()
    assert {"train/loss_step", "train/loss", "val/acc", "val/loss", "lr", "train/samples_per_s"} <= set(tags["scalars"])
    assert [e.step for e in events.Scalars("val/acc")] == [4, 8]
    assert [e.step for e in events.Scalars("train/loss_step")] == [2, 4, 6, 8]
    assert "val/predictions" in tags["images"]
    assert any(t.startswith("weights/") for t in tags["histograms"])
    assert any(t.startswith("gradients/") for t in tags["histograms"])
    assert any("config" in t for t in tags["tensors"])
    assert "_hparams_/session_start_info" in events.PluginTagToContent("hparams")


def test_resumed_run_ends_exactly_like_an_uninterrupted_one(compose_cfg, tmp_path):
    common = ["dataset=synthetic", "model=cnn", "trainer.deterministic=true", "logger=none", "optimizer=sgd",
              "scheduler=step"]
    fit(compose_cfg, tmp_path / "whole", [*common, "trainer.max_epochs=4"])
    fit(compose_cfg, tmp_path / "cut", [*common, "trainer.max_epochs=2"])
    fit(compose_cfg, tmp_path / "cut", [*common, "trainer.max_epochs=4"])  # same folder: resumes from last.pt
    whole, cut = read_metrics(tmp_path / "whole"), read_metrics(tmp_path / "cut")
    drop = ("time_s", "train/samples_per_s")
    assert [{k: v for k, v in r.items() if k not in drop} for r in whole] == \
           [{k: v for k, v in r.items() if k not in drop} for r in cut]
    weights_whole = torch.load(tmp_path / "whole/checkpoints/last.pt", weights_only=True)["model"]
    weights_cut = torch.load(tmp_path / "cut/checkpoints/last.pt", weights_only=True)["model"]
    assert all(torch.equal(weights_whole[k], weights_cut[k]) for k in weights_whole)


def test_interrupted_mid_epoch_resumes_exactly(compose_cfg, tmp_path, signal_at_step):
    """A signal mid-epoch saves the exact state; the next run picks up at the same batch."""
    common = ["dataset=synthetic", "model=cnn", "trainer.deterministic=true", "logger=none", "trainer.max_epochs=2"]
    fit(compose_cfg, tmp_path / "whole", common)

    signal_at_step(6)  # in the second epoch (4 steps per epoch)
    with pytest.raises(SystemExit):
        fit(compose_cfg, tmp_path / "cut", common)
    assert read_result(tmp_path / "cut")["status"] == "interrupted"
    signal_at_step.disarm()
    fit(compose_cfg, tmp_path / "cut", common)
    drop = ("time_s", "train/samples_per_s")
    strip = lambda rows: [{k: v for k, v in r.items() if k not in drop} for r in rows]  # noqa: E731
    assert strip(read_metrics(tmp_path / "whole")) == strip(read_metrics(tmp_path / "cut"))


def test_nan_loss_fails_the_run_and_says_why(compose_cfg, tmp_path):
    with pytest.raises(TrialFailed, match="loss became"):
        fit(compose_cfg, tmp_path, [*TINY, "optimizer=sgd", "optimizer.lr=1e12", "trainer.log_every_n_steps=1"])
    result = read_result(tmp_path)
    assert result["status"] == "failed" and "loss became" in result["reason"]


def test_failed_trial_in_a_sweep_returns_the_worst_value(compose_cfg, tmp_path):
    value = fit(compose_cfg, tmp_path / "0_trial", [*TINY, "optimizer=sgd", "optimizer.lr=1e12",
                                                    "trainer.log_every_n_steps=1"], sweep_dir=tmp_path)
    assert value == -math.inf
    assert read_result(tmp_path / "0_trial")["status"] == "failed"


def test_corrupt_checkpoint_is_named_kept_and_nothing_starts(compose_cfg, tmp_path):
    fit(compose_cfg, tmp_path, TINY)
    last = tmp_path / "checkpoints" / "last.pt"
    last.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=str(last)):
        fit(compose_cfg, tmp_path, [*TINY, "trainer.max_epochs=2"])
    assert last.read_bytes() == b"not a checkpoint"


def test_resume_never_moves_earlier_results_aside(compose_cfg, tmp_path):
    fit(compose_cfg, tmp_path, TINY)
    first = (tmp_path / "result.json").read_text()
    fit(compose_cfg, tmp_path, [*TINY, "trainer.resume=never"])
    archived = list((tmp_path / "archive").glob("*/result.json"))
    assert len(archived) == 1 and archived[0].read_text() == first
    assert (archived[0].parent / "checkpoints" / "last.pt").exists()


def test_finished_run_is_read_back_not_retrained(compose_cfg, tmp_path):
    value = fit(compose_cfg, tmp_path, TINY)
    stamp = (tmp_path / "checkpoints" / "last.pt").stat().st_mtime_ns
    assert fit(compose_cfg, tmp_path, TINY) == value
    assert (tmp_path / "checkpoints" / "last.pt").stat().st_mtime_ns == stamp


@pytest.mark.parametrize("stop,reason", [
    ("trainer.stop.objective_threshold=0.0", "reached trainer.stop.objective_threshold"),
    ("trainer.stop.time_budget_s=0.001", "time budget"),
    ("trainer.early_stopping.patience=1", "early stopping"),
])
def test_stop_conditions_end_the_run_as_completed(compose_cfg, tmp_path, stop, reason):
    overrides = [*TINY, "trainer.max_epochs=30", stop]
    if "patience" in stop:
        overrides.append("optimizer.lr=1e-9")  # nothing improves after the first evaluation
    fit(compose_cfg, tmp_path, overrides)
    result = read_result(tmp_path)
    assert result["status"] == "completed" and reason in result["reason"] and result["epochs"] < 30


@pytest.mark.parametrize("precision", ["bf16", "16"])
def test_mixed_precision_runs(compose_cfg, tmp_path, precision):
    assert fit(compose_cfg, tmp_path, [*TINY, f"trainer.precision={precision}"]) > 0


def test_wrong_objective_metric_lists_the_metrics_that_exist(compose_cfg, tmp_path):
    from runner.errors import ConfigError

    with pytest.raises(ConfigError, match=r"objective.metric='val/accuracy'.*val/acc, val/acc_top5"):
        fit(compose_cfg, tmp_path, [*TINY, "objective.metric=val/accuracy"])


def test_model_that_does_not_fit_the_dataset_is_refused_before_data_loads(compose_cfg, tmp_path):
    from runner.errors import ConfigError

    with pytest.raises(ConfigError, match="model components.models.LeNet5 fails on a batch of dataset"):
        fit(compose_cfg, tmp_path, [*TINY, "model=lenet", "model.image_size=64"])


def test_loss_that_does_not_fit_the_task_is_refused(compose_cfg, tmp_path):
    from runner.errors import ConfigError

    with pytest.raises(ConfigError, match="loss torch.nn.MSELoss does not fit the output of model"):
        fit(compose_cfg, tmp_path, [*TINY, "loss=mse", "loss.tasks.classification.target=index"])


def test_unknown_key_of_a_target_is_named_with_its_parameters(compose_cfg, tmp_path):
    from runner.errors import ConfigError

    with pytest.raises(ConfigError, match=r"model.hidden is not a parameter of components.models.MLP"):
        fit(compose_cfg, tmp_path, [*TINY, "model=mlp", "+model.hidden=3"])


class RecordDataPath:
    """A callback that writes which batch source the run uses."""

    def on_fit_start(self, fit):
        (fit.run_dir / "data_path.txt").write_text(type(fit.train_data).__name__)


def test_in_memory_data_kept_on_the_cpu_trains_the_same(compose_cfg, tmp_path):
    """trainer.data_on_device=false keeps in-memory splits on the CPU; on a CPU run that is the device, so
    both runs batch by slicing tensors (copying each batch to a GPU is the only difference on one)."""
    record = "+callbacks.path={_target_: tests.test_training.RecordDataPath}"
    a = fit(compose_cfg, tmp_path / "a", [*TINY, "trainer.data_on_device=false", record])
    b = fit(compose_cfg, tmp_path / "b", [*TINY, record])
    assert a == b
    assert (tmp_path / "a" / "data_path.txt").read_text() == (tmp_path / "b" / "data_path.txt").read_text() == "DeviceTensors"


def synthetic_as_datasets(**settings):
    """The synthetic images as plain map-style Datasets of normalised floats: the DataLoader path."""
    from components.datasets import from_datasets, synthetic

    data = synthetic(**settings)

    def as_dataset(split):
        return torch.utils.data.TensorDataset(data.preprocess(split.inputs), split.targets)

    return from_datasets(as_dataset(data.train), as_dataset(data.val))


def test_dataloader_path_with_persistent_workers_matches_the_in_memory_path(compose_cfg, tmp_path):
    common = ["dataset=synthetic", "trainer.max_epochs=2", "logger=none", "trainer.deterministic=true"]
    record = "+callbacks.path={_target_: tests.test_training.RecordDataPath}"
    in_memory = fit(compose_cfg, tmp_path / "memory", [*common, record])
    loaded = fit(compose_cfg, tmp_path / "loader", [*common, record, "dataset._target_=tests.test_training.synthetic_as_datasets",
                                                     "trainer.num_workers=2", "trainer.persistent_workers=true"])
    assert (tmp_path / "memory" / "data_path.txt").read_text() == "DeviceTensors"
    assert (tmp_path / "loader" / "data_path.txt").read_text() == "LoaderBatches"
    assert loaded == pytest.approx(in_memory)
    memory_rows, loader_rows = read_metrics(tmp_path / "memory"), read_metrics(tmp_path / "loader")
    assert [r["train/loss"] for r in loader_rows] == pytest.approx([r["train/loss"] for r in memory_rows], rel=1e-5)


@pytest.mark.parametrize("model", ["mlp", "lenet", "cnn", "small_cnn", "resnet18"])
def test_every_image_model_option_trains(compose_cfg, tmp_path, model):
    """mlp on images infers its input size from the first batch (a lazy layer)."""
    fit(compose_cfg, tmp_path, [*TINY, f"model={model}", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1"])
    assert read_result(tmp_path)["status"] == "completed"
