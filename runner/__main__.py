"""Entry point: `python -m runner [overrides]` composes conf/ with Hydra and trains what it names."""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from runner.train import train

# absolute, so the `runner` console script finds conf/ from any working directory
CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> float:
    return train(cfg)


if __name__ == "__main__":
    main()
