"""Sweeps through the real CLI: grids and Nevergrad toward the objective, failures that do not
sink the sweep, resume after SIGKILL without retraining, the report at the end; and streaming:
a freed slot takes the next trial at once, a resumed sweep replays its journal in order."""

from __future__ import annotations

import csv
import json
import re
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from runner.results import read_result
from runner.errors import ConfigError
from runner.sweep.search import NevergradSearch, make_search
from runner.sweep.journal import Journal
from runner.sweep.sweeper import StreamingSweeper
from tests.scripted_pool import ScriptedPool
from tests.conftest import REPO, kill_at_second_trial_checkpoint, kill_when, trials


QUICK = ["dataset=synthetic", "trainer.max_epochs=2", "logger=none", "trainer.batch_size=32"]


def summary(sweep_dir: Path) -> list[dict]:
    with (sweep_dir / "summary.csv").open() as f:
        return list(csv.DictReader(f))


@pytest.mark.e2e
def test_grid_runs_every_combination_and_reports(run_cli, tmp_path):
    sweep_dir = tmp_path / "grid"
    done = run_cli("--multirun", "model=lenet,mlp", "optimizer=sgd,adam", *QUICK, f"hydra.sweep.dir={sweep_dir}")
    assert done.returncode == 0, done.stderr
    folders = trials(sweep_dir)
    names = [set(p.name.split("_", 1)[1].split(",")) for p in folders]
    expected = [("lenet", "sgd"), ("lenet", "adam"), ("mlp", "sgd"), ("mlp", "adam")]
    assert [{f"model={m}", f"optimizer={o}"} <= name for name, (m, o) in zip(names, expected)] == [True] * 4
    rows = summary(sweep_dir)
    assert len(rows) == 4
    for row in rows:
        result = read_result(sweep_dir / row["name"])
        assert row["status"] == result["status"] == "completed"
        assert float(row["objective"]) == pytest.approx(result["objective"]["value"])
    values = [float(r["objective"]) for r in rows]
    assert values == sorted(values, reverse=True)
    best = yaml.safe_load((sweep_dir / "best.yaml").read_text())
    assert best["name"] == rows[0]["name"]
    assert (sweep_dir / "history.csv").exists() and (sweep_dir / "report.png").exists()


@pytest.mark.e2e
@pytest.mark.parametrize("objective,goal", [("default", "maximize"), ("val_loss", "minimize")])
def test_nevergrad_sweep_follows_the_goal(run_cli, tmp_path, objective, goal):
    sweep_dir = tmp_path / goal
    done = run_cli("--multirun", "sweep=nevergrad", "hydra.sweeper.optim.budget=6",
                   "hydra.sweeper.optim.num_workers=2", f"objective={objective}", *QUICK,
                   f"hydra.sweep.dir={sweep_dir}")
    assert done.returncode == 0, done.stderr
    assert ("maximizing" if goal == "maximize" else "minimizing") in done.stderr + done.stdout
    assert len(trials(sweep_dir)) == 6
    optimization = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    values = [read_result(p)["objective"]["value"] for p in trials(sweep_dir)]
    best = max(values) if goal == "maximize" else min(values)
    assert optimization["best_evaluated_result"] == pytest.approx(best)
    assert float(summary(sweep_dir)[0]["objective"]) == pytest.approx(best)


@pytest.mark.e2e
def test_search_space_is_overridable_from_the_command_line(run_cli, tmp_path):
    sweep_dir = tmp_path / "space"
    done = run_cli("--multirun", "sweep=random", "hydra.sweeper.optim.budget=3", "model=mlp",
                   "optimizer.lr=tag(log,interval(0.001,0.002))", *QUICK, f"hydra.sweep.dir={sweep_dir}")
    assert done.returncode == 0, done.stderr
    for folder in trials(sweep_dir):
        overrides = yaml.safe_load((folder / ".hydra" / "overrides.yaml").read_text())
        lr = float(next(o for o in overrides if o.startswith("optimizer.lr=")).split("=")[1])
        assert 0.001 <= lr <= 0.002 and "model=mlp" in overrides


