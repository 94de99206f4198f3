"""Benchmark: batch-synchronous sweeps (Hydra's sweepers, as before) against the streaming sweepers.

Runs each arm through the real CLI, `python -m runner -m`, and reads every trial's result.json:

- asha: the random search of issue 14 (Nevergrad RandomSearch, `pruner=asha`, budget 12,
  9 epochs, LeNet on mnist_5k, seed 0) on 2 slots of this machine, three ways:
  Hydra's Nevergrad sweeper on fresh processes (submitit's local executor, one process per trial,
  a batch of 2 at a time: the `parallel` launcher as it was), Hydra's Nevergrad sweeper on the
  warm workers, and the ask/tell sweeper on the warm workers (`sweep=random hydra/launcher=parallel`);
- slurm: the same search with 4 trials at once on the SLURM cluster, Hydra's Nevergrad sweeper
  (a job array per batch) against the ask/tell sweeper (a job per trial);
- utilisation: the pruned random search of the issue "Utilisation everywhere" (`sweep=random
  pruner=asha`, LeNet on mnist_5k, 9 epochs, lr log-uniform 1e-5..0.3, seed 0) on the warm workers
  of 2 slots, at each budget of `--budgets` (12 and 48): the whole command's utilisation;
- overhead: 20 one-batch trials (`dataset=synthetic trainer.max_epochs=1`, one training and one
  validation batch), in this process (`local`) and on 2 slots (fresh processes, then warm workers).

Slot utilisation = the trials' summed durations (result.json `duration_s`: from the trial's
record being opened, after its config is checked, to its end) / (slots x the sweep's wall time,
from the command's start to its exit). Per-trial overhead = (slots x wall time - summed
durations) / trials: slot time spent outside trials (starting processes, composing configs, the
sweeper, the report). The `steady` columns measure the same from the first trial's start to the
last one's end: how well the sweep keeps its slots busy, without its start-up and final report.
Numbers are printed and written to OUT/summary.json, never asserted.

    python benchmarks/streaming_sweeps.py                    # every part (slurm only with a cluster)
    python benchmarks/streaming_sweeps.py --parts overhead   # one part
    python benchmarks/streaming_sweeps.py --repeats 3        # the arms take turns; medians reported
    python benchmarks/streaming_sweeps.py --parts utilisation --budgets 12 48
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from runner.results import read_result, write_json_atomic

REPO = Path(__file__).resolve().parents[1]

RANDOM = ["dataset=mnist_5k", "model=lenet", "pruner=asha", "trainer.max_epochs=9", "logger=none",
          "sweep=random", "hydra.sweeper.optim.seed=0"]
ASHA = [*RANDOM, "hydra.sweeper.optim.budget=12"]
ONE_BATCH = ["dataset=synthetic", "trainer.max_epochs=1", "trainer.limit_train_batches=1",
             "trainer.limit_val_batches=1", "trainer.seed=range(0,20)"]
# the `parallel` launcher as it was: submitit's local executor, a fresh process per trial, one
# thread each; a batch of 2 never waited for a slot, so the slot script is left out
FRESH_PROCESSES = ["hydra/launcher=submitit_local", "hydra.launcher.cpus_per_task=1", "hydra.launcher.timeout_min=600"]
FRESH_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
BATCH = ["hydra/sweeper=nevergrad"]
# the issue's space for the learning rate (the preset's is 1e-4..1e-1)
ISSUE_LR = "optimizer.lr=tag(log,interval(1e-5,0.3))"


def arms(part: str, cores: int, budgets: list[int]) -> list[tuple[str, int, list[str], dict]]:
    """(name, slots, overrides, environment) of each arm of a part."""
    warm = ["hydra/launcher=parallel", f"hydra.launcher.cpus_per_task={max(1, cores // 2)}"]
    if part == "utilisation":
        return [(f"random search, asha, budget {budget}, warm workers", 2,
                 [*RANDOM, ISSUE_LR, f"hydra.sweeper.optim.budget={budget}", "hydra.sweeper.optim.num_workers=2", *warm],
                 {}) for budget in budgets]
    if part == "asha":
        two = ["hydra.sweeper.optim.num_workers=2"]
        return [
            ("batch, fresh processes (as before)", 2, [*ASHA, *two, *BATCH, *FRESH_PROCESSES], FRESH_ENV),
            ("batch, warm workers", 2, [*ASHA, *two, *BATCH, *warm], {}),
            ("streaming, warm workers (new)", 2, [*ASHA, *two, *warm], {}),
        ]
    if part == "slurm":
        slurm = ["hydra.sweeper.optim.num_workers=4", "hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1"]
        return [
            ("slurm, batch: a job array per batch (as before)", 4, [*ASHA, *slurm, *BATCH], {}),
            ("slurm, streaming: a job per trial (new)", 4, [*ASHA, *slurm], {}),
        ]
    return [
        ("local, Hydra's basic sweeper (as before)", 1, [*ONE_BATCH, "hydra/sweeper=basic"], {}),
        ("local, streaming grid (new)", 1, ONE_BATCH, {}),
        ("2 slots, fresh processes (as before)", 2,
         [*ONE_BATCH, "hydra/sweeper=basic", "hydra.sweeper.max_batch_size=2", *FRESH_PROCESSES], FRESH_ENV),
        ("2 slots, warm workers (new)", 2, [*ONE_BATCH, *warm], {}),
    ]


def run_arm(name: str, slots: int, overrides: list[str], env: dict, sweep_dir: Path) -> dict:
    started, started_clock = time.monotonic(), datetime.now(timezone.utc)
    done = subprocess.run([sys.executable, "-m", "runner", "-m", *overrides, f"hydra.sweep.dir={sweep_dir}"],
                          cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True)
    wall = time.monotonic() - started
    ended_clock = datetime.now(timezone.utc)
    if done.returncode != 0:
        print(f"{name}: the sweep failed (exit {done.returncode}):\n{done.stderr[-3000:]}", file=sys.stderr)
        return {"name": name, "failed": True}
    results = [read_result(p.parent) for p in sweep_dir.glob("*/result.json")]
    busy = sum(r["duration_s"] for r in results)
    # from the first trial's start to the last one's end: the sweep without its start-up and report
    first = min(datetime.fromisoformat(r["started_at"]) for r in results)
    last = max(datetime.fromisoformat(r["finished_at"]) for r in results)
    steady = (last - first).total_seconds()
    best = max((r for r in results if r["objective"]["value"] is not None), key=lambda r: r["objective"]["value"])
    return {
        "name": name,
        "slots": slots,
        "trials": len(results),
        "pruned": sum(r["status"] == "pruned" for r in results),
        "epochs": sum(r["epochs"] for r in results),
        "wall_s": round(wall, 1),
        "trial_s": round(busy, 1),
        "utilisation": round(busy / (slots * wall), 3),
        "overhead_per_trial_s": round((slots * wall - busy) / len(results), 3),
        "steady_s": round(steady, 1),
        # the command's start-up (Python, Hydra, the search, the workers loading torch) and its end
        # (the last trial's end to the exit: the report, the workers stopping)
        "before_first_s": round((first - started_clock).total_seconds(), 2),
        "after_last_s": round((ended_clock - last).total_seconds(), 2),
        "steady_utilisation": round(busy / (slots * steady), 3),
        "steady_overhead_per_trial_s": round((slots * steady - busy) / len(results), 3),
        "best": best["objective"]["value"],
        "best_overrides": [o for o in best["overrides"] if o.startswith(("optimizer.lr", "trainer.batch_size"))],
        "sweep_dir": str(sweep_dir),
    }


def slurm_ready() -> bool:
    if shutil.which("sinfo") is None:
        return False
    out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True)
    return out.returncode == 0 and out.stdout.split()[:1] in (["idle"], ["mix"])


# (new arm, the arm it replaces) in each part, by index
PAIRS = {"asha": [(2, 0), (2, 1)], "overhead": [(1, 0), (3, 2)], "slurm": [(1, 0)], "utilisation": []}
NUMBERS = ("wall_s", "trial_s", "utilisation", "overhead_per_trial_s", "steady_s", "steady_utilisation",
           "steady_overhead_per_trial_s", "before_first_s", "after_last_s", "best", "pruned", "epochs")


def median_row(runs: list[dict]) -> dict:
    """The median of each number over the repeats of one arm (sweeps that failed left out)."""
    done = [run for run in runs if not run.get("failed")]
    if not done:
        return {"name": runs[0]["name"], "failed": True}
    row = {"name": done[0]["name"], "slots": done[0]["slots"], "trials": done[0]["trials"], "runs": len(done)}
    for key in NUMBERS:
        row[key] = statistics.median(run[key] for run in done)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", default=["asha", "utilisation", "overhead", "slurm"],
                        choices=["asha", "utilisation", "overhead", "slurm"])
    parser.add_argument("--budgets", nargs="+", type=int, default=[12, 48],
                        help="the budgets of the utilisation part's random search")
    parser.add_argument("--repeats", type=int, default=1,
                        help="run every arm this many times, the arms taking turns; medians are reported")
    parser.add_argument("--out", type=Path, default=None, help="folder for the sweeps and summary.json")
    args = parser.parse_args()
    out = args.out or REPO / "outputs" / "benchmarks" / "streaming_sweeps" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    cores = len(os.sched_getaffinity(0))
    runs: dict[str, list[list[dict]]] = {}
    for part in args.parts:
        if part == "slurm" and not slurm_ready():
            print("slurm: no cluster answers (start one with launchers/slurm/start.sh); skipped")
            continue
        part_arms = arms(part, cores, args.budgets)
        runs[part] = [[] for _ in part_arms]
        for repeat in range(args.repeats):
            for index, (name, slots, overrides, env) in enumerate(part_arms):
                row = run_arm(name, slots, overrides, env, out / part / f"{index}-{repeat}")
                runs[part][index].append(row)
                print(json.dumps(row), flush=True)
    summary = {part: [median_row(arm_runs) for arm_runs in part_runs] for part, part_runs in runs.items()}
    write_json_atomic(out / "summary.json", {"cores": cores, "repeats": args.repeats,
                                             "load_average": os.getloadavg(), "medians": summary, "runs": runs})
    for part, rows in summary.items():
        print(f"\n{part} (median of {args.repeats}):")
        print(f"{'arm':<50} {'wall':>6} {'in trials':>9} {'util.':>6} {'overhead':>9} | {'steady':>6} {'util.':>6} "
              f"{'overhead':>9} | {'start':>5} {'end':>5} | {'best':>6} {'pruned':>6}")
        for row in rows:
            if row.get("failed"):
                print(f"{row['name']:<50} failed")
                continue
            print(f"{row['name']:<50} {row['wall_s']:>5.1f}s {row['trial_s']:>8.1f}s {row['utilisation']:>6.0%} "
                  f"{row['overhead_per_trial_s']:>8.2f}s | {row['steady_s']:>5.1f}s {row['steady_utilisation']:>6.0%} "
                  f"{row['steady_overhead_per_trial_s']:>8.2f}s | {row['before_first_s']:>4.1f}s {row['after_last_s']:>4.1f}s | "
                  f"{row['best']:>6.4f} {row['pruned']:>3g}/{row['trials']}")
        for new, old in PAIRS[part]:
            if not rows[new].get("failed") and not rows[old].get("failed"):
                print(f"wall time, {rows[new]['name']} / {rows[old]['name']}: "
                      f"{rows[new]['wall_s'] / rows[old]['wall_s']:.2f}x")
    print(f"\nload average (1, 5, 15 min): {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"written to {out / 'summary.json'}")


if __name__ == "__main__":
    main()
