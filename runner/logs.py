"""Logging of a run: the console shows a failure's message, the run's log file (runner.log) its traceback.

conf/hydra/default.yaml gives Hydra's console handler this formatter; the file handler keeps
Hydra's own, which writes tracebacks in full.
"""

from __future__ import annotations

import logging


class WithoutTraceback(logging.Formatter):
    """A formatter that leaves tracebacks out (HYDRA_FULL_ERROR=1 shows a failure's traceback on the terminal)."""

    def format(self, record: logging.LogRecord) -> str:
        # a traceback given as text (another process's, see error_with_traceback) is left out too
        text, record.exc_text = record.exc_text, None
        try:
            return super().format(record)
        finally:
            record.exc_text = text

    def formatException(self, exc_info) -> str:  # noqa: N802 (logging's name)
        # an empty text is not cached as the record's: the file handler formats the traceback itself
        return ""

    def formatStack(self, stack_info: str) -> str:  # noqa: N802
        return ""


def error_with_traceback(logger: logging.Logger, message: str, traceback_text: str) -> None:
    """Log `message` as an error with a traceback that exists only as text (a child process's): the
    run's log file gets both, the console the message alone."""
    record = logger.makeRecord(logger.name, logging.ERROR, "(traceback text)", 0, message, (), None)
    record.exc_text = traceback_text.rstrip("\n")
    logger.handle(record)