@pytest.mark.e2e
def test_sequential_optimizer_with_several_workers_is_refused_before_any_trial(run_cli, tmp_path):
    sweep_dir = tmp_path / "bayes"
    done = run_cli("--multirun", "sweep=bayes", "hydra.sweeper.optim.num_workers=2", *QUICK,
                   f"hydra.sweep.dir={sweep_dir}")
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "hydra.sweeper.optim.num_workers=2" in done.stderr and "BO" in done.stderr
    assert not trials(sweep_dir)


@pytest.mark.e2e
def test_failing_trial_is_recorded_and_the_sweep_goes_on(run_cli, tmp_path):
    sweep_dir = tmp_path / "failing"
    done = run_cli("--multirun", "optimizer=sgd", "optimizer.lr=0.01,1e12,0.02", "trainer.log_every_n_steps=1",
                   *QUICK, f"hydra.sweep.dir={sweep_dir}")
    assert done.returncode == 0, done.stderr
    statuses = {row["name"].split("_")[0]: (row["status"], row["reason"]) for row in summary(sweep_dir)}
    assert statuses["0"][0] == statuses["2"][0] == "completed"
    assert statuses["1"][0] == "failed" and "loss became" in statuses["1"][1]


@pytest.mark.e2e
def test_fail_fast_stops_the_sweep_at_the_first_failure(run_cli, tmp_path):
    sweep_dir = tmp_path / "fail_fast"
    done = run_cli("--multirun", "optimizer=sgd", "optimizer.lr=1e12,0.01,0.02", "trainer.log_every_n_steps=1",
                   "fail_fast=true", *QUICK, f"hydra.sweep.dir={sweep_dir}")
    assert done.returncode != 0
    assert "loss became" in done.stderr
    results = [read_result(p) for p in trials(sweep_dir)]
    assert results[0]["status"] == "failed"
    assert all(r["status"] == "failed" and "not started" in r["reason"] for r in results[1:])
    assert all(r["epochs"] == 0 for r in results[1:])


@pytest.mark.e2e
def test_two_sweeps_started_together_get_their_own_folders(tmp_path):
    # one thread each: two busy-waiting OpenMP pools on two cores slow each other down many times over
    env = {**os.environ, "RUNNER_OUTPUT_DIR": str(tmp_path / "outputs"), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "runner", "--multirun", "trainer.seed=1", *QUICK]
    processes = [subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                 for _ in range(2)]
    for process in processes:
        assert process.wait(timeout=300) == 0, process.stderr.read()
    sweeps = list((tmp_path / "outputs" / "sweeps").iterdir())
    assert len(sweeps) == 2
    assert all(len(trials(s)) == 1 for s in sweeps)


def count_trainings(sweep_dir: Path) -> dict[str, int]:
    """How many times each trial trained an epoch: from its log, which each attempt appends to."""
    return {p.name.split("_")[0]: (p / "runner.log").read_text().count("epoch 1/")
            + (p / "runner.log").read_text().count("resumed from") for p in trials(sweep_dir)}


