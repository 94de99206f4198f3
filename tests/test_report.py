"""The sweep report on synthetic sweep folders: what it ranks, writes, draws and prints."""

from __future__ import annotations

import csv
import os
import shlex
import signal
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from runner.report.hydra_callback import SweepReport
from runner.sweep.journal import Journal
from runner.report import format_in_flight, load_sweep, report
from runner.results import read_result, write_json_atomic, write_metrics

REPO = Path(__file__).resolve().parents[1]
METRIC = {"maximize": "val/acc", "minimize": "val/loss"}
# the other validation metric each epoch records next to the objective
PARTNER = {"val/acc": "val/loss", "val/loss": "val/acc"}
# A 2x2 grid (optimizer.lr x model) in every state a sweep can be in, plus a queued trial that
# has its .hydra/ but no result.json yet. The per-epoch objective values are read as accuracies
# when maximizing and as losses when minimizing, so the two goals rank them differently.
GRID = [
    # number, swept overrides,                    status,      objective per epoch, reason
    (0, ["optimizer.lr=0.1", "model=lenet"], "completed", [0.50, 0.70, 0.80], None),
    (1, ["optimizer.lr=0.1", "model=mlp"], "failed", [0.95], "loss is NaN at step 120"),
    (2, ["optimizer.lr=0.001", "model=lenet"], "pruned", [0.30, 0.40], "pruned: below the median at epoch 2"),
    (3, ["optimizer.lr=0.001", "model=mlp"], "running", [0.60, 0.75], None),
    (4, ["optimizer.lr=0.01", "model=lenet"], None, [], None),
]
# fixed for every trial: quoted so that the rerun command needs shell quoting
CONSTANT = ["trainer.max_epochs=3", "+trainer.note='lr grid'"]
# job numbers, best first, then failed and value-less trials by number
EXPECTED_ORDER = {"maximize": [0, 3, 2, 1, 4], "minimize": [2, 0, 3, 1, 4]}


def write_trial(sweep_dir: Path, number: int, overrides: list[str], goal: str, status: str | None,
                values: list[float], reason: str | None = None) -> Path:  # fmt: skip
    """A trial folder as a run leaves it: .hydra/ always; result.json and metrics.csv once training started."""
    metric = METRIC[goal]
    folder = sweep_dir / f"{number}_{','.join(overrides)}"
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"objective": {"metric": metric, "goal": goal}}))
    if status is None:
        return folder
    rows = [
        {"epoch": epoch, "step": 10 * epoch, "time_s": 1.5 * epoch, "lr": 0.1, "train/loss": 1.0 / epoch,
         metric: value, PARTNER[metric]: round(1 - value, 6)}
        for epoch, value in enumerate(values, start=1)
    ]  # fmt: skip
    pick = max if goal == "maximize" else min
    best = pick(rows, key=lambda row: row[metric])
    final = rows[-1]
    metric_names = ["train/loss", "val/acc", "val/loss"]
    write_metrics(folder, rows, ["epoch", "step", "time_s", "lr", *metric_names])
    write_json_atomic(
        folder / "result.json",
        {
            "status": status,
            "reason": reason,
            "objective": {"metric": metric, "goal": goal, "value": best[metric], "epoch": best["epoch"]},
            "final_metrics": {m: final[m] for m in metric_names},
            "best_metrics": {m: best[m] for m in metric_names},
            "epochs": len(rows),
            "max_epochs": 3,
            "steps": final["step"],
            "duration_s": 60.0 * len(rows),
            "overrides": overrides,
            "run_dir": str(folder.resolve()),
            "git_commit": None,
            "started_at": "2026-01-01T00:00:00",
            "finished_at": None if status == "running" else "2026-01-01T00:03:00",
            "pruned_at_epoch": len(rows) if status == "pruned" else None,
        },
    )
    return folder


def make_sweep(sweep_dir: Path, goal: str) -> Path:
    for number, swept, status, values, reason in GRID:
        write_trial(sweep_dir, number, swept + CONSTANT, goal, status, values, reason)
    return sweep_dir


def run_report(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "runner.report", *args], cwd=REPO, capture_output=True, text=True, timeout=120, **kwargs
    )


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def number_of(name: str) -> int:
    return int(name.split("_", 1)[0])


@pytest.fixture(scope="module", params=["maximize", "minimize"])
def reported(request, tmp_path_factory):
    """A synthetic sweep for the goal, reported once; the tests read what was written."""
    sweep_dir = make_sweep(tmp_path_factory.mktemp(request.param) / "sweep", request.param)
    sweep = report(sweep_dir)
    return request.param, sweep_dir, sweep


