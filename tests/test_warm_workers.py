"""Warm workers of the `parallel` launcher: a trial run after others in the same process behaves as
in a fresh one, a crashed worker is replaced and its trial recorded, a worker holding too much
memory is replaced, and what a trial changes in its process is put back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from launchers.process_state import ProcessState
from runner.results import read_metrics, read_result
from tests.conftest import REPO
from tests.trial_components import observe, spoil_process_state

TEST_CONF = REPO / "tests" / "conf"
# the probe model trains for real, bit for bit reproducibly
PROBE = ["--config-dir", str(TEST_CONF), "model=probe", "dataset=synthetic", "trainer.max_epochs=2",
         "trainer.batch_size=32", "trainer.deterministic=true", "logger=none"]


def one_slot() -> list[str]:
    """The parallel launcher with a single slot: every trial runs in the same worker, one after another."""
    return ["hydra/launcher=parallel", f"hydra.launcher.cpus_per_task={len(os.sched_getaffinity(0))}"]


def sweep(tmp_path: Path, name: str, *args: str) -> tuple[Path, subprocess.CompletedProcess]:
    sweep_dir = tmp_path / name
    env = {**os.environ, "RUNNER_OUTPUT_DIR": str(tmp_path / "outputs"), "PYTHONPATH": str(REPO)}
    env.pop("HYDRA_FULL_ERROR", None)
    done = subprocess.run([sys.executable, "-m", "runner", "--multirun", *args, f"hydra.sweep.dir={sweep_dir}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    return sweep_dir, done


def trial(sweep_dir: Path, number: int) -> Path:
    (folder,) = sweep_dir.glob(f"{number}_*")
    return folder


def seen(folder: Path) -> dict:
    return json.loads((folder / "process_state.json").read_text())


def learning(folder: Path) -> list[dict]:
    """metrics.csv without the columns that measure speed."""
    return [{k: v for k, v in row.items() if k not in ("time_s", "train/samples_per_s")} for row in read_metrics(folder)]


def test_what_a_trial_changes_in_its_process_is_put_back():
    baseline = ProcessState.capture()
    before = observe()
    try:
        spoil_process_state()
        assert observe() != before  # the spoiling reaches everything observe() looks at
    finally:
        baseline.restore()
    assert observe() == before


IMPORT_EFFECTS = textwrap.dedent("""
    import logging, sys, warnings
    from launchers.process_state import ProcessState

    baseline = ProcessState.capture()
    before = list(warnings.filters)
    import noisy_library  # imported by the first trial: its import sets a filter and a logger
    warnings.filterwarnings("ignore", message="set by the trial")
    logging.getLogger("trial").setLevel(logging.DEBUG)
    for _ in range(2):  # before the second trial, and the third
        baseline.restore()
        added = [(f[0], f[1] and f[1].pattern) for f in warnings.filters if f not in before]
        library = logging.getLogger("noisy_library")
        print(added, library.level, len(library.handlers), logging.getLogger("trial").level)
""")
NOISY_LIBRARY = textwrap.dedent("""
    import logging, warnings
    warnings.filterwarnings("ignore", message="set by an import")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lasts only for this block
    logging.getLogger("noisy_library").addHandler(logging.StreamHandler())
    logging.getLogger("noisy_library").setLevel(logging.INFO)
""")


def test_what_a_module_import_sets_stays_for_the_next_trials(tmp_path):
    # in a process of its own, as a worker: pytest wraps every test in warnings.catch_warnings
    (tmp_path / "noisy_library.py").write_text(NOISY_LIBRARY)
    done = subprocess.run([sys.executable, "-c", IMPORT_EFFECTS], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": f"{REPO}:{tmp_path}"})
    assert done.returncode == 0, done.stderr
    # as in a process that imported the library: its filter and its logger, not the trial's changes
    assert done.stdout.splitlines() == ["[('ignore', 'set by an import')] 20 1 0"] * 2


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_a_trial_run_warm_after_another_is_the_same_as_run_cold(tmp_path):
    # trial 0 spoils its process's global state; trial 1 runs after it in the same worker (warm),
    # or in a fresh worker of its own (cold: max_trials_per_worker=1)
    args = [*PROBE, *one_slot(), "model.pollute=true,false"]
    warm_dir, warm = sweep(tmp_path, "warm", *args)
    assert warm.returncode == 0, warm.stderr
    cold_dir, cold = sweep(tmp_path, "cold", *args, "hydra.launcher.max_trials_per_worker=1")
    assert cold.returncode == 0, cold.stderr
    warm_states = [seen(trial(warm_dir, n)) for n in (0, 1)]
    cold_states = [seen(trial(cold_dir, n)) for n in (0, 1)]
    assert warm_states[0]["pid"] == warm_states[1]["pid"]  # one warm worker ran both
    assert cold_states[0]["pid"] != cold_states[1]["pid"]
    for states in (warm_states, cold_states):
        for state in states:
            state.pop("pid")
    assert warm_states[1] == cold_states[1] == warm_states[0]
    # the slot's share of the machine: all its cores, as threads
    cores = len(os.sched_getaffinity(0))
    assert warm_states[1]["threads_env"] == [str(cores)] * 2 and warm_states[1]["torch_threads"] == cores
    for sweep_dir in (warm_dir, cold_dir):
        assert [read_result(trial(sweep_dir, n))["status"] for n in (0, 1)] == ["completed", "completed"]
    assert learning(trial(warm_dir, 1)) == learning(trial(cold_dir, 1))
    assert read_result(trial(warm_dir, 1))["final_metrics"]["val/loss"] == (
        read_result(trial(cold_dir, 1))["final_metrics"]["val/loss"])


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_a_crashed_worker_is_replaced_and_its_trial_recorded_failed(tmp_path):
    # trial 1 kills its own worker (SIGKILL, as the OOM killer would); a tiny memory limit also
    # replaces every worker after each trial it completes
    sweep_dir, done = sweep(tmp_path, "crash", *PROBE, *one_slot(), "trainer.max_epochs=1",
                            "model.crash=false,true,false,false", "hydra.launcher.worker_max_rss_gb=0.01")
    assert done.returncode == 0, done.stderr
    results = [read_result(trial(sweep_dir, n)) for n in range(4)]
    assert [r["status"] for r in results] == ["completed", "failed", "completed", "completed"]
    assert "killed by SIGKILL" in results[1]["reason"] and ".workers/1.out" in results[1]["reason"]
    assert results[1]["objective"]["metric"] == "val/acc"  # the report can rank it
    pids = [seen(trial(sweep_dir, n))["pid"] for n in (0, 2, 3)]
    assert len(set(pids)) == 3
    log = done.stdout + done.stderr
    assert log.count("more than hydra.launcher.worker_max_rss_gb=0.01") >= 2
    assert "trial 1 is recorded failed" in log
    summary = (sweep_dir / "summary.csv").read_text()
    assert summary.count(",failed,") == 1


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two slots of one core")
def test_a_worker_with_no_trial_left_stops_while_the_last_trials_run(tmp_path):
    """Once the sweep has launched its last trial, a worker that ends its trial gets no other: it stops
    then, not at the sweep's end, leaving the machine to the last trials and the report."""
    sweep_dir, done = sweep(tmp_path, "tail", *PROBE, "hydra/launcher=parallel", "hydra.launcher.cpus_per_task=1",
                            "trainer.max_epochs=1", "trainer.seed=0,1,2")
    assert done.returncode == 0, done.stderr
    assert [read_result(trial(sweep_dir, n))["status"] for n in range(3)] == ["completed"] * 3
    log = done.stdout + done.stderr
    assert "stops: the sweep has no trial left for it" in log
    assert (sweep_dir / "summary.csv").exists()


