"""Launcher presets (hydra/launcher=local|parallel|slurm|slurm_gpu) compose with every field
overridable; `parallel` runs trials side by side, no more at once than its slots allow; every
preset works from any folder, into a sweep folder whose name needs quoting; detach quotes it."""

from __future__ import annotations

import os
import re
import threading
from datetime import datetime

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

from launchers.detach import hydra_quote, resolve_sweep_dir
from launchers.pools import ThreadedPool, pool_for
from launchers.workers import check_preload, make_slots
from runner.errors import ConfigError
from runner.results import read_result
from tests.conftest import CONF, TINY


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


def test_parallel_preset_runs_warm_workers_with_every_field_overridable():
    parallel = launcher("hydra/launcher=parallel", "hydra.launcher.cpus_per_task=3",
                        "hydra.launcher.max_trials_per_worker=1", "hydra.launcher.gpus=''")
    assert parallel._target_ == "hydra_plugins.runner_plugins.launchers.ParallelLauncher"
    assert (parallel.cpus_per_task, parallel.max_trials_per_worker, parallel.gpus) == (3, 1, "")
    assert "torch" in parallel.preload


@pytest.mark.parametrize("cores,cpus,gpus,expected", [
    (4, 1, "", [(0, None), (1, None), (2, None), (3, None)]),
    (4, 2, "", [(0, None), (1, None)]),
    (4, 1, "3,5", [(0, "3"), (1, "5")]),  # one trial per GPU
])
def test_slots_split_the_cores_and_give_each_its_own_gpu(monkeypatch, cores, cpus, gpus, expected):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)))
    slots = make_slots(cpus, gpus)
    assert [(slot.index, slot.gpu) for slot in slots] == expected
    env = slots[-1].environment({"PATH": "/bin"})
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == str(cpus) and env["PATH"] == "/bin"
    assert env["CUDA_VISIBLE_DEVICES"] == (expected[-1][1] or "") and env["RUNNER_SLOT"] == str(expected[-1][0])


@pytest.mark.parametrize("bad", [0, -1, "2;touch /tmp/x", True])
def test_a_bad_cpus_per_task_is_refused_naming_it(bad):
    with pytest.raises(ConfigError, match=f"hydra.launcher.cpus_per_task must be a positive integer, got {bad!r}"):
        make_slots(bad, "")


