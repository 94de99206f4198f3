"""Benchmark: a job per trial (`hydra/launcher=slurm`) against warm SLURM workers (`hydra/launcher=slurm_workers`).

The issue's pruned random search (`sweep=random pruner=asha model=lenet trainer.max_epochs=9` on
mnist_5k, lr log-uniform 1e-5..0.3, seed 0) at each budget of `--budgets`, 4 trials at a time
with `cpus_per_task=1`, through the real CLI, on the SLURM cluster that answers `sinfo` (the
issue's: launchers/slurm/start.sh with SLURM_CPUS=4). Per arm it prints wall time, slot
utilisation (the trials' summed durations over 4 slots x the whole command's wall time, as
benchmarks/streaming_sweeps.py measures it) and, for the warm workers, the per-trial overhead
from a worker taking a trial (its job log: "trial N taken at T") to the trial's first optimizer
step (the end of epoch 1 in runner.log minus epoch 1's time_s in metrics.csv): the median over
every trial, and over the trials that were not their worker's first (the first one also imports
the model's and data's modules). Numbers are printed and written to OUT/summary.json, never asserted.

    SLURM_CPUS=4 bash launchers/slurm/start.sh
    python benchmarks/slurm_workers.py --budgets 12 48
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import statistics
import sys
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, for `benchmarks.`
from benchmarks.streaming_sweeps import REPO, run_arm, slurm_ready  # noqa: E402

from runner.results import write_json_atomic  # noqa: E402

SEARCH = ["dataset=mnist_5k", "model=lenet", "pruner=asha", "trainer.max_epochs=9", "logger=none", "sweep=random",
          "hydra.sweeper.optim.seed=0", "optimizer.lr=tag(log,interval(1e-5,0.3))", "hydra.sweeper.optim.num_workers=4"]
ARMS = {
    "a job per trial (slurm)": ["hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1"],
    "warm workers (slurm_workers)": ["hydra/launcher=slurm_workers", "hydra.launcher.cpus_per_task=1",
                                     "hydra.launcher.num_workers=4"],
}
LOG_TIME = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]\[runner\.run\.fit\]\[INFO\] - epoch 1/", re.M)


def first_step(trial: Path) -> float | None:
    """When the trial's first optimizer step started (seconds since the epoch)."""
    try:
        log_line = LOG_TIME.findall((trial / "runner.log").read_text())
        with open(trial / "metrics.csv") as f:
            first_epoch = next(csv.DictReader(f))
    except (FileNotFoundError, StopIteration):
        return None
    if not log_line:
        return None
    # runner.log is written in this machine's local time
    ended = datetime.strptime(log_line[-1], "%Y-%m-%d %H:%M:%S,%f").timestamp()
    return ended - float(first_epoch["time_s"])


def claim_to_first_step(sweep: Path) -> dict:
    """Per-trial overhead of the warm workers, from their job logs and the trials' files."""
    takes: dict[int, float] = {}
    later: set[int] = set()  # trials that were not their worker's first
    for log in (sweep / ".submitit").glob("*/*_log.out"):
        numbers = re.findall(r"^trial (\d+) taken at ([\d.]+)$", log.read_text(), flags=re.M)
        for index, (number, at) in enumerate(numbers):
            takes[int(number)] = float(at)  # the last take of a trial is the one that finished it
            if index:
                later.add(int(number))
    gaps, later_gaps = [], []
    for trial in sweep.glob("*/result.json"):
        number = int(trial.parent.name.split("_")[0])
        step = first_step(trial.parent)
        if number in takes and step is not None:
            gaps.append(step - takes[number])
            if number in later:
                later_gaps.append(step - takes[number])
    return {"claim_to_first_step_s": round(statistics.median(gaps), 3) if gaps else None,
            "claim_to_first_step_later_s": round(statistics.median(later_gaps), 3) if later_gaps else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", nargs="+", type=int, default=[12, 48])
    parser.add_argument("--out", type=Path, default=None, help="folder for the sweeps and summary.json")
    args = parser.parse_args()
    if not slurm_ready():
        sys.exit("no SLURM cluster answers: start one with SLURM_CPUS=4 bash launchers/slurm/start.sh")
    out = args.out or REPO / "outputs" / "benchmarks" / "slurm_workers" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    rows = []
    for budget in args.budgets:
        for index, (name, launcher) in enumerate(ARMS.items()):
            sweep = out / f"budget{budget}-{index}"
            row = run_arm(f"budget {budget}, {name}", 4, [*SEARCH, f"hydra.sweeper.optim.budget={budget}", *launcher],
                          {}, sweep)
            if not row.get("failed") and "warm" in name:
                row.update(claim_to_first_step(sweep))
            rows.append(row)
            print(json.dumps(row), flush=True)
    write_json_atomic(out / "summary.json", {"cpus": os.cpu_count(), "load_average": os.getloadavg(), "rows": rows})
    print(f"\n{'arm':<45} {'wall':>7} {'util.':>6} {'steady':>7} {'best':>7} {'pruned':>7} {'claim->step':>12}")
    for row in rows:
        if row.get("failed"):
            print(f"{row['name']:<45} failed")
            continue
        overhead = (f"{row['claim_to_first_step_s']:.2f}/{row['claim_to_first_step_later_s']:.2f}s"
                    if row.get("claim_to_first_step_later_s") is not None else "")
        print(f"{row['name']:<45} {row['wall_s']:>6.1f}s {row['utilisation']:>6.0%} {row['steady_utilisation']:>7.0%} "
              f"{row['best']:>7.4f} {row['pruned']:>3}/{row['trials']:<3} {overhead:>12}")
    for budget in args.budgets:
        cold, warm = (next(r for r in rows if r["name"] == f"budget {budget}, {name}") for name in ARMS)
        if not cold.get("failed") and not warm.get("failed"):
            print(f"budget {budget}: warm workers' wall time / a job per trial's: {warm['wall_s'] / cold['wall_s']:.2f}x")
    print(f"load average (1, 5, 15 min): {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"written to {out / 'summary.json'}")


if __name__ == "__main__":
    main()
