"""Trackers against their real stores: MLflow runs read back from their SQLite file with MlflowClient,
W&B offline runs read back with the wandb package's own reader of its transaction log (`wandb leet
inspect`). A resumed run continues its tracker run without duplicate steps; every file logger drops
what a crashed attempt logged after its last checkpoint; a store that cannot be used fails the run
clearly, before training, or is dropped mid-run while the run's own files go on."""

from __future__ import annotations

import csv
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from runner.run import fit as fit_module
from runner.run.callbacks import flat_hparams
from runner.errors import RunnerError, TrialFailed
from runner.results import read_metrics, read_result
from runner.run.train import RunContext, train
from tests.conftest import REPO

# four steps per epoch, a logged step each
SMALL = ["dataset=synthetic", "trainer.batch_size=64", "trainer.log_every_n_steps=1", "trainer.max_epochs=2"]
NOT_LOGGED_PER_STEP = ("epoch", "step", "time_s")


@pytest.fixture(scope="session")
def blank_mlflow_store(tmp_path_factory) -> Path:
    """An MLflow SQLite store with its tables created (six seconds of schema migrations), copied by each test."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def outputs(tmp_path, blank_mlflow_store, monkeypatch) -> Path:
    """paths.output_dir (and RUNNER_OUTPUT_DIR) of a test, holding a fresh copy of the blank store."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    folder = tmp_path / "outputs"
    folder.mkdir()
    shutil.copy(blank_mlflow_store, folder / "mlflow.db")
    return folder


def fit(compose_cfg, run_dir: Path, overrides: list[str], outputs: Path, sweep_dir: Path | None = None) -> float:
    return train(compose_cfg([*overrides, f"paths.output_dir={outputs}"]), RunContext(run_dir=run_dir, sweep_dir=sweep_dir))


def mlflow_client(outputs: Path):
    from mlflow import MlflowClient

    return MlflowClient(f"sqlite:///{outputs / 'mlflow.db'}")


def runs_of(client) -> list:
    experiment = client.get_experiment_by_name("runner")
    return client.search_runs([experiment.experiment_id]) if experiment else []


def history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def assert_no_duplicate_steps(client, run) -> None:
    for key in run.data.metrics:
        steps = Counter(step for step, _ in history(client, run.info.run_id, key))
        assert [s for s, n in steps.items() if n > 1] == [], key


def assert_epochs_match_metrics_csv(client, run, run_dir: Path) -> None:
    """Every metrics.csv column, at each epoch's step, is the MLflow metric of that name at that step."""
    rows = read_metrics(run_dir)
    for column in rows[0]:
        if column in NOT_LOGGED_PER_STEP:
            continue
        logged = dict(history(client, run.info.run_id, column))
        assert [(row["step"], logged.get(row["step"])) for row in rows] == \
               [(row["step"], pytest.approx(row[column])) for row in rows], column


# ---------------------------------------------------------------- MLflow


