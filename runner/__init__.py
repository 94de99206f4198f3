"""runner: the generic machinery that composes, builds, trains and reports experiments.

Importing this package registers the OmegaConf resolvers that the configs in conf/ use.
It must stay free of torch so that `--help`, `--cfg job` and config errors are instant.
"""

from runner.paths import CONF_DIR
from runner.resolvers import register_resolvers

__all__ = ["CONF_DIR", "load_run"]

register_resolvers()


def load_run(run_dir, checkpoint: str = "best", device: str = "cpu", overrides=()):
    """A trained run's model (eval mode, weights loaded), config and preprocessing: see runner.evaluate."""
    from runner.evaluate import load_run as load

    return load(run_dir, checkpoint, device, overrides)
