"""Checkpoints: plain data (tensors, numbers, strings, lists, dicts) written atomically, loaded with
`torch.load(weights_only=True)`, holding everything an exact resume needs.

No pickled class of ours is stored, so a checkpoint loads without the runner installed and loading
one from a shared folder cannot run code. `format_version` says how to read it; a checkpoint of a
newer format, or a file that is no checkpoint, is refused by name and left untouched.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from runner.errors import CheckpointError
from runner.files import open_atomic
# 1: runner 0.1, pickled Python objects (a Progress dataclass, numpy arrays); 2: plain data
FORMAT_VERSION = 2


def save_atomic(state: dict[str, Any], path: Path) -> None:
    """torch.save into a temporary file beside `path`, fsync, then rename over it (runner.files)."""
    with open_atomic(path) as f:
        torch.save({"format_version": FORMAT_VERSION, **state}, f)


RESUME_REMEDY = ("Move it away to resume from nothing, or start over with trainer.resume=never (earlier results "
                 "are kept under archive/).")


def load(path: Path, remedy: str = RESUME_REMEDY) -> dict[str, Any]:
    """Read a checkpoint as plain data; one that cannot be read is reported by name, with what to do
    about it (`remedy`: resuming, by default), and left where it is."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        old = "weights_only" in str(error) or "Unsupported global" in str(error)
        why = (" It holds pickled Python objects, as runner 0.1 wrote them, which cannot be loaded without "
               "running code from the file: read it with the version that wrote it." if old else "")
        raise CheckpointError(
            f"cannot read the checkpoint {path} ({type(error).__name__}: {str(error).splitlines()[0]}).{why} "
            f"It was left in place. {remedy}"
        ) from error
    if not isinstance(state, dict) or "model" not in state or "format_version" not in state:
        raise CheckpointError(f"{path} is not a runner checkpoint (no model or format_version). It was left in place.")
    if state["format_version"] > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {state['format_version']}, newer than this runner reads "
            f"({FORMAT_VERSION}): update the runner. It was left in place."
        )
    return state


def rng_state() -> dict[str, Any]:
    """Every random number generator's state as tensors and plain numbers."""
    version, mt_state, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state = {
        "python": {"version": version, "state": torch.tensor(mt_state, dtype=torch.int64), "gauss": gauss},
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state((npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["position"], npy["has_gauss"],
                         npy["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
