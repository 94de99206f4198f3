"""The report that explains: parameter importance, parameters.png (parallel coordinates), `--json`, and a
sweep's `--dry-run` through the real CLI."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from runner.report import load_sweep, report
from runner.report.importance import MIN_TRIALS
from runner.sweep.journal import Journal
from tests.test_report import run_report, write_trial

QUICK = ["dataset=synthetic", "trainer.max_epochs=1", "logger=none", "trainer.batch_size=32"]


def one_key_matters(sweep_dir: Path, trials: int = 12) -> Path:
    """Random points over three keys; the objective depends on optimizer.lr alone; +extra.b is text and
    missing in every third trial."""
    rng = random.Random(0)
    for number in range(trials):
        lr = 10 ** rng.uniform(-5, 0)
        accuracy = 1 - abs(math.log10(lr) + 2.5) / 3
        overrides = [f"optimizer.lr={lr:.6g}", f"+extra.a={rng.uniform(0, 1):.4f}"]
        overrides += [f"+extra.b={rng.choice('xyz')}"] if number % 3 else []
        write_trial(sweep_dir, number, overrides, "maximize", "completed", [accuracy * 0.9, accuracy])
    return sweep_dir


def test_the_key_the_objective_depends_on_ranks_first(tmp_path):
    importance = load_sweep(one_key_matters(tmp_path / "sweep")).importance
    assert list(importance.shares)[0] == "optimizer.lr" and importance.shares["optimizer.lr"] > 0.5
    assert set(importance.shares) == {"optimizer.lr", "extra.a", "extra.b"}
    assert sum(importance.shares.values()) == pytest.approx(1.0)


def test_too_few_completed_trials_are_said_not_estimated(tmp_path):
    sweep = report(one_key_matters(tmp_path / "sweep", trials=MIN_TRIALS - 1))
    assert not sweep.importance.estimated and f"at least {MIN_TRIALS}" in sweep.importance.note
    assert not (sweep.path / "importance.csv").exists()
    # the figure says so, but is drawn
    assert (sweep.path / "parameters.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_writes_importance_csv_and_parameters_png_and_prints_the_importance(tmp_path):
    sweep_dir = one_key_matters(tmp_path / "sweep")
    done = run_report(str(sweep_dir))
    assert done.returncode == 0, done.stderr
    assert "Importance (random forest" in done.stdout and "optimizer.lr 0." in done.stdout
    rows = (sweep_dir / "importance.csv").read_text().splitlines()
    assert rows[0].startswith("rank,parameter,importance") and rows[1].split(",")[1] == "optimizer.lr"
    assert (sweep_dir / "parameters.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_json_prints_the_ranked_report_and_writes_nothing(tmp_path):
    sweep_dir = one_key_matters(tmp_path / "sweep")
    done = run_report(str(sweep_dir), "--json")
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert document["objective"] == {"metric": "val/acc", "goal": "maximize"}
    values = [t["value"] for t in document["trials"]]
    assert values == sorted(values, reverse=True) and [t["rank"] for t in document["trials"]] == list(range(1, 13))
    assert document["best"]["name"] == document["trials"][0]["name"]
    assert document["importance"]["parameters"][0]["parameter"] == "optimizer.lr"
    assert "extra.b" not in document["trials"][0]["parameters"] or document["trials"][0]["parameters"]["extra.b"] in "xyz"
    assert not (sweep_dir / "summary.csv").exists()


def test_json_refuses_watch_and_a_missing_folder(tmp_path):
    done = run_report(str(tmp_path), "--json", "--watch")
    assert done.returncode == 2 and "--json" in done.stderr
    done = run_report(str(tmp_path / "nowhere"), "--json")
    assert done.returncode == 2 and "does not exist" in done.stderr


@pytest.mark.e2e
def test_dry_run_prints_the_grid_and_launches_nothing(run_cli, tmp_path):
    sweep_dir = tmp_path / "grid"
    done = run_cli("--multirun", "sweep=grid", "--dry-run", "hydra/launcher=parallel", *QUICK,
                   f"hydra.sweep.dir={sweep_dir}")
    assert done.returncode == 0, done.stderr
    assert "a grid of 8 trial(s)" in done.stdout and "#7  model=mlp optimizer=adam optimizer.lr=0.001" in done.stdout
    # no folder: no trial, no journal, no worker log, no report
    assert not sweep_dir.exists()


@pytest.mark.e2e
def test_dry_run_shows_the_points_the_sweep_then_runs_and_estimates_from_them(run_cli, tmp_path):
    sweep_dir = tmp_path / "random"
    space = ["sweep=random", "hydra.sweeper.optim.budget=1", *QUICK, f"hydra.sweep.dir={sweep_dir}"]
    preview = run_cli("--multirun", *space, "--dry-run")
    assert preview.returncode == 0, preview.stderr
    assert "Estimated wall time: unknown" in preview.stdout and not sweep_dir.exists()
    done = run_cli("--multirun", *space)
    assert done.returncode == 0, done.stderr
    (asked,) = [e for e in Journal(sweep_dir).read() if e["event"] == "ask"]
    assert f"#0  {' '.join(asked['overrides'])}" in preview.stdout
    events = Journal(sweep_dir).read()
    again = run_cli("--multirun", *space, "--dry-run")
    assert again.returncode == 0, again.stderr
    assert "Resumes the sweep" in again.stdout and "the mean of the 1 finished trial(s)" in again.stdout
    assert Journal(sweep_dir).read() == events


@pytest.mark.e2e
def test_dry_run_refuses_a_misspelt_option_and_a_single_run(run_cli, tmp_path):
    sweep_dir = tmp_path / "typo"
    done = run_cli("--multirun", "model=lenet,nope", "--dry-run", *QUICK, f"hydra.sweep.dir={sweep_dir}")
    assert done.returncode != 0 and "nope" in done.stderr and not sweep_dir.exists()
    done = run_cli("--dry-run", *QUICK)
    assert done.returncode != 0 and "add --multirun" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "outputs").exists()