def test_summary_rows_agree_with_each_result_json(reported):
    goal, sweep_dir, _ = reported
    rows = read_csv(sweep_dir / "summary.csv")
    assert [int(row["number"]) for row in rows] == EXPECTED_ORDER[goal]
    assert [row["rank"] for row in rows] == ["1", "2", "3", "", ""]
    for row in rows:
        result = read_result(sweep_dir / row["name"])
        assert int(row["number"]) == number_of(row["name"])
        assert shlex.split(row["overrides"]) == yaml.safe_load((sweep_dir / row["name"] / ".hydra/overrides.yaml").read_text())
        if result is None:
            assert row["status"] == "running"
            assert row["objective"] == row["epochs"] == row["final/val/acc"] == ""
            continue
        assert row["status"] == result["status"]
        assert float(row["objective"]) == result["objective"]["value"]
        assert int(row["best_epoch"]) == result["objective"]["epoch"]
        assert int(row["epochs"]) == result["epochs"]
        assert float(row["duration_s"]) == result["duration_s"]
        assert row["reason"] == (result["reason"] or "")
        for metric, value in result["final_metrics"].items():
            assert float(row[f"final/{metric}"]) == value
        for metric, value in result["best_metrics"].items():
            assert float(row[f"best/{metric}"]) == value


def test_best_yaml_names_the_top_trial_and_the_command_that_reruns_it(reported):
    goal, sweep_dir, sweep = reported
    best = yaml.safe_load((sweep_dir / "best.yaml").read_text())
    top = EXPECTED_ORDER[goal][0]
    swept = next(overrides for number, overrides, *_ in GRID if number == top)
    assert best["number"] == top == sweep.best.number
    assert best["objective"]["metric"] == METRIC[goal]
    assert best["objective"]["goal"] == goal
    assert best["objective"]["value"] == read_result(sweep_dir / best["name"])["objective"]["value"]
    assert best["overrides"] == swept + CONSTANT
    assert best["command"] == shlex.join(["python", "-m", "runner", *swept, *CONSTANT])
    assert shlex.split(best["command"])[3:] == swept + CONSTANT
    assert "'+trainer.note='\"'\"'lr grid'\"'\"''" in best["command"]


def test_history_holds_every_epoch_of_every_trial(reported):
    _, sweep_dir, _ = reported
    rows = read_csv(sweep_dir / "history.csv")
    assert len(rows) == sum(len(values) for *_, values, _ in GRID)
    assert list(rows[0])[:6] == ["name", "number", "epoch", "step", "time_s", "lr"]
    for row in rows:
        assert int(row["number"]) == number_of(row["name"])
    # the running trial's epochs so far are there too
    assert [row["epoch"] for row in rows if row["number"] == "3"] == ["1", "2"]


def test_report_png_is_a_valid_image(reported):
    from matplotlib.image import imread

    _, sweep_dir, _ = reported
    png = sweep_dir / "report.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width, _ = imread(png).shape
    # objective per trial, learning curves, objective vs optimizer.lr: three panels side by side
    assert width > 2 * height > 0


