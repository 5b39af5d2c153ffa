"""Hostile clients (HOSTILE-INPUTS 5-16): each gets its answer; the server serves the others."""

from __future__ import annotations

import logging
import socket
import time
from typing import Any

import pytest

from tests.conftest import make_message
from tests.e2e.conftest import GatewayThread


def raw_session(port: int, source: str = "127.0.0.1") -> socket.socket:
    s = socket.socket()
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    s.settimeout(10)
    return s


def read_replies(s: socket.socket, n: int) -> list[bytes]:
    buf = b""
    lines: list[bytes] = []
    while len(lines) < n:
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
        while b"\r\n" in buf:
            line, buf = buf.split(b"\r\n", 1)
            if line[3:4] == b" ":
                lines.append(line)
    return lines


def test_early_talker_tolerated_by_default(gateway: GatewayThread, sink: Any) -> None:
    s = raw_session(gateway.port)
    s.sendall(b"EHLO early.example\r\nMAIL FROM:<someone@school.example>\r\n"
              b"RCPT TO:<ouder@example.org>\r\nDATA\r\n")
    time.sleep(0.3)
    replies = read_replies(s, 5)
    assert [r[:3] for r in replies] == [b"220", b"250", b"250", b"250", b"354"]
    s.sendall(make_message() + b".\r\nQUIT\r\n")
    assert read_replies(s, 2)[0][:3] == b"250"
    s.close()
    assert len(sink[0].messages) == 1


def test_early_talker_refused_with_greet_pause(sink: Any, make_gateway: Any,
                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    gw = make_gateway(f"smtp://127.0.0.1:{sink[1]}", gateway_extra="greet_pause = 0.3")
    s = raw_session(gw.port)
    s.sendall(b"EHLO early.example\r\nMAIL FROM:<someone@school.example>\r\n")
    assert read_replies(s, 1)[0].startswith(b"554 5.5.0")
    assert s.recv(100) == b""
    s.close()
    assert "early talker" in caplog.text
    polite = raw_session(gw.port)  # a client that waits for the greeting is served
    assert read_replies(polite, 1)[0].startswith(b"220")
    polite.close()
    assert sink[0].messages == []


def test_pipelined_transaction(gateway: GatewayThread, sink: Any) -> None:
    s = raw_session(gateway.port)
    read_replies(s, 1)
    s.sendall(b"EHLO p.example\r\n")
    read_replies(s, 1)
    s.sendall(b"MAIL FROM:<someone@school.example>\r\nRCPT TO:<ouder@example.org>\r\n"
              b"RCPT TO:<ander@example.org>\r\nDATA\r\n")
    assert [r[:3] for r in read_replies(s, 4)] == [b"250", b"250", b"250", b"354"]
    s.sendall(make_message() + b".\r\n")
    assert read_replies(s, 1)[0][:3] == b"250"
    s.close()
    assert sink[0].messages[0].rcpt_tos == ["ouder@example.org", "ander@example.org"]


def test_noop_flood_gets_421(gateway: GatewayThread) -> None:
    s = raw_session(gateway.port)
    read_replies(s, 1)
    s.sendall(b"NOOP\r\n" * 25)
    replies = read_replies(s, 21)
    assert replies[-1].startswith(b"421 4.7.0")
    s.close()


def test_too_many_recipients(sink: Any, make_gateway: Any) -> None:
    gw = make_gateway(f"smtp://127.0.0.1:{sink[1]}", gateway_extra="max_recipients = 150")
    with gw.client() as c:
        c.ehlo()
        c.mail("someone@school.example")
        codes = [c.rcpt(f"r{i}@example.org")[0] for i in range(200)]
        assert codes[:150] == [250] * 150 and set(codes[150:]) == {452}
        assert c.data(make_message())[0] == 250
    assert len(sink[0].messages[0].rcpt_tos) == 150


def test_per_ip_connection_cap_spares_other_clients(sink: Any, make_gateway: Any) -> None:
    gw = make_gateway(f"smtp://127.0.0.1:{sink[1]}", gateway_extra="max_connections_per_ip = 5")
    held = [raw_session(gw.port) for _ in range(5)]
    for s in held:
        assert read_replies(s, 1)[0].startswith(b"220")
    extra = raw_session(gw.port)
    assert read_replies(extra, 1)[0].startswith(b"421 4.7.0")
    other = raw_session(gw.port, source="127.0.0.2")  # another client address
    assert read_replies(other, 1)[0].startswith(b"220")
    for s in held + [extra, other]:
        s.close()
    time.sleep(0.2)
    again = raw_session(gw.port)
    assert read_replies(again, 1)[0].startswith(b"220")
    again.close()


def test_slow_drip_data_is_cut_off(sink: Any, make_gateway: Any) -> None:
    gw = make_gateway(f"smtp://127.0.0.1:{sink[1]}", gateway_extra="data_timeout = 1.5")
    s = raw_session(gw.port)
    read_replies(s, 1)
    s.sendall(b"EHLO slow\r\nMAIL FROM:<someone@school.example>\r\nRCPT TO:<o@example.org>\r\n"
              b"DATA\r\n")
    read_replies(s, 4)
    start = time.monotonic()
    closed = False
    for _ in range(20):  # one line every 0.3 s, for up to 6 s
        try:
            s.sendall(b"Subject: drip\r\n")
            s.settimeout(0.3)
            if s.recv(1024) == b"":
                closed = True
                break
        except TimeoutError:
            continue
        except OSError:
            closed = True
            break
    assert closed and time.monotonic() - start < 5
    s.close()
    assert sink[0].messages == []
    with gw.client() as c:  # the worker is free for others
        c.sendmail("someone@school.example", ["o@example.org"], make_message())


def test_invalid_utf8_smtputf8_address(gateway: GatewayThread, sink: Any) -> None:
    s = raw_session(gateway.port)
    read_replies(s, 1)
    s.sendall(b"EHLO u\r\n")
    read_replies(s, 1)
    s.sendall(b"MAIL FROM:<\xff\xfe@school.example> SMTPUTF8\r\n")
    code = read_replies(s, 1)[0][:1]
    assert code in (b"5",)
    s.sendall(b"MAIL FROM:<someone@school.example>\r\n")
    assert read_replies(s, 1)[0][:3] == b"250"
    s.close()


def test_many_idle_connections_then_normal_client(sink: Any, make_gateway: Any) -> None:
    gw = make_gateway(f"smtp://127.0.0.1:{sink[1]}",
                      gateway_extra="max_connections_per_ip = 100\nsession_timeout = 2")
    idle = []
    for i in range(60):
        idle.append(raw_session(gw.port, source=f"127.0.1.{i % 3 + 1}"))
    with gw.client() as c:
        c.sendmail("someone@school.example", ["o@example.org"], make_message())
    time.sleep(2.5)  # idle sessions time out and free their slots
    closed = 0
    for s in idle:
        s.settimeout(1)
        try:
            data = s.recv(4096)
            while data and b"421" not in data:
                data = s.recv(4096)
            closed += 1
        except (TimeoutError, OSError):
            pass
        s.close()
    assert closed == len(idle)
    assert len(sink[0].messages) == 1


