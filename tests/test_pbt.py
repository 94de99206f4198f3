"""Population Based Training: exploit copies a donor's whole training state, explore stays in its
space, shape-changing mutations are refused, the shared records survive concurrent writers, a
donor's checkpoint is never read half-written, a killed PBT sweep resumes without deciding anything
twice, and a replay trains exactly the winning schedule.

Top-level imports stay free of torch: the concurrency test spawns processes that import this module.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from runner.errors import ConfigError
from runner.sweep.journal import Journal
from runner.config.pbt import Space, explore, parse_space
from runner.sweep.pbt.policy import POLICY_FILE, read_policy, schedule
from runner.sweep.pbt.records import GLOBAL_LOG, Population, checkpoint_name, quantile_count, read_records
from runner.files import write_bytes_atomic
from runner.results import read_metrics, read_result
from tests.conftest import REPO, kill_when
from tests.slurm_cluster import job_name, slurm_cluster  # noqa: F401  (fixtures)

# tiny deterministic trials: 8 steps an epoch on synthetic images
RUN = ["dataset=synthetic", "model=mlp", "optimizer=sgd", "trainer.batch_size=32", "logger=none",
       "trainer.deterministic=true", "trainer.test=false"]
# ... in a PBT sweep that decides after every epoch
BASE = [*RUN, "pbt=async", "pbt.perturbation_interval=1"]
# explore that changes nothing: the exploited trial must then train exactly as its donor does
IDENTITY = ["pbt.perturbation_factors=[1.0]", "pbt.resample_probability=0"]


def train_trial(compose_cfg, sweep_dir: Path, name: str, overrides: list[str]) -> float:
    from runner.run.train import RunContext, train

    return train(compose_cfg(overrides), RunContext(run_dir=sweep_dir / name, sweep_dir=sweep_dir))


def learning(row: dict) -> dict:
    """A metrics row without what measures speed rather than learning."""
    return {k: v for k, v in row.items() if k not in ("time_s", "train/samples_per_s")}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# --- explore ------------------------------------------------------------------------------------

def test_explore_perturbs_by_a_factor_and_clips_to_the_bounds():
    space = Space("optimizer.lr", low=1e-4, high=0.1, log=True)
    rng = random.Random(0)
    def seen(value: float) -> list[float]:
        return sorted({space.explore(value, rng, (0.8, 1.2), 0.0) for _ in range(50)})

    assert seen(0.05) == pytest.approx([0.04, 0.06])
    assert seen(0.09) == pytest.approx([0.072, 0.1])  # 0.108 clipped
    assert seen(1.1e-4) == pytest.approx([1e-4, 1.32e-4])  # 8.8e-5 clipped
    # resampling stays in the space, log-uniformly: about as many draws per decade
    draws = [space.explore(0.05, rng, (0.8, 1.2), 1.0) for _ in range(3000)]
    assert all(1e-4 <= d <= 0.1 for d in draws)
    decades = [sum(10.0 ** -k <= d < 10.0 ** (1 - k) for d in draws) for k in (4, 3, 2)]
    assert all(900 < count < 1100 for count in decades), decades


def test_explore_rounds_integers_half_up_and_never_leaves_them_stuck():
    batch = Space("trainer.batch_size", low=2, high=256, integer=True)
    rng = random.Random(0)
    assert batch.explore(47, rng, (0.8,), 0.0) == 38  # 37.6 rounds up; truncation would give 37
    assert batch.explore(32, rng, (1.2,), 0.0) == 38  # 38.4
    assert batch.explore(5, rng, (0.9,), 0.0) == 4  # 4.5 would round back to 5: one step down instead
    assert batch.explore(2, rng, (1.2,), 0.0) == 3  # 2.4 would round back to 2: one step up instead
    assert batch.explore(3, rng, (0.8,), 0.0) == 2  # 2.4 -> 2
    assert batch.explore(2, rng, (0.8,), 0.0) == 2  # 1.6 rounds to 2, one step down is below the bound
    assert batch.explore(250, rng, (1.2,), 0.0) == 256
    values = {batch.explore(64, rng, (0.8, 1.2), 1.0) for _ in range(500)}
    assert all(isinstance(v, int) and 2 <= v <= 256 for v in values) and len(values) > 100


def test_explore_moves_a_choice_to_a_neighbour_or_resamples():
    sizes = Space("trainer.batch_size", choices=(16, 32, 64, 128))
    rng = random.Random(0)
    assert {sizes.explore(32, rng, (0.8, 1.2), 0.0) for _ in range(50)} == {16, 64}
    assert {sizes.explore(16, rng, (0.8, 1.2), 0.0) for _ in range(20)} == {32}  # the one neighbour
    assert {sizes.explore(128, rng, (0.8, 1.2), 0.0) for _ in range(20)} == {64}
    assert {sizes.explore(32, rng, (0.8, 1.2), 1.0) for _ in range(200)} == {16, 32, 64, 128}
    assert {sizes.explore(48, rng, (0.8, 1.2), 0.0) for _ in range(200)} == {16, 32, 64, 128}  # not in the space


def test_explore_is_the_same_for_the_same_random_state():
    spaces = {"optimizer.lr": Space("optimizer.lr", 1e-4, 1.0, log=True),
              "trainer.batch_size": Space("trainer.batch_size", choices=(16, 32, 64))}
    values = {"optimizer.lr": 0.01, "trainer.batch_size": 32}
    first = explore(values, spaces, random.Random(7), (0.8, 1.2), 0.25)
    assert explore(values, spaces, random.Random(7), (0.8, 1.2), 0.25) == first
    assert list(first) == ["optimizer.lr", "trainer.batch_size"]


@pytest.mark.parametrize(("spec", "current", "expected"), [
    ("tag(log, interval(1e-4, 1e-1))", 0.01, Space("k", low=1e-4, high=0.1, log=True)),
    ("interval(0.5, 0.99)", 0.9, Space("k", low=0.5, high=0.99)),
    ("interval(16, 256)", 64, Space("k", low=16, high=256, integer=True)),  # the config's value is an int
    ("choice(32, 64, 128)", 64, Space("k", choices=(32, 64, 128))),
    ("32,64,128", 64, Space("k", choices=(32, 64, 128))),
    ("range(1, 4)", 1, Space("k", choices=(1, 2, 3))),
    ([0.0, 0.1], 0.0, Space("k", choices=(0.0, 0.1))),
])
def test_mutation_spaces_in_hydra_override_syntax(spec, current, expected):
    assert parse_space("k", spec, current) == expected


@pytest.mark.parametrize(("spec", "message"), [
    ("0.1", "a fixed value, not a space"),
    ("interval(0.1, 0.01)", "lower bound must be below"),
    ("tag(log, interval(0, 1))", "log scale needs bounds > 0"),
    ("intervl(1, 2)", "not in Hydra's override syntax"),
])
def test_a_bad_space_is_refused_by_name(spec, message):
    with pytest.raises(ConfigError, match=message) as error:
        parse_space("optimizer.lr", spec, 0.01)
    assert "pbt.mutations.optimizer.lr=" in str(error.value)


def test_trial_folders_of_a_sweep_with_long_overrides_stay_within_the_filesystems_limit():
    from runner.resolvers import MAX_FOLDER_NAME_BYTES, folder_name

    mutation = 'pbt.mutations.optimizer.lr="tag(log,interval(0.0001,1))"'
    long = ",".join([f"optimizer.lr={0.015676677195506063 + i}" for i in range(2)] + [mutation] * 4)
    other = long.replace("0.0156", "0.0157")
    assert len(long) > 255
    assert len(folder_name(long).encode()) == MAX_FOLDER_NAME_BYTES
    assert folder_name(long).startswith(long[:150]) and folder_name(long) != folder_name(other)
    assert folder_name("objective.metric=val/f1") == "objective.metric=val_f1"


# --- what may be mutated ------------------------------------------------------------------------

@pytest.mark.parametrize(("override", "message"), [
    ('+pbt.mutations.model.dropout="interval(0, 0.5)"', "model.dropout would change the model"),
    ('+pbt.mutations.dataset.noise="interval(0, 1)"', "dataset.noise would change the data"),
    ('+pbt.mutations.task.num_outputs="choice(5, 10)"', "task.num_outputs would change the task"),
    ('+pbt.mutations.scheduler.interval="choice(epoch, step)"', "cannot change while a run trains"),
    ('+pbt.mutations.trainer.max_epochs="interval(2, 5)"', "cannot change while a run trains"),
    ('+pbt.mutations.optimizer.momentum="interval(0.5, 0.99)"', r"optimizer.momentum is not in the config "
                                                                r"\(torch.optim.Adam has: lr, betas"),
    ('+pbt.mutations.optimizer.betas="interval(0.5, 0.99)"', "betas is a list of values"),
    ("~pbt.mutations.optimizer.lr", "pbt.mutations is empty"),
    ("pruner=asha", "pbt and a pruner cannot be combined"),
    ("trainer.eval_every_n_epochs=3", "perturbation_interval=2 must be a multiple of trainer.eval_every_n_epochs=3"),
    ("pbt.quantile_fraction=0.75", r"pbt.quantile_fraction=0.75 must be a number in \(0, 0.5\]"),
    ("pbt.perturbation_factors=[]", "pbt.perturbation_factors=.* must be a list of numbers > 0"),
    ("trainer.max_epochs=2", "the first perturbation point would be epoch 2, not before the last epoch"),
    ("pbt.burn_in=9", "the first perturbation point would be epoch 10"),
])
def test_mutations_and_settings_that_cannot_work_are_refused_before_training(compose_cfg, override, message):
    from runner.config import validate

    cfg = compose_cfg(["pbt=async", "optimizer=adam", override])
    with pytest.raises(ConfigError, match=message):
        validate(cfg)


def test_batch_size_cannot_be_mutated_under_a_scheduler_counted_in_batches(compose_cfg):
    from runner.config import validate

    cfg = compose_cfg(["pbt=async", "scheduler=onecycle", '+pbt.mutations.trainer.batch_size="choice(32, 64)"'])
    with pytest.raises(ConfigError, match="trainer.batch_size cannot change with a scheduler stepped every batch"):
        validate(cfg)


@pytest.mark.e2e
def test_a_sweep_mutating_the_model_is_refused_before_any_trial(run_cli, tmp_path):
    sweep_dir = tmp_path / "refused"
    done = run_cli("-m", *BASE, "optimizer.lr=0.1,0.01", '+pbt.mutations.model.dropout="interval(0,0.5)"',
                   f"hydra.sweep.dir={sweep_dir}")
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "model.dropout would change the model" in done.stderr
    assert not [p for p in sweep_dir.iterdir() if p.is_dir()]


def test_new_values_reach_the_live_optimizer_data_path_and_loss(compose_cfg, tmp_path):
    from runner.run.callbacks import build_callbacks, ResultRecord
    from runner.config import typed_trainer
    from runner.run.fit import Fit
    from runner.sweep.pbt.live_values import apply_values, current_values
    from runner.run.train import RunContext

    cfg = compose_cfg([*BASE, "scheduler=step", "scheduler.fn.step_size=1", "scheduler.fn.gamma=0.5",
                       "trainer.max_epochs=3"])
    trainer = typed_trainer(cfg)
    record = ResultRecord(cfg, RunContext(run_dir=tmp_path))
    fit = Fit(cfg, trainer, tmp_path, build_callbacks(cfg, trainer, record, None, None))
    keys = ["optimizer.lr", "optimizer.momentum", "trainer.batch_size", "trainer.gradient_clip_val",
            "loss.criterion.label_smoothing"]
    live = current_values(fit.cfg, keys)
    assert live == {"optimizer.lr": 0.05, "optimizer.momentum": 0.9, "trainer.batch_size": 32,
                    "trainer.gradient_clip_val": None, "loss.criterion.label_smoothing": 0.0}
    fit.optimizer.step()  # (no gradients: changes nothing, keeps the scheduler's order of calls)
    fit.scheduler.step()  # the rate is halved by the schedule: 0.025
    new = {"optimizer.lr": 0.1, "optimizer.momentum": 0.5, "trainer.batch_size": 64, "trainer.gradient_clip_val": 1.0,
           "loss.criterion.label_smoothing": 0.1}
    apply_values(fit, new, live)
    group = fit.optimizer.param_groups[0]
    # with a scheduler, optimizer.lr is the schedule's base: doubled, so the current rate doubles too
    assert group["lr"] == pytest.approx(0.05) and fit.scheduler.base_lrs == [pytest.approx(0.1)]
    assert group["momentum"] == 0.5
    assert (fit.trainer.batch_size, fit.steps_per_epoch) == (64, 4)  # 256 samples
    assert fit.trainer.gradient_clip_val == 1.0 and fit.task.criterion.label_smoothing == 0.1
    assert current_values(fit.cfg, keys) == new  # the effective config, stored in every checkpoint
    fit.scheduler.step()
    assert group["lr"] == pytest.approx(0.025)  # the schedule goes on from the new base


# --- the shared records ---------------------------------------------------------------------------

def population(sweep_dir: Path, trial: str, fraction: float = 0.25, goal: str = "maximize") -> Population:
    return Population(sweep_dir, trial, goal, "population", fraction, seed=0)


def record(sweep_dir: Path, trial: str, epoch: int, value: float, fraction: float = 0.25, goal: str = "maximize",
           publish: bool = True) -> dict:
    """What a trial does at a perturbation point: its checkpoint written whole, then its record."""
    checkpoint = sweep_dir / trial / "checkpoints" / checkpoint_name(epoch)
    if publish:
        write_bytes_atomic(checkpoint, f"{trial} at {epoch}".encode())
    return population(sweep_dir, trial, fraction, goal).record(
        epoch=epoch, attempt="a", value=value, values={"optimizer.lr": value if math.isfinite(value) else 0.0},
        checkpoint=checkpoint,
        choose_new=lambda values, rng: {"optimizer.lr": values["optimizer.lr"] * 2})


def test_quantile_counts_as_ray_tune_does():
    assert [quantile_count(n, 0.25) for n in range(1, 10)] == [0, 1, 1, 1, 2, 2, 2, 2, 3]
    assert [quantile_count(n, 0.5) for n in range(1, 6)] == [0, 1, 1, 2, 2]
    assert quantile_count(25, 0.28) == 7  # 25 * 0.28 is 7.000000000000001 in floats: not rounded up to 8


@pytest.mark.parametrize("goal", ["maximize", "minimize"])
def test_the_bottom_quantile_copies_from_the_top_at_the_same_epoch(tmp_path, goal):
    sign = 1 if goal == "maximize" else -1
    assert record(tmp_path, "first", 2, sign * 0.5, goal=goal)["reason"].startswith("1 trial(s) recorded epoch 2")
    worse = record(tmp_path, "worse", 2, sign * 0.1, goal=goal)  # 2 records: the bottom 1 copies the top 1
    assert (worse["decision"], worse["donor"], worse["donor_value"]) == ("exploit", "first", sign * 0.5)
    assert worse["copied"] == {"optimizer.lr": sign * 0.5} and worse["new"] == {"optimizer.lr": sign * 1.0}
    link = tmp_path / worse["donor_checkpoint"]
    assert link == tmp_path / "worse" / "checkpoints" / "pbt_donor_epoch_0002.pt"
    assert os.path.samefile(link, tmp_path / "first" / "checkpoints" / checkpoint_name(2))
    # a better trial, and a trial at another epoch (compared with nobody)
    assert record(tmp_path, "better", 2, sign * 0.9, goal=goal)["decision"] == "continue"
    assert record(tmp_path, "later", 4, sign * 0.0, goal=goal)["decision"] == "continue"
    ties = [record(tmp_path, f"tie{i}", 6, 0.5, goal=goal)["decision"] for i in range(4)]
    assert ties == ["continue"] * 4
    nan = record(tmp_path, "nan", 6, math.nan, goal=goal)
    assert nan["decision"] == "exploit" and nan["value"] is None  # the worst value, written as null
    lines = read_jsonl(tmp_path / GLOBAL_LOG)
    assert [(r["trial"], r["epoch"]) for r in lines] == [
        ("first", 2), ("worse", 2), ("better", 2), ("later", 4), *((f"tie{i}", 6) for i in range(4)), ("nan", 6)]


def test_a_recorded_decision_is_returned_not_taken_again(tmp_path):
    record(tmp_path, "good", 2, 0.9)
    first = record(tmp_path, "bad", 2, 0.1)
    assert first["decision"] == "exploit"
    record(tmp_path, "best", 2, 0.99)
    again = record(tmp_path, "bad", 2, 0.95)  # a resumed attempt reaching the point again
    assert again == first
    assert len(read_jsonl(tmp_path / GLOBAL_LOG)) == 3
    assert population(tmp_path, "bad").recorded(2, "a") == first
    assert population(tmp_path, "bad").recorded(2, "another attempt") is None


def test_a_donor_whose_checkpoint_is_gone_is_skipped(tmp_path):
    record(tmp_path, "gone", 2, 0.9)
    (tmp_path / "gone" / "checkpoints" / checkpoint_name(2)).unlink()  # say, moved to archive/
    decision = record(tmp_path, "bad", 2, 0.1)
    assert decision["decision"] == "continue" and "no usable donor: the checkpoints of gone are gone" in decision["reason"]


def record_many(sweep_dir: str, trial: str, number: int, epochs: int, barrier) -> None:
    sweep_dir = Path(sweep_dir)
    barrier.wait()
    for epoch in range(1, epochs + 1):
        # distinct values at every epoch, in another order each time
        record(sweep_dir, trial, epoch, ((number * 7 + epoch * 3) % 8) / 8)


@pytest.mark.timeout(120)
def test_eight_processes_reaching_perturbation_points_at_once_lose_no_record(tmp_path):
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(8)
    workers = [context.Process(target=record_many, args=(str(tmp_path), f"t{i}", i, 25, barrier)) for i in range(8)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert [worker.exitcode for worker in workers] == [0] * 8
    lines = read_jsonl(tmp_path / GLOBAL_LOG)  # every line whole
    assert sorted((r["trial"], r["epoch"]) for r in lines) == sorted(
        (f"t{i}", epoch) for i in range(8) for epoch in range(1, 26))
    # each decision is the rule applied to the records written before it, whatever the order was
    check_rule(tmp_path, lines, 0.25)
    assert sum(r["decision"] == "exploit" for r in lines) > 25


# --- real trials ----------------------------------------------------------------------------------

def test_exploit_copies_the_donors_weights_and_optimizer_state(compose_cfg, tmp_path):
    import torch

    overrides = [*BASE, *IDENTITY, "trainer.max_epochs=3", "pbt.quantile_fraction=0.5"]
    train_trial(compose_cfg, tmp_path, "0_good", [*overrides, "optimizer.lr=0.05"])
    train_trial(compose_cfg, tmp_path, "1_bad", [*overrides, "optimizer.lr=1e-7"])
    good, bad = tmp_path / "0_good", tmp_path / "1_bad"
    exploit = read_jsonl(bad / POLICY_FILE)[-1]
    assert (exploit["event"], exploit["epoch"], exploit["donor"]) == ("exploit", 1, "0_good")
    assert exploit["old"] == {"optimizer.lr": 1e-7} and exploit["new"] == {"optimizer.lr": 0.05}
    # from the copy on, the exploited trial trains exactly as its donor did: the weights, the
    # momentum buffers and the step count were copied, and explore kept the donor's rate
    good_rows, bad_rows = read_metrics(good), read_metrics(bad)
    assert bad_rows[0]["val/acc"] < good_rows[0]["val/acc"]
    assert [learning(r) for r in bad_rows[1:]] == [learning(r) for r in good_rows[1:]]
    last = {p: torch.load(p / "checkpoints" / "last.pt", weights_only=True) for p in (good, bad)}
    assert equal(last[good]["model"], last[bad]["model"])
    assert equal(last[good]["optimizer"], last[bad]["optimizer"])  # momentum buffers and rate
    # its own record keeps its own history and best: the first epoch it trained itself
    assert bad_rows[0]["lr"] == 1e-7 and read_result(bad)["objective"]["value"] == read_result(good)["objective"]["value"]
    # the effective config, in the checkpoint, holds the new rate; the composed one the first
    assert yaml.safe_load(last[bad]["config"])["optimizer"]["lr"] == 0.05
    assert yaml.safe_load((bad / ".hydra" / "config.yaml").read_text())["optimizer"]["lr"] == 1e-7


def test_best_pt_keeps_the_trials_own_best_not_the_weights_an_exploit_brought(compose_cfg, tmp_path):
    import torch

    # explore sends the rate where the loss blows up at once: the exploited trial's best stays its
    # own first epoch, evaluated before its weights were replaced
    overrides = [*BASE, "trainer.max_epochs=3", "pbt.quantile_fraction=0.5", "pbt.resample_probability=1",
                 'pbt.mutations.optimizer.lr="interval(1000, 2000)"', "trainer.log_every_n_steps=1"]
    train_trial(compose_cfg, tmp_path, "0_good", [*overrides, "optimizer.lr=0.05"])
    train_trial(compose_cfg, tmp_path, "1_bad", [*overrides, "optimizer.lr=1e-7"])
    bad, good = tmp_path / "1_bad", tmp_path / "0_good"
    result = read_result(bad)
    assert result["status"] == "failed" and "loss became" in result["reason"]
    assert result["objective"]["epoch"] == 1

    def model(path: Path) -> dict:
        return torch.load(path, weights_only=True)["model"]

    best = model(bad / "checkpoints" / "best.pt")
    assert equal(best, model(bad / "checkpoints" / checkpoint_name(1)))
    assert not equal(best, model(good / "checkpoints" / checkpoint_name(1)))


def test_a_trial_resumed_before_its_recorded_decision_applies_it_again(compose_cfg, tmp_path, caplog):
    overrides = [*BASE, "trainer.max_epochs=3", "pbt.quantile_fraction=0.5", "pbt.burn_in=2",
                 "callbacks=epoch_checkpoints", "callbacks.epoch_checkpoints.every_n_epochs=1"]
    train_trial(compose_cfg, tmp_path, "0_good", [*overrides, "optimizer.lr=0.05"])
    train_trial(compose_cfg, tmp_path, "1_bad", [*overrides, "optimizer.lr=1e-6"])
    bad = tmp_path / "1_bad"
    shared = (tmp_path / GLOBAL_LOG).read_text()
    assert [(r["trial"], r["epoch"], r["decision"]) for r in read_jsonl(tmp_path / GLOBAL_LOG)] == [
        ("0_good", 2, "continue"), ("1_bad", 2, "exploit")]
    metrics, policy = read_metrics(bad), (bad / POLICY_FILE).read_text()
    # killed after recording its decision at epoch 2, before writing last.pt there: the run folder
    # holds last.pt of epoch 1 and says running
    os.replace(bad / "checkpoints" / "epoch_0001.pt", bad / "checkpoints" / "last.pt")
    result = read_result(bad)
    (bad / "result.json").write_text(json.dumps({**result, "status": "running"}))

    caplog.set_level(logging.INFO, logger="runner.sweep.pbt")
    train_trial(compose_cfg, tmp_path, "1_bad", [*overrides, "optimizer.lr=1e-6"])
    assert "PBT epoch 2: decided before (exploit), applying that decision" in caplog.text
    assert (tmp_path / GLOBAL_LOG).read_text() == shared
    assert [learning(r) for r in read_metrics(bad)] == [learning(r) for r in metrics]
    assert (bad / POLICY_FILE).read_text() == policy


def equal(a, b) -> bool:
    """Tensors bit for bit, containers item by item."""
    import torch

    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(equal(x, y) for x, y in zip(a, b))
    return a == b


@pytest.fixture(scope="module")
def pbt_sweep(tmp_path_factory) -> Path:
    """Four trials of a PBT sweep, one after another as a local sweep runs them: rates and batch
    sizes mutated, a decision after every epoch."""
    from tests.conftest import compose_config

    sweep_dir = tmp_path_factory.mktemp("pbt_sweep")
    mutations = ['pbt.mutations.optimizer.lr="tag(log, interval(1e-6, 0.2))"',
                 '+pbt.mutations.trainer.batch_size="interval(16, 64)"']
    overrides = [*BASE, *mutations, "trainer.max_epochs=4", "pbt.quantile_fraction=0.5"]
    for number, lr in enumerate([0.05, 1e-6, 0.01, 3e-6]):
        train_trial(compose_config, sweep_dir, f"{number}_lr={lr}", [*overrides, f"optimizer.lr={lr}"])
    return sweep_dir


def test_every_perturbation_point_is_recorded_and_lineages_are_policies(pbt_sweep):
    records = read_records(pbt_sweep)
    assert sorted((r["trial"].split("_")[0], r["epoch"]) for r in records) == [
        (str(n), e) for n in range(4) for e in (1, 2, 3)]
    exploits = [r for r in records if r["decision"] == "exploit"]
    assert exploits and all(r["trial"] != "0_lr=0.05" for r in exploits)  # the first trial had no one to copy
    for line in exploits:
        trial = pbt_sweep / line["trial"]
        policy = read_policy(trial)
        entries = {e["epoch"]: e for e in policy[1:] if e["trial"] == line["trial"]}
        assert entries[line["epoch"]]["new"] == line["new"] and entries[line["epoch"]]["donor"] == line["donor"]
        assert isinstance(line["new"]["trainer.batch_size"], int) and 16 <= line["new"]["trainer.batch_size"] <= 64
        assert 1e-6 <= line["new"]["optimizer.lr"] <= 0.2


def stitched_lineage(sweep_dir: Path, policy: list[dict]) -> list[dict]:
    """The metrics of a lineage: each part from the trial that trained it."""
    rows = []
    for segment in schedule(policy):
        last = segment.last or 10**9
        rows += [r for r in read_metrics(sweep_dir / segment.trial) if segment.first <= r["epoch"] <= last]
    return rows


def test_a_replay_trains_exactly_the_schedule(compose_cfg, pbt_sweep, tmp_path):
    from runner.run.train import RunContext, train

    best = max((p for p in pbt_sweep.iterdir() if (p / POLICY_FILE).exists()),
               key=lambda p: len(read_policy(p)))  # the longest lineage
    policy = read_policy(best)
    assert len(policy) >= 2
    overrides = [*RUN, "trainer.max_epochs=4", "optimizer.lr=0.123", "pbt=replay", f'pbt.policy="{best}"']
    train(compose_cfg(overrides), RunContext(run_dir=tmp_path / "replay"))
    replayed = read_metrics(tmp_path / "replay")
    assert [learning(r) for r in replayed] == [learning(r) for r in stitched_lineage(pbt_sweep, policy)]
    segments = schedule(policy)
    for row in replayed:
        values = next(s.values for s in segments if s.first <= row["epoch"] <= (s.last or 10**9))
        assert row["lr"] == pytest.approx(values["optimizer.lr"])


def test_a_replay_with_another_experiment_is_refused_by_key(compose_cfg, pbt_sweep):
    from runner.sweep.pbt.replay import Replay

    trial = next(p for p in pbt_sweep.iterdir() if (p / POLICY_FILE).exists())
    cfg = compose_cfg(["dataset=synthetic", "model=lenet", "optimizer=sgd", "trainer.max_epochs=4", "pbt=replay"])
    with pytest.raises(ConfigError) as error:
        Replay(cfg=cfg, policy=str(trial))
    message = str(error.value)
    assert "model._target_: 'components.models.MLP' in the schedule, 'components.models.LeNet5' now" in message
    assert "optimizer.lr" in message and "trainer.batch_size" in message  # the keys the schedule sets
    with pytest.raises(ConfigError, match="no such file"):
        Replay(cfg=cfg, policy=str(pbt_sweep / "nowhere"))


def test_the_report_shows_the_best_trials_schedule_ancestry_and_replay(pbt_sweep):
    from runner.report import format_table, report

    sweep = report(pbt_sweep)
    text = format_table(sweep)
    policy = read_policy(sweep.best.path)
    exploits = sum(r["decision"] == "exploit" for r in read_records(pbt_sweep))
    assert f"PBT: 12 perturbation points recorded, {exploits} exploits" in text
    assert f"Schedule of the best trial #{sweep.best.number}" in text
    assert "Ancestry: #" + policy[0]["trial"].split("_")[0] in text
    best = yaml.safe_load((pbt_sweep / "best.yaml").read_text())
    assert [s["trained_by"] for s in best["pbt"]["schedule"]] == [s.trial for s in schedule(policy)]
    assert best["pbt"]["replay"].endswith(f"pbt=replay 'pbt.policy=\"{sweep.best.path / POLICY_FILE}\"'")
    # reproduced to the digit only with one intra-op thread
    assert best["pbt"]["replay"].startswith("OMP_NUM_THREADS=1 ")
    assert f"Replay: {best['pbt']['replay']}" in text
    assert (pbt_sweep / "report.png").stat().st_size > 0


@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_a_donor_checkpoint_being_written_is_never_read(tmp_path):
    """A trial is frozen (SIGSTOP) while it writes its checkpoint at a perturbation point: until the
    file is whole and renamed into place, no record names it, so no other trial can copy it."""
    import torch

    from runner.run import checkpoint as checkpoints

    sweep_dir = tmp_path / "sweep"
    command = [sys.executable, "-m", "runner", "-m", *BASE, "model.hidden_sizes=[1024,1024]", "trainer.max_epochs=5",
               "optimizer.lr=0.01", f"hydra.sweep.dir={sweep_dir}"]
    env = {**os.environ, "RUNNER_OUTPUT_DIR": str(tmp_path / "outputs")}
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        writing = None
        deadline = time.monotonic() + 90
        while writing is None and process.poll() is None and time.monotonic() < deadline:
            # from epoch 2 on: the population then has a record to show who it is
            partial = [p for p in sweep_dir.glob("0_*/checkpoints/.pbt_epoch_*.tmp") if epoch_of(p) >= 2]
            if partial:
                os.kill(process.pid, signal.SIGSTOP)
                if partial[0].exists():
                    writing = partial[0]
                else:  # renamed between the look and the stop
                    os.kill(process.pid, signal.SIGCONT)
        assert writing is not None, "never caught the trial writing a perturbation checkpoint"
        epoch = epoch_of(writing)
        trial = writing.parent.parent
        assert not (trial / "checkpoints" / checkpoint_name(epoch)).exists()
        assert [r["epoch"] for r in read_records(sweep_dir)] == list(range(1, epoch))
        # another trial of the population at that epoch finds nothing to copy
        digest = read_records(sweep_dir)[0]["population"]
        late = Population(sweep_dir, "late", "maximize", digest, 0.5, 0).record(
            epoch=epoch, attempt="a", value=0.0, values={}, checkpoint=sweep_dir / "late.pt",
            choose_new=lambda values, rng: values)
        assert late["decision"] == "continue" and late["reason"].startswith("1 trial(s)")
        os.kill(process.pid, signal.SIGCONT)
        assert process.wait(timeout=90) == 0
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGCONT)
            process.kill()
    # once whole and recorded, the checkpoint is what a later trial copies
    later = Population(sweep_dir, "later", "maximize", digest, 0.5, 0).record(
        epoch=epoch, attempt="a", value=-1.0, values={}, checkpoint=sweep_dir / "later.pt",
        choose_new=lambda values, rng: values)
    assert later["decision"] == "exploit" and later["donor"] == trial.name
    state = checkpoints.load(sweep_dir / later["donor_checkpoint"])
    assert state["progress"]["epoch"] == epoch and isinstance(state["model"]["net.1.weight"], torch.Tensor)


def epoch_of(partial: Path) -> int:
    """The epoch of a checkpoint being written: `.pbt_epoch_0003.pt.<random>.tmp`."""
    return int(partial.name.split("_")[2].split(".")[0])


def sweep_command(sweep_dir: Path) -> list[str]:
    return [sys.executable, "-m", "runner", "-m", *BASE, "trainer.max_epochs=4", "pbt.quantile_fraction=0.5",
            "optimizer.lr=0.05,0.000001,0.01", f"hydra.sweep.dir={sweep_dir}"]


def decisions(sweep_dir: Path) -> list[dict]:
    """The global log without what differs from one attempt to the next (times, attempt ids)."""
    return [{k: v for k, v in r.items() if k not in ("time", "attempt")} for r in read_jsonl(sweep_dir / GLOBAL_LOG)]


@pytest.mark.e2e
@pytest.mark.timeout(400)
def test_a_killed_pbt_sweep_resumes_and_decides_nothing_twice(tmp_path):
    env = {**os.environ, "RUNNER_OUTPUT_DIR": str(tmp_path / "outputs")}
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    subprocess.run(sweep_command(whole), cwd=REPO, env=env, check=True, capture_output=True, timeout=300)

    def second_trial_decided() -> bool:
        return sum(r["trial"].startswith("1_") for r in read_records(cut)) >= 2

    process = subprocess.Popen(sweep_command(cut), cwd=REPO, env=env, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_when(process, second_trial_decided)
    before = decisions(cut)
    subprocess.run(sweep_command(cut), cwd=REPO, env=env, check=True, capture_output=True, timeout=300)
    after = decisions(cut)
    assert after[:len(before)] == before  # nothing recorded before the kill was decided again
    assert after == decisions(whole)  # and the sweep ends as one that was never killed
    for trial in sorted(p for p in cut.iterdir() if (p / POLICY_FILE).exists()):
        twin = whole / trial.name
        assert read_result(trial)["status"] == "completed"
        assert [learning(r) for r in read_metrics(trial)] == [learning(r) for r in read_metrics(twin)]
        assert [{k: v for k, v in e.items() if k != "attempt"} for e in read_jsonl(trial / POLICY_FILE)] == \
            [{k: v for k, v in e.items() if k != "attempt"} for e in read_jsonl(twin / POLICY_FILE)]


def check_rule(sweep_dir: Path, lines: list[dict], fraction: float) -> None:
    """Each record once, its decision the rule applied to the records of its epoch written before it,
    an exploit's donor from the top quantile, the donor's checkpoint linked into the trial's folder."""
    assert len({(r["trial"], r["epoch"]) for r in lines}) == len(lines)
    for index, line in enumerate(lines):
        earlier = [r for r in lines[:index] if r["epoch"] == line["epoch"]]
        score = (lambda r: -math.inf if r["value"] is None else r["value"])
        k = quantile_count(len(earlier) + 1, fraction)
        better = [r for r in earlier if score(r) > score(line)]
        if k and len(better) >= len(earlier) + 1 - k:
            top = sorted(earlier, key=score, reverse=True)[:k]
            assert line["decision"] == "exploit" and line["donor"] in {r["trial"] for r in top}
            assert os.path.samefile(sweep_dir / line["donor_checkpoint"],
                                    sweep_dir / next(r["checkpoint"] for r in top if r["trial"] == line["donor"]))
        else:
            assert line["decision"] == "continue"


