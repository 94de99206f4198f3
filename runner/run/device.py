"""Where and how a run computes: the device, seeding and determinism, glibc's buffers on a CPU, mixed
precision, and the model's placement for training (channels-last, DistributedDataParallel, torch.compile)."""

from __future__ import annotations

import ctypes
import os
import sys
from contextlib import nullcontext

import torch

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "16": torch.float16}


def resolve_device(requested: str, local_rank: int | None = None) -> torch.device:
    """The training device; a rank of a data-parallel run on GPUs takes the GPU of its local rank."""
    if local_rank is not None and torch.cuda.is_available() and requested in ("auto", "cuda"):
        return torch.device("cuda", local_rank)
    if requested != "auto":
        device = torch.device(requested)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"trainer.device={requested} but no CUDA device is visible; use trainer.device=auto or cpu")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise ConfigError(f"trainer.device={requested} but MPS is not available; use trainer.device=auto or cpu")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int, deterministic: bool) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.deterministic = deterministic
    # cuDNN autotuning picks the fastest kernels, which need not be the same run to run
    torch.backends.cudnn.benchmark = not deterministic


def keep_cpu_buffers_mapped() -> None:
    """Let glibc reuse freed activation buffers instead of handing them back to the OS every step.

    glibc serves blocks over 128 KiB with a fresh mmap, and raises that limit only once such a
    block is freed; while it is low it also trims the heap at every free. A CPU training step
    allocates megabytes of activations and gradients, so until an evaluation's larger blocks raise
    the limit, the buffers of every step can page-fault anew: depending on the order of
    allocations, up to 450,000 faults in 500 MNIST steps here, which then took 70% longer. These
    are the values glibc itself ends up with.
    """
    if sys.platform != "linux":
        return
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # another C library
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # malloc.h
    mallopt(m_mmap_threshold, 32 << 20)
    mallopt(m_trim_threshold, 64 << 20)


def prepare_device(trainer, ranks) -> torch.device:
    """The run's device (a data-parallel rank's by its local rank), with every random generator seeded
    and, on a CPU, glibc's buffers kept mapped."""
    device = resolve_device(trainer.device, ranks.local_rank if ranks.ddp else None)
    seed_everything(trainer.seed, trainer.deterministic)
    if device.type == "cpu":
        keep_cpu_buffers_mapped()
    return device


def place_model(model: torch.nn.Module, device: torch.device, ranks, channels_last: bool, compiled: bool):
    """The forms of `model` (already on `device` and probed) that train and that evaluate.

    Only after the probe: lazy layers have their sizes then, and DistributedDataParallel needs every
    parameter's size. Evaluation runs the model itself under several ranks: each rank its own share,
    no gradients to reduce."""
    if channels_last:
        model.to(memory_format=torch.channels_last)
    trained = model
    if ranks.ddp:
        from torch.nn.parallel import DistributedDataParallel

        trained = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    forward = torch.compile(trained) if compiled else trained
    return forward, (model if ranks.ddp else forward)


def mixed_precision(precision, device: torch.device) -> tuple[torch.dtype | None, torch.amp.GradScaler]:
    """The autocast dtype of trainer.precision (None: full precision) and the grad scaler, enabled for "16"."""
    precision = str(precision)
    return AUTOCAST_DTYPES.get(precision), torch.amp.GradScaler(device.type, enabled=precision == "16")


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Mixed precision in `dtype` on the device, or nothing."""
    return nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)
