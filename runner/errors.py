"""The errors a user can cause: Hydra prints their message alone, no traceback."""

from hydra.errors import CompactHydraException


class RunnerError(CompactHydraException):
    """A problem the user can fix; its message says what was wrong and what is allowed."""


class ConfigError(RunnerError):
    """The composed config asks for something that cannot work."""


class DataError(RunnerError):
    """The data could not be found, read or fitted to the model."""


class CheckpointError(RunnerError):
    """A checkpoint that resume would need cannot be read."""


class TrialFailed(RunnerError):
    """Training itself went wrong (a NaN loss, say); the run is recorded as failed."""


class CollectiveFailed(TrialFailed):
    """A collective of a data-parallel run timed out or lost its peers; the message says where each rank was."""
