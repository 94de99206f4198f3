"""Benchmark: Population Based Training against random search, same trials, same epochs, same draws.

For each seed, runs two sweeps through the real CLI (`python -m runner -m`), both Nevergrad's
RandomSearch with that seed, so both start from the same configurations (checked, and reported if
not): one plain, one with `pbt=async` mutating the learning rate over the same space. Then it
replays the PBT sweep's best trial (`pbt=replay`, the command the sweep report prints) as a single
run and compares the two. It prints, and never asserts: the best objective of each sweep (best
over the epochs, as the sweep ranks trials) and the best last-epoch value, the epochs trained and
the wall time, and the replay's objective next to the trial it replays.

    python benchmarks/pbt_vs_random.py                        # mnist_5k, LeNet, SGD; 8 trials x 10 epochs, seeds 0 1 2
    python benchmarks/pbt_vs_random.py --seeds 0 --trials 4 --epochs 4 -- dataset=synthetic model=mlp   # quick

Trials run 2 at a time (`hydra/launcher=parallel hydra.launcher.cpus_per_task=1`); the replay runs
with one thread too (OMP_NUM_THREADS=1), as each trial did. Everything after `--` is passed to
every sweep and to the replay. The summary is printed and written as JSON under OUT (default
outputs/benchmarks/pbt_vs_random/<time>).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import yaml

from runner.results import read_metrics, read_result, write_json_atomic

REPO = Path(__file__).resolve().parents[1]
SPACE = "tag(log,interval(0.0001,1))"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8, help="trials per sweep, the PBT population (8)")
    parser.add_argument("--epochs", type=int, default=10, help="trainer.max_epochs (10)")
    parser.add_argument("--interval", type=int, default=2, help="pbt.perturbation_interval (2)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (0 1 2)")
    parser.add_argument("--out", type=Path, default=None, help="folder for the sweeps and the summary")
    parser.add_argument("overrides", nargs="*", help="after --: overrides for every sweep and the replay")
    args = parser.parse_args()
    out = args.out or REPO / "outputs" / "benchmarks" / "pbt_vs_random" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")

    runs = []
    for seed in args.seeds:
        common = [
            "dataset=mnist_5k", "model=lenet", "optimizer=sgd", "trainer.batch_size=64",
            f"trainer.max_epochs={args.epochs}", f"trainer.seed={seed}", "logger=none", "trainer.test=false",
            "sweep=random", f"hydra.sweeper.optim.budget={args.trials}",
            f"hydra.sweeper.optim.num_workers={args.trials}", f"hydra.sweeper.optim.seed={seed}",
            f"optimizer.lr={SPACE}", "hydra/launcher=parallel", "hydra.launcher.cpus_per_task=1", *args.overrides,
        ]
        arms = {}
        for name, extra in (("random", []), ("pbt", ["pbt=async", f"pbt.perturbation_interval={args.interval}",
                                                      f'pbt.mutations.optimizer.lr="{SPACE}"'])):
            sweep_dir = out / f"seed{seed}" / name
            started = time.monotonic()
            subprocess.run([sys.executable, "-m", "runner", "-m", *common, *extra, f"hydra.sweep.dir={sweep_dir}"],
                           cwd=REPO, check=True, stdout=subprocess.DEVNULL)
            arms[name] = summarize(sweep_dir, time.monotonic() - started)
        arms["replay"] = replay(out / f"seed{seed}", arms["pbt"])
        same = sorted(t["initial_lr"] for t in arms["random"]["trials"]) == sorted(
            t["initial_lr"] for t in arms["pbt"]["trials"])
        runs.append({"seed": seed, "same_initial_draws": same, **arms})
        print_seed(runs[-1])

    summary = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
               "runs": runs, "mean": means(runs)}
    write_json_atomic(out / "summary.json", summary)
    print_means(summary["mean"], len(runs))
    print(f"written to {out / 'summary.json'}")


def summarize(sweep_dir: Path, wall_s: float) -> dict:
    """Every trial's first learning rate, epochs and values; the sweep's best by the objective and by
    the last epoch's value."""
    trials = []
    for run_dir in sorted(p.parent for p in sweep_dir.glob("*/result.json")):
        result = read_result(run_dir)
        rows = read_metrics(run_dir)
        metric = result["objective"]["metric"]
        lr = next(o.split("=", 1)[1] for o in result["overrides"] if o.startswith("optimizer.lr="))
        trials.append({"name": run_dir.name, "initial_lr": float(lr), "epochs": result["epochs"],
                       "best": result["objective"]["value"], "last": rows[-1][metric] if rows else None,
                       "duration_s": result["duration_s"]})
    best = yaml.safe_load((sweep_dir / "best.yaml").read_text())
    return {
        "sweep_dir": str(sweep_dir), "wall_s": round(wall_s, 1), "trials": trials,
        "goal": best["objective"]["goal"], "best_trial": best["name"], "best": best["objective"]["value"],
        "best_last": pick(best["objective"]["goal"], [t["last"] for t in trials if t["last"] is not None]),
        "epochs": sum(t["epochs"] for t in trials), "exploits": count_exploits(sweep_dir),
        "pbt": best.get("pbt"),
    }


