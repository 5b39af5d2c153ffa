"""Where worker processes keep their Prometheus figures (prometheus_client multiprocess mode).

Kept free of prometheus_client imports: the directory must be named in the environment
before that library is first imported, or it keeps figures per process in memory.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare(directory: Path) -> None:
    """An empty directory for this run's figures, named in the environment."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    for stale in directory.glob("*.db"):  # a previous run's counters must not add up
        stale.unlink()
    os.environ[ENV] = str(directory)


def active() -> bool:
    return bool(os.environ.get(ENV))