def test_tracker_settings_follow_their_environment_variables(compose_cfg, monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    cfg = compose_cfg(["logger=[mlflow,wandb]", f"paths.output_dir={tmp_path}"])
    assert (cfg.logger.mlflow.tracking_uri, cfg.logger.wandb.mode) == (f"sqlite:///{tmp_path}/mlflow.db", "offline")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert (cfg.logger.mlflow.tracking_uri, cfg.logger.wandb.mode) == ("http://127.0.0.1:5000", "disabled")



def test_mlflow_run_holds_the_metrics_config_status_and_best_of_the_run(compose_cfg, tmp_path, outputs):
    run_dir = tmp_path / "run"
    overrides = [*SMALL, "logger=mlflow", "logger.mlflow.log_best_checkpoint=true", "optimizer=sgd"]
    fit(compose_cfg, run_dir, overrides, outputs)
    client = mlflow_client(outputs)
    (run,) = runs_of(client)
    result = read_result(run_dir)
    assert run.info.run_id == json.loads((run_dir / "mlflow_run.json").read_text())["run_id"]
    assert run.info.run_name == "run" and run.info.status == "FINISHED"
    assert run.data.tags["status"] == "completed" and run.data.tags["run_dir"] == str(run_dir)

    assert_epochs_match_metrics_csv(client, run, run_dir)
    assert [step for step, _ in history(client, run.info.run_id, "train/loss_step")] == list(range(1, 9))
    assert_no_duplicate_steps(client, run)
    assert run.data.metrics["best/val/acc"] == result["objective"]["value"]
    assert run.data.metrics["best/epoch"] == result["objective"]["epoch"]

    cfg = compose_cfg([*overrides, f"paths.output_dir={outputs}"])
    assert run.data.params == {key: str(value) for key, value in flat_hparams(cfg).items()}
    assert run.data.params["optimizer.lr"] == str(cfg.optimizer.lr) == "0.05"
    assert run.data.params["optimizer._target_"] == "torch.optim.SGD"

    artifacts = Path(run.info.artifact_uri)
    assert (artifacts / "config.txt").read_text() == OmegaConf.to_yaml(cfg)
    assert (artifacts / "checkpoints" / "best.pt").read_bytes() == (run_dir / "checkpoints" / "best.pt").read_bytes()
    assert (artifacts / "media" / "val" / "predictions" / "step_00000008.png").is_file()
    assert (artifacts / "media" / "val" / "confusion_matrix" / "step_00000008.png").is_file()


def test_interrupted_and_resumed_run_is_one_mlflow_run_without_duplicate_steps(compose_cfg, tmp_path, outputs,
                                                                               signal_at_step):
    run_dir, overrides = tmp_path / "run", [*SMALL, "logger=mlflow"]
    signal_at_step(6)  # in the second epoch
    with pytest.raises(SystemExit):
        fit(compose_cfg, run_dir, overrides, outputs)
    client = mlflow_client(outputs)
    (interrupted,) = runs_of(client)
    assert interrupted.info.status == "KILLED" and interrupted.data.tags["status"] == "interrupted"

    signal_at_step.disarm()
    fit(compose_cfg, run_dir, overrides, outputs)
    (run,) = runs_of(client)
    assert run.info.run_id == interrupted.info.run_id
    assert run.info.status == "FINISHED" and run.data.tags["status"] == "completed"
    assert [step for step, _ in history(client, run.info.run_id, "train/loss_step")] == list(range(1, 9))
    assert_no_duplicate_steps(client, run)
    assert_epochs_match_metrics_csv(client, run, run_dir)


class Crash(RuntimeError):
    pass


def test_a_run_resumed_after_a_crash_drops_what_every_logger_got_after_the_checkpoint(compose_cfg, tmp_path, outputs,
                                                                                     monkeypatch):
    """The crashed attempt logged step 9 after the checkpoint of step 8: TensorBoard, CSV and MLflow keep it once."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "run"
    overrides = [*SMALL, "trainer.max_epochs=3", "logger=[tensorboard,csv,mlflow]"]
    original_step = fit_module.Fit._step
    calls = {"n": 0}

    def step_then_crash(self, *args):
        calls["n"] += 1
        if calls["n"] == 10:  # step 9 was logged, the checkpoint is at step 8
            raise Crash("the node went away")
        return original_step(self, *args)

    monkeypatch.setattr(fit_module.Fit, "_step", step_then_crash)
    with pytest.raises(TrialFailed, match="Crash: the node went away") as error:
        fit(compose_cfg, run_dir, overrides, outputs)
    assert isinstance(error.value.__cause__, Crash)
    assert read_result(run_dir)["status"] == "failed"
    monkeypatch.setattr(fit_module.Fit, "_step", original_step)
    fit(compose_cfg, run_dir, overrides, outputs)  # resumes from the checkpoint of step 8

    with (run_dir / "scalars.csv").open() as f:
        rows = [(int(row["step"]), row["tag"]) for row in csv.DictReader(f)]
    assert [row for row, n in Counter(rows).items() if n > 1] == []
    assert sorted(step for step, tag in rows if tag == "train/loss_step") == list(range(1, 13))

    events = EventAccumulator(str(run_dir / "tensorboard")).Reload()
    assert [e.step for e in events.Scalars("train/loss_step")] == list(range(1, 13))
    assert [e.step for e in events.Scalars("val/acc")] == [4, 8, 12]

    client = mlflow_client(outputs)
    (run,) = runs_of(client)
    assert [step for step, _ in history(client, run.info.run_id, "train/loss_step")] == list(range(1, 13))
    assert_no_duplicate_steps(client, run)
    assert_epochs_match_metrics_csv(client, run, run_dir)


def test_mlflow_store_that_cannot_be_written_fails_the_run_before_training_and_loses_nothing(compose_cfg, tmp_path,
                                                                                            outputs):
    run_dir = tmp_path / "run"
    fit(compose_cfg, run_dir, [*SMALL, "trainer.max_epochs=1", "logger=csv"], outputs)
    kept = {name: (run_dir / name).read_bytes() for name in ("metrics.csv", "checkpoints/last.pt", "scalars.csv")}
    (tmp_path / "a_file").write_text("not a folder")
    bad_store = f"sqlite:///{tmp_path / 'a_file' / 'mlflow.db'}"

    with pytest.raises(RunnerError, match=r"cannot use the MLflow store sqlite:///.*a_file/mlflow.db: .*File exists: "
                                          r".*a_file'; set logger.mlflow.tracking_uri"):
        fit(compose_cfg, run_dir, [*SMALL, "logger=[csv,mlflow]", f"logger.mlflow.tracking_uri={bad_store}"], outputs)
    result = read_result(run_dir)
    assert result["status"] == "failed" and "cannot use the MLflow store" in result["reason"]
    assert {name: (run_dir / name).read_bytes() for name in kept} == kept

    fit(compose_cfg, run_dir, [*SMALL, "logger=csv"], outputs)  # the second epoch, from the kept checkpoint
    assert read_result(run_dir)["status"] == "completed" and len(read_metrics(run_dir)) == 2


class DeleteTheMlflowRun:
    """A user's callback that deletes the run's MLflow run after the first epoch: the store refuses what follows."""

    def on_epoch_end(self, fit, metrics):
        if fit.progress.epoch == 1:
            record = json.loads((fit.run_dir / "mlflow_run.json").read_text())
            from mlflow import MlflowClient

            MlflowClient(record["tracking_uri"]).delete_run(record["run_id"])


def test_a_tracker_that_fails_mid_run_is_dropped_and_the_run_goes_on(compose_cfg, tmp_path, outputs, caplog):
    run_dir = tmp_path / "run"
    fit(compose_cfg, run_dir, [*SMALL, "logger=[mlflow,csv]",
                               "+callbacks.delete={_target_: tests.test_trackers.DeleteTheMlflowRun}"], outputs)
    result = read_result(run_dir)
    assert result["status"] == "completed" and result["epochs"] == 2 and len(read_metrics(run_dir)) == 2
    assert (run_dir / "checkpoints" / "last.pt").exists()
    assert "logger.mlflow failed in log_metrics" in caplog.text and "the run goes on without it" in caplog.text
    with (run_dir / "scalars.csv").open() as f:
        assert max(int(row["step"]) for row in csv.DictReader(f)) == 8  # the other logger went on


# ---------------------------------------------------------------- W&B


def wandb_records(run_file: Path) -> list[dict]:
    """Every record of a W&B transaction log (.wandb), read by the wandb package's own reader."""
    done = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(run_file)],
                          capture_output=True, text=True, timeout=60, check=True)
    return [json.loads(line) for line in done.stdout.splitlines()]


