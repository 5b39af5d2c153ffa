"""Issue 13 item 6: the milter front under hostile or broken input. Real sockets; what the
MTA hears, and that neighbours (other transactions, the SMTP front) are not hurt."""

from __future__ import annotations

import asyncio
import resource
import smtplib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from milter.audit.sqlite import SQLiteStore
from milter.audit.store import AuditEvent, AuditUnavailable
from milter.audit.writer import AuditWriter
from milter.fronts.milter import codec
from tests.conftest import make_message, write_config
from tests.e2e.conftest import GatewayThread, SinkHandler, free_port
from tests.milter.test_milter_server import MTA, records


@pytest.fixture
def sink() -> Iterator[tuple[SinkHandler, int]]:
    """The next hop (as in tests/e2e)."""
    from aiosmtpd.controller import Controller

    handler = SinkHandler()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    yield handler, port
    controller.stop()


@pytest.fixture
def both(tmp_path: Path, sink: tuple[SinkHandler, int]) -> Iterator[GatewayThread]:
    cfg = write_config(tmp_path, next_hop=f"smtp://127.0.0.1:{sink[1]}",
                       extra=f'[milter]\nlisten = "127.0.0.1:{free_port()}"\n'
                             "max_connections = 5\n")
    g = GatewayThread(cfg)
    yield g
    g.stop()


# -- (a) invalid UTF-8 in MAIL FROM ------------------------------------------------------------

def test_invalid_utf8_sender_is_refused_for_good_and_smtp_goes_on(
        both: GatewayThread, sink: tuple[SinkHandler, int], tmp_path: Path) -> None:
    """MAIL FROM <j.dev\\xffries@...> gets a permanent 553 at MAIL (main: 451 "Audit store
    unavailable" at the end of every retry, failing its neighbours' records too)."""
    mta = MTA(both.running.milter_port)
    mta.negotiate()
    mta.send(codec.Connect("c.example", "4", 4000, "127.0.0.1"), codec.Helo("c.example"))
    mta.replies()
    mta.replies()
    mta.connected = True
    mta.sock.sendall(codec.packet(codec.SMFIC_MAIL, b"<j.dev\xffries@school.example>\0"))
    mta.awaiting = True  # MAIL is always answered (an invalid address is refused there)
    (reply,) = mta.replies()
    assert reply.cmd == b"y" and reply.data.startswith(b"553 5.1.7"), reply
    # the same connection goes on with the next message
    replies = mta.message(make_message(), "someone@school.example", ["ouder@example.org"])
    assert replies[-1].cmd == b"c"
    mta.close()
    with both.client() as c:
        c.sendmail("someone@school.example", ["ouder@example.org"], make_message())
    assert [r.event for r in records(tmp_path)] == ["delivered", "intent", "delivered"]


def test_a_record_that_cannot_be_written_fails_only_its_own_transaction(tmp_path: Path) -> None:
    """Records queued together go out in one commit; one that cannot be encoded is written
    escaped, one the store refuses for its own content fails alone, never its neighbours."""
    store = SQLiteStore(tmp_path / "audit.sqlite3", "test")
    real_many = store.append_many

    def picky(events: list[AuditEvent]) -> Any:
        if any(e.txid == "poison" for e in events):
            raise ValueError("this record cannot be stored")
        return real_many(events)

    store.append_many = picky  # type: ignore[method-assign]
    writer = AuditWriter(store)
    base = AuditEvent(event="delivered", txid="", message_id="", client="127.0.0.1",
                      direction="outbound", sender="someone@school.example",
                      recipients=("o@example.org",), auth_user="", rules=(), action="accept",
                      reply="", evidence={}, subject="")

    async def burst() -> list[Any]:
        events = [replace(base, txid=f"n{i}") for i in range(5)]
        events.insert(2, replace(base, txid="badutf8", sender="j.dev\udcffries@school.example"))
        events.insert(4, replace(base, txid="poison"))
        return await asyncio.gather(*(writer.append(e) for e in events),
                                    return_exceptions=True)

    results = asyncio.run(burst())
    assert isinstance(results[4], AuditUnavailable)
    assert not any(isinstance(r, BaseException) for i, r in enumerate(results) if i != 4)
    writer.close()
    check = SQLiteStore(tmp_path / "audit.sqlite3", "test")
    by_tx = {r.txid: r for r in check.records()}
    assert set(by_tx) == {"n0", "n1", "n2", "n3", "n4", "badutf8"}
    assert by_tx["badutf8"].sender == "j.dev\\xffries@school.example"
    check.close()


# -- (b) headers are capped as they arrive ------------------------------------------------------

