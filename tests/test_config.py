"""Every option of every config group composes; bad values are refused before anything is built."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from runner.config import validate
from runner.errors import ConfigError
from tests.conftest import CONF

GROUPS = ["dataset", "model", "loss", "optimizer", "scheduler", "logger", "trainer", "objective", "pruner", "experiment", "sweep"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes_and_validates(compose_cfg, group, option):
    cfg = compose_cfg([f"{group}={option}"])
    OmegaConf.to_container(cfg, resolve=True)
    validate(cfg)


@pytest.mark.parametrize("group", ["dataset", "model", "loss", "optimizer", "scheduler", "logger", "trainer", "objective", "pruner"])
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
        ("trainer.batch_size=0", "trainer.batch_size=0 must be >= 1"),
        ("trainer.max_epochs=0", "trainer.max_epochs=0 must be >= 1"),
        ("trainer.max_epochs=ten", "trainer.max_epochs"),
        ("trainer.precision=8", "trainer.precision='8' is not allowed; use one of: 32, bf16, 16"),
        ("trainer.device=tpu", "trainer.device='tpu' is not allowed"),
        ("trainer.resume=maybe", "trainer.resume='maybe' is not allowed; use one of: auto, never"),
        ("objective.goal=up", "objective.goal='up' is not allowed; use one of: maximize, minimize"),
        ("loss.input=scores", "loss.input='scores' is not allowed; use one of: logits, log_probs, probs"),
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


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_builds_its_targets_and_fits_its_model(compose_cfg, group, option):
    """Every _target_ imports and takes the keys it is given; model and loss fit the dataset's shape."""
    from runner.build import build, build_loss, check_targets, probe

    cfg = compose_cfg([f"{group}={option}"])
    check_targets(cfg)
    probe(build(cfg.model, "model"), build_loss(cfg), cfg)


@pytest.mark.parametrize("logger", options("logger"))
def test_every_logger_option_trains(compose_cfg, tmp_path, logger):
    from runner.train import RunContext, train

    cfg = compose_cfg(["dataset=synthetic", "trainer=debug", f"logger={logger}"])
    assert train(cfg, RunContext(run_dir=tmp_path)) >= 0
    if logger in ("csv", "all"):
        assert (tmp_path / "scalars.csv").read_text().startswith("step,tag,value")
    assert (tmp_path / "tensorboard").exists() == (logger in ("tensorboard", "all"))
