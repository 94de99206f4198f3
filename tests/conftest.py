"""Shared fixtures: compose the real conf/ in-process, run the real CLI, write tiny MNIST files."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

import runner  # noqa: F401  (registers the resolvers the configs use)

if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    # `make test` runs two test processes: each trains in-process on its share of the cores, not on all
    # of them at once (the CLI's subprocesses pick their own threads, as a user's would)
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
# small and quick: synthetic images, one short epoch, nothing written but result files
TINY = [
    "dataset=synthetic",
    "trainer.max_epochs=1",
    "trainer.batch_size=32",
    "logger=none",
]


def compose_config(overrides: list[str] = ()) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def refused_before_training(overrides: list[str], run_dir: Path) -> str:
    """Train the composed config in this process, as the CLI would: it must be refused with a ConfigError
    before the first epoch, leaving no metrics and no checkpoint; returns the error's message. (How the CLI
    shows such an error, without a traceback, is tested through the CLI in test_cli and test_sequence_tasks.)"""
    from runner.errors import ConfigError
    from runner.results import read_result
    from runner.run.train import RunContext, train

    with pytest.raises(ConfigError) as refused:
        train(compose_config(overrides), RunContext(run_dir=run_dir))
    assert not (run_dir / "metrics.csv").exists() and not (run_dir / "checkpoints").exists()
    result = read_result(run_dir)  # none when the config itself is refused, before the run is recorded
    assert result is None or (result["status"] == "failed" and result["epochs"] == 0)
    return str(refused.value)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """One data folder for the session, so mnist_5k is decoded once."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture
def compose_cfg():
    return compose_config


@pytest.fixture
def signal_at_step(monkeypatch):
    """`arm(n)` makes a SIGTERM arrive right after optimizer step n, as a scheduler's signal would, until
    `disarm()`; the run saves a checkpoint at that step and ends (SystemExit)."""
    import signal

    from runner.run import fit as fit_module

    original = fit_module.Fit._step

    def arm(step: int) -> None:
        calls = {"n": 0}

        def step_then_signal(self, *args):
            out = original(self, *args)
            calls["n"] += 1
            if calls["n"] == step:
                signal.raise_signal(signal.SIGTERM)
            return out

        monkeypatch.setattr(fit_module.Fit, "_step", step_then_signal)

    def disarm() -> None:
        monkeypatch.setattr(fit_module.Fit, "_step", original)

    arm.disarm = disarm
    return arm


@pytest.fixture
def run_cli(tmp_path):
    """Run `python -m runner ARGS` as a user would; outputs under tmp_path unless ARGS say otherwise."""

    def run(*args: str, timeout: float = 300, env: dict | None = None, cwd: Path = REPO) -> subprocess.CompletedProcess:
        inherited = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
        full_env = {**inherited, "RUNNER_OUTPUT_DIR": str(tmp_path / "outputs"), **(env or {})}
        return subprocess.run([sys.executable, "-m", "runner", *args], cwd=cwd, env=full_env,
                              capture_output=True, text=True, timeout=timeout)

    return run


def trials(sweep_dir: Path) -> list[Path]:
    """A sweep's trial folders (those with a .hydra/), in trial-number order."""
    return sorted((p for p in sweep_dir.iterdir() if (p / ".hydra").is_dir()), key=lambda p: int(p.name.split("_")[0]))


def kill_when(process: subprocess.Popen, condition, timeout: float = 240) -> None:
    """SIGKILL the process group of `process` (a sweep started with start_new_session=True, its workers
    included) as soon as `condition()` holds; fails if the sweep ends first or never gets there."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, "the sweep ended before it could be killed"
        assert time.monotonic() < deadline, "the sweep never reached the point to kill it"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def kill_at_second_trial_checkpoint(command: list[str], sweep_dir: Path, env: dict) -> None:
    """Start the sweep `command` (whose trials go to sweep_dir) and SIGKILL it, workers and all, once its
    second trial has saved a checkpoint: the first trial done, the second one mid-way."""

    def second_trial_mid_way() -> bool:
        folders = trials(sweep_dir) if sweep_dir.exists() else []
        return len(folders) >= 2 and (folders[1] / "checkpoints" / "last.pt").exists()

    process = subprocess.Popen(command, cwd=REPO, env=env, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_when(process, second_trial_mid_way)


def write_idx_images(path: Path, images) -> None:
    """IDX3 (big-endian magic 0x00000803, count, rows, cols, then uint8 pixels), as torchvision reads it."""
    n, rows, cols = images.shape
    path.write_bytes(struct.pack(">IIII", 0x803, n, rows, cols) + images.astype("uint8").tobytes())


def write_idx_labels(path: Path, labels) -> None:
    path.write_bytes(struct.pack(">II", 0x801, len(labels)) + labels.astype("uint8").tobytes())


@pytest.fixture
def mnist_root(tmp_path) -> Path:
    """A data folder holding a tiny MNIST (64 train / 32 test digits) in torchvision's raw layout."""
    import numpy as np

    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    for name in ("MNIST", "FashionMNIST", "KMNIST"):
        raw = root / name / "raw"
        raw.mkdir(parents=True)
        for split, n in (("train", 64), ("t10k", 32)):
            labels = np.arange(n) % 10
            images = (rng.random((n, 28, 28)) * 60 + labels[:, None, None] * 19).clip(0, 255)
            write_idx_images(raw / f"{split}-images-idx3-ubyte", images)
            write_idx_labels(raw / f"{split}-labels-idx1-ubyte", labels)
    return root


def pytest_collection_modifyitems(config, items):
    """A test that runs the CLI is an e2e test. Under `pytest -n 2` (make test), the SLURM tests share one
    worker, one after another: they share the one-machine cluster, whose CPUs and preemptions each of them
    counts on having to itself."""
    for item in items:
        if "run_cli" in item.fixturenames:
            item.add_marker(pytest.mark.e2e)  # it runs the real CLI: not part of `make test-fast`
        if item.get_closest_marker("slurm") is not None:
            item.add_marker(pytest.mark.xdist_group("slurm"))
