"""Resume never changes the experiment; every failure keeps its cause; a shared data folder has no races."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from runner.errors import ConfigError, RunnerError
from runner.results import read_metrics, read_result
from runner.run.train import RunContext, train
from tests.conftest import REPO, TINY


def fit(compose_cfg, run_dir, overrides) -> float:
    return train(compose_cfg(overrides), RunContext(run_dir=run_dir))


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under the folder with its content's hash, the run's log aside (it records the refusal)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "runner.log"}


# ---------------------------------------------------------------- what may change


@pytest.mark.parametrize("scheduler", ["onecycle", "cosine", "step"])
def test_a_resume_with_more_epochs_trains_them_on_the_schedule_for_the_new_length(compose_cfg, tmp_path, scheduler):
    common = [*TINY, f"scheduler={scheduler}", "optimizer=sgd", "trainer.deterministic=true"]
    fit(compose_cfg, tmp_path / "cut", [*common, "trainer.max_epochs=2"])
    fit(compose_cfg, tmp_path / "cut", [*common, "trainer.max_epochs=4"])  # completed, more epochs: resumes
    fit(compose_cfg, tmp_path / "whole", [*common, "trainer.max_epochs=4"])
    resumed, whole = read_metrics(tmp_path / "cut"), read_metrics(tmp_path / "whole")
    result = read_result(tmp_path / "cut")
    assert result["status"] == "completed" and result["epochs"] == 4 and [r["epoch"] for r in resumed] == [1, 2, 3, 4]
    # after the resume the rate follows the 4-epoch schedule, as the run that had 4 epochs from the start
    assert resumed[-1]["lr"] == pytest.approx(whole[-1]["lr"], rel=1e-6)
    if scheduler != "step":  # its length does not follow max_epochs: nothing to rebuild
        assert resumed[1]["lr"] != pytest.approx(whole[1]["lr"])  # the first 2 epochs ran on the 2-epoch schedule


@pytest.mark.parametrize("change,key", [
    ("model=mlp", "model._target_"),
    ("optimizer=sgd", "optimizer._target_"),
    ("optimizer.lr=0.01", "optimizer.lr"),
    ("dataset.seed=1", "dataset.seed"),
    ("trainer.batch_size=16", "trainer.batch_size"),
])
def test_a_resume_that_would_change_the_experiment_is_refused_and_changes_nothing(compose_cfg, tmp_path, change, key):
    fit(compose_cfg, tmp_path, [*TINY, "trainer.max_epochs=1"])
    before = snapshot(tmp_path)
    with pytest.raises(ConfigError) as error:
        fit(compose_cfg, tmp_path, [*TINY, "trainer.max_epochs=2", change])
    message = str(error.value)
    assert f"  - {key}: " in message and "in the checkpoint" in message and "trainer.resume=never" in message
    assert "trainer.max_epochs" not in message.split("Keys a resume may change")[0]  # a key that may change
    assert snapshot(tmp_path) == before


def test_a_finished_run_is_read_back_only_for_the_config_it_ran(compose_cfg, tmp_path):
    fit(compose_cfg, tmp_path, [*TINY, "trainer.max_epochs=1"])
    before = snapshot(tmp_path)
    with pytest.raises(ConfigError) as error:
        fit(compose_cfg, tmp_path, [*TINY, "trainer.max_epochs=1", "optimizer.lr=0.0123"])
    message = str(error.value)
    assert "already completed with another config" in message and "  - optimizer.lr: " in message
    assert snapshot(tmp_path) == before
    # only keys a resume may change differ: the result is read back, nothing trained or written
    value = fit(compose_cfg, tmp_path, [*TINY, "trainer.max_epochs=1", "trainer.log_every_n_steps=3"])
    assert value == read_result(tmp_path)["objective"]["value"]
    assert snapshot(tmp_path) == before


def test_a_resume_may_change_how_the_run_is_watched_and_stored(compose_cfg, tmp_path):
    fit(compose_cfg, tmp_path, [*TINY, "trainer.max_epochs=1"])
    fit(compose_cfg, tmp_path, [*TINY, "trainer.max_epochs=2", "logger=csv", "trainer.log_every_n_steps=1",
                                "trainer.stop.time_budget_s=3600", "trainer.early_stopping.patience=5"])
    assert read_result(tmp_path)["epochs"] == 2


def test_a_resume_below_the_epochs_done_is_refused(compose_cfg, tmp_path):
    # stopped by a signal after 2 epochs, resumed with 1
    fit(compose_cfg, tmp_path, [*TINY, "trainer.max_epochs=3", "+callbacks.stop={_target_: tests.test_callbacks.StopAtEpoch, epoch: 2}"])
    result = json.loads((tmp_path / "result.json").read_text())
    (tmp_path / "result.json").write_text(json.dumps({**result, "status": "interrupted"}))
    with pytest.raises(ConfigError, match="trainer.max_epochs=1 is below the 2 epochs this run has done"):
        fit(compose_cfg, tmp_path, [*TINY, "trainer.max_epochs=1",
                                    "+callbacks.stop={_target_: tests.test_callbacks.StopAtEpoch, epoch: 2}"])


# ---------------------------------------------------------------- errors keep their cause


@pytest.mark.parametrize("overrides,message", [
    (["dataset.num_train=-1"], "could not build dataset (components.datasets.synthetic): RuntimeError"),
    (["model=mlp", "model.hidden_sizes=[-5]"], "could not build model (components.models.MLP): RuntimeError"),
    (["loss=multi_margin", "+loss.criterion.p=3"], "could not build loss (torch.nn.MultiMarginLoss): ValueError: only p == 1 and p == 2 supported"),
    (["optimizer=sgd", "optimizer.momentum=-0.5"], "could not build optimizer (torch.optim.SGD): ValueError: Invalid momentum value: -0.5"),
    (["scheduler=onecycle", "scheduler.fn.pct_start=2.0"], "could not build scheduler (torch.optim.lr_scheduler.OneCycleLR): ValueError"),
    (["logger=csv", "logger.csv.filename=no/such/folder/scalars.csv"], "could not build logger.csv (components.loggers.csv_logs.CSVLogger): FileNotFoundError"),
    (["+callbacks.keep={_target_: components.callbacks.EpochCheckpoints, every_n_epochs: 0}"],
     "could not build callbacks.keep (components.callbacks.EpochCheckpoints): ValueError: every_n_epochs=0 must be an int >= 1"),
])
def test_every_construction_step_fails_with_one_message_and_its_traceback_kept(compose_cfg, tmp_path, overrides, message):
    with pytest.raises(RunnerError) as error:
        fit(compose_cfg, tmp_path, [*TINY, *overrides])
    assert message in str(error.value)
    assert error.value.__cause__ is not None  # the underlying error stays the cause
    result = read_result(tmp_path)
    assert result["status"] == "failed" and message in result["reason"]
    assert result["traceback"].startswith("Traceback") and message.split(": ")[-1] in result["traceback"]


@pytest.mark.e2e
def test_a_failure_shows_its_message_on_the_terminal_and_its_traceback_in_the_log(run_cli, tmp_path):
    run_dir = tmp_path / "run"
    done = run_cli(*TINY, "optimizer=sgd", "optimizer.momentum=-0.5", f"hydra.run.dir={run_dir}")
    assert done.returncode == 1
    assert "could not build optimizer (torch.optim.SGD): ValueError: Invalid momentum value: -0.5" in done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    log = (run_dir / "runner.log").read_text()
    assert "Traceback (most recent call last)" in log and "Invalid momentum value" in log


@pytest.mark.e2e
def test_a_bug_in_a_users_model_keeps_its_own_error(run_cli, tmp_path):
    (tmp_path / "buggy.py").write_text(textwrap.dedent("""
        import torch
        class Buggy(torch.nn.Module):
            def __init__(self, num_classes):
                super().__init__()
                self.linear = torch.nn.Linear(784, num_classes)
            def forward(self, x):
                return self.linear(x.flatten(1)) / undefined_name
    """))
    done = run_cli(*TINY, "model._target_=buggy.Buggy", "~model.in_channels", "~model.image_size",
                   f"hydra.run.dir={tmp_path / 'run'}", env={"PYTHONPATH": str(tmp_path)})
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "model buggy.Buggy fails on a batch of dataset" in done.stderr
    assert "NameError: name 'undefined_name' is not defined" in done.stderr


# ---------------------------------------------------------------- a shared data folder

DECODE_COUNTER = "decodes.txt"


def slow_decode(root: str) -> dict:
    """What a first decode does, slowly: the other processes arrive while it runs."""
    import time

    with open(Path(root) / DECODE_COUNTER, "a") as f:
        f.write(f"{os.getpid()}\n")
    time.sleep(1.0)
    generator = torch.Generator().manual_seed(0)
    return {"inputs": torch.randint(0, 255, (500, 1, 8, 8), dtype=torch.uint8, generator=generator)}


def test_four_processes_building_one_uncached_dataset_decode_it_once(tmp_path):
    start = tmp_path / "go"
    script = textwrap.dedent(f"""
        import hashlib, time
        from pathlib import Path
        from components.datasets.cache import cached
        from tests.test_resume import slow_decode
        root = {str(tmp_path / "data")!r}
        while not Path({str(start)!r}).exists():
            time.sleep(0.005)
        tensors = cached(root, "shared", lambda: slow_decode(root))
        print(hashlib.sha256(tensors["inputs"].numpy().tobytes()).hexdigest())
    """)
    (tmp_path / "data").mkdir()
    processes = [subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True)
                 for _ in range(4)]
    start.touch()
    digests = [p.communicate(timeout=120)[0].strip() for p in processes]
    assert [p.returncode for p in processes] == [0] * 4
    assert len(set(digests)) == 1 and digests[0]
    assert len((tmp_path / "data" / DECODE_COUNTER).read_text().splitlines()) == 1
    assert sorted(p.name for p in (tmp_path / "data" / "runner_cache").iterdir()) == ["shared.pt", "shared.pt.lock"]
