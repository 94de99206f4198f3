"""launchers: where trials run. Launcher presets' glue (conf/hydra/launcher/), the detached sweep
driver (`python -m launchers.detach`) and the scripts of a single-node SLURM cluster (slurm/)."""
