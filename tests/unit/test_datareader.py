"""The DATA reader without sockets: bytes in, one result out (as the milter codec is tested)."""

from __future__ import annotations

from pathlib import Path

import pytest

from milter.core.verdict import LINE_TOO_LONG, too_big
from milter.fronts.smtp.datareader import (
    SPOOL_FAILED,
    DataReader,
    DataResult,
)
from milter.spool import Spooled

MESSAGE = b"From: a@school.example\r\nSubject: x\r\n\r\n..dotted\r\nbody\r\n"


def reader(tmp_path: Path, max_size: int = 10_000, threshold: int = 1 << 20) -> DataReader:
    return DataReader(max_size=max_size, line_limit=1000, spool_threshold=threshold,
                      open_spool=lambda: Spooled(tmp_path))


def feed_all(r: DataReader, data: bytes, step: int = 0) -> DataResult:
    pieces = [data] if not step else [data[i:i + step] for i in range(0, len(data), step)]
    for piece in pieces:
        if r.feed(piece):
            return r.finish()
    raise AssertionError("no end of data")


def content(result: DataResult) -> bytes:
    assert result.reply == ""
    if result.spooled is not None:
        try:
            return result.spooled.read()
        finally:
            result.spooled.close()
    return result.content


@pytest.mark.parametrize("step", [0, 1, 7])
def test_message_ends_at_crlf_dot_crlf_unstuffed_with_pipelined_rest(tmp_path: Path,
                                                                    step: int) -> None:
    r = reader(tmp_path)
    result = feed_all(r, MESSAGE + b".\r\nQUIT\r\n", step)
    assert content(result) == MESSAGE.replace(b"\r\n..", b"\r\n.")
    if not step:  # what came after the dot in the same read is handed back
        assert r.rest == b"QUIT\r\n"


@pytest.mark.parametrize("fake_end", [b"\n.\n", b"\n.\r\n", b"\r.\r\n", b"\r\n.\r",
                                      b"\r.\r", b"\r\n\x00.\r\n", b"\r\n.\x00\r\n",
                                      b"\r\n.\r\r\n"])
def test_no_other_line_ending_ends_the_data(tmp_path: Path, fake_end: bytes) -> None:
    """SMTP smuggling (HOSTILE-INPUTS 1-3): only CRLF.CRLF ends a message."""
    r = reader(tmp_path)
    smuggled = b"x\r\n" + fake_end + b"MAIL FROM:<evil@example.org>\r\n"
    assert r.feed(smuggled) is False
    assert r.feed(b"\r\n.\r\n") is True
    result = r.finish()  # one message: the smuggled command is data, nothing is left over
    assert result.content.endswith(b"MAIL FROM:<evil@example.org>\r\n\r\n")
    assert r.rest == b""


def test_too_big_is_552_after_draining_without_holding_it(tmp_path: Path) -> None:
    r = reader(tmp_path, max_size=1000)
    for _ in range(100):
        assert r.feed(b"y" * 98 + b"\r\n") is False
        assert len(r._kept) < 2000  # drained, not kept
    assert r.feed(b".\r\nRSET\r\n") is True
    result = r.finish()
    assert result.reply == too_big(1000) and result.refused == "too-big"
    assert result.reply.startswith("552 5.3.4 Bericht te groot")
    assert "1000 bytes" in result.reply and "Message too big" in result.reply
    assert result.size == 100 * 100  # what the client sent, for the audit record
    assert r.rest == b"RSET\r\n"


def test_exactly_at_the_limit_is_taken(tmp_path: Path) -> None:
    body = b"z" * 98 + b"\r\n"
    r = reader(tmp_path, max_size=len(body) * 10)
    assert content(feed_all(r, body * 10 + b".\r\n")) == body * 10
    r = reader(tmp_path, max_size=len(body) * 10 - 1)
    assert feed_all(r, body * 10 + b".\r\n").reply == too_big(len(body) * 10 - 1)


@pytest.mark.parametrize("threshold", [1 << 20, 4096])
def test_a_line_over_1000_octets_is_500(tmp_path: Path, threshold: int) -> None:
    r = reader(tmp_path, max_size=0, threshold=threshold)
    result = feed_all(r, b"ok\r\n" + b"w" * 1001 + b"\r\n" + b"a\r\n" * 3000 + b".\r\n", 997)
    assert result.reply == LINE_TOO_LONG and result.refused == "line-too-long"
    assert result.reply.startswith("500 5.5.2 Regel te lang") and "Line too long" in result.reply


def test_past_the_threshold_the_message_goes_to_a_spool_with_the_same_bytes(
        tmp_path: Path) -> None:
    lines = b"".join(b".%06d line of text\r\n" % i for i in range(20_000))
    in_memory = content(feed_all(reader(tmp_path, max_size=0), lines + b".\r\n", 65536))
    r = reader(tmp_path, max_size=0, threshold=8192)
    result = feed_all(r, lines + b".\r\n", 65536)
    assert result.spooled is not None
    assert content(result) == in_memory
    assert in_memory == b"".join(b"%06d line of text\r\n" % i for i in range(20_000))


def test_a_spool_that_cannot_be_written_is_451_after_draining(tmp_path: Path) -> None:
    def broken() -> Spooled:
        raise OSError(28, "No space left on device")

    r = DataReader(max_size=0, line_limit=1000, spool_threshold=4096, open_spool=broken)
    result = feed_all(r, b"line\r\n" * 5000 + b".\r\nNOOP\r\n", 1000)
    assert result.reply == SPOOL_FAILED and isinstance(result.spool_error, OSError)
    assert r.rest == b"NOOP\r\n"
