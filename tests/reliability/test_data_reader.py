"""The chunked DATA reader: only CRLF.CRLF ends the data (HOSTILE-INPUTS 1-3), however the
bytes are split; dots are unstuffed; pipelined commands after the dot are answered. Every
test runs twice: messages held in memory, and messages spooled to disk past 4 KB."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import GatewayThread
from tests.reliability.test_hostile_clients import read_replies

HEAD = (b"From: someone@school.example\r\nTo: ouder@example.org\r\nSubject: s\r\n"
        b"Message-ID: <d@school.example>\r\n\r\n")


@pytest.fixture(params=["memory", "spool"])
def gateway(request: pytest.FixtureRequest, sink: Any, make_gateway: Any) -> GatewayThread:
    extra = "spool_threshold = 4096" if request.param == "spool" else ""
    gw: GatewayThread = make_gateway(f"smtp://127.0.0.1:{sink[1]}", gateway_extra=extra)
    return gw


def session(gw: GatewayThread) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    s.recv(1024)
    s.sendall(b"EHLO t\r\nMAIL FROM:<someone@school.example>\r\nRCPT TO:<ouder@example.org>\r\n"
              b"DATA\r\n")
    got = b""
    while b"354" not in got:
        got += s.recv(4096)
    return s


@pytest.mark.parametrize("trick", [b"\n.\n", b"\n.\r\n", b"\r.\r\n", b"\r\n.\r", b"\r.\r",
                                   b"\n\n.\r\n", b"\r\n\x00.\r\n", b"\r\n.\x00\r\n",
                                   b"\r\n.\r\r\n"])
def test_only_crlf_dot_crlf_ends_data(gateway: GatewayThread, sink: Any, trick: bytes) -> None:
    s = session(gateway)
    body = HEAD + b"before" + trick + (b"MAIL FROM:<x@school.example>\r\nRCPT TO:<victim@"
                                        b"example.org>\r\nDATA\r\nsmuggled\r\n")
    s.sendall(body + b"\r\n.\r\n")
    assert read_replies(s, 1)[0][:3] == b"250"
    s.close()
    assert len(sink[0].messages) == 1 and sink[0].messages[0].rcpt_tos == ["ouder@example.org"]


def test_terminator_split_byte_by_byte(gateway: GatewayThread, sink: Any) -> None:
    s = session(gateway)
    for b in HEAD + b"one\r\ntwo\r\n.\r\n":
        s.send(bytes([b]))
        time.sleep(0.001)
    assert read_replies(s, 1)[0][:3] == b"250"
    s.close()
    assert sink[0].messages[0].content.endswith(b"one\r\ntwo\r\n")


def test_empty_message_and_pipelined_quit(gateway: GatewayThread, sink: Any) -> None:
    s = session(gateway)
    s.sendall(b".\r\nQUIT\r\n")
    got = read_replies(s, 2)
    assert got[0][:3] in (b"250", b"550") and got[1][:3] == b"221"
    s.close()


def test_dot_unstuffing(gateway: GatewayThread, sink: Any) -> None:
    s = session(gateway)
    s.sendall(HEAD + b"..\r\n...twee\r\n.een\r\nnormaal\r\n.\r\n")
    assert read_replies(s, 1)[0][:3] == b"250"
    s.close()
    assert sink[0].messages[0].content.endswith(b"\r\n\r\n.\r\n..twee\r\neen\r\nnormaal\r\n")


def test_large_message_in_one_write(gateway: GatewayThread, sink: Any) -> None:
    s = session(gateway)
    body = HEAD + (b"x" * 76 + b"\r\n") * 60_000  # about 4.7 MB
    s.sendall(body + b".\r\n")
    assert read_replies(s, 1)[0][:3] == b"250"
    s.close()
    assert sink[0].messages[0].content == body


@pytest.mark.parametrize("line,code", [
    (b"x" * 998, b"250"),                      # the longest line RFC 5322 allows
    (b"x" * 1000, b"500"),
    (b"x" * 600 + b"\n" + b"y" * 600, b"500"),  # a bare LF does not end a line
    (b"x" * 600 + b"\r\n" + b"y" * 600, b"250"),
])
def test_line_length_limit(gateway: GatewayThread, sink: Any, line: bytes, code: bytes) -> None:
    s = session(gateway)
    s.sendall(HEAD + line + b"\r\n.\r\n")
    assert read_replies(s, 1)[0][:3] == code
    s.close()
    assert len(sink[0].messages) == (1 if code == b"250" else 0)


def spool_files(gw: GatewayThread) -> list[Path]:
    spool = gw.running.gateway.runtime.config.state_dir / "spool"
    return list(spool.iterdir()) if spool.exists() else []


@pytest.mark.parametrize("split", [1, 7, 4093, 4096, 65536])
def test_spooled_message_arrives_byte_for_byte(gateway: GatewayThread, sink: Any,
                                               split: int) -> None:
    """Dots, bare CR/LF and the terminator fall on every kind of boundary; the next hop
    gets exactly what an in-memory message would have given it."""
    lines = [b"." * (i % 5) + b"regel %d" % i + (b"\r" if i % 97 == 0 else b"")
             for i in range(6000)]
    body = HEAD + b"\r\n".join(lines) + b"\r\n"
    s = session(gateway)
    wire = body.replace(b"\r\n.", b"\r\n..") + b".\r\n"
    for i in range(0, len(wire), split):
        s.sendall(wire[i:i + split])
    assert read_replies(s, 1)[0][:3] == b"250"
    s.close()
    expected = body.replace(b"\r\r\n", b"\r\n\r\n")  # the bare CRs, normalised
    assert sink[0].messages[0].content.endswith(expected.split(b"\r\n\r\n", 1)[1])
    assert sink[0].messages[0].content.count(b"regel ") == 6000
    assert spool_files(gateway) == []  # anonymous files: nothing left behind


def test_spooled_line_too_long_and_too_big(sink: Any, make_gateway: Any) -> None:
    gw = make_gateway(f"smtp://127.0.0.1:{sink[1]}",
                      gateway_extra="spool_threshold = 4096\nmax_message_size = 200000")
    s = session(gw)  # a long line far past the spool threshold
    s.sendall(HEAD + (b"y" * 70 + b"\r\n") * 1000 + b"z" * 5000 + b"\r\nend\r\n.\r\n")
    assert read_replies(s, 1)[0][:3] == b"500"
    s.sendall(b"RSET\r\nMAIL FROM:<someone@school.example>\r\nRCPT TO:<ouder@example.org>\r\n"
              b"DATA\r\n")
    assert [r[:3] for r in read_replies(s, 4)] == [b"250", b"250", b"250", b"354"]
    s.sendall(HEAD + (b"w" * 70 + b"\r\n") * 4000 + b".\r\n")  # 288 KB > 200000
    assert read_replies(s, 1)[0][:3] == b"552"
    s.close()
    assert sink[0].messages == []


@pytest.mark.parametrize("spool", ["", "spool_threshold = 4096\n"])
def test_size_limit_is_exact(sink: Any, make_gateway: Any, spool: str) -> None:
    """A message of exactly max_message_size octets is taken; one more octet is 552."""
    gw = make_gateway(f"smtp://127.0.0.1:{sink[1]}",
                      gateway_extra=spool + "max_message_size = 10000")
    for extra, code in ((0, b"250"), (1, b"552")):
        filler = 10000 - len(HEAD) - 2 + extra
        body = HEAD + b"".join(b"x" * 98 + b"\r\n" for _ in range(filler // 100))
        body += b"y" * (10000 + extra - len(body) - 2) + b"\r\n"
        assert len(body) == 10000 + extra
        s = session(gw)
        s.sendall(body + b".\r\n")
        assert read_replies(s, 1)[0][:3] == code
        s.close()
    assert len(sink[0].messages) == 1 and len(sink[0].messages[0].content) == 10000


def test_spool_that_cannot_be_written_gives_451(sink: Any, make_gateway: Any,
                                                tmp_path: Path) -> None:
    """A full or unwritable spool is a transient fault: 451, and the session goes on."""
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "spool").write_text("not a directory")
    gw = make_gateway(f"smtp://127.0.0.1:{sink[1]}",
                      gateway_extra='spool_threshold = 4096\nstate_dir = "state"')
    s = session(gw)
    s.sendall(HEAD + (b"z" * 70 + b"\r\n") * 9000 + b".\r\n")  # 650 KB: many reads
    assert read_replies(s, 1)[0][:9] == b"451 4.3.0"
    s.sendall(b"MAIL FROM:<someone@school.example>\r\nRCPT TO:<ouder@example.org>\r\n"
              b"DATA\r\n")
    assert [r[:3] for r in read_replies(s, 3)] == [b"250", b"250", b"354"]
    s.sendall(HEAD + b"klein\r\n.\r\n")
    assert read_replies(s, 1)[0][:3] == b"250"
    s.close()
    assert len(sink[0].messages) == 1
