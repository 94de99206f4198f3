"""A Hydra callback that refuses an output folder it cannot write, before any job starts."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class OutputFolderCheck(Callback):
    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        require_writable(Path(config.hydra.run.dir), "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        require_writable(Path(config.hydra.sweep.dir), "hydra.sweep.dir")


def require_writable(folder: Path, key: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        # Hydra turns a callback's exceptions into warnings and carries on; only an exit stops it
        raise SystemExit(
            f"Error: cannot write the output folder {folder} ({error.strerror or error}); set {key}=... "
            f"or RUNNER_OUTPUT_DIR to a folder you can write"
        ) from None
