"""The files a logger keeps beside a run: replaced whole, never half written, and the JSON records by
which a tracker finds its run again (a resumed run, a sweep's trials on several machines)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def replace_file(path: Path, text: str) -> None:
    """Write through a temporary file in the same folder, then rename: readers never see half a file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_record(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def write_record(path: Path, record: dict) -> None:
    replace_file(path, json.dumps(record, indent=2) + "\n")