def test_more_cores_per_trial_than_the_machine_has_are_refused(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    with pytest.raises(ConfigError, match=r"cpus_per_task=3 is more than the 2 core\(s\) this process may use"):
        make_slots(3, "")


def test_a_preload_module_that_is_not_installed_is_refused_before_any_worker_starts():
    check_preload(["torch", "json.decoder"])
    with pytest.raises(ConfigError, match="hydra.launcher.preload names 'no_such_module_anywhere'"):
        check_preload(["torch", "no_such_module_anywhere"])


@pytest.mark.parametrize("gpus", ["garbage", "0,gpu1", "1;rm"])
def test_gpu_ids_that_cuda_would_not_take_are_refused(gpus):
    with pytest.raises(ConfigError, match=re.escape(f"hydra.launcher.gpus={gpus!r}")):
        make_slots(1, gpus)


@pytest.mark.e2e
def test_a_bad_cpus_per_task_stops_the_sweep_before_any_trial(run_cli, tmp_path):
    done = run_cli("--multirun", "hydra/launcher=parallel", "hydra.launcher.cpus_per_task=0", *TINY,
                   "optimizer.lr=0.1,0.01", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert done.returncode == 1
    assert "hydra.launcher.cpus_per_task must be a positive integer, got 0" in done.stderr
    assert "Traceback" not in done.stderr and not list((tmp_path / "sweep").glob("0_*"))


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


# a space, a quote, a comma, an equals sign, a percent sign and a backslash
AWKWARD = "sweep dir's, a=b 100% \\x"


@pytest.mark.e2e
@pytest.mark.timeout(300)
@pytest.mark.parametrize("preset", ["local", "parallel"])
def test_every_preset_works_from_any_folder_into_an_awkward_sweep_folder(run_cli, tmp_path, preset):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    sweep_dir = tmp_path / AWKWARD
    done = run_cli("--multirun", f"hydra/launcher={preset}", *TINY, "optimizer.lr=0.1,0.01",
                   f"hydra.sweep.dir={hydra_quote(str(sweep_dir))}", cwd=elsewhere, timeout=280)
    assert done.returncode == 0, done.stderr
    results = [read_result(p.parent) for p in sweep_dir.glob("*/result.json")]
    assert len(results) == 2 and all(r["status"] == "completed" for r in results)
    assert (sweep_dir / "summary.csv").exists()


@pytest.mark.parametrize("value", [AWKWARD, "/x/it's, here", "end\\", "q\\'x", "${oc.env:HOME}", "\\${x}", "[a,b]"])
def test_hydra_quote_keeps_any_value_literal(value):
    (override,) = OverridesParser.create().parse_overrides([f"hydra.sweep.dir={hydra_quote(value)}"])
    assert not override.is_sweep_override()
    assert OmegaConf.create({"dir": override.value()}).dir == value


def test_detach_composes_the_sweep_folder_as_the_sweep_does(tmp_path, monkeypatch):
    monkeypatch.setenv("RUNNER_OUTPUT_DIR", str(tmp_path / "out"))
    # sweep overrides (a grid, a Nevergrad interval) compose as in a multirun
    resolved = resolve_sweep_dir(["optimizer.lr=0.1,0.01", "sweep=nevergrad", "model=lenet,mlp"])
    assert resolved.parent == tmp_path / "out" / "sweeps"
    awkward = tmp_path / AWKWARD
    assert resolve_sweep_dir(["optimizer.lr=interval(0.001,0.1)", f"hydra.sweep.dir={hydra_quote(str(awkward))}"]) == awkward
    with pytest.raises(Exception, match="Could not find 'model/nope'"):
        resolve_sweep_dir(["model=nope"])


class BlockingLauncher:
    """A launcher of some other Hydra plugin: launch() runs a batch and returns when it is done.
    Here each trial waits until the test releases it."""

    def __init__(self):
        self.release = {number: threading.Event() for number in range(3)}
        self.started: list[int] = []

    def launch(self, job_overrides, initial_job_idx):
        self.started.append(initial_job_idx)
        assert len(job_overrides) == 1  # one trial per launch
        self.release[initial_job_idx].wait(timeout=30)
        ret = JobReturn(overrides=list(job_overrides[0]), status=JobStatus.COMPLETED)
        ret.return_value = float(initial_job_idx)
        return [ret]


def test_any_other_launcher_runs_one_trial_per_launch_and_reports_each_as_it_ends():
    launcher = BlockingLauncher()
    pool = pool_for(launcher, hydra_context=None, task_function=None, config=None)
    assert isinstance(pool, ThreadedPool)
    pool.submit(0, ["a=0"])
    pool.submit(1, ["a=1"])
    assert pool.wait(timeout=0.05) == []  # nothing has ended
    launcher.release[1].set()  # the second ends first, and is reported without waiting for the first
    (finished,) = pool.wait(timeout=30)
    assert (finished.number, finished.overrides, finished.job_return.return_value) == (1, ["a=1"], 1.0)
    pool.submit(2, ["a=2"])
    launcher.release[0].set()
    launcher.release[2].set()
    ended = []
    while len(ended) < 2:
        ended += [f.number for f in pool.wait(timeout=30)]
    assert sorted(ended) == [0, 2] and sorted(launcher.started) == [0, 1, 2]


class FailingLauncher:
    def launch(self, job_overrides, initial_job_idx):
        raise RuntimeError(f"no cluster for job {initial_job_idx}")


def test_a_launch_that_raises_is_a_lost_trial_with_the_launchers_error_and_the_pool_goes_on():
    pool = pool_for(FailingLauncher(), hydra_context=None, task_function=None, config=None)
    pool.submit(3, ["a=3"])
    (finished,) = pool.wait(timeout=30)
    assert finished.number == 3 and finished.job_return is None
    assert finished.lost.startswith("the launcher failed: no cluster for job 3")
    assert "Traceback" in finished.lost
    assert pool.wait(timeout=0.01) == []  # nothing else in flight
    pool.close()