def wandb_summary(run_file: Path) -> dict:
    done = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--summary", "--json", str(run_file)],
                          capture_output=True, text=True, timeout=60, check=True)
    return json.loads(done.stdout)


def wandb_files(run_dir: Path) -> list[Path]:
    """The run's offline transaction logs, one per attempt, oldest first."""
    return sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"))


def test_wandb_offline_run_holds_scalars_config_summary_images_histograms_and_resumes_its_id(
        compose_cfg, tmp_path, outputs, signal_at_step):
    run_dir = tmp_path / "run"
    overrides = [*SMALL, "logger=wandb", "trainer.histograms_every_n_epochs=1", "trainer.predictions_every_n_epochs=1",
                 "trainer.num_prediction_samples=5"]
    signal_at_step(6)
    with pytest.raises(SystemExit):
        fit(compose_cfg, run_dir, overrides, outputs)
    signal_at_step.disarm()
    fit(compose_cfg, run_dir, overrides, outputs)

    first, second = wandb_files(run_dir)
    run_id = json.loads((run_dir / "wandb_run.json").read_text())["id"]
    assert first.name == second.name == f"run-{run_id}.wandb"
    records = [wandb_records(first), wandb_records(second)]
    for attempt in records:
        (start,) = [r["run"] for r in attempt if r["type"] == "run"]
        assert (start["run_id"], start["display_name"], start["job_type"], start["project"]) == (
            run_id, "run", "train", "runner")
    assert any(r["type"] == "preempting" for r in records[0])
    assert [r["exit"]["exit_code"] for r in records[0] + records[1] if r["type"] == "exit"] == [1, 0]

    rows = [r["history"]["item"] for attempt in records for r in attempt if r["type"] == "history"]
    assert [row["_step"] for row in rows if "train/loss_step" in row] == list(range(1, 9))
    for epoch in read_metrics(run_dir):
        (row,) = [row for row in rows if row["_step"] == epoch["step"]]
        assert row["val/acc"] == pytest.approx(epoch["val/acc"]) and row["train/loss"] == pytest.approx(epoch["train/loss"])
        assert row["val/predictions._type"] == "images/separated" and row["val/predictions.count"] == 5
        assert len(row["val/predictions.captions"]) == 5 and all("✓" in c or "✗" in c for c in row["val/predictions.captions"])
        assert row["val/confusion_matrix._type"] == "image-file"
        assert any(key.startswith("weights/") and key.endswith("._type") and row[key] == "histogram" for key in row)
        assert any(key.startswith("gradients/") for key in row)
    images = list(run_dir.glob("wandb/offline-run-*/files/media/images/val/predictions_*.png"))
    assert len(images) == 10  # five per evaluated epoch

    summary = wandb_summary(second)
    result = read_result(run_dir)
    assert summary["state"] == "finished"
    assert summary["summary"]["best/val/acc"] == result["objective"]["value"]
    assert summary["summary"]["best/epoch"] == result["objective"]["epoch"]
    assert summary["summary"]["status"] == "completed"
    cfg = compose_cfg([*overrides, f"paths.output_dir={outputs}"])
    assert summary["config"]["optimizer.lr"] == cfg.optimizer.lr
    assert set(summary["config"]) == set(flat_hparams(cfg))


