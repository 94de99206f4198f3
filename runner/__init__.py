"""runner: the generic machinery that composes, builds, trains and reports experiments.

Importing this package registers the OmegaConf resolvers that the configs in conf/ use.
It must stay free of torch so that `--help`, `--cfg job` and config errors are instant.
"""

from runner.resolvers import register_resolvers

register_resolvers()
