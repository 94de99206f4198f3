"""Pruners: ASHA, Hyperband and the median rule decide as the algorithms say, on files that survive
resume and concurrent writers."""

from __future__ import annotations

import errno
import json
import math
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.utils import instantiate

from runner.errors import ConfigError
from runner.sweep.pruning import ASHA, SHARED_FILE, TRIAL_LOG, Hyperband, Median, bracket_of
from runner.sweep.shared_log import SharedLog

# The fake objective: trial i has quality QUALITIES[i]; higher quality is better at every epoch.
QUALITIES = [5, 2, 8, 1, 9, 3, 7, 4, 6]


def fake_value(quality: float, epoch: int, goal: str) -> float:
    """An accuracy that rises with the epochs, or a loss that falls; the ranking is by quality."""
    if goal == "maximize":
        return quality * (1 - 0.5**epoch)
    return (10 - quality) * (1 + 0.5**epoch)


def asha(sweep_dir: Path, trial: str, goal: str = "maximize", **settings) -> ASHA:
    settings = {"max_t": 10, "grace_period": 1, "reduction_factor": 3, **settings}
    return ASHA(sweep_dir=sweep_dir, trial=trial, metric="val/acc", goal=goal, **settings)


def run_trial(pruner, values: dict[int, float]) -> list:
    """Report epochs in order until the pruner says stop, as the runner does; the decisions."""
    decisions = []
    for epoch, value in values.items():
        decisions.append(pruner.report(epoch, value))
        if decisions[-1].stop:
            break
    return decisions


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# --- ASHA ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("goal", ["maximize", "minimize"])
def test_asha_stops_exactly_the_trials_the_algorithm_says(tmp_path, goal):
    # Rungs 1, 3, 9 (grace 1, max_t 10, factor 3); the 9 trials run one after the other.
    # A trial continues if its quality reaches the 2/3 percentile of the qualities recorded at
    # the rung before it (the objective is quality times a factor common to all trials at an epoch):
    # rung 1: t0 first; t1 2 < 5; t2 8 >= 4; t3 1 < 6; t4 9 >= 5; t5 3 < 7; t6 7 >= 6; t7 4 < 7;
    #         t8 6 < 6.33 (percentile of 1,2,3,4,5,7,8,9 at position 14/3)
    # rung 3: t0 first; t2 8 >= 5; t4 9 >= 7; t6 7 < 8.33      rung 9: t0, t2, t4 all continue
    stopped = {}
    for i, quality in enumerate(QUALITIES):
        pruner = asha(tmp_path, f"{i}_q={quality}", goal)
        decisions = run_trial(pruner, {e: fake_value(quality, e, goal) for e in range(1, 11)})
        if decisions[-1].stop:
            stopped[i] = (decisions[-1].epoch, decisions[-1].rung)
        else:
            assert len(decisions) == 10
    assert stopped == {1: (1, 1), 3: (1, 1), 5: (1, 1), 7: (1, 1), 8: (1, 1), 6: (3, 3)}

    log = read_jsonl(tmp_path / "6_q=7" / TRIAL_LOG)
    assert [(r["epoch"], r["rung"], r["decision"]) for r in log] == [
        (1, 1, "continue"), (2, None, "continue"), (3, 3, "stop")]
    assert set(log[0]) == {"epoch", "value", "best", "bracket", "rung", "threshold", "decision", "reason"}
    # t1's cutoff at rung 1 is t0's value there, the only one recorded before it
    t1 = read_jsonl(tmp_path / "1_q=2" / TRIAL_LOG)[0]
    assert t1["threshold"] == pytest.approx(fake_value(5, 1, goal))
    shared = read_jsonl(tmp_path / SHARED_FILE)
    assert len(shared) == 9 + 4 + 3  # one line per trial and rung reached
    assert {(r["trial"], r["rung"]) for r in shared if r["decision"] == "stop"} == {
        ("1_q=2", 1), ("3_q=1", 1), ("5_q=3", 1), ("7_q=4", 1), ("8_q=6", 1), ("6_q=7", 3)}


@pytest.mark.parametrize(("grace_period", "max_t", "reduction_factor", "rungs"), [
    (1, 10, 3, [1, 3, 9]),
    (1, 9, 3, [1, 3]),  # no rung at max_t: the trial has finished there
    (2, 20, 2, [2, 4, 8, 16]),
    (1, 5, 1.5, [1, 2, 3, 4]),  # 1, 1.5, 2.25, 3.375 rounded up
    (4, 4, 3, []),
])
def test_asha_rungs(tmp_path, grace_period, max_t, reduction_factor, rungs):
    pruner = asha(tmp_path, "t", grace_period=grace_period, max_t=max_t,
                  reduction_factor=reduction_factor)
    assert pruner.rungs == rungs