def test_logging_media_leaves_the_matplotlib_backend_a_user_chose(outputs, tmp_path):
    """A run inside a user's process (a notebook, a script with its own plots) must not switch its
    backend: the loggers draw on Figure objects of their own, never through pyplot."""
    probe = textwrap.dedent(f"""
        import matplotlib, torch
        from matplotlib.figure import Figure
        from components.loggers import CSVLogger, ConsoleLogger, MLflowLogger, TensorBoardLogger, WandbLogger

        run_dir = {str(tmp_path / "run")!r}
        figure = Figure()
        figure.subplots().plot([0, 1], [1, 0])
        for logger in (TensorBoardLogger(run_dir), CSVLogger(run_dir), ConsoleLogger(run_dir),
                       MLflowLogger(run_dir, tracking_uri="sqlite:///{outputs / 'mlflow.db'}"), WandbLogger(run_dir)):
            logger.log_metrics({{"val/acc": 0.5}}, 1)
            logger.log_images("val/predictions", torch.rand(3, 1, 8, 8), ["0 (true 0) ✓", "1 (true 2) ✗", "2 ✓"], 1)
            logger.log_figure("val/confusion_matrix", figure, 1)
            logger.set_status("completed", None)
            logger.close()
        print("backend:", matplotlib.get_backend())
    """)
    (tmp_path / "run").mkdir()
    # svg: a non-interactive backend other than Agg, importable without a display
    env = {**os.environ, "MPLBACKEND": "svg", "WANDB_MODE": "offline"}
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "backend: svg", done.stdout + done.stderr
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))


# ---------------------------------------------------------------- sweeps, the report, the CLI


