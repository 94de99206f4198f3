"""Data-parallel training on CPU processes (gloo): the same numbers as one process, an exact resume, one
writer, and a rank's failure that ends the run with that rank's error."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from runner.results import read_metrics, read_result
from runner.run.train import RunContext, train
from tests.conftest import REPO
from tests.test_tasks import tensorboard_tags

pytestmark = pytest.mark.e2e

# an MLP without dropout: two processes must then give one process's numbers, up to summation order
COMMON = ["dataset=synthetic", "model=mlp", "logger=none", "trainer.batch_size=32", "trainer.deterministic=true"]
DDP2 = ["trainer.strategy=ddp", "trainer.devices=2"]
SPEED = ("time_s", "train/samples_per_s")


def numbers(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in SPEED} for row in rows]


def run_dir_files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def test_two_processes_give_one_processs_metrics(run_cli, tmp_path):
    # 256 samples in global batches of 32 (16 a rank), 71 validation samples shared unevenly (36 + 35)
    for name, extra in (("ddp", DDP2), ("one", [])):
        done = run_cli(*COMMON, *extra, "trainer.max_epochs=3", "dataset.num_val=71", f"hydra.run.dir={tmp_path / name}")
        assert done.returncode == 0, done.stderr
    two, one = numbers(read_metrics(tmp_path / "ddp")), numbers(read_metrics(tmp_path / "one"))
    assert [row.keys() for row in two] == [row.keys() for row in one]
    for a, b in zip(two, one):
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), key
    result = read_result(tmp_path / "ddp")
    assert result["status"] == "completed" and result["test_metrics"]["test/acc"] == pytest.approx(
        read_result(tmp_path / "one")["test_metrics"]["test/acc"])
    # rank 0 alone writes the run's files; rank 1 keeps only its own log
    assert run_dir_files(tmp_path / "ddp") - run_dir_files(tmp_path / "one") == {"runner.rank1.log"}


# a collective that one rank enters alone fails within this, instead of trainer.collective_timeout_s
QUICK_TIMEOUT = "trainer.collective_timeout_s=30"


def test_the_default_run_on_two_processes_logs_its_media_and_tests_its_best_checkpoint(run_cli, tmp_path):
    # the defaults as a user runs them (mnist_5k, LeNet, TensorBoard, media at the last epoch); the
    # confusion matrix once synchronised on rank 0 alone, which hung until the collective's timeout
    run = tmp_path / "run"
    done = run_cli(*DDP2, "trainer.max_epochs=1", "trainer.limit_train_batches=10", QUICK_TIMEOUT,
                   f"hydra.run.dir={run}", timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = read_result(run)
    assert result["status"] == "completed" and result["test_epoch"] == 1 and "test/acc" in result["test_metrics"]
    assert {"val/predictions", "val/confusion_matrix"} <= set(tensorboard_tags(run)["images"])
    assert "could not log" not in (run / "runner.log").read_text()


def test_every_builtin_callback_and_logger_on_two_processes(run_cli, tmp_path):
    # a one-trial sweep, for the pruner; every logger, histograms and media every epoch, each stopping rule
    sweep = tmp_path / "sweep"
    done = run_cli("-m", *DDP2, "pruner=asha", "logger=[tensorboard,csv,console,mlflow,wandb]",
                   "callbacks=epoch_checkpoints", "callbacks.epoch_checkpoints.every_n_epochs=1",
                   "scheduler=plateau", "trainer.max_epochs=2", "trainer.limit_train_batches=10",
                   "trainer.histograms_every_n_epochs=1", "trainer.predictions_every_n_epochs=1",
                   "trainer.early_stopping.patience=5", "trainer.stop.objective_threshold=0.999",
                   "trainer.stop.time_budget_s=600", QUICK_TIMEOUT, f"hydra.sweep.dir={sweep}",
                   env={"WANDB_MODE": "offline"}, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (trial,) = [path.parent for path in sweep.glob("*/result.json")]
    result = read_result(trial)
    assert result["status"] == "completed" and result["epochs"] == 2 and result["test_metrics"]
    assert {"val/predictions", "val/confusion_matrix"} <= set(tensorboard_tags(trial)["images"])
    assert any(tag.startswith("weights/") for tag in tensorboard_tags(trial)["histograms"])
    assert (trial / "checkpoints" / "epoch_0002.pt").is_file() and (trial / "pruning.jsonl").is_file()
    assert (trial / "mlflow_run.json").is_file() and (trial / "wandb_run.json").is_file()
    assert "could not log" not in (trial / "runner.log").read_text()


def test_a_collective_on_rank_0_alone_fails_naming_where_each_rank_was(run_cli, tmp_path):
    (tmp_path / "lonely.py").write_text(textwrap.dedent("""
        import torch
        import torch.distributed as dist


        class AllReduceOnRank0:
            def on_epoch_end(self, fit, metrics):
                dist.all_reduce(torch.ones(1))  # rank 0 alone runs callbacks: nobody joins
    """))
    run = tmp_path / "run"
    started = time.monotonic()
    done = run_cli(*COMMON, *DDP2, "trainer.max_epochs=1", "+callbacks.lonely._target_=lonely.AllReduceOnRank0",
                   "trainer.collective_timeout_s=10", f"hydra.run.dir={run}", env={"PYTHONPATH": str(tmp_path)},
                   timeout=240)
    assert done.returncode == 1 and "Traceback" not in done.stdout + done.stderr, done.stderr
    assert "rank 0 was in callback lonely (on_epoch_end)" in done.stderr
    assert "rank 1 was in the stop decision after epoch 1" in done.stderr
    assert "trainer.collective_timeout_s=10" in done.stderr
    result = read_result(run)
    assert result["status"] == "failed" and "callback lonely (on_epoch_end)" in result["reason"]
    assert time.monotonic() - started < 120


def test_an_uneven_last_batch_trains_as_one_process_would(run_cli, tmp_path, compose_cfg):
    """250 samples in batches of 32: the last batch of 26 is shared 13 + 13; with batches of 24 the last
    is 10, shared 5 + 5; the loss weights keep the gradient the whole batch's mean."""
    args = [*COMMON, "trainer.max_epochs=2", "dataset.num_train=250", "trainer.batch_size=24"]
    done = run_cli(*args, *DDP2, f"hydra.run.dir={tmp_path / 'ddp'}")
    assert done.returncode == 0, done.stderr
    train(compose_cfg(args), RunContext(run_dir=tmp_path / "one"))
    for a, b in zip(numbers(read_metrics(tmp_path / "ddp")), numbers(read_metrics(tmp_path / "one"))):
        assert a["train/loss"] == pytest.approx(b["train/loss"], rel=1e-5) and a["val/loss"] == pytest.approx(b["val/loss"], rel=1e-5)
        assert a["step"] == b["step"]


