"""Decoded datasets cached as tensors beside the raw files, shared by every trial of a sweep."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Callable

import torch
from filelock import FileLock


def cached(root: str | Path, key: str, decode: Callable[[], dict]) -> dict:
    """Decode once, then read the tensors back from `root/runner_cache/` (milliseconds).

    Trials of a sweep (processes, SLURM nodes) share one data folder: the first to get the file lock
    downloads and decodes, writes through a uniquely named temporary file and renames it into place;
    the others wait on the lock and read what it wrote.
    """
    path = Path(root) / "runner_cache" / f"{key}.pt"
    if path.exists():
        return torch.load(path, weights_only=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(path.with_name(f"{path.name}.lock")):
        if path.exists():  # decoded by another process while this one waited
            return torch.load(path, weights_only=True)
        tensors = decode()
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(tensors, f)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide the cache from the rest of a team
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return tensors



def files_fingerprint(folder: Path) -> str:
    """Names, sizes and times of the raw files: the cache is rebuilt whenever they change."""
    entries = sorted(
        f"{p.relative_to(folder)}:{p.stat().st_size}:{p.stat().st_mtime_ns}"
        for p in folder.rglob("*")
        if p.is_file()
    ) if folder.exists() else []
    return hashlib.sha1("\n".join(entries).encode()).hexdigest()[:12]