@pytest.mark.e2e
@pytest.mark.timeout(420)
def test_parallel_sweep_is_one_mlflow_parent_run_with_a_child_per_trial_ranked_as_the_report(run_cli, tmp_path,
                                                                                            outputs):
    """Two trials start at once in their own processes: one creates the sweep's run, both find it."""
    sweep_dir = tmp_path / "sweep"
    done = run_cli("--multirun", "hydra/launcher=parallel", "logger=[mlflow,wandb]", "dataset=synthetic",
                   "trainer.max_epochs=1", "trainer.batch_size=64", "optimizer.lr=0.1,0.01,0.001",
                   f"hydra.sweep.dir={sweep_dir}", timeout=400)
    assert done.returncode == 0, done.stderr
    client = mlflow_client(outputs)
    runs = runs_of(client)
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(runs) == 4 and len(children) == 3
    assert parent.info.run_name == "sweep" and parent.info.status == "FINISHED"

    with (sweep_dir / "summary.csv").open() as f:
        ranked = list(csv.DictReader(f))
    assert sorted(r.info.run_name for r in children) == sorted(row["name"] for row in ranked)
    by_rank = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
                                 order_by=["metrics.rank ASC"])
    assert [r.info.run_name for r in by_rank] == [row["name"] for row in ranked]
    assert [r.data.metrics["rank"] for r in by_rank] == [int(row["rank"]) for row in ranked] == [1, 2, 3]
    assert [r.data.metrics["best/val/acc"] for r in by_rank] == [pytest.approx(float(row["objective"])) for row in ranked]
    for child in children:
        lr = child.info.run_name.split("optimizer.lr=")[1].split(",")[0]
        assert child.data.params["optimizer.lr"] == lr
        assert child.data.tags["model"] == "lenet" and child.data.tags["dataset"] == "synthetic"
        assert child.info.status == "FINISHED"
    assert parent.data.params["objective.metric"] == "val/acc" and parent.data.params["trainer.max_epochs"] == "1"
    assert parent.data.tags["best_trial"] == ranked[0]["name"]
    assert parent.data.metrics["best/val/acc"] == pytest.approx(float(ranked[0]["objective"]))
    assert {"summary.csv", "report.png", "best.yaml"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}

    for row in ranked:  # W&B: the trials of a sweep share its group and are named after their folders
        (start,) = [r["run"] for r in wandb_records(*wandb_files(sweep_dir / row["name"])) if r["type"] == "run"]
        assert (start["run_group"], start["display_name"]) == ("sweep", row["name"])
    report_run = wandb_records(*sweep_dir.glob("wandb/offline-run-*/run-*.wandb"))
    (start,) = [r["run"] for r in report_run if r["type"] == "run"]
    assert (start["run_group"], start["job_type"]) == ("sweep", "sweep")
    assert any("ranking._type" in r["history"]["item"] for r in report_run if r["type"] == "history")

    again = subprocess.run([sys.executable, "-m", "runner.report", str(sweep_dir), "--tracker", "mlflow"], cwd=REPO,
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert f"Summary sent to MLflow run {parent.info.run_id}" in again.stdout
    assert len(runs_of(client)) == 4


@pytest.mark.e2e
def test_report_refuses_a_tracker_the_trials_did_not_log_to(run_cli, tmp_path, outputs):
    sweep_dir = tmp_path / "sweep"
    done = run_cli("--multirun", "logger=csv", "dataset=synthetic", "trainer.max_epochs=1", "optimizer.lr=0.1,0.01",
                   f"hydra.sweep.dir={sweep_dir}")
    assert done.returncode == 0, done.stderr
    for tracker, name in (("mlflow", "MLflow"), ("wandb", "W&B")):
        refused = subprocess.run([sys.executable, "-m", "runner.report", str(sweep_dir), "--tracker", tracker],
                                 cwd=REPO, capture_output=True, text=True, timeout=120)
        assert refused.returncode == 1 and f"no trial of {sweep_dir} logged to {name}" in refused.stderr
        assert "Traceback" not in refused.stderr
    unknown = subprocess.run([sys.executable, "-m", "runner.report", str(sweep_dir), "--tracker", "comet"], cwd=REPO,
                             capture_output=True, text=True, timeout=120)
    assert unknown.returncode == 2 and "'mlflow', 'wandb'" in unknown.stderr


@pytest.mark.e2e
def test_locked_mlflow_database_fails_the_run_with_one_message(run_cli, outputs):
    database = sqlite3.connect(outputs / "mlflow.db", isolation_level=None)
    database.execute("BEGIN EXCLUSIVE")  # another process holding the store
    try:
        done = run_cli("logger=mlflow", "dataset=synthetic", "trainer.max_epochs=1")
    finally:
        database.close()
    assert done.returncode == 1
    assert "cannot use the MLflow store" in done.stderr and "database is locked" in done.stderr
    assert "Traceback" not in done.stderr
    (run_dir,) = (outputs / "runs").iterdir()
    assert read_result(run_dir)["status"] == "failed"


@pytest.mark.parametrize("args", [["--cfg", "job"], ["optimizer.lr=0"]])
def test_config_work_imports_no_tracker(args):
    probe = textwrap.dedent(f"""
        import sys, runpy
        sys.argv = ["runner", "logger=[mlflow,wandb]", *{args!r}]
        try:
            runpy.run_module("runner", run_name="__main__")
        except SystemExit:
            pass
        print(sorted(m for m in ("torch", "mlflow", "wandb") if m in sys.modules))
    """)
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.stdout.strip().endswith("[]"), done.stdout + done.stderr
