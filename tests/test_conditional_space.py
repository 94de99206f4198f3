"""Conditional search spaces (runner.sweep.space): a config group whose options carry their own keys.
A trial gets only the keys of the option it draws, in the grid and in Nevergrad; a resumed sweep
asks the same points; a block for a missing option, a missing key or a non-group is refused first."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from runner.errors import ConfigError
from runner.sweep.journal import Journal
from runner.sweep.space import compose_each_option, make_search
from runner.sweep.sweeper import StreamingSweeper
from tests.scripted_pool import ScriptedPool
from tests.conftest import CONF, REPO, kill_at_second_trial_checkpoint, trials

SPACE = {
    "optimizer.lr": "tag(log, interval(1e-4, 1e-1))",
    "model": {"lenet": {}, "mlp": {"model.dropout": "interval(0.0, 0.5)"}},
    "optimizer": {"sgd": {"optimizer.momentum": "interval(0.5, 0.99)"}, "adam": {}},
}
GRID = {
    "model": {"lenet": {}, "mlp": {"model.dropout": "0.0,0.3"}},
    "optimizer": {"sgd": {"optimizer.momentum": "0.5,0.9"}, "adam": None},
}
QUICK = ["dataset=synthetic", "trainer.max_epochs=1", "logger=none", "trainer.batch_size=32"]


def optim(optimizer: str = "RandomSearch", budget: int = 12, seed: int | None = 0):
    return OmegaConf.create({"optimizer": optimizer, "budget": budget, "num_workers": 1, "noisy": False,
                             "maximize": True, "seed": seed, "max_failure_rate": 0.0})


def keys_of(overrides: list[str]) -> dict[str, str]:
    return dict(o.split("=", 1) for o in overrides)


def only_own_keys(overrides: list[str]) -> bool:
    keys = keys_of(overrides)
    return (("model.dropout" in keys) == (keys["model"] == "mlp")
            and ("optimizer.momentum" in keys) == (keys["optimizer"] == "sgd"))


def test_the_grid_expands_each_option_by_its_own_keys_only():
    search = make_search("grid", GRID, None, ["trainer.max_epochs=1"])
    points = [search.ask().overrides for _ in range(search.budget)]
    # (lenet + mlp x 2 dropouts) x (sgd x 2 momenta + adam)
    assert search.budget == 9 and len({tuple(p) for p in points}) == 9
    assert all(only_own_keys(p) and "trainer.max_epochs=1" in p for p in points)
    assert points[0] == ["model=lenet", "optimizer=sgd", "optimizer.momentum=0.5", "trainer.max_epochs=1"]


@pytest.mark.parametrize("optimizer", ["RandomSearch", "NGOpt"])
def test_nevergrad_draws_each_option_with_its_own_keys_only(optimizer):
    search = make_search("nevergrad", SPACE, optim(optimizer), [])
    points = []
    for number in range(12):
        point = search.ask()
        points.append(point.overrides)
        search.tell(point, float(number % 3))
    assert all(only_own_keys(p) for p in points)
    assert {keys_of(p)["model"] for p in points} == {"lenet", "mlp"}
    dropouts = [float(keys_of(p)["model.dropout"]) for p in points if "model.dropout" in keys_of(p)]
    assert dropouts and all(0.0 <= d <= 0.5 for d in dropouts)


def test_a_journal_value_rebuilds_its_candidate():
    search = make_search("nevergrad", SPACE, optim(), [])
    asked = [search.ask() for _ in range(6)]
    other = make_search("nevergrad", SPACE, optim(seed=1), [])  # asks other points: rebuilds from the values
    for point in asked:
        value = json.loads(json.dumps(point.value))  # as the journal holds it
        rebuilt = other.recorded(point.overrides, value)
        assert rebuilt.candidate.value["model"] == point.candidate.value["model"]
        assert only_own_keys(rebuilt.overrides)
        other.tell(rebuilt, 1.0)


# ---------------------------------------------------------------- validation, composed in-process

@contextmanager
def hydra_loader(overrides: list[str] = ()):
    """Hydra's config loader and the sweep's composed config, as the sweeper has them."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        config = compose(config_name="config", overrides=list(overrides), return_hydra_config=True)
        yield GlobalHydra.instance().config_loader(), config


def validate(kind: str, params: dict, arguments: list[str] = ()) -> list[list[str]]:
    """Build the search and compose each option as the sweeper does before its first trial; returns what it composed."""
    with hydra_loader() as (loader, config):
        search = make_search(kind, params, optim(), list(arguments), loader, config)
        composed = []

        def compose(overrides):
            composed.append(list(overrides))
            return loader.load_sweep_config(config, overrides)

        compose_each_option(search, search.ask().overrides, compose)
    return composed