def test_header_flood_is_capped(sink: tuple[SinkHandler, int], tmp_path: Path) -> None:
    """30 header packets of 1 MB with max_message_size = 4 MB: the front stops holding them
    at the limit and the MTA hears 552 (main: all 30 MB held until the first body chunk)."""
    from milter.fronts.milter.server import MilterConnection

    cfg = write_config(tmp_path, next_hop=f"smtp://127.0.0.1:{sink[1]}",
                       gateway_extra="max_message_size = 4194304",
                       extra=f'[milter]\nlisten = "127.0.0.1:{free_port()}"\n')
    g = GatewayThread(cfg)
    try:
        conn = MilterConnection(g.running.gateway)
        value = b"x" * (2**20 - 100)

        async def feed() -> bytes:
            for event in (codec.OptNeg(6, 0x1FF, 0), codec.Connect("c", "4", 1, "127.0.0.1"),
                          codec.Helo("c"), codec.Mail(("<someone@school.example>",)),
                          codec.Rcpt(("<o@example.org>",))):
                await conn.handle(event)
            held = 0
            for i in range(30):
                await conn.handle(codec.Header(f"X-Flood-{i}", value))
                held = max(held, sum(len(v) for _, v in conn.message.headers))
            assert held <= 4 * 2**20
            await conn.handle(codec.EndOfHeaders())
            return await conn.handle(codec.EndOfMessage(b"body\r\n"))

        reply = g.call(feed())
        assert codec.decode_replies(reply)[0].data.startswith(b"552 5.3.4")
        # and over a socket: the same answer
        mta = MTA(g.running.milter_port)
        mta.negotiate()
        flood = b"".join(f"X-Flood-{i}: ".encode() + value + b"\r\n" for i in range(6))
        replies = mta.message(flood + make_message(), "someone@school.example",
                              ["o@example.org"])
        assert replies[-1].cmd == b"y" and replies[-1].data.startswith(b"552 5.3.4")
        mta.close()
    finally:
        g.stop()
    assert sink[0].messages == []


# -- (c) a cap on milter connections ------------------------------------------------------------

def test_milter_connections_are_capped_and_smtp_goes_on(both: GatewayThread) -> None:
    """max_connections = 5: a sixth connection is closed at once; those within the cap and
    the SMTP front work (main: no cap, until file descriptors run out)."""
    held = [MTA(both.running.milter_port) for _ in range(5)]
    for m in held:
        assert m.negotiate().cmd == b"O"
    extra = socket.create_connection(("127.0.0.1", both.running.milter_port), timeout=5)
    try:
        extra.sendall(codec.encode_command(codec.OptNeg(6, 0x1FF, 0)))
        answer = extra.recv(100)
    except ConnectionResetError:
        answer = b""
    assert answer == b""  # closed without an answer
    extra.close()
    with both.client() as c:
        c.sendmail("someone@school.example", ["ouder@example.org"], make_message())
    held.pop().close()
    time.sleep(0.2)
    again = MTA(both.running.milter_port)
    assert again.negotiate().cmd == b"O"
    for m in held + [again]:
        m.close()


# -- (d) command order, as libmilter -------------------------------------------------------------

def test_end_of_message_out_of_order_is_ignored(both: GatewayThread, tmp_path: Path) -> None:
    """Without negotiation and RCPT, end of message is no message: libmilter aborts the
    transaction and ignores the command (no reply, nothing recorded, nothing delivered);
    main answered "continue" and recorded a delivery with an empty envelope."""
    s = socket.create_connection(("127.0.0.1", both.running.milter_port), timeout=5)
    s.sendall(codec.encode_command(codec.Mail(("<someone@school.example>",))))
    assert codec.decode_replies(s.recv(100))[0].cmd == b"c"  # MAIL: reachable from HELO
    s.sendall(codec.encode_command(codec.EndOfMessage(b"Subject: x\r\n\r\nhallo\r\n")))
    s.settimeout(0.5)
    with pytest.raises(TimeoutError):
        s.recv(100)
    s.close()
    assert records(tmp_path) == []


def test_out_of_file_descriptors_is_said_once_and_smtp_recovers(tmp_path: Path) -> None:
    """A gateway started with only 150 file descriptors and a milter cap above that: 200
    idle milter connections exhaust them. The log says so once (main: asyncio's traceback
    every second for every listener, 38k lines), and once they go the SMTP front serves."""
    port = free_port()
    cfg = write_config(tmp_path, listen=f"127.0.0.1:{port}",
                       extra=f'[notices]\nenabled = false\n[milter]\nlisten = '
                             f'"127.0.0.1:{free_port()}"\nmax_connections = 1000\n')
    mport = int(cfg.read_text().split('listen = "127.0.0.1:')[2].split('"')[0])
    log = tmp_path / "stderr.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "milter.cli", "serve", "--config", str(cfg)], stderr=err,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (150, 150)))
    try:
        deadline = time.monotonic() + 20
        while "ready" not in log.read_text():
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        idle = []
        for _ in range(200):
            idle.append(socket.create_connection(("127.0.0.1", mport), timeout=5))
        time.sleep(2.5)  # asyncio retries accept() every second
        for s in idle:
            s.close()
        time.sleep(0.5)
        deadline = time.monotonic() + 10
        while True:
            try:
                with smtplib.SMTP("127.0.0.1", port, timeout=5) as c:
                    c.sendmail("someone@school.example", ["o@example.org"], make_message())
                break
            except (OSError, smtplib.SMTPException):
                assert time.monotonic() < deadline
                time.sleep(0.2)
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    text = log.read_text()
    assert text.count("cannot accept connections") == 1, text[-2000:]
    assert "out of system resource" not in text