def check_decisions(sweep_dir: Path, fraction: float) -> list[dict]:
    """The global log of a real sweep follows the rule, and each exploit is in the trial's policy
    unless a later exploit of the trial replaced its lineage."""
    lines = read_jsonl(sweep_dir / GLOBAL_LOG)
    check_rule(sweep_dir, lines, fraction)
    for line in (r for r in lines if r["decision"] == "exploit"):
        policy = read_policy(sweep_dir / line["trial"])
        assert any(e["epoch"] == line["epoch"] and e["trial"] == line["trial"] for e in policy[1:]) or any(
            r["trial"] == line["trial"] and r["epoch"] > line["epoch"] and r["decision"] == "exploit" for r in lines)
    return lines


def check_four_trials_decided_at_epochs_1_and_2(done, sweep_dir: Path) -> None:
    """The 4-trial sweep of 3 epochs (perturbation points after epochs 1 and 2) completed, and every
    trial recorded one decision at each point, by the rule (quantile fraction 0.5)."""
    assert done.returncode == 0, done.stderr
    trials = sorted(p for p in sweep_dir.iterdir() if (p / POLICY_FILE).exists())
    assert len(trials) == 4 and all(read_result(t)["status"] == "completed" for t in trials)
    lines = check_decisions(sweep_dir, 0.5)
    assert sorted((r["trial"], r["epoch"]) for r in lines) == sorted((t.name, e) for t in trials for e in (1, 2))

