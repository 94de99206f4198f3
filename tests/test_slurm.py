"""A real SLURM cluster (started by launchers/slurm/start.sh): plain submitit jobs, the USR2
hand-over that requeues a preempted job, and the runner's sweeps on it: a streaming grid, Hydra's
batch Nevergrad sweeper (job arrays) and the ask/tell one (a job per trial), preemption resumed to
the same metrics, and a sweep detached from the terminal into a folder whose name needs quoting."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import submitit

from runner.sweep.journal import Journal
from runner.results import read_metrics, read_result
from tests.conftest import REPO, TINY
from tests.test_sweeps import LONG_SECOND, asks_beside_a_running_trial
from tests.slurm_cluster import job_name, job_states, slurm_cluster, wait_for_jobs  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.slurm, pytest.mark.e2e]

# A standalone script that submits a task with submitit as the launcher submits a trial. The
# task loops (standing for optimizer steps) until USR2 comes, "saves" a file, then hands the
# signal to submitit's handler, which requeues the job; the requeued run reads the file back.
HAND_OVER_JOB = textwrap.dedent('''
    import json, os, signal, subprocess, sys, time
    from pathlib import Path
    import submitit

    class Task:
        def __call__(self, folder):
            folder = Path(folder)
            saved = folder / "saved.txt"
            if saved.exists():
                return {"read": saved.read_text(), "restart_count": os.environ.get("SLURM_RESTART_COUNT")}
            caught = []
            previous = signal.signal(signal.SIGUSR2, lambda signum, frame: caught.append(signum))
            (folder / "started").touch()
            deadline = time.monotonic() + 100
            while not caught and time.monotonic() < deadline:
                time.sleep(0.05)
            saved.write_text(f"saved by run {os.environ.get('SLURM_RESTART_COUNT', '0')}")
            previous(signal.SIGUSR2, None)
            return {"read": None, "restart_count": os.environ.get("SLURM_RESTART_COUNT")}

        def checkpoint(self, *args, **kwargs):  # what hydra-submitit-launcher's checkpoint() does
            return submitit.helpers.DelayedSubmission(self, *args, **kwargs)

    folder, how, name = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    executor = submitit.AutoExecutor(folder=folder / "%j", cluster="slurm", slurm_max_num_timeout=2)
    executor.update_parameters(name=name, slurm_partition="debug", cpus_per_task=1,
                               **({"timeout_min": 1, "slurm_signal_delay_s": 50} if how == "time_limit"
                                  else {"timeout_min": 60}))
    job = executor.submit(Task(), str(folder))
    while not (folder / "started").exists():
        time.sleep(0.05)
    if how == "preemption":  # a job of partition high needing the whole node preempts this one
        subprocess.run(["sbatch", "-p", "high", "--exclusive", f"--job-name={name}", "-o", "/dev/null",
                        "--wrap", "sleep 1"], check=True, capture_output=True)
    print(job.job_id)
    print(json.dumps(job.result()))
''')


def test_submitit_job_runs(job_name, tmp_path):
    executor = submitit.AutoExecutor(folder=tmp_path / "%j", cluster="slurm")
    executor.update_parameters(name=job_name, timeout_min=5, cpus_per_task=1)
    job = executor.submit(sum, [1, 2, 3])
    assert job.result() == 6
    assert job_states(job.job_id) == ["COMPLETED"]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", ["preemption", "time_limit"])
def test_usr2_handed_to_submitit_requeues_the_job(job_name, tmp_path, how):
    script = tmp_path / "hand_over.py"
    script.write_text(HAND_OVER_JOB)
    done = subprocess.run([sys.executable, str(script), str(tmp_path), how, job_name], cwd=tmp_path,
                          capture_output=True, text=True, timeout=110)
    assert done.returncode == 0, done.stderr
    job_id, result = done.stdout.split("\n")[:2]
    result = json.loads(result)
    # the second run read what the first one saved when the signal came
    assert result == {"read": "saved by run 0", "restart_count": "1"}
    assert job_states(job_id) == ["REQUEUED", "COMPLETED"]
    log = "".join(p.read_text() for p in tmp_path.glob(f"{job_id}/*_log.*"))
    assert f"this job is {'timed-out' if how == 'time_limit' else 'preempted'}" in log


def test_slurm_launcher_runs_a_grid_sweep(job_name, run_cli, tmp_path):
    started = time.monotonic()
    done = run_cli("--multirun", "hydra/launcher=slurm", f"hydra.launcher.name={job_name}", *TINY,
                   "optimizer.lr=0.1,0.01,0.001", timeout=120)
    seconds = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    (sweep,) = (tmp_path / "outputs" / "sweeps").iterdir()
    trials = trial_dirs(sweep)
    assert [t.name.split("_")[0] for t in trials] == ["0", "1", "2"]
    for trial, lr in zip(trials, ["0.1", "0.01", "0.001"]):
        result = read_result(trial)
        assert result["status"] == "completed" and f"optimizer.lr={lr}" in result["overrides"]
        assert result["objective"]["value"] is not None
    # one job per trial (the streaming sweeper submits each as a slot frees), its log inside the sweep folder
    jobs = job_ids(sweep)
    assert sorted(jobs) == [0, 1, 2] and len(set(jobs.values())) == 3
    for job_id in jobs.values():
        assert (sweep / ".submitit" / job_id / f"{job_id}_0_log.out").exists()
        assert job_states(job_id) == ["COMPLETED"]
    print(f"3-trial grid sweep on SLURM: {seconds:.1f} s from submit to results")


def test_slurm_launcher_runs_a_nevergrad_sweep(job_name, run_cli, tmp_path):
    done = run_cli("--multirun", "hydra/launcher=slurm", f"hydra.launcher.name={job_name}", *TINY,
                   "hydra/sweeper=nevergrad", "hydra.sweeper.optim.budget=4", "hydra.sweeper.optim.num_workers=2",
                   "hydra.sweeper.optim.maximize=true", "optimizer.lr=tag(log,interval(0.0001,0.1))", timeout=180)
    assert done.returncode == 0, done.stderr
    (sweep,) = (tmp_path / "outputs" / "sweeps").iterdir()
    trials = trial_dirs(sweep)
    assert len(trials) == 4
    assert all(read_result(t)["status"] == "completed" for t in trials)
    # two batches of two: two array jobs
    assert len(array_ids(sweep)) == 2


@pytest.mark.timeout(300)
def test_preempted_trial_resumes_to_the_same_metrics(job_name, tmp_path):
    """Two identical trials (log_every_n_steps changes no number); one gets USR2 mid-training,
    as SLURM sends it at preemption: it saves, is requeued, resumes, and ends where the other does."""
    trial, job_id, reference = preempt_the_second_of_two_trials(
        tmp_path, ["hydra/launcher=slurm", f"hydra.launcher.name={job_name}", "dataset=synthetic",
                   "dataset.num_train=2048", "trainer.batch_size=32", "trainer.max_epochs=3", "trainer.deterministic=true",
                   "logger=none", "trainer.log_every_n_steps=50,51"], epoch_s=120, finish_s=120)
    assert "checkpoint saved mid-epoch" in (trial / "runner.log").read_text()
    assert job_states(job_id) == ["REQUEUED", "COMPLETED"]
    resumed, uninterrupted = read_result(trial), read_result(reference)
    assert resumed["status"] == uninterrupted["status"] == "completed"
    assert resumed["steps"] == uninterrupted["steps"]
    assert numbers(resumed["final_metrics"]) == numbers(uninterrupted["final_metrics"])
    assert [numbers(row) for row in read_metrics(trial)] == [numbers(row) for row in read_metrics(reference)]


def test_detached_sweep_outlives_the_command(job_name, tmp_path):
    # from a folder other than the repository, into a sweep folder with a space, a quote and a comma
    outputs = tmp_path / "out dir's, here"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "RUNNER_OUTPUT_DIR": str(outputs)}
    done = subprocess.run(
        [sys.executable, "-m", "launchers.detach", f"--job-name={job_name}", "--",
         f"hydra.launcher.name={job_name}", *TINY, "optimizer.lr=0.1,0.01"],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    printed = dict(line.split(":", 1) for line in done.stdout.splitlines() if line.startswith(("driver", "sweep")))
    job_id, sweep, log = printed["driver job"].strip(), Path(printed["sweep dir"].strip()), printed["driver log"].strip()
    assert sweep.parent == outputs / "sweeps"
    # the command has returned; the driver job runs the sweep on its own
    wait_for_jobs(job_name, timeout=120)
    assert job_states(job_id) == ["COMPLETED"]
    trials = trial_dirs(sweep)
    assert len(trials) == 2 and all(read_result(t)["status"] == "completed" for t in trials)
    assert f"Sweep {sweep}: 2 trial(s) of a grid" in Path(log).read_text()


def test_nevergrad_on_slurm_keeps_its_slots_busy_one_job_per_trial(job_name, run_cli, tmp_path):
    # trial 1 trains 150 epochs, the others one: a slot freed by a short trial is taken at once
    done = run_cli("--multirun", "hydra/launcher=slurm", f"hydra.launcher.name={job_name}",
                   "hydra.launcher.cpus_per_task=1", *LONG_SECOND, "trainer.max_epochs=choice(1,150)", timeout=300)
    assert done.returncode == 0, done.stderr
    (sweep,) = (tmp_path / "outputs" / "sweeps").iterdir()
    trials = trial_dirs(sweep)
    assert len(trials) == 5 and all(read_result(t)["status"] == "completed" for t in trials)
    assert len(set(job_ids(sweep).values())) == 5
    beside, most = asks_beside_a_running_trial(sweep)
    assert most == 2 and 2 in beside, beside


def job_ids(sweep: Path) -> dict[int, str]:
    """Trial number -> its SLURM job id, from the sweep's journal."""
    return {e["number"]: e["job_id"] for e in Journal(sweep).read() if e["event"] == "job"}