def wait_for(condition, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_two_process_run_interrupted_mid_epoch_resumes_exactly(tmp_path):
    args = [*COMMON, *DDP2, "dataset.num_train=2048", "trainer.batch_size=16", "trainer.max_epochs=2"]
    env = {**os.environ, "RUNNER_OUTPUT_DIR": str(tmp_path / "outputs")}
    command = [sys.executable, "-m", "runner", *args]
    whole = subprocess.run([*command, f"hydra.run.dir={tmp_path / 'whole'}"], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=600)
    assert whole.returncode == 0, whole.stdout + whole.stderr
    cut = tmp_path / "cut"
    process = subprocess.Popen([*command, f"hydra.run.dir={cut}"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    wait_for(lambda: (cut / "metrics.csv").exists())  # in the second epoch
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, output
    assert read_result(cut)["status"] == "interrupted" and "checkpoint saved mid-epoch 2" in output
    done = subprocess.run([*command, f"hydra.run.dir={cut}"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    assert "resumed from" in (cut / "runner.log").read_text()
    assert numbers(read_metrics(cut)) == numbers(read_metrics(tmp_path / "whole"))


FAILING_MODEL = textwrap.dedent("""
    import torch
    import torch.distributed as dist

    class FailsOnRank1(torch.nn.Module):
        def __init__(self, num_classes):
            super().__init__()
            self.linear = torch.nn.Linear(784, num_classes)
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            if self.training and dist.is_initialized() and dist.get_rank() == 1 and self.calls == 5:
                raise RuntimeError("rank 1's own bug")
            return self.linear(x.flatten(1))
""")


def test_a_rank_that_raises_fails_the_run_with_its_error_and_leaves_no_process(run_cli, tmp_path):
    (tmp_path / "failing.py").write_text(FAILING_MODEL)
    run = tmp_path / "run"
    started = time.monotonic()
    lenet_config = [arg for arg in COMMON if arg != "model=mlp"]  # whose keys the failing model takes, but two
    done = run_cli(*lenet_config, *DDP2, "model._target_=failing.FailsOnRank1", "~model.in_channels",
                   "~model.image_size", "trainer.collective_timeout_s=30", f"hydra.run.dir={run}",
                   env={"PYTHONPATH": str(tmp_path)}, timeout=240)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert "rank 1 failed: RuntimeError: rank 1's own bug" in done.stderr
    # once on the terminal (Hydra prints what the run raises), with the rank's log lines in their files
    assert (done.stdout + done.stderr).count("rank 1's own bug") == 1, done.stdout + done.stderr
    result = read_result(run)
    assert result["status"] == "failed" and "rank 1's own bug" in result["reason"]
    assert "rank 1's own bug" in result["traceback"] and "Traceback" in (run / "runner.log").read_text()
    assert time.monotonic() - started < 200  # not a collective's timeout away
    leftover = subprocess.run(["pgrep", "-f", str(run)], capture_output=True, text=True).stdout.split()
    assert leftover == []


def test_ddp_settings_are_checked_before_anything_runs(run_cli):
    done = run_cli("trainer.devices=2", "trainer.num_nodes=0")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "trainer.devices=2 needs trainer.strategy=ddp" in done.stderr
    assert "trainer.num_nodes=0 must be >= 1" in done.stderr


def test_several_nodes_outside_a_multi_node_launcher_are_refused(compose_cfg, tmp_path):
    """One process on one machine cannot be the ranks of other nodes: it would start them all here."""
    from runner.errors import ConfigError

    cfg = compose_cfg(["dataset=synthetic", "trainer.max_epochs=1", "logger=none", "trainer.strategy=ddp",
                       "trainer.num_nodes=2"])
    with pytest.raises(ConfigError, match="trainer.num_nodes=2 needs a launcher that starts every rank on every node"):
        train(cfg, RunContext(run_dir=tmp_path))
    assert read_result(tmp_path) is None
