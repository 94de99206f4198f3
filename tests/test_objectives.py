"""Several objectives and constraints: parsing, Pareto fronts, and sweeps that end with their front in
summary.csv, best.yaml and report.png; bad objectives refused before the first trial."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys

import pytest
import yaml

from runner.config.objectives import Constraint, dominates, objectives_of, pareto_fronts
from runner.errors import ConfigError
from tests.conftest import REPO

TWO = ["objective.metrics=[val/acc,model/params]", "objective.goals=[maximize,minimize]"]
FAST = ["dataset=digits", "model=mlp", "trainer.max_epochs=2", "logger=none", "trainer.test=false"]


def test_pareto_fronts_sort_by_domination():
    # losses (minimised): a and b trade off, c is beaten by a, d by everyone
    losses = [[0.1, 5.0], [0.3, 1.0], [0.2, 6.0], [0.5, 7.0]]
    assert pareto_fronts(losses) == [1, 1, 2, 3]
    assert dominates([0.1, 5.0], [0.2, 6.0]) and not dominates([0.1, 5.0], [0.3, 1.0])
    # equal points do not dominate each other: both on the front
    assert pareto_fronts([[1.0, 1.0], [1.0, 1.0]]) == [1, 1]


def test_constraints_parse_and_measure_how_far_they_are_broken():
    constraint = Constraint.parse("model/params <= 1e6")
    assert (constraint.metric, constraint.op, constraint.bound) == ("model/params", "<=", 1e6)
    assert constraint.violation(1e6) == 0 and constraint.violation(1.5e6) == pytest.approx(5e5)
    assert Constraint.parse("val/acc>0.9").violation(0.9) > 0  # a strict bound met with equality is broken
    assert math.isinf(constraint.violation(None))
    for bad in ("model/params =< 3", "val/acc > high", "val/acc", "<= 3"):
        with pytest.raises(ConfigError, match="does not parse"):
            Constraint.parse(bad)


def test_objectives_must_agree_with_the_first_objective():
    two = objectives_of({"metric": "val/acc", "goal": "maximize", "metrics": ["val/acc", "model/params"],
                         "goals": ["maximize", "minimize"], "constraints": []})
    assert two.several and two.losses({"val/acc": 0.9, "model/params": 10}) == [-0.9, 10.0]
    assert not objectives_of({"metric": "val/loss", "goal": "minimize"}).several
    with pytest.raises(ConfigError, match="objective.metric=val/loss"):
        objectives_of({"metric": "val/loss", "goal": "minimize", "metrics": ["val/acc", "val/loss"],
                       "goals": ["maximize", "minimize"]})
    with pytest.raises(ConfigError, match="one goal per metric"):
        objectives_of({"metric": "val/acc", "goal": "maximize", "metrics": ["val/acc", "val/loss"],
                       "goals": ["maximize"]})
    with pytest.raises(ConfigError, match="'up' is not allowed"):
        objectives_of({"metric": "val/acc", "goal": "maximize", "metrics": ["val/acc", "val/loss"],
                       "goals": ["maximize", "up"]})


def summary_rows(sweep_dir):
    with (sweep_dir / "summary.csv").open() as f:
        return list(csv.DictReader(f))


def test_a_grid_over_two_objectives_ends_with_its_front(run_cli, tmp_path):
    sweep_dir = tmp_path / "sweep"
    done = run_cli("--multirun", *FAST, *TWO, "model.hidden_sizes=[8],[64]", "optimizer.lr=0.01,0.0003",
                   'objective.constraints=["model/params <= 4000"]', f"hydra.sweep.dir={sweep_dir}")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = summary_rows(sweep_dir)
    assert len(rows) == 4
    for row in rows:
        assert float(row["best/model/params"]) == (610 if "[8]" in row["overrides"] else 4810)
    # the [64] trials break the constraint: ranked after the others, on no front, the bound named
    broken = [row for row in rows if "[64]" in row["overrides"]]
    assert all(row["constraints_broken"] == "model/params <= 4000" and row["front"] == "" for row in broken)
    assert [row["rank"] for row in broken] == ["3", "4"]
    # of the two small ones the same size, the more accurate one is the whole front
    kept = sorted((row for row in rows if "[8]" in row["overrides"]), key=lambda r: -float(r["best/val/acc"]))
    assert [row["front"] for row in kept] == ["1", "2"]
    best = yaml.safe_load((sweep_dir / "best.yaml").read_text())
    assert [member["number"] for member in best["pareto_front"]] == [int(kept[0]["number"])]
    assert best["constraints"] == ["model/params <= 4000"]
    assert (sweep_dir / "report.png").stat().st_size > 10_000

    printed = subprocess.run([sys.executable, "-m", "runner.report", str(sweep_dir)], cwd=REPO, capture_output=True,
                             text=True)
    assert printed.returncode == 0, printed.stderr
    assert f"Pareto front: 1 trial(s), no one better on every objective: #{kept[0]['number']}" in printed.stdout
    document = json.loads(subprocess.run([sys.executable, "-m", "runner.report", str(sweep_dir), "--json"], cwd=REPO,
                                         capture_output=True, text=True, check=True).stdout)
    assert document["pareto_front"] == [int(kept[0]["number"])]
    assert {t["number"]: t["constraints_broken"] for t in document["trials"]}[int(broken[0]["number"])] == [
        "model/params <= 4000"]


def test_nevergrad_is_told_every_objective_and_reports_its_front(run_cli, tmp_path):
    sweep_dir = tmp_path / "sweep"
    done = run_cli("--multirun", "sweep=pareto", *FAST, "hydra.sweeper.optim.budget=4",
                   "hydra.sweeper.optim.optimizer=RandomSearch", f"hydra.sweep.dir={sweep_dir}")
    assert done.returncode == 0, done.stderr[-3000:]
    tells = [json.loads(line) for line in (sweep_dir / ".sweeper" / "journal.jsonl").read_text().splitlines()
             if '"tell"' in line]
    assert len(tells) == 4 and all(len(tell["losses"]) == 2 for tell in tells)
    rows = {row["number"]: row for row in summary_rows(sweep_dir)}
    for tell in tells:
        row = rows[str(tell["number"])]
        assert tell["losses"] == [-float(row["best/val/acc"]), float(row["best/model/params"])]
    # Nevergrad's own front and the report's agree
    ours = {(round(float(r["best/val/acc"]), 6), float(r["best/model/params"])) for r in rows.values() if r["front"] == "1"}
    results = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    theirs = {(round(m["objectives"]["val/acc"], 6), m["objectives"]["model/params"]) for m in results["pareto_front"]}
    assert theirs == ours
    best = yaml.safe_load((sweep_dir / "best.yaml").read_text())
    assert {member["number"] for member in best["pareto_front"]} == {int(n) for n, r in rows.items() if r["front"] == "1"}


@pytest.mark.parametrize("overrides, message", [
    (["objective.metrics=[val/acc,val/latency_ms]", "objective.goals=[maximize,minimize]"],
     "objective.metrics: 'val/latency_ms' is not a metric this run records; use one of: train/loss"),
    (['objective.constraints=["model/params =< 1e6"]'], "'model/params =< 1e6' does not parse"),
    (['objective.constraints=["val/f1 >= 0.5"]'], "bounds 'val/f1', which is not a metric this run records"),
    (["objective.metrics=[val/loss,val/acc]", "objective.goals=[minimize,maximize]"],
     "objective.metrics starts with val/loss (minimize) but objective.metric=val/acc (maximize)"),
])
def test_bad_objectives_are_refused_before_the_first_trial(run_cli, tmp_path, overrides, message):
    sweep_dir = tmp_path / "sweep"
    done = run_cli("--multirun", *FAST, "optimizer.lr=0.01,0.001", *overrides, f"hydra.sweep.dir={sweep_dir}")
    assert done.returncode != 0
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert not any(p.is_dir() and not p.name.startswith(".") for p in sweep_dir.iterdir())
