"""Durable file writes: what the quarantine, the Maildir and the checkpoints rely on.

A file is written under a temporary name, fsynced, renamed into place and its directory
fsynced, so a power cut leaves either the whole file or none.
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_synced(path: Path, data: bytes | tuple[bytes, ...], mode: int = 0o644) -> None:
    """Write ``data`` (or its pieces, in order) to ``path`` (which must not be in use) and
    fsync the file."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        for piece in (data,) if isinstance(data, bytes) else data:
            fh.write(piece)
        fh.flush()
        os.fsync(fh.fileno())


def replace_synced(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Atomically replace ``path`` with ``data``, durable on return."""
    tmp = path.with_name(f".{path.name}.tmp")
    write_synced(tmp, data, mode)
    os.replace(tmp, path)
    fsync_dir(path.parent)
