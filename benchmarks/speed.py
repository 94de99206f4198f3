"""Benchmark: the runner against the plain PyTorch MNIST script it replaces, on identical data.

Writes MNIST-format IDX files (60,000 train / 10,000 test digits, made from `mnist_5k` by
repetition: its 3,500 training digits about 17 times, its 1,000 test digits 10 times, so the test
digits are never trained on and it runs offline) and trains, with the same model (the tutorial's
two-conv `Net`), optimizer (SGD, lr 0.01, momentum 0.5), batch size (64), test batch size (1000),
seed and number of epochs, each in its own process with torch's default number of threads:

  reference    the W&B / PyTorch MNIST tutorial as written: torchvision `MNIST`, `ToTensor` +
               `Normalize`, `DataLoader(shuffle=True)` (on CUDA: 1 worker, pinned memory)
  lower bound  the same loop, the data normalised once into one tensor on the device and sliced
               by a permutation: what the data path cannot beat
  runner       python -m runner dataset=mnist model=cnn optimizer=sgd ... (device=auto)

Epoch time is training plus evaluation on the 10,000 test digits, for all three. The runner's is
its own measurement: the steps of `time_s` in metrics.csv, which also
count what it wrote after the epoch before (metrics.csv, checkpoints, TensorBoard scalars); the
histograms and prediction grid after the last epoch, and start-up, show only in each arm's wall
time. Also measured: start-up (`--help`, `--cfg job`, a config error, and a run from process start
to its first step, next to `import torch` alone and the reference's own first step) and the
per-trial overhead of a 10-trial local multirun.

Each arm runs several times (--repeats), the arms taking turns. On a shared or virtual machine the
speed of a whole process can differ by a quarter from one process to the next, so the ratios use
each arm's fastest epoch (the least disturbed) and show the median epoch's too.

    make bench                                                  # 2 epochs, 5 runs per arm
    python benchmarks/speed.py --epochs 1 --repeats 2           # a quick look
    python benchmarks/speed.py --threads 1                      # every arm on one thread
    python benchmarks/speed.py -- trainer.precision=bf16 trainer.compile=true   # runner overrides

Everything after `--` goes to the runner's timed runs. The table is printed and, with the raw
numbers, written to OUT/summary.json (default outputs/benchmarks/speed/<time>).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import struct
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TRAIN_SIZE, TEST_SIZE = 60_000, 10_000  # MNIST's
SETTINGS = {"batch_size": 64, "test_batch_size": 1000, "lr": 0.01, "momentum": 0.5, "seed": 0, "log_interval": 10}
RUNNER_SETTINGS = [
    # validation on the 10,000 test digits, as the tutorial evaluates every epoch; no separate test stage
    "dataset=mnist", "dataset.val_size=0", "model=cnn", "optimizer=sgd",
    f"optimizer.lr={SETTINGS['lr']}", f"optimizer.momentum={SETTINGS['momentum']}",
    f"trainer.batch_size={SETTINGS['batch_size']}", f"trainer.eval_batch_size={SETTINGS['test_batch_size']}",
    f"trainer.seed={SETTINGS['seed']}",
]
# what the issue asks of the runner, by device type: (vs reference, vs lower bound), as time ratios
TARGETS = {"cpu": (0.5, 1.1), "cuda": (0.2, 1.2)}
CFG_JOB_TARGET_S = 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2, help="epochs per arm (2)")
    parser.add_argument("--repeats", type=int, default=5, help="runs per arm, taking turns (5)")
    parser.add_argument("--threads", type=int, default=None,
                        help="OMP_NUM_THREADS for every arm (default: torch's own choice, one per core)")
    parser.add_argument("--out", type=Path, default=None, help="folder for data, runs and summary.json")
    parser.add_argument("--arm", choices=("reference", "lower_bound"), help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--t0", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="after --: overrides for the runner's timed runs")
    args = parser.parse_args()
    if args.arm:
        result = plain_loop(args.arm, args.data, args.epochs, args.t0)
        args.json.write_text(json.dumps(result))
        return

    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # inherited by every arm's process
    out = args.out or REPO / "outputs" / "benchmarks" / "speed" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    data = out / "data"
    write_mnist(data)
    load = [os.getloadavg()[0]]
    startup = measure_startup(out, data)
    names = ["reference", "lower_bound", "runner"]
    arms = {name: [] for name in names}
    for repeat in range(args.repeats):
        # the arms take turns, each in every place of the order: other work on the machine, and a
        # machine that slows down under a long burst of work (a VM's CPU budget), hit them alike
        for name in names[repeat % 3 :] + names[: repeat % 3]:
            print(f"[{repeat + 1}/{args.repeats}] {name} ...", flush=True)
            if name == "runner":
                run = run_runner(out / f"runner-{repeat}", data, args.epochs, args.overrides)
                run["first_step_s"] = startup["first_step_s"]  # from the one-step runs, which log step 1
            else:
                run = run_plain(name, out / f"{name}-{repeat}.json", data, args.epochs)
            arms[name].append(run)
            load.append(os.getloadavg()[0])
    multirun = measure_multirun(out)

    best = {name: aggregate(runs) for name, runs in arms.items()}
    # the runner's trainer.device=auto picks what the plain loops pick: CUDA when there is one
    device = arms["reference"][0]["device"]
    summary = {
        "settings": {"epochs": args.epochs, "repeats": args.repeats, "runner_overrides": args.overrides, **SETTINGS},
        "device": device,
        "machine": machine(device),
        "arms": best,
        "all_runs": arms,
        "ratios": {
            "runner_over_reference": best["runner"]["epoch_s"] / best["reference"]["epoch_s"],
            "runner_over_lower_bound": best["runner"]["epoch_s"] / best["lower_bound"]["epoch_s"],
            "median_runner_over_reference": best["runner"]["median_epoch_s"] / best["reference"]["median_epoch_s"],
            "median_runner_over_lower_bound": best["runner"]["median_epoch_s"] / best["lower_bound"]["median_epoch_s"],
        },
        "startup": startup,
        "multirun": multirun,
        "load_average_1min": load,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(report(summary))
    print(f"written to {out / 'summary.json'}")


# ---------------------------------------------------------------------- data


def write_mnist(root: Path) -> None:
    """torchvision's raw MNIST layout, from mnist_5k's stratified train/val split, repeated."""
    raw = root / "MNIST" / "raw"
    if (raw / "t10k-labels-idx1-ubyte").exists():
        return
    import torch

    from components.datasets import mnist_5k

    digits = mnist_5k(str(root), channels=1, image_size=28, num_classes=10)
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, split, count in (("train", digits.train, TRAIN_SIZE), ("t10k", digits.test, TEST_SIZE)):
        times = -(-count // len(split))
        images = split.inputs.squeeze(1).repeat(times, 1, 1)[:count].numpy()
        labels = split.targets.repeat(times)[:count].to(torch.uint8).numpy()
        # IDX: big-endian magic (0x803 images, 0x801 labels), sizes, then the uint8 payload
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 0x803, count, 28, 28) + images.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x801, count) + labels.tobytes())


# ---------------------------------------------------------------------- the plain loops


def plain_loop(arm: str, data: Path, epochs: int, t0: float) -> dict:
    """The tutorial's script (reference) or the same loop over pre-normalised tensors (lower_bound)."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    import torch.optim as optim
    from torchvision import datasets, transforms

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 10, kernel_size=5)
            self.conv2 = nn.Conv2d(10, 20, kernel_size=5)
            self.conv2_drop = nn.Dropout2d()
            self.fc1 = nn.Linear(320, 50)
            self.fc2 = nn.Linear(50, 10)

        def forward(self, x):
            x = F.relu(F.max_pool2d(self.conv1(x), 2))
            x = F.relu(F.max_pool2d(self.conv2_drop(self.conv2(x)), 2))
            x = x.view(-1, 320)
            x = F.relu(self.fc1(x))
            x = F.dropout(x, training=self.training)
            x = self.fc2(x)
            return F.log_softmax(x, dim=1)

    torch.manual_seed(SETTINGS["seed"])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    normalize = transforms.Normalize((0.1307,), (0.3081,))
    batch_size, test_batch_size = SETTINGS["batch_size"], SETTINGS["test_batch_size"]

    if arm == "reference":
        kwargs = {"num_workers": 1, "pin_memory": True} if device.type == "cuda" else {}
        transform = transforms.Compose([transforms.ToTensor(), normalize])
        train_loader = torch.utils.data.DataLoader(
            datasets.MNIST(data, train=True, download=True, transform=transform),
            batch_size=batch_size, shuffle=True, **kwargs)
        test_loader = torch.utils.data.DataLoader(
            datasets.MNIST(data, train=False, transform=transform),
            batch_size=test_batch_size, shuffle=True, **kwargs)

        def train_batches():
            for x, y in train_loader:
                yield x.to(device), y.to(device)

        def test_batches():
            for x, y in test_loader:
                yield x.to(device), y.to(device)
    else:
        def tensors(train: bool):
            split = datasets.MNIST(data, train=train, download=True)
            x = normalize(split.data.unsqueeze(1).float().div(255)).to(device)
            return x, split.targets.to(device)

        train_x, train_y = tensors(True)
        test_x, test_y = tensors(False)

        def train_batches():
            order = torch.randperm(len(train_y), device=device)
            for i in range(0, len(train_y), batch_size):
                index = order[i : i + batch_size]
                yield train_x[index], train_y[index]

        def test_batches():
            for i in range(0, len(test_y), test_batch_size):
                yield test_x[i : i + test_batch_size], test_y[i : i + test_batch_size]

    model = Net().to(device)
    optimizer = optim.SGD(model.parameters(), lr=SETTINGS["lr"], momentum=SETTINGS["momentum"])
    first_step_s = None
    logged = []

    def train() -> None:
        nonlocal first_step_s
        model.train()
        for batch_idx, (data, target) in enumerate(train_batches()):
            optimizer.zero_grad()
            output = model(data)
            loss = F.nll_loss(output, target)
            loss.backward()
            optimizer.step()
            if first_step_s is None:
                sync()
                first_step_s = time.time() - t0
            if batch_idx % SETTINGS["log_interval"] == 0:
                logged.append(loss.item())  # the tutorial's wandb.log / print

    def test() -> tuple[float, float]:
        model.eval()
        test_loss, correct, seen = 0.0, 0, 0
        with torch.no_grad():
            for data, target in test_batches():
                output = model(data)
                test_loss += F.nll_loss(output, target, reduction="sum").item()
                pred = output.max(1, keepdim=True)[1]
                correct += pred.eq(target.view_as(pred)).sum().item()
                seen += len(target)
        return test_loss / seen, correct / seen

    epochs_out = []
    for _ in range(epochs):
        tic = time.perf_counter()
        train()
        sync()
        trained = time.perf_counter()
        loss, accuracy = test()
        done = time.perf_counter()
        epochs_out.append({"train_s": trained - tic, "eval_s": done - trained, "test_acc": accuracy, "test_loss": loss})
    return {"device": str(device), "threads": torch.get_num_threads(), "epochs": epochs_out,
            "first_step_s": first_step_s}