def test_tensorboard_hparams_list_every_trial_with_swept_values_and_objective(reported):
    """Read back as the HParams dashboard does: its plugin's handlers over the event files."""
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.context import RequestContext
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import api_pb2, backend_context, get_experiment, list_session_groups

    goal, sweep_dir, sweep = reported
    logdir = str(sweep_dir / "tensorboard_hparams")
    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(logdir)
    multiplexer.Reload()
    context = backend_context.Context(
        base_plugin.TBContext(logdir=logdir, data_provider=data_provider.MultiplexerDataProvider(multiplexer, logdir))
    )
    experiment = get_experiment.Handler(RequestContext(), context, "", api_pb2.GetExperimentRequest()).run()
    hparams = {info.name: info for info in experiment.hparam_infos}
    assert set(hparams) == {"status", "optimizer.lr", "model"}
    assert [v.string_value for v in hparams["model"].domain_discrete.values] == ["lenet", "mlp"]
    assert (hparams["optimizer.lr"].domain_interval.min_value, hparams["optimizer.lr"].domain_interval.max_value) == (0.001, 0.1)
    assert [m.name.tag for m in experiment.metric_infos] == ["objective", "train/loss", "val/acc", "val/loss"]

    # the dashboard's status checkboxes, all ticked
    statuses = [api_pb2.STATUS_UNKNOWN, api_pb2.STATUS_SUCCESS, api_pb2.STATUS_FAILURE, api_pb2.STATUS_RUNNING]
    request = api_pb2.ListSessionGroupsRequest(start_index=0, slice_size=100, allowed_statuses=statuses)
    groups = list_session_groups.Handler(RequestContext(), context, "", request).run().session_groups
    by_name = {group.name: group for group in groups}
    assert set(by_name) == {trial.name for trial in sweep.trials}
    for trial in sweep.trials:
        group = by_name[trial.name]
        assert group.hparams["status"].string_value == trial.status
        assert group.hparams["model"].string_value == trial.overrides[1].split("=")[1]
        assert group.hparams["optimizer.lr"].number_value == float(trial.overrides[0].split("=")[1])
        objective = [m.value for m in group.metric_values if m.name.tag == "objective"]
        assert objective == ([] if trial.value is None else [pytest.approx(trial.value)])
    assert by_name[sweep.trials[0].name].sessions[0].status == api_pb2.STATUS_SUCCESS
    failed = next(t for t in sweep.trials if t.status == "failed")
    assert by_name[failed.name].sessions[0].status == api_pb2.STATUS_FAILURE


def test_tensorboard_hparams_events_read_back_with_event_accumulator(reported):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, sweep_dir, sweep = reported
    root = EventAccumulator(str(sweep_dir / "tensorboard_hparams"))
    root.Reload()
    assert "_hparams_/experiment" in root.PluginTagToContent("hparams")
    best = EventAccumulator(str(sweep_dir / "tensorboard_hparams" / sweep.best.name))
    best.Reload()
    assert set(best.PluginTagToContent("hparams")) == {"_hparams_/session_start_info", "_hparams_/session_end_info"}
    assert best.Scalars("objective")[0].value == pytest.approx(sweep.best.value)


def test_reporting_again_replaces_the_tensorboard_events(reported):
    _, sweep_dir, _ = reported
    report(sweep_dir)
    hparams_dir = sweep_dir / "tensorboard_hparams"
    assert len(list(hparams_dir.glob("events.out.tfevents.*"))) == 1
    assert not [p for p in sweep_dir.iterdir() if p.name.startswith(".tensorboard_hparams")]


def test_cli_prints_the_ranked_table(reported):
    goal, sweep_dir, _ = reported
    result = run_report(str(sweep_dir))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "5 trials: 2 running, 1 completed, 1 pruned, 1 failed, 0 interrupted" in lines[0]
    assert lines[1] == f"Objective: {METRIC[goal]} ({goal})"
    header = next(i for i, line in enumerate(lines) if line.startswith("rank"))
    assert lines[header].split()[:4] == ["rank", "#", "status", METRIC[goal]]
    assert [int(line.split()[1]) for line in lines[header + 1 : header + 6]] == EXPECTED_ORDER[goal]
    assert f"Best: #{EXPECTED_ORDER[goal][0]} " in result.stdout


def test_callback_writes_the_report_for_the_sweep_dir(tmp_path):
    sweep_dir = make_sweep(tmp_path / "sweep", "maximize")
    SweepReport().on_multirun_end(config=OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep_dir)}}}))
    for name in ("summary.csv", "history.csv", "best.yaml", "report.png", "tensorboard_hparams"):
        assert (sweep_dir / name).exists(), name


def test_a_sweep_without_values_yet_is_reported_without_a_best(tmp_path):
    sweep_dir = tmp_path / "sweep"
    for number, swept, *_ in GRID:
        write_trial(sweep_dir, number, swept, "minimize", None, [])
    sweep = report(sweep_dir)
    assert sweep.best is None
    assert not (sweep_dir / "best.yaml").exists()
    assert [row["status"] for row in read_csv(sweep_dir / "summary.csv")] == ["running"] * len(GRID)
    assert read_csv(sweep_dir / "history.csv") == []
    assert (sweep_dir / "report.png").read_bytes()[:4] == b"\x89PNG"


def test_trials_of_different_objectives_are_refused(tmp_path):
    sweep_dir = tmp_path / "sweep"
    write_trial(sweep_dir, 0, ["objective=default"], "maximize", "completed", [0.5])
    write_trial(sweep_dir, 1, ["objective=val_loss"], "minimize", "completed", [0.5])
    result = run_report(str(sweep_dir))
    assert result.returncode == 1
    assert "val/acc (maximize), val/loss (minimize)" in result.stderr


