"""Files written whole: through a temporary file beside the target, synced, then renamed over it,
so that a reader (another trial, a resumed run, the report) never sees half a file, and a crash
leaves the old file or the new one, never a mix."""

from __future__ import annotations

import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator


@contextmanager
def replacing(path: Path | str) -> Iterator[Path]:
    """A temporary path beside `path` (hidden, unique, not created yet) for the block to fill; renamed
    over `path` when the block ends, removed when it raises."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


@contextmanager
def open_atomic(path: Path | str) -> Iterator[BinaryIO]:
    """A binary file that becomes `path` once the block has written it and it is on disk."""
    with replacing(path) as temporary:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.fchmod(fd, 0o644)  # whatever the umask: results and checkpoints are read by the rest of a team
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())


def write_bytes_atomic(path: Path | str, data: bytes) -> None:
    with open_atomic(path) as f:
        f.write(data)


def write_text_atomic(path: Path | str, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def link_or_copy(source: Path, target: Path) -> None:
    """`target` becomes `source`'s content: a hard link (no copy, and it stays if `source` is deleted),
    or a copy where the filesystem has none; either way renamed into place whole. A missing `source`
    raises FileNotFoundError and leaves `target` as it was."""
    with replacing(target) as temporary:
        try:
            os.link(source, temporary)
        except FileNotFoundError:
            raise
        except OSError:  # no hard links here (some network filesystems): copy
            with open(source, "rb") as src, open(temporary, "wb") as dst:
                shutil.copyfileobj(src, dst)
                dst.flush()
                os.fsync(dst.fileno())