@pytest.mark.e2e
def test_a_worker_that_cannot_start_stops_the_sweep_with_its_log(tmp_path):
    # its package exists, so the sweep's own check passes; the worker's import fails
    sweep_dir, done = sweep(tmp_path, "nostart", *PROBE, *one_slot(), "trainer.max_epochs=1",
                            "hydra.launcher.preload=[json.no_such_module_anywhere]", "model.pollute=false,true")
    assert done.returncode != 0
    assert "could not start" in done.stderr and "hydra.launcher.preload=['json.no_such_module_anywhere']" in done.stderr
    assert "No module named 'json.no_such_module_anywhere'" in done.stderr
    assert "Traceback" not in done.stderr.split("could not start")[0]
    assert not list(sweep_dir.glob("0_*"))


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_fail_fast_interrupts_the_running_trials_and_starts_no_more(tmp_path):
    # trial 0 fails once trial 1 has trained an epoch (of 200); trial 2 must never start
    cores = len(os.sched_getaffinity(0))
    if cores < 2:
        pytest.skip("needs two cores: two trials at once")
    sweep_dir, done = sweep(tmp_path, "fail_fast", *PROBE, "hydra/launcher=parallel",
                            f"hydra.launcher.cpus_per_task={max(1, cores // 2)}", "trainer.max_epochs=200",
                            "fail_fast=true", "model.fail_after_epoch_of=1,null,null")
    assert done.returncode != 0 and "failing on purpose" in done.stderr
    assert read_result(trial(sweep_dir, 0))["status"] == "failed"
    interrupted = read_result(trial(sweep_dir, 1))
    assert interrupted["status"] == "interrupted" and 1 <= interrupted["epochs"] < 200
    assert (trial(sweep_dir, 1) / "checkpoints" / "last.pt").exists()  # it resumes when the sweep runs again
    assert not list(sweep_dir.glob("2_*"))


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_a_trial_past_its_time_limit_saves_a_checkpoint_and_is_recorded_failed(tmp_path):
    # 3 s for a trial of 500 epochs: it is stopped mid-way, and the next trial runs on a new worker
    sweep_dir, done = sweep(tmp_path, "timeout", *PROBE, *one_slot(), "hydra.launcher.timeout_min=0.05",
                            "trainer.max_epochs=500,1")
    assert done.returncode == 0, done.stderr
    stopped, after = read_result(trial(sweep_dir, 0)), read_result(trial(sweep_dir, 1))
    assert stopped["status"] == "failed" and "hydra.launcher.timeout_min=0.05" in stopped["reason"]
    assert 1 <= stopped["epochs"] < 500 and (trial(sweep_dir, 0) / "checkpoints" / "last.pt").exists()
    assert after["status"] == "completed"



def test_trials_still_queued_when_the_sweep_stops_come_back_as_not_started():
    """A stop (fail_fast, the failure rate) while a trial waits for a worker being replaced: the pool
    answers for that trial too, or the sweep would wait forever for a trial that never runs."""
    from omegaconf import OmegaConf

    from hydra_plugins.runner_plugins.config import ParallelLauncherConf
    from launchers.workers import WorkerPool

    settings = OmegaConf.merge(OmegaConf.structured(ParallelLauncherConf), {"gpus": ""})
    pool = WorkerPool(settings, None, None, OmegaConf.create({"hydra": {"sweep": {"dir": "/nonexistent"}}}))
    # as submit() leaves them while their worker is being replaced
    pool.queue += [(4, ["optimizer.lr=0.1"]), (5, ["optimizer.lr=0.01"])]
    pool.interrupt()
    finished = pool.wait(0)
    assert [(f.number, f.lost) for f in finished] == [(4, "not started: the sweep is stopping"),
                                                      (5, "not started: the sweep is stopping")]
    assert pool.wait(0) == []
