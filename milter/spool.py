"""Large messages on disk while they arrive, and a memory budget for those being processed.

Fifty clients sending 10 MB each must not mean 500 MB in memory: past ``spool_threshold``
a message goes to an anonymous temporary file (O_TMPFILE: nothing is left behind if the
process dies), and only a budgeted number of bytes of messages are read back and processed
at once per process. Small messages never touch the disk.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO

# What processing a message holds at its peak, as a multiple of its size: the raw bytes, the
# decoded attachments and the decoder's working copy (measured with tracemalloc).
PEAK_PER_BYTE = 3


class Spooled:
    """A message received into a temporary file (already dot-unstuffed)."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        # closed by close(), whoever owns the message at the end of DATA
        self.file: IO[bytes] = tempfile.TemporaryFile(dir=directory)  # noqa: SIM115
        self.size = 0
        self.started = False  # the first write drops the reader's leading CRLF

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.file.write(data)
        self.size += len(data)
        self.started = True

    def read(self) -> bytes:
        self.file.flush()
        return os.pread(self.file.fileno(), self.size, 0)

    def close(self) -> None:
        self.file.close()


class MemoryBudget:
    """At most ``total`` bytes of messages in processing at once, granted in arrival order
    (a large message is not starved by a stream of smaller ones); a message larger than the
    whole budget is processed alone."""

    def __init__(self, total: int) -> None:
        self.total = self.free = total
        self._waiters: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    @contextlib.asynccontextmanager
    async def reserve(self, n: int) -> AsyncIterator[None]:
        n = min(n, self.total)
        if self._waiters or self.free < n:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append((n, fut))
            try:
                await fut
            except asyncio.CancelledError:
                if fut.done() and not fut.cancelled():
                    self._give(n)  # granted just as we were cancelled: hand it on
                else:
                    self._waiters.remove((n, fut))
                    self._grant()
                raise
        else:
            self.free -= n
        try:
            yield
        finally:
            self._give(n)

    def reserve_message(self, size: int) -> contextlib.AbstractAsyncContextManager[None]:
        """Memory for processing a spooled message of ``size`` bytes."""
        return self.reserve(PEAK_PER_BYTE * size)

    def _give(self, n: int) -> None:
        self.free += n
        self._grant()

    def _grant(self) -> None:
        while self._waiters and self._waiters[0][0] <= self.free:
            n, fut = self._waiters.popleft()
            if not fut.done():
                self.free -= n
                fut.set_result(None)