def test_missing_sweep_dir_exits_2_naming_the_path(tmp_path):
    missing = tmp_path / "no-such-sweep"
    result = run_report(str(missing))
    assert result.returncode == 2
    assert f"sweep folder {missing} does not exist" in result.stderr
    assert "Traceback" not in result.stderr


def test_empty_sweep_dir_exits_1_with_a_clear_message(tmp_path):
    result = run_report(str(tmp_path))
    assert result.returncode == 1
    assert f"no trials in {tmp_path}" in result.stderr
    assert "Traceback" not in result.stderr


def watch_until(sweep_dir: Path, refreshes: int) -> tuple[str, str, int]:
    """Run --watch until it has drawn the table `refreshes` times, then Ctrl-C it."""
    # started as a terminal starts it, with Ctrl-C at its default: in the full suite an earlier test leaves
    # SIGINT ignored in the test process, and a child inherits that (it then never sees the Ctrl-C)
    process = subprocess.Popen([sys.executable, "-m", "runner.report", str(sweep_dir), "--watch", "0.2"], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines = []
    try:
        while sum("refreshing every 0.2s" in line for line in lines) < refreshes:
            line = process.stdout.readline()
            assert line, f"--watch ended early: {process.stderr.read()}"
            lines.append(line)
    finally:
        process.send_signal(signal.SIGINT)
    rest, stderr = process.communicate(timeout=30)
    return "".join(lines) + rest, stderr, process.returncode


@pytest.mark.timeout(120)
def test_watch_redraws_until_ctrl_c(tmp_path):
    sweep_dir = make_sweep(tmp_path / "sweep", "maximize")
    stdout, stderr, returncode = watch_until(sweep_dir, refreshes=2)
    assert returncode == 0, stderr
    assert "Traceback" not in stderr
    assert stdout.count("refreshing every 0.2s, Ctrl-C to stop") >= 2
    assert "5 trials: 2 running" in stdout and "In flight: 2" in stdout
    assert (sweep_dir / "report.png").exists()


def test_watch_shows_the_trials_in_flight(tmp_path):
    sweep_dir = make_sweep(tmp_path / "sweep", "maximize")
    journal = Journal(sweep_dir)
    journal.append({"event": "start", "kind": "grid", "space": [], "budget": 6})
    for number in range(6):
        journal.append({"event": "ask", "number": number, "overrides": [f"optimizer.lr={number}"]})
    for number in (0, 1, 2):
        journal.append({"event": "tell", "number": number})
    now = datetime.fromisoformat("2026-01-01T00:01:30+00:00")
    lines = format_in_flight(load_sweep(sweep_dir), now=now).splitlines()
    assert lines[0] == "In flight: 3"
    # trial 3 has trained 2 of its 3 epochs since 00:00:00; 4 has a folder but no result yet; 5 is only asked
    assert lines[1].startswith("  #3  3_optimizer.lr=0.001,") and lines[1].endswith("epoch 2/3, running for 1m30s")
    assert lines[2].startswith("  #4  4_") and lines[2].endswith("starting")
    assert lines[3] == "  #5  asked, not started yet: optimizer.lr=5"
    assert lines[4] == "Done: 3 of 6 trials"


def test_importing_the_report_loads_neither_torch_nor_matplotlib():
    code = "import sys, runner.report; print(sorted({'torch', 'matplotlib', 'tensorboard'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip
    assert result.stdout.strip() == "[]", result.stderr



def test_the_sweep_s_last_trials_start_the_report_s_preparation(monkeypatch):
    """Once a streaming sweep has launched its last trial, the report callback loads what it draws with,
    beside the trials; callbacks without the hook are left alone."""
    from types import SimpleNamespace

    from runner.report import hydra_callback
    from runner.sweep.sweeper import notify_last_trials

    calls = []
    monkeypatch.setattr(hydra_callback, "prepare_report", lambda: calls.append("prepared"))
    callback = hydra_callback.SweepReport()
    notify_last_trials(SimpleNamespace(callbacks=[object(), callback]), config=None)
    callback.preparing.join()
    assert calls == ["prepared"]


def test_preparing_the_report_writes_nothing(tmp_path, monkeypatch):
    from runner.report.writing import prepare_report

    monkeypatch.chdir(tmp_path)
    prepare_report()
    assert list(tmp_path.iterdir()) == []