def run_plain(arm: str, json_path: Path, data: Path, epochs: int) -> dict:
    t0 = time.time()
    subprocess.run([sys.executable, __file__, "--arm", arm, "--data", str(data), "--epochs", str(epochs),
                    "--t0", repr(t0), "--json", str(json_path)], cwd=REPO, check=True)
    wall_s = time.time() - t0
    result = json.loads(json_path.read_text())
    return result | {"wall_s": wall_s}


def aggregate(runs: list[dict]) -> dict:
    """An arm over all its runs: its fastest epoch, the one least disturbed by other work on the
    machine (and past warm-up: cuDNN autotuning, torch.compile), and the median epoch."""
    epochs = [epoch | {"epoch_s": epoch["train_s"] + epoch["eval_s"]} for run in runs for epoch in run["epochs"]]
    fastest = min(epochs, key=lambda epoch: epoch["epoch_s"])
    first_steps = [run["first_step_s"] for run in runs if run.get("first_step_s") is not None]
    return {
        "epoch_s": fastest["epoch_s"],
        "train_s": fastest["train_s"],
        "eval_s": fastest["eval_s"],
        "median_epoch_s": statistics.median(epoch["epoch_s"] for epoch in epochs),
        "test_acc": runs[-1]["epochs"][-1]["test_acc"],
        "first_step_s": min(first_steps) if first_steps else None,
        "wall_s": min(run["wall_s"] for run in runs),
    }


