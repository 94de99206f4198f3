"""The composed config's checks, before anything is built: types, ranges and choices of every setting,
the trainer's schema, the fail-fast rule, how many trials a sweep runs at once, what a resume may change,
and PBT's settings.

No torch here: a config error is reported in a fraction of a second. Imports only runner's base
modules (errors, resolvers); every other package may import this one.
"""

from runner.config.checks import DEVICE_PATTERN, TrainerConfig, fail_fast_problem, typed_trainer, validate
from runner.config.problems import bullets, leaves

__all__ = ["DEVICE_PATTERN", "TrainerConfig", "bullets", "fail_fast_problem", "leaves", "typed_trainer", "validate"]
