"""The slurm_workers launcher on a real SLURM cluster (launchers/slurm/start.sh): warm worker jobs that
take a sweep's trials from files in its folder. They train what a job per trial trains, a worker
killed or preempted mid-trial loses nothing, every job has ended when the sweep has, and a sweep
killed and run again runs each trial once, and Hydra's own batch sweeper runs on them too."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from launchers.trial_queue import TrialQueue
from runner.results import read_metrics, read_result
from tests.conftest import REPO
from tests.slurm_cluster import job_name, job_states, slurm_cluster  # noqa: F401  (fixtures)
from tests.test_slurm import numbers, trial_dirs, wait_for

pytestmark = [pytest.mark.slurm, pytest.mark.e2e]

WARM = ["hydra/launcher=slurm_workers", "hydra.launcher.cpus_per_task=1"]
# the same numbers wherever and however often a trial runs
DETERMINISTIC = ["dataset=synthetic", "trainer.batch_size=32", "trainer.deterministic=true", "logger=none"]


def sweep_command(sweep: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "runner", "--multirun", *overrides, f"hydra.sweep.dir={sweep}"]


def runs_of_each_trial(sweep: Path) -> dict[int, int]:
    """Trial number -> how many times a worker started it (each start heads the trial's output file)."""
    return {int(p.stem): len(re.findall(r"^=== trial \d+, worker pid", p.read_text(), flags=re.M))
            for p in (sweep / ".workers").glob("*.out")}


def worker_jobs(sweep: Path) -> list[str]:
    return TrialQueue(sweep).registered_jobs()


def comparable(trial: Path) -> tuple:
    result = read_result(trial)
    return result["status"], numbers(result["final_metrics"]), [numbers(row) for row in read_metrics(trial)]


@pytest.mark.timeout(300)
def test_warm_workers_train_what_a_job_per_trial_trains(job_name, tmp_path):
    grid = ["trainer.max_epochs=2", "optimizer.lr=0.1,0.01", "trainer.seed=0,1,2,3"]
    env = {**os.environ, "RUNNER_OUTPUT_DIR": str(tmp_path / "outputs")}
    warm, cold = tmp_path / "warm", tmp_path / "cold"
    for sweep, launcher in ((warm, [*WARM, "hydra.launcher.num_workers=4"]),
                            (cold, ["hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1"])):
        done = subprocess.run(sweep_command(sweep, *launcher, f"hydra.launcher.name={job_name}", *DETERMINISTIC, *grid),
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, done.stderr[-3000:]
    warm_trials, cold_trials = trial_dirs(warm), trial_dirs(cold)
    assert [t.name for t in warm_trials] == [t.name for t in cold_trials] and len(warm_trials) == 8
    for warm_trial, cold_trial in zip(warm_trials, cold_trials):
        assert comparable(warm_trial) == comparable(cold_trial), warm_trial.name
    # 8 trials, 4 worker jobs: each job ran trial after trial, each trial once
    jobs = worker_jobs(warm)
    assert len(jobs) == 4
    assert runs_of_each_trial(warm) == {n: 1 for n in range(8)}
    pids = {re.search(r"worker pid (\d+)", p.read_text()).group(1) for p in (warm / ".workers").glob("*.out")}
    assert len(pids) <= 4
    # the command returned only once every worker job had ended, each one COMPLETED
    assert [job_states(job_id, timeout=5) for job_id in jobs] == [["COMPLETED"]] * 4
    queue = TrialQueue(warm)
    assert queue.unclaimed() == [] and queue.leases() == [] and queue.is_marked("closed")


@pytest.mark.timeout(400)
def test_killed_and_preempted_workers_lose_no_trial(job_name, tmp_path):
    """Four identical trials (log_every_n_steps changes no number) on four workers. Once trials 1 to 3
    have each trained an epoch: trial 1's worker job is cancelled with `scancel --signal=KILL` (SLURM
    stops the job step: TERM, then KILL), trial 2's gets USR2 (as at preemption: submitit requeues the
    job) and trial 3's worker process is killed outright (kill -9, as when its node dies: no lease is
    renewed, no clean-up). Each of the three ends where trial 0, never interrupted, ends."""
    sweep = tmp_path / "sweep"
    command = sweep_command(sweep, *WARM, "hydra.launcher.num_workers=4", f"hydra.launcher.name={job_name}",
                            *DETERMINISTIC, "dataset.num_train=2048", "trainer.max_epochs=3",
                            "trainer.log_every_n_steps=50,51,52,53")
    driver = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, "RUNNER_OUTPUT_DIR": str(tmp_path / "outputs")})
    try:
        queue = TrialQueue(sweep)
        holders = {}
        for number in (1, 2, 3):
            trial = wait_for(lambda: next(sweep.glob(f"{number}_*"), None), 120)
            wait_for(lambda: len(read_metrics(trial)) >= 1, 120)
            holders[number] = next(worker for n, worker, _ in queue.leases() if n == number)
        pid = int(re.search(r"worker pid (\d+)", (sweep / ".workers" / "3.out").read_text()).group(1))
        subprocess.run(["scancel", "--signal=KILL", holders[1]], check=True)
        subprocess.run(["scancel", "--signal=USR2", holders[2]], check=True)
        os.kill(pid, signal.SIGKILL)
        output, _ = driver.communicate(timeout=240)
    finally:
        driver.kill()
    assert driver.returncode == 0, output[-4000:]
    reference, *interrupted = trial_dirs(sweep)
    assert read_result(reference)["status"] == "completed"
    for trial in interrupted:
        assert comparable(trial) == comparable(reference), trial.name
    # each interrupted trial started twice (the second time a worker resumed it from its checkpoint)
    assert runs_of_each_trial(sweep) == {0: 1, 1: 2, 2: 2, 3: 2}
    assert "checkpoint saved mid-epoch" in (interrupted[0] / "runner.log").read_text()
    assert "checkpoint saved mid-epoch" in (interrupted[1] / "runner.log").read_text()
    # the killed process saved nothing: its trial went back once SLURM reported its job ended
    assert f"trial 3 goes back to the queue: its worker job {holders[3]} ended" in output
    assert "mid-epoch" not in (interrupted[2] / "runner.log").read_text().split("resumed from")[0]
    # the preempted worker job was requeued by submitit, ran again and ended with the sweep
    assert job_states(holders[2]) == ["REQUEUED", "COMPLETED"]
    assert not queue.leases() and not queue.unclaimed()


