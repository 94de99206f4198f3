"""A model for sweep tests that looks at the process it is built in (and can spoil it, or kill it).

conf/model/probe.yaml (in tests/conf, added with --config-dir) names it. Built once per trial,
it writes what it finds about the process's global state into process_state.json in the trial's
folder; with pollute=true it then changes that state as a careless trial could, with
crash=true it kills its own process, as a segfault or the OOM killer would, and with
fail_after_epoch_of=N it fails once trial N of the sweep is in its training loop.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

POLLUTED = "RUNNER_TEST_POLLUTED"


def observe() -> dict:
    """Everything a trial could inherit from the one before it in the same process."""
    root = logging.getLogger()
    umask = os.umask(0)
    os.umask(umask)
    return {
        "pid": os.getpid(),
        "cwd": os.getcwd(),
        "polluted_env": os.environ.get(POLLUTED),
        "threads_env": [os.environ.get("OMP_NUM_THREADS"), os.environ.get("MKL_NUM_THREADS")],
        "gpus_env": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "slot": os.environ.get("RUNNER_SLOT"),
        "umask": umask,
        "argv": sys.argv[1:],
        "path_tail": sys.path[-3:],
        "root_logger": [root.level, sorted(type(h).__name__ for h in root.handlers)],
        "polluted_logger": logging.getLogger("tests.polluted").level,
        "logging_disabled": logging.root.manager.disable,
        "warning_filters": len(warnings.filters),
        "sigusr1": repr(signal.getsignal(signal.SIGUSR1)),
        "torch_threads": torch.get_num_threads(),
        "default_dtype": str(torch.get_default_dtype()),
        "matmul_precision": torch.get_float32_matmul_precision(),
        "anomaly": torch.is_anomaly_enabled(),
        "print_precision": torch._tensor_str.PRINT_OPTS.precision,
        "grad": torch.is_grad_enabled(),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
    }


def spoil_process_state() -> None:
    os.environ[POLLUTED] = "1"
    os.chdir("/")
    os.umask(0o077)
    sys.argv.append("--polluted")
    sys.path.append("/polluted")
    logging.getLogger().addHandler(logging.StreamHandler(sys.stderr))
    logging.getLogger("tests.polluted").setLevel(logging.DEBUG)
    warnings.simplefilter("ignore", ResourceWarning)
    signal.signal(signal.SIGUSR1, lambda signum, frame: None)
    torch.set_num_threads(3)
    torch.set_float32_matmul_precision("medium")
    torch.set_anomaly_enabled(True)
    torch.set_printoptions(precision=2)
    # the random generators too: a trial that did not seed would start from these
    random.seed(1234)
    np.random.seed(1234)
    torch.manual_seed(1234)


def wait_for_epoch_of(sweep_dir: Path, number: int, timeout: float = 120) -> None:
    """Until trial `number` of the sweep has finished an epoch (its metrics.csv exists)."""
    deadline = time.monotonic() + timeout
    while not list(sweep_dir.glob(f"{number}_*/metrics.csv")):
        if time.monotonic() > deadline:
            raise TimeoutError(f"trial {number} of {sweep_dir} finished no epoch in {timeout} s")
        time.sleep(0.05)


class StateProbe(nn.Module):
    def __init__(self, in_channels: int, image_size: int, num_classes: int, pollute: bool = False,
                 crash: bool = False, fail_after_epoch_of: int | None = None):
        super().__init__()
        from hydra.core.hydra_config import HydraConfig

        if crash:
            os.kill(os.getpid(), signal.SIGKILL)
        if fail_after_epoch_of is not None:
            wait_for_epoch_of(Path(HydraConfig.get().sweep.dir), fail_after_epoch_of)
            raise RuntimeError(f"failing on purpose, once trial {fail_after_epoch_of} is training")
        run_dir = Path(HydraConfig.get().runtime.output_dir)
        (run_dir / "process_state.json").write_text(json.dumps(observe(), indent=1))
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size**2, 32), nn.ReLU(),
                                 nn.Linear(32, num_classes))
        if pollute:
            spoil_process_state()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