def preempt_the_second_of_two_trials(tmp_path: Path, overrides: list[str], epoch_s: float,
                                     finish_s: float) -> tuple[Path, str, Path]:
    """Run a two-trial sweep whose trials train the same numbers; once trial 1 has trained an epoch,
    send its job USR2, as SLURM does at preemption, and wait for the sweep to end. Returns trial 1's
    folder, its job id and trial 0's folder (the same trial, never interrupted)."""
    env = {**os.environ, "RUNNER_OUTPUT_DIR": str(tmp_path / "outputs")}
    sweep = subprocess.Popen([sys.executable, "-m", "runner", "--multirun", *overrides], cwd=REPO, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        trial = wait_for(lambda: next((tmp_path / "outputs" / "sweeps").glob("*/1_*"), None), 120)
        wait_for(lambda: len(read_metrics(trial)) >= 1, epoch_s)
        job_id = wait_for(lambda: job_ids(trial.parent).get(1), 60)  # every task (rank) of the trial's job
        subprocess.run(["scancel", "--signal=USR2", job_id], check=True)
        output, _ = sweep.communicate(timeout=finish_s)
    finally:
        sweep.kill()
    assert sweep.returncode == 0, output
    (reference,) = trial.parent.glob("0_*")
    return trial, job_id, reference


def trial_dirs(sweep: Path) -> list[Path]:
    return sorted(p.parent for p in sweep.glob("*/result.json"))


def array_ids(sweep: Path) -> set[str]:
    """The SLURM array jobs of a sweep, from submitit's folders <array id>_<task id>."""
    return {p.name.split("_")[0] for p in (sweep / ".submitit").glob("*_*") if p.name.split("_")[0].isdigit()}


def numbers(row: dict) -> dict:
    """A metrics row without what measures speed rather than learning."""
    return {k: v for k, v in row.items() if k not in ("time_s", "train/samples_per_s")}


def wait_for(condition, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = condition()
        except (OSError, ValueError):  # a file caught halfway through its atomic replacement
            value = None
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError(f"not true after {timeout} s: {condition}")


@pytest.mark.timeout(400)
def test_a_two_task_trial_trains_as_two_ranks_and_resumes_after_preemption(job_name, tmp_path):
    """hydra/launcher=slurm_ddp: each trial is a job of 2 tasks, one rank each. Two identical trials
    (log_every_n_steps changes no number); one gets USR2 mid-training, as at preemption: its ranks stop
    at the same step, rank 0 writes the checkpoint, the job is requeued and ends where the other does."""
    trial, job_id, reference = preempt_the_second_of_two_trials(
        tmp_path, ["hydra/launcher=slurm_ddp", f"hydra.launcher.name={job_name}", "trainer.strategy=ddp",
                   "dataset=synthetic", "dataset.num_train=2048", "model=mlp", "trainer.batch_size=32",
                   "trainer.max_epochs=3", "trainer.deterministic=true", "logger=none", "trainer.log_every_n_steps=50,51"],
        epoch_s=180, finish_s=240)
    assert "checkpoint saved mid-epoch" in (trial / "runner.log").read_text()
    assert (trial / "runner.rank1.log").exists() and "rank 1 of 2 joined" in (trial / "runner.rank1.log").read_text()
    assert job_states(job_id) == ["REQUEUED", "COMPLETED"]
    resumed, uninterrupted = read_result(trial), read_result(reference)
    assert resumed["status"] == uninterrupted["status"] == "completed"
    assert [numbers(row) for row in read_metrics(trial)] == [numbers(row) for row in read_metrics(reference)]