def test_the_best_value_so_far_is_compared_not_the_value_at_the_rung(tmp_path):
    run_trial(asha(tmp_path, "steady"), {1: 0.5, 2: 0.6, 3: 0.6})
    # worse than `steady` at rung 3 (0.3 < 0.6), but its best so far (0.9) is not
    decisions = run_trial(asha(tmp_path, "early_peak"), {1: 0.9, 2: 0.3, 3: 0.3})
    assert [(d.rung, d.stop) for d in decisions] == [(1, False), (None, False), (3, False)]
    assert (decisions[-1].value, decisions[-1].best, decisions[-1].threshold) == (0.3, 0.9, 0.6)


def test_a_rung_skipped_by_the_evaluation_schedule_is_decided_at_the_next_report(tmp_path):
    run_trial(asha(tmp_path, "a"), {e: 0.9 for e in range(1, 11)})
    decisions = run_trial(asha(tmp_path, "b"), {2: 0.95, 4: 0.95, 6: 0.95, 8: 0.95, 10: 0.95})
    # rung 1 at epoch 2, rung 3 at epoch 4, nothing new at 6 and 8, none at max_t
    assert [d.rung for d in decisions] == [1, 3, None, None, None]
    assert "max_t=10" in decisions[-1].reason
    decisions = run_trial(asha(tmp_path, "c"), {4: 0.1})
    assert (decisions[0].rung, decisions[0].stop) == (3, True)  # rung 1 skipped, rung 3 decided


def test_ties_continue(tmp_path):
    for trial in "abcdefg":
        decision = asha(tmp_path, "same_" + trial).report(1, 0.5)
        assert not decision.stop, decision.reason
    for value in range(1, 11):
        asha(tmp_path / "distinct", f"t{value}").report(1, float(value))
    # the cutoff among 1 .. 10 is exactly 7 (position 6 of 0 .. 9): 7 continues, a hair less stops
    assert not asha(tmp_path / "distinct", "equal").report(1, 7.0).stop
    assert asha(tmp_path / "distinct", "below").report(1, 6.999).stop


@pytest.mark.parametrize("goal", ["maximize", "minimize"])
def test_nan_is_the_worst_value(tmp_path, goal):
    worst = -1e9 if goal == "maximize" else 1e9
    asha(tmp_path, "bad", goal).report(1, worst)
    decision = asha(tmp_path, "nan", goal).report(1, math.nan)
    assert decision.stop and math.isnan(decision.best)
    record = read_jsonl(tmp_path / "nan" / TRIAL_LOG)[0]  # valid JSON: NaN written as null
    assert (record["value"], record["best"], record["decision"]) == (None, None, "stop")
    # a NaN recorded at the rung is below everything: the next trial continues
    assert not asha(tmp_path, "next", goal).report(1, worst).stop
    best_direction_infinity = math.inf if goal == "maximize" else -math.inf
    assert asha(tmp_path, "inf", goal).report(1, best_direction_infinity).stop  # worst as well


def test_invalid_settings_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="objective.goal='up'"):
        asha(tmp_path, "t", goal="up")
    with pytest.raises(ConfigError, match="pruner.grace_period=0"):
        asha(tmp_path, "t", grace_period=0)
    with pytest.raises(ConfigError, match="pruner.max_t=2 .* >= 3"):
        asha(tmp_path, "t", grace_period=3, max_t=2)
    with pytest.raises(ConfigError, match="pruner.reduction_factor=1 "):
        asha(tmp_path, "t", reduction_factor=1)
    with pytest.raises(ConfigError, match="pruner.brackets=4 .* from 1 to 3"):
        Hyperband(sweep_dir=tmp_path, trial="t", metric="m", goal="maximize", max_t=10, brackets=4)
    with pytest.raises(ConfigError, match="pruner.min_trials=0"):
        Median(sweep_dir=tmp_path, trial="t", metric="m", goal="maximize", max_t=10, min_trials=0)
    with pytest.raises(ValueError, match="epoch=0"):
        asha(tmp_path, "t").report(0, 1.0)


# --- Hyperband ----------------------------------------------------------------------------------

