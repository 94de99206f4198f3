"""What crosses between the sweep and a warm worker: the boot file every worker loads once, and the
JobReturn rebuilt from what a worker sends back after each trial."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from omegaconf import DictConfig, OmegaConf

from launchers.pools import TrialError, failed_return


def write_boot_file(output_dir: Path, hydra_context: Any, task_function: Any, config: DictConfig,
                    preload: list[str]) -> Path:
    """What every worker loads once: the task function, the sweep's config and Hydra's state."""
    import cloudpickle
    from hydra.core.singleton import Singleton

    output_dir.mkdir(parents=True, exist_ok=True)
    boot = {
        "hydra_context": hydra_context,
        "task_function": task_function,
        "config": config,
        "singleton_state": Singleton.get_state(),
        "preload": preload,
        "output_dir": str(output_dir),
    }
    fd, path = tempfile.mkstemp(prefix="boot-", suffix=".pkl", dir=output_dir)
    with os.fdopen(fd, "wb") as f:
        cloudpickle.dump(boot, f)
    return Path(path)


def job_return(overrides: list[str], status: str, value: Any, job: dict[str, Any]) -> JobReturn:
    """A trial's JobReturn from what its worker sent back."""
    if status == "failed":
        name, message, compact = value
        ret = failed_return(overrides, TrialError(message if compact else f"{name}: {message}"))
    else:
        ret = JobReturn(overrides=overrides, status=JobStatus.COMPLETED)
        ret.return_value = value
    ret.cfg, ret.hydra_cfg = (None if job[key] is None else OmegaConf.create(job[key]) for key in ("cfg", "hydra_cfg"))
    ret.working_dir, ret.task_name = job["working_dir"], job["task_name"]
    return ret
