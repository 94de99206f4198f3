"""What a resume may change: the one list of keys, the check that nothing else changed, and the
schedulers rebuilt for a new length.

A checkpoint carries the config it was trained with (as written, interpolations unresolved).
Resuming compares it with the current one key by key. Keys under MAY_CHANGE change how the run is
watched, stored or sped up, or how long it goes on; any other difference would silently train a
different experiment, so the resume is refused, naming each key with its old and new value.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from runner.config.problems import leaves
from runner.errors import ConfigError

log = logging.getLogger(__name__)
# a key one of the two configs does not have
ABSENT = object()

# each entry covers the key and everything under it
MAY_CHANGE = (
    # how long: more (or fewer, not below those done) epochs; schedulers follow the new length
    "trainer.max_epochs",
    # when to stop early, which never changes what one epoch trains
    "trainer.stop",
    "trainer.early_stopping.patience",
    # how the run is watched and stored
    "trainer.log_every_n_steps",
    "trainer.histograms_every_n_epochs",
    "trainer.predictions_every_n_epochs",
    "trainer.num_prediction_samples",
    "trainer.checkpoint_every_n_epochs",
    "logger",
    # where the run and its data live, and how failures in a sweep are handled
    "paths",
    "trainer.resume",
    "fail_fast",
    # where and how fast it runs (a requeued job may land on another node)
    "trainer.device",
    "trainer.data_on_device",
    "trainer.num_workers",
    "trainer.pin_memory",
    "trainer.persistent_workers",
    "trainer.compile",
    "trainer.channels_last",
    "trainer.eval_batch_size",
    # whether the run ends with a test stage, which trains nothing
    "trainer.test",
)


def may_change(key: str) -> bool:
    return any(key == allowed or key.startswith((allowed + ".", allowed + "[")) for allowed in MAY_CHANGE)


def differences(saved: DictConfig, current: DictConfig) -> list[tuple[str, Any, Any]]:
    """(key, saved value, current value) for every key that differs, as written (unresolved)."""
    old = dict(leaves(OmegaConf.to_container(saved, resolve=False)))
    new = dict(leaves(OmegaConf.to_container(current, resolve=False)))
    return [(key, old.get(key, ABSENT), new.get(key, ABSENT)) for key in sorted(old.keys() | new.keys())
            if old.get(key, ABSENT) != new.get(key, ABSENT)]


def check_resume(saved_yaml: str, current: DictConfig, path, epochs_done: int) -> DictConfig:
    """Refuse a resume that would train a different experiment; returns the saved config."""
    saved = OmegaConf.create(saved_yaml)
    refused = _refused(saved, current, "in the checkpoint")
    if refused:
        raise ConfigError(
            f"cannot resume from {path}: the config differs from the one it was trained with:\n{refused}\n"
            f"Resume with the old values, or start over with trainer.resume=never (the old results are moved "
            f"to archive/, not deleted). Keys a resume may change: {', '.join(MAY_CHANGE)}."
        )
    max_epochs = current.trainer.max_epochs
    if max_epochs < epochs_done:
        raise ConfigError(f"cannot resume from {path}: trainer.max_epochs={max_epochs} is below the "
                          f"{epochs_done} epochs this run has done; use trainer.max_epochs >= {epochs_done}")
    return saved


def check_read_back(run_dir: Path, status: str, current: DictConfig) -> None:
    """A finished run's result is read back only for the experiment it ran: another config in its
    folder would otherwise get that result silently. The config is the one the run wrote into
    .hydra/config.yaml (a folder without it, from an older runner, is read back as before)."""
    written = run_dir / ".hydra" / "config.yaml"
    if not written.is_file():
        return
    refused = _refused(OmegaConf.load(written), current, "in that run")
    if refused:
        raise ConfigError(
            f"{run_dir} already {status} with another config:\n{refused}\n"
            f"Run it with the old values to read its result back, choose another hydra.run.dir, or start over "
            f"there with trainer.resume=never (the old results are moved to archive/, not deleted)."
        )


def _refused(saved: DictConfig, current: DictConfig, where: str) -> str:
    """One line per key that differs and may not change, empty when none does."""
    return "\n".join(f"  - {key}: {_shown(old)} {where}, {_shown(new)} now"
                     for key, old, new in differences(saved, current) if not may_change(key))


def _shown(value: Any) -> str:
    return "(absent)" if value is ABSENT else repr(value)


def scheduler_changed(saved: DictConfig, current: DictConfig) -> bool:
    """Whether the scheduler as built would differ: its length follows trainer.max_epochs."""
    def resolved(cfg: DictConfig) -> Any:
        return OmegaConf.to_container(cfg.scheduler, resolve=True) if cfg.get("scheduler") else None

    return resolved(saved) != resolved(current)