@pytest.mark.e2e
def test_sweep_killed_with_sigkill_resumes_without_retraining_finished_trials(tmp_path):
    sweep_dir = tmp_path / "killed"
    command = [sys.executable, "-m", "runner", "--multirun", "optimizer.lr=0.001,0.002,0.003",
               "dataset=synthetic", "trainer.max_epochs=3", "trainer.batch_size=16",
               "trainer.deterministic=true", "logger=none", f"hydra.sweep.dir={sweep_dir}"]
    env = {**os.environ, "RUNNER_OUTPUT_DIR": str(tmp_path / "outputs")}
    kill_at_second_trial_checkpoint(command, sweep_dir, env)
    first = read_result(trials(sweep_dir)[0])
    assert first["status"] == "completed"
    assert read_result(trials(sweep_dir)[1])["status"] == "running"

    half = subprocess.run([sys.executable, "-m", "runner.report", str(sweep_dir)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert half.returncode == 0 and "running" in half.stdout

    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    folders = trials(sweep_dir)
    assert read_result(folders[0]) == first  # read back, not trained again
    assert "already completed" in (folders[0] / "runner.log").read_text()
    assert "resumed from" in (folders[1] / "runner.log").read_text()
    assert count_trainings(sweep_dir) == {"0": 1, "1": 2, "2": 1}
    assert [r["status"] for r in summary(sweep_dir)] == ["completed"] * 3


@pytest.mark.e2e
def test_resumed_nevergrad_sweep_asks_the_same_points_and_finds_the_same_best(tmp_path):
    env = {**os.environ, "RUNNER_OUTPUT_DIR": str(tmp_path / "outputs")}
    base = [sys.executable, "-m", "runner", "--multirun", "sweep=nevergrad", "hydra.sweeper.optim.budget=5",
            "hydra.sweeper.optim.num_workers=2", "hydra.sweeper.optim.seed=3", "dataset=synthetic",
            "dataset.num_train=256", "trainer.max_epochs=2", "trainer.batch_size=16", "trainer.deterministic=true",
            "logger=none"]
    whole_dir, cut_dir = tmp_path / "whole", tmp_path / "cut"
    subprocess.run([*base, f"hydra.sweep.dir={whole_dir}"], cwd=REPO, env=env, check=True,
                   capture_output=True, timeout=600)

    def third_trial_started() -> bool:
        folders = trials(cut_dir) if cut_dir.exists() else []
        return len(folders) >= 3 and (folders[2] / "checkpoints" / "last.pt").exists()

    process = subprocess.Popen([*base, f"hydra.sweep.dir={cut_dir}"], cwd=REPO, env=env, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_when(process, third_trial_started)
    subprocess.run([*base, f"hydra.sweep.dir={cut_dir}"], cwd=REPO, env=env, check=True,
                   capture_output=True, timeout=600)
    assert [p.name for p in trials(whole_dir)] == [p.name for p in trials(cut_dir)]
    best_whole = yaml.safe_load((whole_dir / "best.yaml").read_text())
    best_cut = yaml.safe_load((cut_dir / "best.yaml").read_text())
    assert best_whole["name"] == best_cut["name"] and best_whole["objective"] == best_cut["objective"]


# ---------------------------------------------------------------- streaming: no slot waits for a batch

def spans(sweep_dir: Path) -> dict[int, tuple[datetime, datetime]]:
    """Each trial's start and end, from its result.json."""
    out = {}
    for folder in trials(sweep_dir):
        result = read_result(folder)
        out[int(folder.name.split("_")[0])] = (datetime.fromisoformat(result["started_at"]),
                                               datetime.fromisoformat(result["finished_at"]))
    return out


def two_slots() -> list[str]:
    cores = len(os.sched_getaffinity(0))
    if cores < 2:
        pytest.skip("needs two cores")
    return ["hydra/launcher=parallel", f"hydra.launcher.cpus_per_task={cores // 2}"]


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_a_slot_freed_by_a_short_trial_is_reused_before_the_long_one_ends(run_cli, tmp_path):
    sweep_dir = tmp_path / "streaming"
    done = run_cli("--multirun", *two_slots(), "dataset=synthetic", "logger=none", "trainer.batch_size=32",
                   "trainer.max_epochs=40,1,1,1", f"hydra.sweep.dir={sweep_dir}", timeout=280)
    assert done.returncode == 0, done.stderr
    times = spans(sweep_dir)
    long_end = times[0][1]
    # trial 1 runs beside the long trial 0; trials 2 and 3 take its slot in turn, while 0 still runs
    assert times[1][1] <= times[2][0] < times[2][1] <= times[3][0] < times[3][1] < long_end, times
    assert "trial 3 completed" in done.stdout + done.stderr and "in flight 1 | done 2/4" in done.stdout + done.stderr


@pytest.mark.e2e
@pytest.mark.timeout(300)
def asks_beside_a_running_trial(sweep_dir: Path) -> tuple[list[int], int]:
    """From the journal: the trials asked while another trial was still running, and the most in flight."""
    in_flight, most, beside = 0, 0, []
    for event in Journal(sweep_dir).read():
        if event["event"] == "ask":
            if in_flight and event["number"] >= 2:  # past the first two, asked together at the start
                beside.append(event["number"])
            in_flight += 1
            most = max(most, in_flight)
        elif event["event"] == "tell":
            in_flight -= 1
    return beside, most


# a random search whose second trial (seed 0) trains far longer than the others
LONG_SECOND = ["sweep=random", "hydra.sweeper.optim.budget=5", "hydra.sweeper.optim.num_workers=2",
               "dataset=synthetic", "logger=none", "trainer.batch_size=32"]


def test_nevergrad_tells_each_result_and_asks_the_next_at_once(run_cli, tmp_path):
    sweep_dir = tmp_path / "ask_tell"
    done = run_cli("--multirun", *two_slots(), *LONG_SECOND, "trainer.max_epochs=choice(1,40)",
                   f"hydra.sweep.dir={sweep_dir}", timeout=280)
    assert done.returncode == 0, done.stderr
    drawn = {e["number"]: e["value"]["trainer.max_epochs"] for e in Journal(sweep_dir).read() if e["event"] == "ask"}
    assert drawn == {0: 1, 1: 40, 2: 1, 3: 1, 4: 1}
    beside, most = asks_beside_a_running_trial(sweep_dir)
    # the short trials ended one after another beside the long one, each replaced at once
    assert most == 2 and beside[:2] == [2, 3], beside
    assert all(read_result(p)["status"] == "completed" for p in trials(sweep_dir))


@pytest.mark.e2e
@pytest.mark.timeout(400)
def test_a_killed_parallel_sweep_resumes_to_the_same_trials_and_best(tmp_path):
    env = {**os.environ, "RUNNER_OUTPUT_DIR": str(tmp_path / "outputs")}
    base = [sys.executable, "-m", "runner", "--multirun", *two_slots(), "sweep=random", "hydra.sweeper.optim.budget=6",
            "hydra.sweeper.optim.num_workers=2", "hydra.sweeper.optim.seed=5", "dataset=synthetic",
            "dataset.num_train=256", "trainer.max_epochs=2", "trainer.batch_size=16", "trainer.deterministic=true",
            "logger=none"]
    whole_dir, cut_dir = tmp_path / "whole", tmp_path / "cut"
    subprocess.run([*base, f"hydra.sweep.dir={whole_dir}"], cwd=REPO, env=env, check=True, capture_output=True,
                   timeout=300)

    def three_trials_started() -> bool:
        folders = trials(cut_dir) if cut_dir.exists() else []
        return sum((p / "checkpoints" / "last.pt").exists() for p in folders) >= 3

    process = subprocess.Popen([*base, f"hydra.sweep.dir={cut_dir}"], cwd=REPO, env=env, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_when(process, three_trials_started)  # the sweep and its workers: one process group
    assert len(trials(cut_dir)) < 6
    subprocess.run([*base, f"hydra.sweep.dir={cut_dir}"], cwd=REPO, env=env, check=True, capture_output=True,
                   timeout=300)
    assert [p.name for p in trials(whole_dir)] == [p.name for p in trials(cut_dir)]
    best_whole = yaml.safe_load((whole_dir / "best.yaml").read_text())
    best_cut = yaml.safe_load((cut_dir / "best.yaml").read_text())
    assert best_whole["name"] == best_cut["name"] and best_whole["objective"] == best_cut["objective"]


def scripted_sweep(sweep_dir: Path, pick: int) -> StreamingSweeper:
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import HydraContext
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        config = compose(config_name="config", overrides=["sweep=nevergrad", f"hydra.sweep.dir={sweep_dir}"],
                         return_hydra_config=True)
        optim = OmegaConf.merge(config.hydra.sweeper.optim, {"budget": 8, "num_workers": 2, "maximize": True})
        sweeper = StreamingSweeper(kind="nevergrad", optim=optim, params={})
        sweeper.hydra_context = HydraContext(config_loader=GlobalHydra.instance().config_loader(), callbacks=None)
        sweeper.config, sweeper.pool, sweeper.limit = config, ScriptedPool(pick), 2
        sweeper.sweep(["optimizer.lr=tag(log,interval(0.0001,0.1))", "trainer.batch_size=choice(16,32,64)"])
    return sweeper


def test_a_resumed_sweep_tells_the_optimizer_in_the_journal_order_whatever_order_trials_end(tmp_path, monkeypatch):
    sweep_dir = tmp_path / "replay"
    scripted_sweep(sweep_dir, pick=0)  # trials end oldest first
    journal = Journal(sweep_dir)
    events = journal.read()
    asks = [e for e in events if e["event"] == "ask"]
    # stopped just before it asked its sixth point: four results told, trial 4 in flight
    cut = events.index(asks[5])
    journal.path.write_text("".join(json.dumps(e) + "\n" for e in events[:cut]))
    told_before = [e["number"] for e in events[:cut] if e["event"] == "tell"]

    told = []
    tell = NevergradSearch.tell
    monkeypatch.setattr(NevergradSearch, "tell", lambda self, point, loss, violations=None: (told.append(point.overrides),
                                                                            tell(self, point, loss)))
    scripted_sweep(sweep_dir, pick=-1)  # this time the newest ends first
    number_of = {tuple(e["overrides"]): e["number"] for e in asks}
    assert [number_of[tuple(o)] for o in told[: len(told_before)]] == told_before
    resumed = [e for e in journal.read() if e["event"] == "ask"]
    # the optimizer was where it had been: the same sixth point, then the rest of the budget
    assert resumed[5]["overrides"] == asks[5]["overrides"] and len(resumed) == 8


RANDOM_SEARCH = {"optimizer": "RandomSearch", "budget": 4, "num_workers": 1, "noisy": False, "maximize": True,
                 "seed": 0, "max_failure_rate": 0.0}


@pytest.mark.parametrize("line,message", [
    ("optimizer.lr=tag(lg,interval(0.001,0.1))", "unknown tag lg"),
    ("optimizer.lr=tag(log,interval(0,0.1))", "a log-scale interval needs both bounds above 0"),
    ("trainer.batch_size=interval(16,64)", "draws floats, but trainer.batch_size is an integer (64); write "
                                           "trainer.batch_size=int(interval(16,64))"),
    ("model=tag(shuffled,choice(lenet,mlp))", "unknown tag shuffled"),
])
def test_a_space_that_would_not_search_what_it_says_is_refused_before_any_trial(compose_cfg, line, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        make_search("nevergrad", None, OmegaConf.create(RANDOM_SEARCH), [line], base_config=compose_cfg([]))


def test_an_integer_interval_asks_integers_on_the_scale_it_names(compose_cfg):
    search = make_search("nevergrad", None, OmegaConf.create(RANDOM_SEARCH),
                         ["trainer.batch_size=tag(log,int(interval(16,256)))"], base_config=compose_cfg([]))
    values = [int(search.ask().overrides[0].split("=")[1]) for _ in range(4)]
    assert all(16 <= v <= 256 for v in values) and len(set(values)) > 1



@pytest.mark.e2e
def test_a_second_sweep_into_a_running_sweeps_folder_is_refused(run_cli, tmp_path):
    sweep_dir = tmp_path / "busy"
    running = Journal(sweep_dir).hold()  # as the sweeper of a sweep that runs there holds it
    try:
        done = run_cli("--multirun", "optimizer.lr=0.1,0.01", *QUICK, f"hydra.sweep.dir={sweep_dir}")
    finally:
        running.close()
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert f"another sweep runs in {sweep_dir} (pid {os.getpid()}" in done.stderr
    assert not trials(sweep_dir) and Journal(sweep_dir).read() == []
    # once it has ended, the folder is free
    done = run_cli("--multirun", "optimizer.lr=0.1,0.01", *QUICK, f"hydra.sweep.dir={sweep_dir}")
    assert done.returncode == 0, done.stderr


@pytest.mark.e2e
def test_a_sweep_whose_first_config_did_not_compose_does_not_hold_its_folder(run_cli, tmp_path):
    sweep_dir = tmp_path / "typo"
    done = run_cli("--multirun", "model=mlp,nope", *QUICK, f"hydra.sweep.dir={sweep_dir}")
    assert done.returncode != 0 and "nope" in done.stderr
    done = run_cli("--multirun", "model=mlp,lenet", *QUICK, f"hydra.sweep.dir={sweep_dir}")
    assert done.returncode == 0, done.stderr
    assert len(trials(sweep_dir)) == 2 and len(list((sweep_dir / ".sweeper").glob("journal.set-aside-*.jsonl"))) == 1


def test_a_folder_without_flock_runs_the_sweep_unguarded_with_a_warning(tmp_path, monkeypatch, caplog):
    import errno
    import fcntl

    def no_flock(*args):
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    held = Journal(tmp_path).hold()
    held.close()
    assert "nothing stops a second sweep from running in this folder at once" in caplog.text