def hyperband(sweep_dir: Path, trial: str, **settings) -> Hyperband:
    return Hyperband(sweep_dir=sweep_dir, trial=trial, metric="val/acc", goal="maximize",
                     **{"max_t": 10, "grace_period": 1, "reduction_factor": 3, **settings})


def trial_in_bracket(bracket: int, brackets: int = 3) -> str:
    return next(f"t{i}" for i in range(1000) if bracket_of(f"t{i}", brackets) == bracket)


def test_hyperband_brackets_start_at_grace_period_times_factor_to_the_s(tmp_path):
    by_bracket = {s: hyperband(tmp_path, trial_in_bracket(s)).rungs for s in range(3)}
    assert by_bracket == {0: [1, 3, 9], 1: [3, 9], 2: [9]}
    assert hyperband(tmp_path, "t", max_t=9).brackets == 3  # the last one, {}, stops no one
    assert hyperband(tmp_path, trial_in_bracket(2), max_t=9).rungs == []
    assert hyperband(tmp_path, "t", brackets=2).brackets == 2


def test_hyperband_bracket_is_stable_across_processes_and_spread(tmp_path):
    names = [f"{i}_optimizer.lr={10.0 ** -i}" for i in range(30)]
    here = [bracket_of(name, 3) for name in names]
    script = ("import sys, json; from runner.sweep.pruning import bracket_of; "
              "print(json.dumps([bracket_of(n, 3) for n in json.loads(sys.argv[1])]))")
    for seed in ("1", "2"):  # Python's own hash() differs between these two
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", script, json.dumps(names)], env=env,
                             capture_output=True, text=True, check=True).stdout
        assert json.loads(out) == here
    assert set(here) == {0, 1, 2}
    assert hyperband(tmp_path, names[0]).bracket == here[0]


def test_hyperband_compares_a_trial_only_within_its_bracket(tmp_path):
    b0, b1 = trial_in_bracket(0), trial_in_bracket(1)
    run_trial(hyperband(tmp_path, b0), {e: 0.9 for e in range(1, 4)})
    decision = hyperband(tmp_path, b1).report(3, 0.1)  # bracket 1's first trial at rung 3
    assert (decision.bracket, decision.rung, decision.stop) == (1, 3, False)
    other_b0 = next(f"u{i}" for i in range(1000) if bracket_of(f"u{i}", 3) == 0)
    decision = hyperband(tmp_path, other_b0).report(1, 0.1)
    assert (decision.bracket, decision.stop) == (0, True)


# --- Median -------------------------------------------------------------------------------------

def median(sweep_dir: Path, trial: str, **settings) -> Median:
    return Median(sweep_dir=sweep_dir, trial=trial, metric="val/loss", goal="minimize",
                  **{"max_t": 10, "grace_period": 1, "min_trials": 3, **settings})


def test_median_stops_below_the_median_once_enough_trials_reported(tmp_path):
    losses = lambda quality: {e: fake_value(quality, e, "minimize") for e in range(1, 11)}
    for trial, quality in [("a", 5), ("b", 7), ("c", 6)]:  # fewer than 3 others: never stopped
        assert not run_trial(median(tmp_path, trial), losses(quality))[-1].stop
    decisions = run_trial(median(tmp_path, "d", grace_period=3), losses(4))
    assert [(d.rung, d.stop) for d in decisions] == [(None, False), (None, False), (3, True)]
    assert decisions[-1].threshold == pytest.approx(fake_value(6, 3, "minimize"))
    # the median of a, b, c is 6, and at epoch 3, where d recorded too, 5.5: 6.5 always passes
    decisions = run_trial(median(tmp_path, "e"), losses(6.5))
    assert len(decisions) == 10 and not any(d.stop for d in decisions)
    assert [d.threshold for d in decisions[:4]] == pytest.approx(
        [fake_value(q, e, "minimize") for e, q in [(1, 6), (2, 6), (3, 5.5), (4, 6)]])
    assert decisions[-1].rung is None  # no decision at max_t


# --- files: resume, crashes, concurrency ---------------------------------------------------------