@pytest.mark.parametrize("kind", ["grid", "nevergrad"])
def test_each_option_is_composed_once_with_its_own_keys(kind):
    composed = validate(kind, GRID if kind == "grid" else SPACE)
    options = [(keys_of(o)["model"], keys_of(o)["optimizer"]) for o in composed]
    assert {m for m, _ in options} == {"lenet", "mlp"} and {o for _, o in options} == {"sgd", "adam"}
    # never a key its option lacks; each option with its own keys at least once
    assert not any("model.dropout" in keys_of(o) and keys_of(o)["model"] != "mlp" for o in composed)
    assert not any("optimizer.momentum" in keys_of(o) and keys_of(o)["optimizer"] != "sgd" for o in composed)
    assert any("model.dropout" in keys_of(o) for o in composed) and any("optimizer.momentum" in keys_of(o)
                                                                        for o in composed)
    assert len(composed) == 2 + 2 + 1  # each option of each group once, then the first trial


@pytest.mark.parametrize("kind", ["grid", "nevergrad"])
@pytest.mark.parametrize("params,message", [
    ({"model": {"lenet": {}, "mlpp": {"model.dropout": "0.1,0.2"}}},
     "hydra.sweeper.params.model.mlpp: model has no option 'mlpp'; its options: "
     + ", ".join(sorted(path.stem for path in (CONF / "model").glob("*.yaml")))),
    ({"model": {"lenet": {"model.dropout": "0.1,0.2"}, "mlp": {}}},
     "hydra.sweeper.params.model.lenet: model.dropout is not a key of the config of model=lenet (model has: "
     "_target_, in_channels, image_size, num_classes)"),
    ({"optimizer.lr": {"sgd": {}}}, "hydra.sweeper.params.optimizer.lr holds one block per option, but "
                                    "optimizer.lr is not a config group (config groups: callbacks,"),
    ({"model": {"mlp": "model.dropout=0.1"}}, "hydra.sweeper.params.model.mlp: 'model.dropout=0.1' is not a block"),
])
def test_a_bad_conditional_block_is_refused_naming_it(kind, params, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate(kind, params)


def test_a_key_swept_in_a_block_and_on_its_own_is_refused():
    with pytest.raises(ConfigError, match=re.escape("model.dropout is swept in a block of hydra.sweeper.params.model")):
        validate("grid", GRID, ["model.dropout=0.1,0.2"])


# ---------------------------------------------------------------- a resumed sweep, scripted


def scripted_sweep(sweep_dir: Path, seed: int | None, optimizer: str = "NGOpt") -> None:
    from hydra.types import HydraContext

    with hydra_loader(["sweep=nevergrad", f"hydra.sweep.dir={sweep_dir}"]) as (loader, config):
        sweeper = StreamingSweeper(kind="nevergrad", optim=optim(optimizer, budget=8, seed=seed), params=SPACE)
        sweeper.hydra_context = HydraContext(config_loader=loader, callbacks=None)
        sweeper.config, sweeper.pool, sweeper.limit = config, ScriptedPool(), 2
        sweeper.sweep([])


def cut_after_asks(journal: Journal, asks: int) -> list[dict]:
    """The journal as a sweep stopped just before its `asks`+1-th ask left it; returns every ask of the whole."""
    events = journal.read()
    every_ask = [e for e in events if e["event"] == "ask"]
    journal.path.write_text("".join(json.dumps(e) + "\n" for e in events[:events.index(every_ask[asks])]))
    return every_ask


# NGOpt's later points depend on the order results are told, which a resume changes (the trial that was
# in flight ends after the new one): the replayed points and the next one match; RandomSearch's all do
@pytest.mark.parametrize("optimizer,same", [("NGOpt", 6), ("RandomSearch", 8)])
def test_a_resumed_conditional_sweep_asks_the_same_points(tmp_path, optimizer, same):
    scripted_sweep(tmp_path, seed=4, optimizer=optimizer)
    journal = Journal(tmp_path)
    whole = cut_after_asks(journal, 5)
    scripted_sweep(tmp_path, seed=4, optimizer=optimizer)
    resumed = [e for e in journal.read() if e["event"] == "ask"]
    assert len(resumed) == 8
    assert [e["overrides"] for e in resumed[:same]] == [e["overrides"] for e in whole[:same]]
    assert all(only_own_keys(e["overrides"]) for e in resumed)


def test_a_resume_with_another_seed_keeps_the_asked_points_from_the_journal_values(tmp_path):
    scripted_sweep(tmp_path, seed=4)
    journal = Journal(tmp_path)
    whole = cut_after_asks(journal, 5)
    scripted_sweep(tmp_path, seed=7)  # asks other points: the first five are rebuilt from their values
    resumed = [e for e in journal.read() if e["event"] == "ask"]
    assert [e["overrides"] for e in resumed[:5]] == [e["overrides"] for e in whole[:5]]
    assert len(resumed) == 8 and all(only_own_keys(e["overrides"]) for e in resumed)
    told = [e["number"] for e in journal.read() if e["event"] == "tell"]
    assert sorted(set(told)) == list(range(8))


# ---------------------------------------------------------------- the CLI

def assert_only_own_keys_reach_the_trials(sweep_dir: Path, count: int) -> None:
    folders = trials(sweep_dir)
    assert len(folders) == count
    for folder in folders:
        overrides = yaml.safe_load((folder / ".hydra" / "overrides.yaml").read_text())
        config = yaml.safe_load((folder / ".hydra" / "config.yaml").read_text())
        assert only_own_keys(overrides), overrides
        if "model.dropout" in keys_of(overrides):
            assert config["model"]["dropout"] == pytest.approx(float(keys_of(overrides)["model.dropout"]))
        if keys_of(overrides)["optimizer"] == "adam":
            assert "momentum" not in config["optimizer"]


@pytest.mark.e2e
def test_a_conditional_grid_runs_each_option_with_its_own_keys(run_cli, tmp_path):
    sweep_dir = tmp_path / "grid"
    done = run_cli("--multirun", "sweep=conditional_grid", *QUICK, f"hydra.sweep.dir={sweep_dir}")
    assert done.returncode == 0, done.stderr
    assert_only_own_keys_reach_the_trials(sweep_dir, 9)
    with (sweep_dir / "summary.csv").open() as f:
        assert len(f.read().splitlines()) == 10


@pytest.mark.e2e
def test_a_conditional_random_search_from_the_command_line(run_cli, tmp_path):
    sweep_dir = tmp_path / "random"
    # a block written on the command line merges into the preset's: mlp's dropout interval is replaced
    done = run_cli("--multirun", "sweep=conditional", "hydra.sweeper.optim.budget=4",
                   "hydra.sweeper.params.model={lenet:{},mlp:{model.dropout:'interval(0.1,0.2)'}}",
                   *QUICK, f"hydra.sweep.dir={sweep_dir}")
    assert done.returncode == 0, done.stderr
    assert_only_own_keys_reach_the_trials(sweep_dir, 4)
    dropouts = [float(keys_of(yaml.safe_load((p / ".hydra" / "overrides.yaml").read_text())).get("model.dropout", 0.15))
                for p in trials(sweep_dir)]
    assert all(0.1 <= d <= 0.2 for d in dropouts)


@pytest.mark.e2e
def test_a_missing_key_in_a_block_is_refused_before_any_trial(run_cli, tmp_path):
    sweep_dir = tmp_path / "bad"
    # `~` then `+`: the preset's model block replaced whole, not merged into
    done = run_cli("--multirun", "sweep=conditional", "~hydra.sweeper.params.model",
                   "+hydra.sweeper.params.model={lenet:{model.dropout:0.1},mlp:{}}", *QUICK,
                   f"hydra.sweep.dir={sweep_dir}")
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "model.dropout is not a key of the config of model=lenet" in done.stderr
    assert not trials(sweep_dir)


@pytest.mark.e2e
def test_a_conditional_sweep_killed_and_resumed_runs_the_same_trials(tmp_path):
    env = {**os.environ, "RUNNER_OUTPUT_DIR": str(tmp_path / "outputs")}
    base = [sys.executable, "-m", "runner", "--multirun", "sweep=conditional", "hydra.sweeper.optim.budget=4",
            "hydra.sweeper.optim.seed=2", "dataset=synthetic", "dataset.num_train=512", "trainer.max_epochs=2",
            "trainer.batch_size=16", "logger=none"]
    whole_dir, cut_dir = tmp_path / "whole", tmp_path / "cut"
    subprocess.run([*base, f"hydra.sweep.dir={whole_dir}"], cwd=REPO, env=env, check=True, capture_output=True,
                   timeout=300)
    kill_at_second_trial_checkpoint([*base, f"hydra.sweep.dir={cut_dir}"], cut_dir, env)
    finished = trials(cut_dir)[0] / "result.json"
    finished_before = finished.stat().st_mtime_ns
    subprocess.run([*base, f"hydra.sweep.dir={cut_dir}"], cwd=REPO, env=env, check=True, capture_output=True,
                   timeout=300)
    assert [p.name for p in trials(whole_dir)] == [p.name for p in trials(cut_dir)]
    assert finished.stat().st_mtime_ns == finished_before, "the trial finished before the kill was trained again"
    assert_only_own_keys_reach_the_trials(cut_dir, 4)
