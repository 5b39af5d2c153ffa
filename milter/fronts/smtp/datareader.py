"""The SMTP DATA reader, sans I/O: bytes in, one result out.

Same answers as aiosmtpd: only CRLF.CRLF ends the data (a bare LF or CR before the dot does
not: no smuggling, HOSTILE-INPUTS 1-3); a line over 1000 octets is 500 and a message over the
size limit 552, both after the data is drained; leading dots are unstuffed. Past the spool
threshold the message goes to a spool file in pieces, so memory stays bounded; a spool that
cannot be written is 451, also after draining. Bytes after the final dot (pipelined commands)
are handed back in ``rest``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from milter.core.verdict import LINE_TOO_LONG, too_big
from milter.spool import Spooled

SPOOL_FAILED = "451 4.3.0 Temporary local problem, try again later"

_UNSTUFF = re.compile(rb"(\r\n)\.")  # RFC 5321 4.5.2: drop the first dot of a line


@dataclass
class DataResult:
    """``reply`` set: the message is refused with it. Else the message is ``content``, or
    in ``spooled`` when it went to disk (the caller closes it)."""

    reply: str = ""
    refused: str = ""  # why, for the audit: "too-big" or "line-too-long"
    size: int = 0      # octets received (drained) when refused
    content: bytes = b""
    spooled: Spooled | None = None
    spool_error: OSError | None = None


class DataReader:
    """Feed it what the client sends after 354 until ``feed`` returns True, then ``finish``."""

    def __init__(self, *, max_size: int, line_limit: int, spool_threshold: int,
                 open_spool: Callable[[], Spooled]) -> None:
        self.max_size, self.line_limit = max_size, line_limit
        self.spool_threshold, self.open_spool = spool_threshold, open_spool
        self.rest = b""  # what followed the final dot
        self._kept = bytearray(b"\r\n")  # the data starts at a line start
        self._size = 0
        self._scan_from = 0
        self._too_much = False
        self._too_long = False
        self._spool: Spooled | None = None
        self._spool_error: OSError | None = None

    def feed(self, data: bytes | bytearray) -> bool:
        """Take the next bytes; True once the final dot was seen."""
        if not data:
            return False
        kept = self._kept
        kept += data
        self._size += len(data)
        end = kept.find(b"\r\n.\r\n", self._scan_from)
        if end >= 0:
            self.rest = bytes(kept[end + 5:])
            del kept[end + 2:]
            self._size -= len(self.rest)
            return True
        self._scan_from = max(0, len(kept) - 4)
        if self.max_size and self._size > self.max_size + 5:
            self._too_much = True
            del kept[:-4]  # drain without holding it: keep only a possible terminator prefix
            self._scan_from = 0
        elif len(kept) > self.spool_threshold:  # to disk, in pieces of this size
            try:
                if self._spool_error is not None:
                    raise self._spool_error
                if self._spool is None:
                    self._spool = self.open_spool()
                self._spill()
            except OSError as exc:
                self._spool_error = exc
                del kept[:-4]  # drain, keeping only a possible terminator prefix
            self._scan_from = 0
        return False

    def finish(self) -> DataResult:
        """The result, once ``feed`` returned True. The spool (if any) passes to the caller
        with a complete message; on a refusal it is closed here."""
        # ``_size`` counts the data and the ".\r\n" of the terminator
        if self._too_much or (self.max_size and self._size - 3 > self.max_size):
            return self._refuse(too_big(self.max_size), "too-big")
        if self._spool_error is None and self._spool is not None:
            try:
                self._spill(last=True)
            except OSError as exc:
                self._spool_error = exc
        if self._spool_error is not None:
            result = self._refuse(SPOOL_FAILED)
            result.spool_error = self._spool_error
            return result
        kept = self._kept
        if self._too_long or (self._spool is None and self._line_too_long(kept)):
            return self._refuse(LINE_TOO_LONG, "line-too-long")
        if self._spool is not None:
            spooled, self._spool = self._spool, None
            return DataResult(spooled=spooled)
        # unstuff only when a line starts with a dot; else no extra copy of the message
        content = _UNSTUFF.sub(b"\\1", kept)[2:] if b"\r\n." in kept else \
            bytes(memoryview(kept)[2:])  # one copy, not two
        return DataResult(content=content)

    def close(self) -> None:
        """Drop a spool that was not handed over (the client went away mid-DATA)."""
        if self._spool is not None:
            self._spool.close()
            self._spool = None

    def _refuse(self, reply: str, why: str = "") -> DataResult:
        self.close()
        return DataResult(reply=reply, refused=why, size=max(0, self._size - 3))

    def _spill(self, last: bool = False) -> None:
        """Move the complete lines at the front of the buffer to the spool file, unstuffed;
        the buffer keeps a CRLF and what follows (the partial line, a possible terminator).
        A line over the limit stops the writing (the answer will be 500)."""
        kept = self._kept
        cut = len(kept) if last else kept.rfind(b"\r\n", 0, len(kept) - 4)
        if cut <= 0:
            # no line end in the whole window: that line is over any limit; drop it
            del kept[:-4]
            self._too_long = True
            return
        segment = kept[:cut]
        del kept[:cut]
        if self._too_long or self._line_too_long(segment):
            self._too_long = True
            return
        if b"\r\n." in segment:
            segment = bytearray(_UNSTUFF.sub(b"\\1", segment))
        assert self._spool is not None
        self._spool.write(segment if self._spool.started else memoryview(segment)[2:])

    def _line_too_long(self, data: bytearray) -> bool:
        return line_too_long(data, self.line_limit - 2)


def line_too_long(data: bytes | bytearray, longest: int) -> bool:
    """A line (up to CRLF) of more than ``longest`` octets in ``data``.

    From a line start, the last CRLF within the next ``longest + 2`` octets ends a line
    that fits, and every line before it fits too: jump past it. No CRLF there: the line is
    too long, unless the data ends first. A step per ``longest`` octets, each a search in C,
    instead of a bytes object per line (a split made some 700 of them for 50 KB) or a regex
    that tries every start position (seconds on a 10 MB message)."""
    end = len(data)
    pos = 0
    window = longest + 2
    while end - pos > longest:
        cut = data.rfind(b"\r\n", pos, pos + window)
        if cut < 0:
            return True
        pos = cut + 2
    return False