@pytest.mark.e2e
@pytest.mark.timeout(400)
def test_a_pbt_sweep_under_the_parallel_launcher(run_cli, tmp_path):
    cores = len(os.sched_getaffinity(0))
    sweep_dir = tmp_path / "parallel"
    done = run_cli("-m", "hydra/launcher=parallel", f"hydra.launcher.cpus_per_task={max(1, cores // 2)}", *BASE,
                   "trainer.max_epochs=3", "pbt.quantile_fraction=0.5", "optimizer.lr=0.05,0.01,0.000001,0.0000001",
                   f"hydra.sweep.dir={sweep_dir}", timeout=380)
    check_four_trials_decided_at_epochs_1_and_2(done, sweep_dir)
    assert "PBT: 8 perturbation points recorded" in done.stdout + done.stderr


@pytest.mark.slurm
@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_a_pbt_sweep_on_slurm(job_name, run_cli, tmp_path):
    sweep_dir = tmp_path / "slurm"
    done = run_cli("-m", "hydra/launcher=slurm", f"hydra.launcher.name={job_name}", *BASE, "trainer.max_epochs=3",
                   "pbt.quantile_fraction=0.5", "optimizer.lr=0.05,0.01,0.000001,0.0000001",
                   f"hydra.sweep.dir={sweep_dir}", timeout=280)
    check_four_trials_decided_at_epochs_1_and_2(done, sweep_dir)
    # each trial ran as a SLURM job of its own
    jobs = {e["number"]: e["job_id"] for e in Journal(sweep_dir).read() if e["event"] == "job"}
    assert sorted(jobs) == [0, 1, 2, 3] and len(set(jobs.values())) == 4
