"""Durable file writes: what the quarantine, the Maildir and the checkpoints rely on.

A file is written under a temporary name, fsynced, renamed into place and its directory
fsynced, so a power cut leaves either the whole file or none.
"""

from __future__ import annotations

import os
import uuid
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
    """Atomically replace ``path`` with ``data``, durable on return. The temporary name is
    the writer's own: two processes replacing the same file at once (the workers of one
    gateway writing the same stop checkpoint) must not write into one temporary file, which
    left a checkpoint of both halves (seen: "unreadable checkpoint: Extra data")."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        write_synced(tmp, data, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