def count_exploits(sweep_dir: Path) -> int:
    path = sweep_dir / "pbt_global.jsonl"
    if not path.exists():
        return 0
    return sum(json.loads(line)["decision"] == "exploit" for line in path.read_text().splitlines())


def replay(folder: Path, pbt: dict) -> dict:
    """The PBT sweep's best trial replayed as one run, by the command the sweep report gives."""
    run_dir = folder / "replay"
    # through a shell, as a user pastes it: the command begins with its environment (OMP_NUM_THREADS=1 ...)
    command = f"{pbt['pbt']['replay']} {shlex.quote(f'hydra.run.dir={run_dir}')}"
    started = time.monotonic()
    subprocess.run(command, shell=True, cwd=REPO, check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    wall_s = time.monotonic() - started
    result = read_result(run_dir)
    rows, original = read_metrics(run_dir), read_metrics(Path(pbt["sweep_dir"]) / pbt["best_trial"])
    metric = result["objective"]["metric"]
    return {"run_dir": str(run_dir), "wall_s": round(wall_s, 1), "best": result["objective"]["value"],
            "last": rows[-1][metric], "of": pbt["best_trial"], "trial_best": pbt["best"],
            "trial_last": original[-1][metric],
            "schedule": [(s["epochs"], s["values"]["optimizer.lr"]) for s in pbt["pbt"]["schedule"]]}


def pick(goal: str, values: list[float]) -> float | None:
    if not values:
        return None
    return max(values) if goal == "maximize" else min(values)


def means(runs: list[dict]) -> dict:
    def mean(key: str, arm: str) -> float:
        return round(statistics.mean(run[arm][key] for run in runs), 4)

    return {arm: {key: mean(key, arm) for key in ("best", "best_last", "epochs", "wall_s")} for arm in ("random", "pbt")} | {
        "replay": {"best": mean("best", "replay"), "trial_best": mean("trial_best", "replay"),
                   "last": mean("last", "replay"), "trial_last": mean("trial_last", "replay")}}


def print_seed(run: dict) -> None:
    r, p, rp = run["random"], run["pbt"], run["replay"]
    print(f"seed {run['seed']}: same initial draws: {run['same_initial_draws']}")
    print(f"  random: best {r['best']:.4f}, best last epoch {r['best_last']:.4f}, {r['epochs']} epochs, {r['wall_s']} s")
    print(f"  pbt:    best {p['best']:.4f}, best last epoch {p['best_last']:.4f}, {p['epochs']} epochs, {p['wall_s']} s, "
          f"{p['exploits']} exploits")
    print(f"  replay of {rp['of']}: best {rp['best']:.4f} (trial {rp['trial_best']:.4f}), last {rp['last']:.4f} "
          f"(trial {rp['trial_last']:.4f}), {rp['wall_s']} s; schedule {rp['schedule']}")


def print_means(mean: dict, seeds: int) -> None:
    r, p, rp = mean["random"], mean["pbt"], mean["replay"]
    print(f"\nmean over {seeds} seed(s)     random    pbt")
    print(f"best objective          {r['best']:.4f}    {p['best']:.4f}")
    print(f"best last-epoch value   {r['best_last']:.4f}    {p['best_last']:.4f}")
    print(f"epochs trained          {r['epochs']:g}        {p['epochs']:g}")
    print(f"wall time (s)           {r['wall_s']:g}     {p['wall_s']:g}")
    print(f"replay: best {rp['best']:.4f} (trial {rp['trial_best']:.4f}), last {rp['last']:.4f} (trial {rp['trial_last']:.4f})")


if __name__ == "__main__":
    main()