# ---------------------------------------------------------------------- the runner


def runner_cli(*overrides: str) -> list[str]:
    return [sys.executable, "-m", "runner", *overrides]


def run_runner(run_dir: Path, data: Path, epochs: int, extra: list[str]) -> dict:
    t0 = time.time()
    subprocess.run(runner_cli(*RUNNER_SETTINGS, f"trainer.max_epochs={epochs}", f"paths.data_dir={data}",
                              f"hydra.run.dir={run_dir}", *extra),
                   cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    wall_s = time.time() - t0
    # time_s counts from the start of training: its steps include what the runner did after the
    # epoch before (metrics.csv, checkpoints, TensorBoard scalars)
    epochs_out, previous = [], 0.0
    for row in read_metrics(run_dir):
        epoch_s = float(row["time_s"]) - previous
        previous = float(row["time_s"])
        train_s = TRAIN_SIZE / float(row["train/samples_per_s"])
        epochs_out.append({"train_s": train_s, "eval_s": epoch_s - train_s, "test_acc": float(row["val/acc"])})
    return {"epochs": epochs_out, "wall_s": wall_s, "run_dir": str(run_dir)}


def read_metrics(run_dir: Path) -> list[dict]:
    with (run_dir / "metrics.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def first_step_s(run_dir: Path, t0: float) -> float | None:
    """Seconds from process start to the first step's log line (logger.console, log_every_n_steps)."""
    for line in (run_dir / "runner.log").read_text().splitlines():
        if "[components.loggers.console]" in line and "] - step " in line:
            stamp = datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f")
            return stamp.timestamp() - t0
    return None


# ---------------------------------------------------------------------- start-up and sweeps


def timed(command: list[str], repeats: int, expect_ok: bool = True) -> float:
    """Median wall time of a command, in seconds."""
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        done = subprocess.run(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - tic)
        if (done.returncode == 0) != expect_ok:
            raise RuntimeError(f"{' '.join(command)} exited with {done.returncode}")
    return statistics.median(times)


def measure_startup(out: Path, data: Path, repeats: int = 5) -> dict:
    print("start-up ...", flush=True)
    common = [*RUNNER_SETTINGS, f"paths.data_dir={data}"]
    one_step = [*common, "trainer.max_epochs=1", "trainer.limit_train_batches=1", "trainer.limit_val_batches=1",
                "logger=all", "trainer.log_every_n_steps=1"]
    # decodes the IDX files into the runner's cache: every later run reads the cache
    subprocess.run(runner_cli(*one_step, f"hydra.run.dir={out / 'warmup'}"), cwd=REPO, check=True,
                   stdout=subprocess.DEVNULL)
    first_steps, one_step_walls = [], []
    for i in range(3):
        run_dir = out / f"first-step-{i}"
        t0 = time.time()
        subprocess.run(runner_cli(*one_step, f"hydra.run.dir={run_dir}"), cwd=REPO, check=True,
                       stdout=subprocess.DEVNULL)
        one_step_walls.append(time.time() - t0)
        first_steps.append(first_step_s(run_dir, t0))
    return {
        "python_s": timed([sys.executable, "-c", "pass"], repeats),
        "import_torch_s": timed([sys.executable, "-c", "import torch"], repeats),
        "help_s": timed(runner_cli("--help"), repeats),
        "cfg_job_s": timed(runner_cli(*common, "--cfg", "job"), repeats),
        "config_error_s": timed(runner_cli(*common, "trainer.batch_size=0", f"hydra.run.dir={out / 'error'}"),
                                repeats, expect_ok=False),
        "first_step_s": statistics.median(first_steps),
        "one_step_run_wall_s": statistics.median(one_step_walls),
    }


def measure_multirun(out: Path, trials: int = 10) -> dict:
    """(wall - sum of the trials' train+eval time) / trials, and the same beyond a 1-trial sweep."""
    print(f"{trials}-trial multirun ...", flush=True)
    launcher = ["hydra/launcher=local"] if (REPO / "conf" / "hydra" / "launcher" / "local.yaml").exists() else []
    tiny = ["dataset=synthetic", "model=mlp", "trainer.max_epochs=1", *launcher]

    def sweep(n: int) -> tuple[float, float, list[float]]:
        sweep_dir = out / f"multirun-{n}"
        tic = time.perf_counter()
        subprocess.run(runner_cli("--multirun", f"trainer.seed=range({n})", *tiny, f"hydra.sweep.dir={sweep_dir}"),
                       cwd=REPO, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - tic
        train = [float(read_metrics(p.parent)[-1]["time_s"]) for p in sorted(sweep_dir.glob("*/metrics.csv"))]
        durations = [json.loads((p.parent / "result.json").read_text())["duration_s"]
                     for p in sorted(sweep_dir.glob("*/metrics.csv"))]
        if len(train) != n:
            raise RuntimeError(f"{sweep_dir}: {len(train)} of {n} trials wrote metrics.csv")
        return wall, sum(train), durations

    wall_1, train_1, _ = sweep(1)
    wall_n, train_n, durations = sweep(trials)
    return {
        "trials": trials,
        "overrides": tiny,
        "wall_s": wall_n,
        "train_s": train_n,
        "overhead_per_trial_s": (wall_n - train_n) / trials,
        "marginal_overhead_per_trial_s": ((wall_n - train_n) - (wall_1 - train_1)) / (trials - 1),
        "trial_duration_s": statistics.median(durations),
        "one_trial_sweep_wall_s": wall_1,
    }


# ---------------------------------------------------------------------- report


def machine(device: str) -> str:
    import platform

    import torch

    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name()}, torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()}-core {cpu} CPU, torch {torch.__version__} ({torch.get_num_threads()} threads)"


def report(summary: dict) -> str:
    arms, ratios, startup, multirun = summary["arms"], summary["ratios"], summary["startup"], summary["multirun"]
    device = "cuda" if summary["device"].startswith("cuda") else "cpu"
    vs_reference, vs_lower_bound = TARGETS[device]
    settings = summary["settings"]
    lines = [
        f"machine: {summary['machine']}",
        f"MNIST-format data, 60,000 train / 10,000 test; tutorial Net, SGD lr {settings['lr']} momentum "
        f"{settings['momentum']}, batch {settings['batch_size']}, {settings['epochs']} epochs"
        + (f", {settings['repeats']} runs each" if settings["repeats"] > 1 else ""),
        "epoch = training + evaluation on the test split: the fastest epoch (its train and eval parts) and "
        "the median; wall = the whole process (fastest run)",
        f"load average (1 min) before and after each arm: {min(summary['load_average_1min']):.1f} to "
        f"{max(summary['load_average_1min']):.1f} on {os.cpu_count()} cores"
        + ("  (other work was running: rerun on a quiet machine, or with --repeats 3)"
           if max(summary["load_average_1min"]) > (os.cpu_count() or 1) + 1 else ""),
        "",
        "| arm | epoch s | train s | eval s | median epoch s | test acc | start to first step s | wall s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    names = {"reference": "reference (tutorial script)", "lower_bound": "lower bound (tensor slicing)",
             "runner": "runner (`python -m runner`)"}
    for name, label in names.items():
        arm = arms[name]
        first = f"{arm['first_step_s']:.2f}" if arm["first_step_s"] is not None else "-"
        lines.append(f"| {label} | {arm['epoch_s']:.2f} | {arm['train_s']:.2f} | {arm['eval_s']:.2f} | "
                     f"{arm['median_epoch_s']:.2f} | {arm['test_acc']:.4f} | {first} | {arm['wall_s']:.1f} |")
    def against(name: str, target: float, ratio: float, median: float) -> str:
        if device == "cpu" or name == "lower bound":
            return (f"runner / {name}, epoch time: fastest {ratio:.2f}x, median {median:.2f}x  "
                    f"(target <= {target}x: {verdict(ratio <= target)})")
        # on a GPU the issue asks for a speed-up over the reference
        return (f"runner vs {name}: fastest epochs {1 / ratio:.1f}x faster, median {1 / median:.1f}x  "
                f"(target >= {1 / target:.0f}x: {verdict(ratio <= target)})")

    lines += [
        "",
        against("reference", vs_reference, ratios["runner_over_reference"], ratios["median_runner_over_reference"]),
        against("lower bound", vs_lower_bound, ratios["runner_over_lower_bound"],
                ratios["median_runner_over_lower_bound"]),
        f"test accuracy: runner {arms['runner']['test_acc']:.4f}, reference {arms['reference']['test_acc']:.4f}, "
        f"lower bound {arms['lower_bound']['test_acc']:.4f}",
        "",
        "| start-up (median wall time) | s |",
        "|---|---:|",
        f"| python -c pass | {startup['python_s']:.2f} |",
        f"| python -c 'import torch' | {startup['import_torch_s']:.2f} |",
        f"| python -m runner --help | {startup['help_s']:.2f} |",
        f"| python -m runner ... --cfg job (target < {CFG_JOB_TARGET_S:.0f} s: "
        f"{verdict(startup['cfg_job_s'] < CFG_JOB_TARGET_S)}) | {startup['cfg_job_s']:.2f} |",
        f"| python -m runner ... trainer.batch_size=0 (config error) | {startup['config_error_s']:.2f} |",
        f"| python -m runner dataset=mnist ...: process start to first step | {startup['first_step_s']:.2f} |",
        f"| the same run, 1 step + 1 eval batch, whole process | {startup['one_step_run_wall_s']:.2f} |",
        "",
        f"{multirun['trials']}-trial local multirun ({' '.join(multirun['overrides'])}): wall "
        f"{multirun['wall_s']:.1f} s, train+eval {multirun['train_s']:.2f} s, overhead per trial "
        f"{multirun['overhead_per_trial_s']:.2f} s ((wall - train) / {multirun['trials']}), "
        f"{multirun['marginal_overhead_per_trial_s']:.2f} s beyond a 1-trial sweep",
    ]
    return "\n".join(lines)


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


if __name__ == "__main__":
    main()
