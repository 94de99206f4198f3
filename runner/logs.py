"""Logging of a run: the console shows a failure's message, the run's log file (runner.log) its traceback.

conf/hydra/default.yaml gives Hydra's console handler this formatter; the file handler keeps
Hydra's own, which writes tracebacks in full.
"""

from __future__ import annotations

import logging


class WithoutTraceback(logging.Formatter):
    """A formatter that leaves tracebacks out (HYDRA_FULL_ERROR=1 shows a failure's traceback on the terminal)."""

    def formatException(self, exc_info) -> str:  # noqa: N802 (logging's name)
        # an empty text is not cached as the record's: the file handler formats the traceback itself
        return ""

    def formatStack(self, stack_info: str) -> str:  # noqa: N802
        return ""
