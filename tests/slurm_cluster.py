"""The SLURM cluster the slurm tests use: the one already running, or one that
launchers/slurm/start.sh starts (as root, on Debian), left running for the next session."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid

import pytest

from tests.conftest import REPO

# CPUs the test cluster advertises (more than the machine has is fine): room for a sweep's
# trials next to a detached sweep's driver job, which holds one CPU for the whole sweep
SLURM_CPUS = 8


def sinfo(fmt: str) -> str | None:
    """sinfo's one-line answer in format FMT, or None when there is no working cluster."""
    if shutil.which("sinfo") is None:
        return None
    try:
        out = subprocess.run(["sinfo", "-h", "-o", fmt], capture_output=True, text=True, timeout=10)
    except subprocess.TimeoutExpired:
        return None
    lines = out.stdout.split()
    return lines[0] if out.returncode == 0 and lines else None


def cluster_ready() -> bool:
    state, cpus = sinfo("%t"), sinfo("%c")
    return state in ("idle", "mix", "alloc") and cpus is not None and int(cpus) >= SLURM_CPUS


@pytest.fixture(scope="session")
def slurm_cluster():
    """A working cluster (partitions debug, the default, and high, which preempts debug), or a skip."""
    if cluster_ready():
        return
    if os.geteuid() != 0:
        pytest.skip("no SLURM cluster is running and launchers/slurm/start.sh needs root to start one")
    if shutil.which("apt-get") is None and shutil.which("slurmctld") is None:
        pytest.skip("no SLURM cluster is running and there is no apt-get to install one with")
    started = time.monotonic()
    out = subprocess.run(["bash", str(REPO / "launchers" / "slurm" / "start.sh")],
                         env={**os.environ, "SLURM_CPUS": str(max(SLURM_CPUS, os.cpu_count() or 1))},
                         capture_output=True, text=True, timeout=900)
    if out.returncode != 0 or not cluster_ready():
        pytest.skip(f"launchers/slurm/start.sh could not start a cluster (exit {out.returncode}):\n"
                    f"{(out.stdout + out.stderr)[-2000:]}")
    print(f"SLURM cluster started in {time.monotonic() - started:.1f} s")


@pytest.fixture
def job_name(slurm_cluster):
    """A job name of this test's own; its jobs are cancelled when the test ends, however it ends."""
    name = f"pytest-{uuid.uuid4().hex[:8]}"
    yield name
    subprocess.run(["scancel", f"--name={name}"], capture_output=True)


def wait_for_jobs(name: str, timeout: float) -> None:
    """Until no job named NAME is pending or running."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(["squeue", "-h", f"--name={name}", "-o", "%i"], capture_output=True, text=True)
        if out.returncode == 0 and not out.stdout.strip():
            return
        time.sleep(0.5)
    raise TimeoutError(f"jobs named {name} still in the queue after {timeout} s")


def job_states(job_id: str, timeout: float = 30) -> list[str]:
    """Every state accounting recorded for JOB_ID, one per run (a requeued job: REQUEUED, then
    its next run's), once the last run has ended: accounting may lag behind the job a little."""
    deadline = time.monotonic() + timeout
    while True:
        out = subprocess.run(["sacct", "-j", job_id, "-D", "-X", "-n", "-P", "-o", "State"],
                             capture_output=True, text=True, check=True)
        states = out.stdout.split()
        if states and states[-1] not in ("PENDING", "RUNNING", "REQUEUED") or time.monotonic() > deadline:
            return states
        time.sleep(0.5)