def test_resume_returns_recorded_decisions_and_records_nothing_twice(tmp_path):
    run_trial(asha(tmp_path, "good"), {e: 0.9 for e in range(1, 11)})
    first = run_trial(asha(tmp_path, "bad"), {1: 0.5, 2: 0.6})
    assert first[0].stop
    shared_before = (tmp_path / SHARED_FILE).read_text()
    log_before = (tmp_path / "bad" / TRIAL_LOG).read_text()

    resumed = asha(tmp_path, "bad")  # a new process: state comes from the files alone
    assert resumed.report(1, 0.99) == first[0]  # re-evaluated, differently: the decision stands
    assert resumed.report(4, 0.99) == first[0]  # a stopped trial stays stopped
    assert (tmp_path / SHARED_FILE).read_text() == shared_before
    assert (tmp_path / "bad" / TRIAL_LOG).read_text() == log_before

    continued = run_trial(asha(tmp_path, "good"), {9: 0.1, 10: 0.1})
    assert [d.rung for d in continued] == [9, None]
    assert (tmp_path / SHARED_FILE).read_text() == shared_before


def test_a_decision_whose_trial_log_line_was_lost_is_taken_from_the_shared_file(tmp_path):
    run_trial(asha(tmp_path, "good"), {1: 0.9})
    asha(tmp_path, "bad").report(1, 0.1)
    (tmp_path / "bad" / TRIAL_LOG).unlink()  # crashed after the shared record, before its own
    decision = asha(tmp_path, "bad").report(1, 0.95)
    assert decision.stop and decision.threshold == 0.9
    assert len(read_jsonl(tmp_path / SHARED_FILE)) == 2
    assert len(read_jsonl(tmp_path / "bad" / TRIAL_LOG)) == 1


def test_a_line_torn_by_a_crash_is_skipped_and_closed_off(tmp_path, caplog):
    asha(tmp_path, "a").report(1, 0.9)
    with (tmp_path / SHARED_FILE).open("a") as f:
        f.write('{"rule": "asha", "trial": "x", "ru')
    decision = asha(tmp_path, "b").report(1, 0.1)
    assert decision.stop and decision.threshold == 0.9
    lines = (tmp_path / SHARED_FILE).read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[2])["trial"] == "b"
    assert "not a JSON record" in caplog.text


def test_falls_back_to_a_marker_lock_where_the_filesystem_has_no_flock(tmp_path, monkeypatch):
    import fcntl

    def no_flock(fd, operation):
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(fcntl, "flock", no_flock)  # Lustre mounted without -o flock
    with pytest.warns(UserWarning, match="flock"):
        asha(tmp_path, "a").report(1, 0.9)
        assert asha(tmp_path, "b").report(1, 0.1).stop


def report_many(sweep_dir: str, trial: str, reports: int, barrier) -> None:
    pruner = Median(sweep_dir=sweep_dir, trial=trial, metric="m", goal="maximize",
                    max_t=reports + 1, min_trials=reports)  # every epoch a rung, never a stop
    barrier.wait()
    for epoch in range(1, reports + 1):
        assert not pruner.report(epoch, float(epoch)).stop


@pytest.mark.timeout(120)
def test_two_processes_reporting_at_once_lose_nothing(tmp_path):
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    workers = [context.Process(target=report_many, args=(str(tmp_path), trial, 200, barrier))
               for trial in ("a", "b")]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert [worker.exitcode for worker in workers] == [0, 0]
    records = read_jsonl(tmp_path / SHARED_FILE)  # every line valid JSON
    assert sorted((r["trial"], r["epoch"]) for r in records) == sorted(
        (trial, epoch) for trial in "ab" for epoch in range(1, 201))
    for trial in "ab":
        assert [r["epoch"] for r in read_jsonl(tmp_path / trial / TRIAL_LOG)] == list(range(1, 201))


def increment_many(lock_dir: str, times: int, barrier) -> None:
    shared = SharedLog(Path(lock_dir) / "counter.jsonl")
    counter = Path(lock_dir) / "counter.txt"
    barrier.wait()
    for _ in range(times):
        with shared.locked():  # a read-modify-write that loses counts unless the lock excludes
            count = int(counter.read_text()) if counter.exists() else 0
            counter.write_text(str(count + 1))


