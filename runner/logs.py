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


# `extra=` of a record that is for the run's log file alone: a failure that the run raises, and that Hydra
# then prints itself ("Error executing job ..."), would be on the terminal twice
FILE_ONLY = {"file_only": True}


class NotFileOnly(logging.Filter):
    """The console's filter: it leaves out the records logged with `extra=FILE_ONLY`."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, "file_only", False)


def error_with_traceback(logger: logging.Logger, message: str, traceback_text: str, console: bool = True) -> None:
    """Log `message` as an error with a traceback that exists only as text (a child process's): the
    run's log file gets both, the console the message alone (or nothing, `console=False`)."""
    record = logger.makeRecord(logger.name, logging.ERROR, "(traceback text)", 0, message, (), None,
                               extra=None if console else FILE_ONLY)
    record.exc_text = traceback_text.rstrip("\n")
    logger.handle(record)
