"""Entry point: `python -m runner [overrides]` composes conf/ with Hydra and trains what it names;
`python -m runner --multirun ... --dry-run` prints the trials of the sweep instead (runner.sweep.dry_run)."""

import sys

import hydra
from omegaconf import DictConfig

from runner.paths import CONF_DIR
from runner.run.train import train
from runner.sweep.dry_run import with_dry_run_override


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def run(cfg: DictConfig) -> float:
    return train(cfg)


def main() -> None:
    # Hydra's own parser refuses flags it does not know: --dry-run reaches it as an override
    sys.argv[1:] = with_dry_run_override(sys.argv[1:])
    run()


if __name__ == "__main__":
    main()
