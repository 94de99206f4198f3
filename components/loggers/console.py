"""Scalars as log lines."""

from __future__ import annotations

import logging
from pathlib import Path

from components.loggers.base import Logger

log = logging.getLogger(__name__)


class ConsoleLogger(Logger):
    """Scalars as plain log lines."""

    def __init__(self, run_dir: str | Path | None = None, start_step: int = 0):
        pass

    def log_metrics(self, metrics, step):
        log.info("step %d  %s", step, "  ".join(f"{tag}={value:.4g}" for tag, value in metrics.items()))