@pytest.mark.timeout(120)
def test_the_lock_excludes_other_processes(tmp_path):
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    workers = [context.Process(target=increment_many, args=(str(tmp_path), 200, barrier))
               for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert [worker.exitcode for worker in workers] == [0, 0]
    assert (tmp_path / "counter.txt").read_text() == "400"


# --- configs ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "cls"), [("asha", ASHA), ("hyperband", Hyperband), ("median", Median)])
def test_pruner_configs_build_with_the_runner_arguments(compose_cfg, tmp_path, name, cls):
    cfg = compose_cfg([f"pruner={name}", "trainer.max_epochs=27", "objective=val_loss"])
    pruner = instantiate(cfg.pruner, sweep_dir=tmp_path, trial="0_lr=0.1",
                         metric=cfg.objective.metric, goal=cfg.objective.goal)
    assert type(pruner) is cls
    assert (pruner.max_t, pruner.metric, pruner.goal) == (27, "val/loss", "minimize")


def test_no_pruner_by_default(compose_cfg):
    assert "_target_" not in compose_cfg().pruner


@pytest.mark.e2e
def test_a_sweep_prunes_a_losing_trial_and_a_rerun_decides_nothing_again(run_cli, tmp_path):
    sweep_dir = tmp_path / "sweep"
    args = ["-m", "dataset=synthetic", "model=mlp", "logger=none", "trainer.device=cpu",
            "trainer.max_epochs=4", "pruner=asha", "optimizer.lr=0.01,0.003,0.00001",
            f"hydra.sweep.dir={sweep_dir}"]
    done = run_cli(*args)
    assert done.returncode == 0, done.stderr
    results = {p.parent.name.split("_")[0]: json.loads(p.read_text())
               for p in sweep_dir.glob("*/result.json")}
    assert {k: (r["status"], r["pruned_at_epoch"]) for k, r in results.items()} == {
        "0": ("completed", None), "1": ("completed", None), "2": ("pruned", 1)}
    assert "worse than" in results["2"]["reason"]
    trial = next(sweep_dir.glob("2_*"))
    assert [r["decision"] for r in read_jsonl(trial / TRIAL_LOG)] == ["stop"]
    logs = {p: p.read_text() for p in [sweep_dir / SHARED_FILE, *sweep_dir.glob("*/" + TRIAL_LOG)]}

    again = run_cli(*args)  # the same sweep again: final trials are read back, nothing re-decided
    assert again.returncode == 0, again.stderr
    assert {p: p.read_text() for p in logs} == logs


def sweep_results(sweep_dir: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sweep_dir.glob("*/result.json")}


@pytest.mark.e2e
def test_a_nevergrad_sweep_with_asha_prunes_and_reports(run_cli, tmp_path):
    sweep_dir = tmp_path / "nevergrad"
    done = run_cli("-m", "sweep=random", "hydra.sweeper.optim.budget=6", "hydra.sweeper.optim.num_workers=2",
                   "hydra.sweeper.optim.seed=1", "optimizer.lr=tag(log,interval(0.0000001,0.01))", "model=mlp",
                   "trainer.batch_size=32", "dataset=synthetic", "logger=none", "trainer.max_epochs=4",
                   "pruner=asha", f"hydra.sweep.dir={sweep_dir}")
    assert done.returncode == 0, done.stderr
    results = sweep_results(sweep_dir)
    assert len(results) == 6
    pruned = {name: r for name, r in results.items() if r["status"] == "pruned"}
    assert pruned, {name: r["status"] for name, r in results.items()}
    for name, result in pruned.items():
        decisions = read_jsonl(sweep_dir / name / TRIAL_LOG)
        assert decisions[-1]["decision"] == "stop" and decisions[-1]["epoch"] == result["pruned_at_epoch"]
        assert result["epochs"] == result["pruned_at_epoch"] < 4
    summary = (sweep_dir / "summary.csv").read_text()
    assert summary.count(",pruned,") == len(pruned)


@pytest.mark.e2e
@pytest.mark.timeout(400)
def test_asha_under_the_parallel_launcher_shares_its_rungs(run_cli, tmp_path):
    cores = len(os.sched_getaffinity(0))
    sweep_dir = tmp_path / "parallel"
    done = run_cli("-m", "hydra/launcher=parallel", f"hydra.launcher.cpus_per_task={max(1, cores // 2)}",
                   "optimizer.lr=0.01,0.003,0.0000001,0.00000001", "model=mlp", "dataset=synthetic", "logger=none",
                   "trainer.max_epochs=3", "trainer.batch_size=32", "pruner=asha", f"hydra.sweep.dir={sweep_dir}",
                   timeout=380)
    assert done.returncode == 0, done.stderr
    results = sweep_results(sweep_dir)
    assert len(results) == 4 and {r["status"] for r in results.values()} <= {"completed", "pruned"}
    # every decision at a rung is in the shared record once, whichever process made it
    shared = read_jsonl(sweep_dir / SHARED_FILE)
    decided = [(name, d["rung"]) for name in results for d in read_jsonl(sweep_dir / name / TRIAL_LOG)
               if d["rung"] is not None]
    assert sorted((line["trial"], line["rung"]) for line in shared) == sorted(decided)
