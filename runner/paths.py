"""Where the runner's own files are."""

from pathlib import Path

# the runner's own config folder (absolute: the `runner` console script works from any folder)
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
