"""Benchmark: data-parallel training against one process, on identical data and global batches.

Runs `python -m runner` three times on mnist_5k with LeNet-5 (no dropout, deterministic kernels), the
same seed, global batch and epochs:

  single        trainer.strategy=single (one process)
  ddp x1        trainer.strategy=ddp trainer.devices=1 (DistributedDataParallel on one process: its overhead)
  ddp x2        trainer.strategy=ddp trainer.devices=2 (two processes; on a CPU each takes half the cores)

and prints each run's training time per epoch, its wall time, and the largest difference between the
two-process and one-process metrics after the last epoch (floating-point reduction order is all that
may differ). On a CUDA machine the runs use the GPUs (`ddp x1` against `single` is the 1-GPU overhead).
It asserts nothing.

    python benchmarks/ddp.py                  # 3 epochs
    python benchmarks/ddp.py --epochs 1
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMMON = ["dataset=mnist_5k", "model=lenet", "optimizer=sgd", "optimizer.lr=0.01", "optimizer.momentum=0.5",
          "trainer.batch_size=64",
          "trainer.deterministic=true", "logger=none", "trainer.test=false"]
ARMS = {"single": [], "ddp x1": ["trainer.strategy=ddp", "trainer.devices=1"],
        "ddp x2": ["trainer.strategy=ddp", "trainer.devices=2"]}
SPEED = ("time_s", "train/samples_per_s")


def run(name: str, extra: list[str], epochs: int, out: Path) -> dict:
    run_dir = out / name.replace(" ", "_")
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "runner", *COMMON, *extra, f"trainer.max_epochs={epochs}",
                    f"hydra.run.dir={run_dir}"], cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    wall = time.monotonic() - started
    with (run_dir / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    times = [float(r["time_s"]) for r in rows]
    per_epoch = [b - a for a, b in zip([0.0, *times], times)]
    return {"wall_s": round(wall, 2), "epoch_s": round(min(per_epoch), 3), "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    out = args.out or REPO / "outputs" / "benchmarks" / "ddp" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    out.mkdir(parents=True, exist_ok=True)
    results = {name: run(name, extra, args.epochs, out) for name, extra in ARMS.items()}
    one, two = results["single"]["rows"][-1], results["ddp x2"]["rows"][-1]
    differences = {k: abs(float(one[k]) - float(two[k])) for k in one if k not in SPEED and one[k] and two[k]}
    worst = max(differences, key=differences.get)
    print(f"{'arm':<8}{'fastest epoch':>15}{'wall':>9}   last epoch: val/acc, val/loss")
    for name, result in results.items():
        last = result["rows"][-1]
        print(f"{name:<8}{result['epoch_s']:>14.3f}s{result['wall_s']:>8.1f}s   "
              f"{float(last['val/acc']):.6f}, {float(last['val/loss']):.8f}")
    print(f"\nlargest difference after {args.epochs} epochs, 2 processes vs 1: {worst} {differences[worst]:.3g}")
    print(f"ddp x1 / single (the DDP wrapper's overhead): {results['ddp x1']['epoch_s'] / results['single']['epoch_s']:.3f}")
    print(f"ddp x2 / single: {results['ddp x2']['epoch_s'] / results['single']['epoch_s']:.3f}")
    summary = {name: {k: v for k, v in r.items() if k != "rows"} for name, r in results.items()}
    summary["largest_difference"] = {"metric": worst, "value": differences[worst]}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