@pytest.mark.timeout(400)
def test_a_sweep_killed_and_run_again_runs_each_trial_once(job_name, tmp_path):
    sweep = tmp_path / "sweep"
    command = sweep_command(sweep, *WARM, "hydra.launcher.num_workers=2", f"hydra.launcher.name={job_name}",
                            *DETERMINISTIC, "dataset.num_train=1024", "trainer.max_epochs=2",
                            "optimizer.lr=0.1,0.05,0.01,0.005,0.001,0.0005")
    env = {**os.environ, "RUNNER_OUTPUT_DIR": str(tmp_path / "outputs")}
    driver = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # killed (SIGKILL: no clean-up) once two trials have their results and two more are running
        wait_for(lambda: len(TrialQueue(sweep).results()) >= 2 and len(TrialQueue(sweep).leases()) >= 1, 180)
        driver.send_signal(signal.SIGKILL)
        driver.wait(10)
    finally:
        driver.kill()
    again = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert again.returncode == 0, again.stderr[-4000:]
    trials = trial_dirs(sweep)
    assert len(trials) == 6 and all(read_result(t)["status"] == "completed" for t in trials)
    assert runs_of_each_trial(sweep) == {n: 1 for n in range(6)}
    # the second run found the first run's two workers still running and submitted none
    assert len(worker_jobs(sweep)) == 2
    assert "2 worker job(s) of this sweep still run and go on" in again.stdout
    assert [job_states(job_id, timeout=5) for job_id in worker_jobs(sweep)] == [["COMPLETED"]] * 2


def test_bad_worker_settings_are_refused_before_any_job(run_cli, tmp_path):
    done = run_cli("--multirun", *WARM, "hydra.launcher.num_workers=0", "dataset=synthetic", "optimizer.lr=0.1,0.01",
                   timeout=60)
    assert done.returncode != 0
    assert "hydra.launcher.num_workers must be a positive integer, got 0" in done.stderr
    assert "Traceback" not in done.stderr
    done = run_cli("--multirun", *WARM, "hydra.launcher.lease_s=0", "dataset=synthetic", "optimizer.lr=0.1,0.01",
                   timeout=60)
    assert done.returncode != 0 and "hydra.launcher.lease_s must be a positive number, got 0" in done.stderr


def test_hydras_own_sweeper_runs_its_batch_on_the_warm_workers(job_name, run_cli, tmp_path):
    done = run_cli("--multirun", "hydra/sweeper=basic", *WARM, "hydra.launcher.num_workers=2",
                   f"hydra.launcher.name={job_name}", "dataset=synthetic", "trainer.max_epochs=1", "logger=none",
                   "optimizer.lr=0.1,0.01,0.001", timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    (sweep,) = (tmp_path / "outputs" / "sweeps").iterdir()
    trials = trial_dirs(sweep)
    assert len(trials) == 3 and all(read_result(t)["status"] == "completed" for t in trials)
    # the command returned once its worker jobs had left SLURM's queue
    queued = subprocess.run(["squeue", "-h", f"--name={job_name}"], capture_output=True, text=True, check=True)
    assert queued.stdout.strip() == ""
    assert [job_states(job_id, timeout=5) for job_id in worker_jobs(sweep)] == [["COMPLETED"]] * 2
