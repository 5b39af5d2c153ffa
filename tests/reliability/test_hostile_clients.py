"""Hostile clients (HOSTILE-INPUTS 5-16): each gets its answer; the server serves the others."""

from __future__ import annotations

import logging
import smtplib
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from tests.conftest import make_message, write_config
from tests.e2e.conftest import GatewayThread, SinkHandler, free_port


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
    """A client that drips its message a byte at a time is cut off by the DATA deadline
    (421), not served for ever; the server goes on serving others."""
    gw = make_gateway(f"smtp://127.0.0.1:{sink[1]}", gateway_extra="data_timeout = 1.5")
    s = raw_session(gw.port)
    read_replies(s, 1)
    s.sendall(b"EHLO slow\r\nMAIL FROM:<someone@school.example>\r\nRCPT TO:<o@example.org>\r\n"
              b"DATA\r\n")
    read_replies(s, 4)
    said, closed = b"", False
    drip = b"Subject: drip\r\n" * 100
    for i in range(len(drip)):  # one byte every 0.2 s: bounded at 320 s, ends after ~2 s
        try:
            s.sendall(drip[i:i + 1])
            s.settimeout(0.2)
            got = s.recv(1024)
        except TimeoutError:
            continue
        except OSError:
            closed = True
            break
        said += got
        if got == b"":
            closed = True
            break
    assert closed and said.startswith(b"421 4.4.2")
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
    for i in range(240):  # hundreds of idle connections, from three addresses
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




def test_session_timeout_counts_from_the_last_command(sink: Any, make_gateway: Any) -> None:
    """A client that keeps talking stays connected past ``session_timeout``; once it falls
    silent for that long, the connection closes."""
    gw = make_gateway(f"smtp://127.0.0.1:{sink[1]}", gateway_extra="session_timeout = 1")
    s = raw_session(gw.port)
    assert read_replies(s, 1)[0][:3] == b"220"
    started = time.monotonic()
    while time.monotonic() - started < 2.5:  # two and a half timeouts, talking all along
        time.sleep(0.3)
        s.sendall(b"EHLO client.example\r\n")
        assert read_replies(s, 1)[0][:3] == b"250"
    silent = time.monotonic()
    s.settimeout(5)
    data = s.recv(4096)
    while data and b"421" not in data:
        data = s.recv(4096)
    waited = time.monotonic() - silent
    assert 0.8 < waited < 3.0, waited
    s.close()


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_concurrent_large_messages_are_spooled_not_held(tmp_path: Path) -> None:
    """16 clients send 4 MB each at once: the gateway's memory grows by far less than the
    64 MB they send (messages past the threshold go to disk; at most message_memory bytes
    of them are processed at a time), and every message arrives whole."""
    sink = SinkHandler()
    sink_port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=sink_port, data_size_limit=2**26)
    controller.start()
    port = free_port()
    cfg = write_config(tmp_path, listen=f"127.0.0.1:{port}",
                       next_hop=f"smtp://127.0.0.1:{sink_port}",
                       gateway_extra="spool_threshold = 65536\nmessage_memory = 8388608",
                       extra="[notices]\nenabled = false\n")
    proc = subprocess.Popen([sys.executable, "-m", "milter.cli", "serve", "--config", str(cfg)],
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with smtplib.SMTP("127.0.0.1", port, timeout=5) as c:
                    c.sendmail("someone@school.example", ["o@example.org"], make_message())
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        before = _peak_rss_kib(proc.pid)
        big = make_message(body=("regel " * 12 + "\r\n") * 55_000)  # 4 MB
        codes: list[int] = []

        def send() -> None:
            with smtplib.SMTP("127.0.0.1", port, timeout=120) as c:
                c.sendmail("someone@school.example", ["o@example.org"], big)
                codes.append(250)

        threads = [threading.Thread(target=send) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=180)
        growth = _peak_rss_kib(proc.pid) - before
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        controller.stop()
    assert codes == [250] * 16
    assert len(sink.messages) == 17 and all(m.content.endswith(big.split(b"\r\n\r\n", 1)[1])
                                            for m in sink.messages[1:])
    assert growth < 40 * 1024, f"peak RSS grew by {growth // 1024} MiB for 64 MiB sent"
