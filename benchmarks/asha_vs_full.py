"""Benchmark: the same random search with and without early termination (pruner=asha by default).

Runs two sweeps through the real CLI, `python -m runner -m`, with Nevergrad's RandomSearch and the
same seed, so both draw the same configurations (checked, and reported if not): one with
`pruner=none`, one with the pruner. It reports the epochs each trained, their time, the best
configuration each found, and how good the pruned sweep's pick is in the full sweep (its rank
and regret). The full sweep is the ground truth: every configuration trained to the end.

    python benchmarks/asha_vs_full.py                                  # mnist_5k, 27 x 9 epochs
    python benchmarks/asha_vs_full.py --trials 9 --epochs 4 -- dataset=synthetic model=mlp   # quick
    python benchmarks/asha_vs_full.py --pruner hyperband -- hydra/launcher=parallel

Everything after `--` is passed to both sweeps. The summary is printed and written as JSON next
to the two sweep folders, under OUT (default outputs/benchmarks/asha_vs_full/<time>).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from runner.results import read_result, write_json_atomic

REPO = Path(__file__).resolve().parents[1]

# the search space: optimizer, model and batch size (2 x 3 x 3 = 18 combinations) times a
# learning rate on a log scale: far more than 27 configurations
SPACE = ["optimizer=sgd,adam", "model=lenet,mlp,cnn", "trainer.batch_size=32,64,128",
         "optimizer.lr=tag(log,interval(0.0001,0.3))"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=27, help="configurations drawn (27)")
    parser.add_argument("--epochs", type=int, default=9, help="trainer.max_epochs (9)")
    parser.add_argument("--pruner", default="asha", help="pruner config: asha, hyperband, median")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random search (0)")
    parser.add_argument("--out", type=Path, default=None, help="folder for both sweeps and the summary")
    parser.add_argument("overrides", nargs="*", help="after --: overrides for both sweeps")
    args = parser.parse_args()
    out = args.out or REPO / "outputs" / "benchmarks" / "asha_vs_full" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")

    common = [
        "dataset=mnist_5k", f"trainer.max_epochs={args.epochs}", "logger=none",
        "sweep=random", "hydra.sweeper.optim.num_workers=1",
        f"hydra.sweeper.optim.budget={args.trials}", f"hydra.sweeper.optim.seed={args.seed}",
        *SPACE, *args.overrides,
    ]
    arms = {}
    for name, pruner in (("full", "none"), ("pruned", args.pruner)):
        sweep_dir = out / name
        started = time.monotonic()
        subprocess.run([sys.executable, "-m", "runner", "-m", *common, f"pruner={pruner}",
                        f"hydra.sweep.dir={sweep_dir}"], cwd=REPO, check=True)
        arms[name] = summarize(sweep_dir, time.monotonic() - started)

    summary = compare(arms["full"], arms["pruned"], args.pruner)
    write_json_atomic(out / "summary.json", {"settings": vars(args) | {"out": str(out)},
                                             "overrides": common, **summary})
    print(json.dumps({k: v for k, v in summary.items() if k != "arms"}, indent=2))
    full, pruned = summary["full"], summary[args.pruner]
    gap = 100 * abs(full["best"]["value"] - pruned["best"]["value"])
    share = pruned["epochs_trained"] / max(1, full["epochs_trained"])
    print(f"best {summary['goal'][:3]} objective: full {full['best']['value']:.4f}, {args.pruner} "
          f"{pruned['best']['value']:.4f}: {gap:.2f} points apart (target <= 0.5)")
    print(f"epochs: full {full['epochs_trained']}, {args.pruner} {pruned['epochs_trained']}: {share:.0%} "
          f"(target <= 40%); wall time: full {full['wall_s']} s, {args.pruner} {pruned['wall_s']} s "
          f"({pruned['wall_s'] / full['wall_s']:.2f}x)")
    print(f"written to {out / 'summary.json'}")


def summarize(sweep_dir: Path, wall_s: float) -> dict:
    """Every trial's configuration, status, epochs and best value, read from its result.json."""
    trials = []
    for run_dir in sorted(p.parent for p in sweep_dir.glob("*/result.json")):
        result = read_result(run_dir)
        trials.append({
            "config": config_key(result["overrides"]),
            "status": result["status"],
            "epochs": result["epochs"],
            "duration_s": result["duration_s"],
            "value": result["objective"]["value"],
            "goal": result["objective"]["goal"],
        })
    return {"sweep_dir": str(sweep_dir), "wall_s": round(wall_s, 1), "trials": trials}


def config_key(overrides: list[str]) -> str:
    """The drawn point alone: the overrides of the search space, in a fixed order."""
    searched = {entry.split("=", 1)[0] for entry in SPACE}
    return ",".join(sorted(o for o in overrides if o.split("=", 1)[0] in searched))


def compare(full: dict, pruned: dict, pruner: str) -> dict:
    goal = full["trials"][0]["goal"]
    sign = 1 if goal == "maximize" else -1

    def ranked(trials: list[dict]) -> list[dict]:
        worst = -math.inf
        return sorted(trials, key=lambda t: sign * t["value"] if t["value"] is not None else worst,
                      reverse=True)

    full_by_config = {t["config"]: t for t in full["trials"]}
    full_ranked = ranked(full["trials"])
    pick = ranked(pruned["trials"])[0]
    pick_in_full = full_by_config.get(pick["config"])
    same_configs = sorted(full_by_config) == sorted(t["config"] for t in pruned["trials"])

    def totals(arm: dict) -> dict:
        return {
            "trials": len(arm["trials"]),
            "pruned": sum(t["status"] == "pruned" for t in arm["trials"]),
            "epochs_trained": sum(t["epochs"] for t in arm["trials"]),
            "train_time_s": round(sum(t["duration_s"] for t in arm["trials"]), 1),
            "wall_s": arm["wall_s"],
            "best": ranked(arm["trials"])[0],
        }

    result = {
        "goal": goal,
        "same_configurations": same_configs,
        "full": totals(full),
        pruner: totals(pruned),
        "epochs_saved": round(1 - totals(pruned)["epochs_trained"] / max(1, totals(full)["epochs_trained"]), 3),
        "arms": {"full": full, pruner: pruned},
    }
    if pick_in_full is not None:
        # how the pruned sweep's pick fares when trained to the end
        result["pick_rank_in_full"] = full_ranked.index(pick_in_full) + 1
        result["pick_regret"] = sign * (full_ranked[0]["value"] - pick_in_full["value"])
    return result


if __name__ == "__main__":
    main()
