"""Repeated sweeps (hydra.sweeper.repeats): each configuration with the same seeds, the optimizer told
the mean, the report's verdict on whether the best configuration is clearly best, bad input refused,
and a killed repeated sweep resumed."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys

import pytest
import yaml

from runner.report.groups import rank_groups
from runner.report.ranking import load_sweep
from runner.results import read_result
from runner.sweep.repeats import mean_loss
from tests.conftest import REPO, kill_at_second_trial_checkpoint, trials
from tests.test_sweeps import QUICK, count_trainings, summary

DIGITS = ["experiment=digits", "model=mlp", "trainer.max_epochs=2", "logger=none", "trainer.test=false",
          "trainer.deterministic=true"]


def test_mean_loss_is_elementwise_and_a_failed_member_fails_the_configuration():
    assert mean_loss([1.0, 2.0, 6.0]) == pytest.approx(3.0)
    assert mean_loss([[1.0, 10.0], [3.0, 20.0]]) == pytest.approx([2.0, 15.0])
    assert mean_loss([1.0, math.inf]) == math.inf
    assert mean_loss([[1.0, 2.0], [math.inf, 2.0]]) == [math.inf, math.inf]


@pytest.mark.e2e
def test_report_names_a_winner_only_when_seed_noise_does_not_hide_it(run_cli, tmp_path):
    sweep_dir = tmp_path / "lr"
    done = run_cli("--multirun", "optimizer.lr=0.003,0.0031,0.00001", "hydra.sweeper.repeats=3", *DIGITS,
                   f"hydra.sweep.dir={sweep_dir}", timeout=600)
    assert done.returncode == 0, done.stderr
    folders = trials(sweep_dir)
    assert len(folders) == 9
    # the same seeds for every configuration, in order
    assert [read_result(f)["overrides"][-1] for f in folders] == [f"trainer.seed={s}" for s in (0, 1, 2)] * 3

    ranking = rank_groups(load_sweep(sweep_dir))
    def lr(group):
        return next(o for o in group.overrides if o.startswith("optimizer.lr="))

    near = {lr(g) for g in ranking.groups[:2]}
    assert near == {"optimizer.lr=0.003", "optimizer.lr=0.0031"}
    assert not ranking.clear_winner and ranking.verdict == "no clear winner: #1 and #2 overlap"
    assert "no clear winner: #1 and #2 overlap" in done.stdout
    best = yaml.safe_load((sweep_dir / "best.yaml").read_text())["group"]
    assert best["clear_winner"] is False and len(best["trials"]) == 3
    assert best["interval"][0] < best["mean"] < best["interval"][1]
    rows = summary(sweep_dir)
    assert {r["group_trials"] for r in rows} == {"0 1 2", "3 4 5", "6 7 8"}

    # without the near twin, 0.003 is clearly better than 0.00001 (which barely learns in 2 epochs)
    clear_dir = tmp_path / "clear"
    shutil.copytree(sweep_dir, clear_dir)
    for folder in trials(clear_dir):
        if "optimizer.lr=0.0031," in folder.name:
            shutil.rmtree(folder)
    ranking = rank_groups(load_sweep(clear_dir))
    assert ranking.clear_winner and lr(ranking.groups[0]) == "optimizer.lr=0.003"
    assert ranking.groups[0].low > ranking.groups[1].high


@pytest.mark.e2e
def test_nevergrad_repeats_each_asked_configuration_with_the_same_seeds(run_cli, tmp_path):
    sweep_dir = tmp_path / "ng"
    done = run_cli("--multirun", "sweep=random", "hydra.sweeper.optim.budget=2", "hydra.sweeper.repeats=2",
                   "hydra.sweeper.optim.num_workers=1", "model=mlp", *QUICK, f"hydra.sweep.dir={sweep_dir}")
    assert done.returncode == 0, done.stderr
    overrides = [read_result(f)["overrides"] for f in trials(sweep_dir)]
    assert len(overrides) == 4  # the budget counts configurations
    assert [o[-1] for o in overrides] == ["trainer.seed=0", "trainer.seed=1"] * 2
    assert overrides[0][:-1] == overrides[1][:-1] and overrides[2][:-1] == overrides[3][:-1]


@pytest.mark.parametrize("bad, words", [
    (["hydra.sweeper.repeats=0"], "hydra.sweeper.repeats=0 must be an integer >= 1"),
    (["hydra.sweeper.repeats=two"], "hydra.sweeper.repeats='two' must be an integer >= 1"),
    (["hydra.sweeper.repeats=2", "trainer.seed=0,1"], "trainer.seed=0,1 sweeps the seed"),
])
def test_bad_repeats_are_refused_before_any_trial(run_cli, tmp_path, bad, words):
    sweep_dir = tmp_path / "bad"
    done = run_cli("--multirun", "optimizer.lr=0.01,0.02", *bad, *QUICK, f"hydra.sweep.dir={sweep_dir}")
    assert done.returncode != 0
    assert words in done.stderr and "Traceback" not in done.stderr
    assert not sweep_dir.exists() or trials(sweep_dir) == []


@pytest.mark.e2e
def test_a_killed_repeated_sweep_resumes_without_retraining_finished_trials(tmp_path):
    sweep_dir = tmp_path / "killed"
    command = [sys.executable, "-m", "runner", "--multirun", "optimizer.lr=0.001,0.002", "hydra.sweeper.repeats=2",
               "dataset=synthetic", "trainer.max_epochs=3", "trainer.batch_size=16",
               "trainer.deterministic=true", "logger=none", f"hydra.sweep.dir={sweep_dir}"]
    env = {**os.environ, "RUNNER_OUTPUT_DIR": str(tmp_path / "outputs")}
    kill_at_second_trial_checkpoint(command, sweep_dir, env)
    first = read_result(trials(sweep_dir)[0])
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert read_result(trials(sweep_dir)[0]) == first
    assert count_trainings(sweep_dir) == {"0": 1, "1": 2, "2": 1, "3": 1}
    assert [r["status"] for r in summary(sweep_dir)] == ["completed"] * 4
    group = yaml.safe_load((sweep_dir / "best.yaml").read_text())["group"]
    assert len(group["trials"]) == 2 and group["trials"] in ([0, 1], [2, 3])
    # a resume with another repeat count is another space: refused
    other = subprocess.run([*command[:-1], "hydra.sweeper.repeats=3", command[-1]], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=120)
    assert other.returncode != 0 and "hydra.sweeper.repeats=2" in other.stderr


def test_pruners_compare_a_trial_only_with_trials_of_its_seed(tmp_path):
    from runner.sweep.pruning import ASHA, Median

    def asha(trial, cohort):
        return ASHA(sweep_dir=tmp_path, trial=trial, metric="val/acc", goal="maximize", max_t=10, cohort=cohort)

    assert not asha("lucky_seed0", 0).report(1, 0.9).stop
    # seed 1 is a hard seed: its first trial meets nobody of its own seed, and goes on
    first_of_seed1 = asha("other_seed1", 1).report(1, 0.5)
    assert not first_of_seed1.stop and "first trial at rung 1" in first_of_seed1.reason
    # a configuration worse than the lucky one on the same seed is stopped
    assert asha("worse_seed0", 0).report(1, 0.6).stop

    def median(trial, cohort):
        return Median(sweep_dir=tmp_path, trial=trial, metric="val/acc", goal="maximize", max_t=10, min_trials=1,
                      cohort=cohort)

    assert not median("m_seed0", 0).report(1, 0.9).stop
    assert not median("m_seed1", 1).report(1, 0.5).stop  # far below seed 0's trial, but on another seed
    assert median("m_worse_seed1", 1).report(1, 0.4).stop  # below seed 1's median
