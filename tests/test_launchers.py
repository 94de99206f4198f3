"""Launcher presets (hydra/launcher=local|parallel|slurm|slurm_gpu) compose with every field
overridable, and `parallel` runs trials side by side, no more at once than its slots allow."""

from __future__ import annotations

import os
import subprocess
import time
from datetime import datetime

import pytest
from hydra import compose, initialize_config_dir

from launchers.detach import _is_sweep_override
from runner.results import read_result
from tests.conftest import CONF, REPO, TINY

SLOT_SCRIPT = REPO / "launchers" / "parallel_slot.sh"


def hydra_config(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=True).hydra


def launcher(*overrides: str):
    return hydra_config(*overrides).launcher


def test_local_is_the_basic_launcher_and_the_default():
    assert launcher()._target_ == launcher("hydra/launcher=local")._target_ == (
        "hydra._internal.core_plugins.basic_launcher.BasicLauncher")


def test_slurm_preset_requeues_timeouts_and_keeps_its_files_in_the_sweep():
    hydra = hydra_config("hydra/launcher=slurm")
    slurm = hydra.launcher
    assert slurm._target_.endswith("SlurmLauncher")
    assert slurm.submitit_folder == f"{hydra.sweep.dir}/.submitit/%j"
    assert slurm.max_num_timeout > 0 and slurm.signal_delay_s > 0
    assert any("OMP_NUM_THREADS" in line for line in slurm.setup)


def test_slurm_gpu_adds_a_gpu_to_slurm():
    gpu, cpu = launcher("hydra/launcher=slurm_gpu"), launcher("hydra/launcher=slurm")
    assert gpu.gpus_per_node == 1 and cpu.gpus_per_node is None
    assert gpu.max_num_timeout == cpu.max_num_timeout and list(gpu.setup) == list(cpu.setup)


def test_every_slurm_field_can_be_overridden():
    slurm = launcher("hydra/launcher=slurm_gpu", "hydra.launcher.partition=high", "hydra.launcher.timeout_min=5",
                     "hydra.launcher.gpus_per_node=4", "hydra.launcher.array_parallelism=2",
                     "+hydra.launcher.additional_parameters.mail-type=END")
    assert (slurm.partition, slurm.timeout_min, slurm.gpus_per_node, slurm.array_parallelism) == ("high", 5, 4, 2)
    assert slurm.additional_parameters == {"mail-type": "END"}


@pytest.mark.e2e
def test_cli_shows_the_launcher_fields(run_cli):
    done = run_cli("hydra/launcher=slurm", "hydra.launcher.partition=high", "--cfg", "hydra", "-p", "hydra.launcher")
    assert done.returncode == 0, done.stderr
    assert "partition: high" in done.stdout and "max_num_timeout: 3" in done.stdout


def test_parallel_preset_hands_out_slots():
    parallel = launcher("hydra/launcher=parallel", "hydra.launcher.cpus_per_task=3")
    assert parallel._target_.endswith("LocalLauncher")
    assert parallel.setup[0].startswith("set -- 3 ") and parallel.setup[1] == ". launchers/parallel_slot.sh"


def take_slot(tmp_path, cpus: int, gpus: str, cores: str = "0", hold: float = 0) -> subprocess.Popen:
    """Source the slot script as the parallel launcher does, on CORES; print what the trial gets."""
    script = (f"set -- {cpus} {tmp_path / 'slots'} '{gpus}' && . {SLOT_SCRIPT} && "
              f'echo "$RUNNER_SLOT $OMP_NUM_THREADS [$CUDA_VISIBLE_DEVICES]" && sleep {hold}')
    return subprocess.Popen(["taskset", "-c", cores, "sh", "-c", script], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_slot_gives_threads_and_a_gpu_per_trial(tmp_path):
    first = take_slot(tmp_path, 1, "3,5", cores="0,1", hold=5)
    assert first.stdout.readline().split() == ["0", "1", "[3]"]
    second = take_slot(tmp_path, 1, "3,5", cores="0,1")
    assert second.communicate(timeout=10)[0].split() == ["1", "1", "[5]"]
    first.kill()


def test_slot_waits_while_every_slot_is_taken(tmp_path):
    first = take_slot(tmp_path, 1, "", hold=1.5)  # one core, one slot
    assert first.stdout.readline().split() == ["0", "1", "[]"]
    started = time.monotonic()
    second = take_slot(tmp_path, 1, "")
    assert second.communicate(timeout=10)[0].split() == ["0", "1", "[]"]
    assert time.monotonic() - started > 1  # it got slot 0 only once the first trial ended
    first.wait()


def test_slot_refuses_a_bad_cpus_per_task(tmp_path):
    out, err = take_slot(tmp_path, 0, "").communicate(timeout=10)
    assert out == "" and "hydra.launcher.cpus_per_task must be a positive integer, got '0'" in err


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_parallel_sweep_runs_two_trials_at_a_time(run_cli, tmp_path):
    cores = len(os.sched_getaffinity(0))
    if cores < 2:
        pytest.skip("needs two cores")
    done = run_cli("--multirun", "hydra/launcher=parallel", f"hydra.launcher.cpus_per_task={cores // 2}", *TINY,
                   "optimizer.lr=0.1,0.01,0.001,0.0001", timeout=280)
    assert done.returncode == 0, done.stderr
    (sweep,) = (tmp_path / "outputs" / "sweeps").iterdir()
    results = [read_result(p.parent) for p in sweep.glob("*/result.json")]
    assert len(results) == 4 and all(r["status"] == "completed" for r in results)
    spans = [(datetime.fromisoformat(r["started_at"]), datetime.fromisoformat(r["finished_at"])) for r in results]
    running_at_each_start = [sum(s <= start < f for s, f in spans) for start, _ in spans]
    assert max(running_at_each_start) == 2, spans


@pytest.mark.parametrize("arg,sweep", [("optimizer.lr=0.1,0.01", True), ("optimizer.lr=interval(0.001,0.1)", True),
                                       ("optimizer.lr=0.1", False), ("hydra/launcher=slurm", False),
                                       ("--config-name", False)])
def test_detach_leaves_only_sweep_overrides_out_of_its_sweep_dir_question(arg, sweep):
    assert _is_sweep_override(arg) is sweep
