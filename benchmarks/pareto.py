"""Benchmark: the Pareto front Nevergrad finds against random search's, on two objectives.

For each seed, runs `sweep=pareto` (val/acc up, model/params down, over the MLP's width and the
learning rate) through the real CLI twice with the same budget: once with the preset's optimizer
(NGOpt), once with RandomSearch. Each sweep's front is read from its report (summary.csv) and scored by
its hypervolume (nevergrad's HypervolumeIndicator) in the normalised space (1 - val/acc,
model/params / the widest option's count), reference point (1, 1): the area the front dominates,
larger is better. Prints, and never asserts: each sweep's hypervolume, front size and wall time, and
the mean per optimizer.

    python benchmarks/pareto.py                      # digits, 24 trials x 3 epochs, seeds 0 1 2
    python benchmarks/pareto.py --seeds 0 --trials 8 # quick

Trials run 2 at a time (`hydra/launcher=parallel`). Everything after `--` is passed to every sweep.
The summary is printed and written as JSON under OUT (default outputs/benchmarks/pareto/<time>).
"""

from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np
from nevergrad.optimization.multiobjective import HypervolumeIndicator

from runner.results import write_json_atomic

REPO = Path(__file__).resolve().parents[1]
# the preset's widest option on digits' 64 inputs and 10 classes: 64*256 + 256 + 256*10 + 10
MAX_PARAMS = 19210


def hypervolume(summary: Path) -> tuple[float, int]:
    """The hypervolume of the sweep's front (front 1 in summary.csv) and how many trials are on it."""
    with summary.open() as f:
        front = [row for row in csv.DictReader(f) if row.get("front") == "1"]
    points = [np.array([1 - float(row["best/val/acc"]), float(row["best/model/params"]) / MAX_PARAMS]) for row in front]
    return (HypervolumeIndicator(np.array([1.0, 1.0])).compute(points) if points else 0.0), len(points)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=24, help="the budget of each sweep (24)")
    parser.add_argument("--epochs", type=int, default=3, help="trainer.max_epochs (3)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (0 1 2)")
    parser.add_argument("--optimizers", nargs="+", default=["NGOpt", "RandomSearch"], help="(NGOpt RandomSearch)")
    parser.add_argument("--out", type=Path, default=None, help="folder for the sweeps and the summary")
    parser.add_argument("overrides", nargs="*", help="after --: overrides for every sweep")
    args = parser.parse_args()
    out = args.out or REPO / "outputs" / "benchmarks" / "pareto" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")

    runs = []
    for seed in args.seeds:
        for optimizer in args.optimizers:
            sweep_dir = out / f"{optimizer}_seed{seed}"
            command = [
                sys.executable, "-m", "runner", "--multirun", "sweep=pareto", "dataset=digits",
                f"trainer.max_epochs={args.epochs}", "logger=none", "trainer.test=false", f"trainer.seed={seed}",
                f"hydra.sweeper.optim.optimizer={optimizer}", f"hydra.sweeper.optim.budget={args.trials}",
                f"hydra.sweeper.optim.seed={seed}", "hydra/launcher=parallel", "hydra.launcher.cpus_per_task=1",
                f"hydra.sweep.dir={sweep_dir}", *args.overrides,
            ]
            started = time.monotonic()
            done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
            wall = time.monotonic() - started
            if done.returncode != 0:
                sys.exit(f"{optimizer} seed {seed} failed:\n{done.stderr[-3000:]}")
            volume, size = hypervolume(sweep_dir / "summary.csv")
            runs.append({"optimizer": optimizer, "seed": seed, "hypervolume": volume, "front": size, "wall_s": wall})
            print(f"{optimizer:>12} seed {seed}: hypervolume {volume:.4f}, {size} on the front, {wall:.0f} s", flush=True)

    summary = {"trials": args.trials, "epochs": args.epochs, "runs": runs, "mean": {}}
    for optimizer in args.optimizers:
        volumes = [r["hypervolume"] for r in runs if r["optimizer"] == optimizer]
        summary["mean"][optimizer] = statistics.fmean(volumes)
        spread = f" (sd {statistics.stdev(volumes):.4f})" if len(volumes) > 1 else ""
        print(f"{optimizer:>12}: mean hypervolume {summary['mean'][optimizer]:.4f}{spread} over seeds {args.seeds}")
    write_json_atomic(out / "summary.json", summary)
    print(f"summary written to {out / 'summary.json'}")


if __name__ == "__main__":
    main()
