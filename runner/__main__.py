"""Entry point: `python -m runner [overrides]` composes conf/ with Hydra and trains what it names."""

import hydra
from omegaconf import DictConfig

from runner.paths import CONF_DIR
from runner.run.train import train


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> float:
    return train(cfg)


if __name__ == "__main__":
    main()
