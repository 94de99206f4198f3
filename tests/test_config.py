"""Every option of every config group composes; bad values are refused before anything is built."""

from __future__ import annotations

import pytest
import torch
import yaml
from omegaconf import OmegaConf

from runner.config import validate
from runner.errors import ConfigError
from runner.results import read_result
from tests.conftest import CONF

GROUPS = ["dataset", "model", "task", "loss", "optimizer", "scheduler", "logger", "callbacks", "trainer", "objective",
          "pruner", "experiment", "sweep"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes_and_validates(compose_cfg, group, option):
    cfg = compose_cfg([f"{group}={option}", *companions(group, option)])
    OmegaConf.to_container(cfg, resolve=True)
    validate(cfg)


@pytest.mark.parametrize("group", ["dataset", "model", "task", "loss", "optimizer", "scheduler", "logger", "callbacks",
                                   "trainer", "objective", "pruner"])
def test_every_group_has_options(group):
    assert options(group), f"conf/{group}/ has no options"


def test_model_sizes_come_from_the_dataset(compose_cfg):
    cfg = compose_cfg(["dataset=cifar10", "model=lenet"])
    assert (cfg.model.in_channels, cfg.model.image_size, cfg.model.num_classes) == (3, 32, 10)


def test_goal_drives_plateau_mode(compose_cfg):
    assert compose_cfg(["scheduler=plateau"]).scheduler.fn.mode == "max"
    assert compose_cfg(["scheduler=plateau", "objective=val_loss"]).scheduler.fn.mode == "min"


def test_loggers_are_named_entries(compose_cfg):
    cfg = compose_cfg(["logger=[tensorboard,csv]", "~logger.csv"])
    assert list(cfg.logger) == ["tensorboard"]


@pytest.mark.parametrize(
    "override,message",
    [
        ("optimizer.lr=0", "optimizer.lr=0 must be a number > 0"),
        ("optimizer.lr=-0.1", "optimizer.lr=-0.1 must be a number > 0"),
        ("optimizer.lr=fast", "optimizer.lr='fast' must be a number > 0"),
        ("fail_fast=flase", "fail_fast='flase' must be true or false"),
        ("trainer.batch_size=0", "trainer.batch_size=0 must be >= 1"),
        ("trainer.max_epochs=0", "trainer.max_epochs=0 must be >= 1"),
        ("trainer.max_epochs=ten", "trainer.max_epochs"),
        ("trainer.precision=8", "trainer.precision='8' is not allowed; use one of: 32, bf16, 16"),
        ("trainer.device=tpu", "trainer.device='tpu' is not allowed"),
        ("trainer.resume=maybe", "trainer.resume='maybe' is not allowed; use one of: auto, never"),
        ("objective.goal=up", "objective.goal='up' is not allowed; use one of: maximize, minimize"),
        ("loss.tasks.classification=fast", "loss.tasks must map each task the loss fits to its settings"),
    ],
)
def test_bad_values_are_named_with_what_is_allowed(compose_cfg, override, message):
    with pytest.raises(ConfigError) as error:
        validate(compose_cfg([override]))
    assert message in str(error.value)


def test_all_mistakes_are_reported_at_once(compose_cfg):
    with pytest.raises(ConfigError) as error:
        validate(compose_cfg(["optimizer.lr=0", "trainer.batch_size=0", "trainer.max_epochs=0"]))
    text = str(error.value)
    assert "optimizer.lr" in text and "trainer.batch_size" in text and "trainer.max_epochs" in text


def test_goal_error_from_a_resolver_reads_the_same(compose_cfg):
    with pytest.raises(ConfigError) as error:
        validate(compose_cfg(["scheduler=plateau", "objective.goal=up"]))
    assert "objective.goal='up' is not allowed; use one of: maximize, minimize" in str(error.value)


# what an option needs besides itself to make a whole experiment: a table needs a model for tables,
# a regression loss a regression task and data
TASK_COMPANIONS = {"regression": ["task=regression", "dataset=diabetes", "model=mlp"],
                   "multilabel": ["task=multilabel", "dataset=synthetic_multilabel", "model=mlp"],
                   "binary": ["task=binary", "dataset=breast_cancer", "model=mlp", "task.num_outputs=1"],
                   "ranking": ["task=ranking", "dataset=diabetes", "model=mlp"],
                   "ctc": ["experiment=ctc_digits"],
                   "token_sequence": ["experiment=language_model"],
                   "vae": ["experiment=vae_mnist"],
                   "metric_learning": ["experiment=metric_learning"]}
COMPANIONS = {
    ("dataset", "breast_cancer"): ["model=mlp"],
    ("dataset", "wine"): ["model=mlp"],
    ("dataset", "digits"): ["model=small_cnn"],
    ("dataset", "diabetes"): TASK_COMPANIONS["regression"],
    ("dataset", "linnerud"): TASK_COMPANIONS["regression"],
    ("dataset", "synthetic_multilabel"): TASK_COMPANIONS["multilabel"],
    ("task", "regression"): TASK_COMPANIONS["regression"],
    ("task", "multilabel"): TASK_COMPANIONS["multilabel"],
    # the sequence and generative options fit one another, as their experiment presets pick them
    **{(group, option): TASK_COMPANIONS[task] for task, options_of_task in {
        "binary": [("task", "binary")],
        "ranking": [("task", "ranking"), ("objective", "val_spearman")],
        "ctc": [("task", "ctc"), ("dataset", "digit_strings"), ("model", "frame_recognizer"), ("objective", "val_cer")],
        "token_sequence": [("task", "token_sequence"), ("dataset", "byte_corpus"), ("model", "token_gru"),
                           ("objective", "val_perplexity")],
        "vae": [("task", "vae"), ("dataset", "mnist_5k_pixels"), ("model", "vae"), ("objective", "val_elbo")],
        "metric_learning": [("task", "metric_learning"), ("objective", "val_recall_at_1")],
    }.items() for group, option in options_of_task},
}


def companions(group: str, option: str) -> list[str]:
    if group == "loss":
        tasks = list(yaml.safe_load((CONF / "loss" / f"{option}.yaml").read_text())["tasks"])
        return [] if "classification" in tasks else TASK_COMPANIONS[tasks[0]]
    return COMPANIONS.get((group, option), [])


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_builds_its_targets_and_fits_its_model(compose_cfg, data_dir, group, option):
    """Every _target_ imports and takes the keys it is given; model, task, loss and metrics fit a real
    batch of the data (datasets that download are stood in for by synthetic images of their declared shape)."""
    from components.datasets import synthetic
    from runner.run.build import build, build_task, probe
    from runner.config import typed_trainer
    from runner.run.data import make_source

    cfg = compose_cfg([f"{group}={option}", *companions(group, option), f"paths.data_dir={data_dir}"])
    task = build_task(cfg)
    if cfg.dataset._target_ == "components.datasets.torchvision_images":
        data = synthetic(cfg.dataset.channels, cfg.dataset.image_size, cfg.dataset.num_classes)
    else:
        data = build(cfg.dataset, "dataset")
    source = make_source(data.train, data, torch.device("cpu"), typed_trainer(cfg), channels_last=False)
    probe(build(cfg.model, "model"), task, next(source.batches(16)), cfg)


@pytest.mark.parametrize("logger", options("logger"))
def test_every_logger_option_trains(compose_cfg, tmp_path, logger):
    from runner.run.train import RunContext, train

    # trackers keep their stores under paths.output_dir (MLflow's SQLite file): not in the repository's outputs/
    cfg = compose_cfg(["dataset=synthetic", "trainer=debug", f"logger={logger}", f"paths.output_dir={tmp_path}"])
    train(cfg, RunContext(run_dir=tmp_path))
    assert read_result(tmp_path)["status"] == "completed"
    if logger in ("csv", "all"):
        assert (tmp_path / "scalars.csv").read_text().startswith("step,tag,value")
    assert (tmp_path / "tensorboard").exists() == (logger in ("tensorboard", "all"))


@pytest.mark.parametrize("group", [*GROUPS, "pbt", "hydra/sweeper", "hydra/launcher"])
def test_the_configuration_page_lists_every_option_of_every_group(group):
    """docs/configuration.md's table of config groups names each option in conf/<group>/ in its group's row."""
    page = (CONF.parent / "docs" / "configuration.md").read_text(encoding="utf-8")
    rows = [line for line in page.splitlines() if line.startswith(f"| `{group}` |")]
    assert len(rows) == 1, f"docs/configuration.md has {len(rows)} rows for the {group} group"
    missing = [option for option in options(group) if f"`{option}`" not in rows[0]]
    assert not missing, f"docs/configuration.md's {group} row does not list {missing}"


@pytest.mark.parametrize("option", options("objective"))
def test_every_objective_option_takes_several_objectives_and_constraints(compose_cfg, option):
    """Each objective option extends `default`, so `objective.constraints=...` overrides it without a `+`."""
    cfg = compose_cfg([f"objective={option}", "objective.constraints=['model/params <= 1e9']"])
    assert list(cfg.objective.constraints) == ["model/params <= 1e9"] and "metrics" in cfg.objective
