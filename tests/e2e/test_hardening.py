"""Issue 13: heavy or hostile input must never hurt other senders. Real sockets throughout;
each test says what the client hears and that no message is lost."""

from __future__ import annotations

import asyncio
import os
import random
import select
import smtplib
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from milter import transaction
from milter.audit.sqlite import SQLiteStore
from milter.core.verdict import Finding
from tests.conftest import make_message, write_config
from tests.e2e.conftest import GatewayThread, Received, SinkHandler, free_port
from tests.e2e.test_transaction_paths import Both
from tests.fixtures import files
from tests.reliability.test_hostile_clients import raw_session, read_replies


@pytest.fixture
def fronts(tmp_path: Path, sink: tuple[SinkHandler, int]) -> Iterator[Both]:
    """The gateway with both fronts (SMTP and milter) and a sink as next hop."""
    cfg = write_config(tmp_path, next_hop=f"smtp://127.0.0.1:{sink[1]}",
                       extra=f'[milter]\nlisten = "127.0.0.1:{free_port()}"\n')
    g = GatewayThread(cfg)
    yield Both(g, sink[0], tmp_path)
    g.stop()


def records(tmp: Path) -> list[Any]:
    return list(SQLiteStore(tmp / "audit.sqlite3", "test").records())


def digit_csv_zip(members: int, rows: int = 20000) -> bytes:
    """The zip of CSVs full of 9-digit numbers from the issue (2 MB of text per member)."""
    rng = random.Random(13)
    pool = [str(rng.randrange(10**8, 10**9)) for _ in range(5000)]
    text = "".join(";".join(rng.choice(pool) for _ in range(10)) + "\n"
                   for _ in range(rows)).encode()
    return files.zip_of({f"export{i}.csv": text for i in range(members)})


# -- 1. inspection off the event loop, with an enforced budget -------------------------------

def test_heavy_inspection_does_not_hold_up_a_small_message(tmp_path: Path, make_gateway: Any,
                                                           sink: tuple[SinkHandler, int]) -> None:
    """A staff member's zip of digit CSVs is inspected while another client's small message
    is answered; past the time budget the zip is held as A1.uninspectable (250, quarantined),
    never a stall. (main: the small client waits for the whole scan, ~10 s here.)"""
    gw = make_gateway(f"smtp://127.0.0.1:{sink[1]}",
                      gateway_extra="max_message_size = 104857600",
                      extra="[inspection]\ntime_budget = 1.0\n")
    heavy_msg = files.mail_with([("leerlingen.zip", digit_csv_zip(12), "application/zip")])
    heavy = gw.client()
    heavy.ehlo("heavy.school.example")
    assert heavy.mail("someone@school.example")[0] == 250
    assert heavy.rcpt("ouder@example.org")[0] == 250
    assert heavy.docmd("DATA")[0] == 354
    heavy.send(heavy_msg + b".\r\n")      # all of it handed to the kernel
    time.sleep(0.3)                        # the gateway reads it and starts inspecting
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=5) as small:
        small.sendmail("teacher@school.example", ["ouder@example.org"],
                       make_message(frm="teacher@school.example"))
    # The small message was answered while the heavy one has no answer yet.
    ready, _, _ = select.select([heavy.sock], [], [], 0)
    assert not ready, "the heavy message was answered before the small one"
    code, text = heavy.getreply()
    heavy.quit()
    assert code == 250 and b"held" in text
    assert len(sink[0].messages) == 1  # the small one; the heavy one is in quarantine
    recs = records(tmp_path)
    held = [r for r in recs if r.event == "quarantined"]
    assert len(held) == 1 and held[0].rules[0]["id"] == "A1.uninspectable"
    assert "time budget" in held[0].rules[0]["reason"]
    assert [r.event for r in recs].count("delivered") == 1


@pytest.mark.parametrize("front", ["smtp", "milter"])
def test_a_rule_that_ignores_the_budget_is_cut_off(fronts: Both, front: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A check that never looks at the clock (here: a sleep) cannot stall the client either:
    past the budget plus the backstop the message is held as A1.uninspectable."""
    monkeypatch.setattr(transaction, "BACKSTOP", 0.3)
    stop = threading.Event()

    def stuck(*_: Any) -> Finding | None:
        stop.wait(30)
        return None

    from milter.core.limits import check_deadline  # new in issue 13

    def spins(*_: Any) -> Finding | None:
        while True:
            check_deadline()

    rt = fronts.gateway.running.gateway.runtime
    fronts.gateway.running.gateway.runtime = replace(rt, config=replace(
        rt.config, inspection=replace(rt.config.inspection, time_budget=0.5)))
    try:
        for fn in (stuck, spins):
            fronts.swap_rule("B1.sender-domain", fn)
            started = time.monotonic()
            out = fronts.send(front, files.mail_with([("a.txt", b"hallo", "text/plain")]),
                            "someone@school.example")
            assert time.monotonic() - started < 10
            assert out.code == 250 and (out.held or "held" in out.text), out
    finally:
        stop.set()
    held = [r for r in fronts.records() if r.event == "quarantined"]
    assert [r.rules[0]["id"] for r in held] == ["A1.uninspectable"] * 2
    # neither held message went on (only the sender's notices may have, from the postmaster)
    assert {m.mail_from for m in fronts.sink.messages} <= {"postmaster@school.example"}


# -- 2. recipients: per transaction, not per connection --------------------------------------

def _pipelined_transaction(s: socket.socket, rcpts: list[str]) -> list[bytes]:
    s.sendall(b"MAIL FROM:<someone@school.example>\r\n"
              + b"".join(f"RCPT TO:<{r}>\r\n".encode() for r in rcpts))
    replies = read_replies(s, 1 + len(rcpts))
    s.sendall(b"DATA\r\n")
    replies += read_replies(s, 1)
    s.sendall(make_message() + b".\r\n")
    return replies + read_replies(s, 1)


def test_600_recipients_and_many_transactions_on_one_connection(
        gateway: GatewayThread, sink: tuple[SinkHandler, int]) -> None:
    """A message to 600 parents is delivered (main: RCPT 501 gets 421 and the connection
    drops), and so are three more of 200 recipients on the same connection."""
    s = raw_session(gateway.port)
    read_replies(s, 1)
    s.sendall(b"EHLO client.school.example\r\n")
    read_replies(s, 1)
    for n in (600, 200, 200, 200):
        replies = _pipelined_transaction(s, [f"ouder{i}@example.org" for i in range(n)])
        assert all(r.startswith(b"250") for r in replies[:-2]), \
            [r for r in replies if not r.startswith(b"250")][:1]
        assert replies[-2].startswith(b"354") and replies[-1].startswith(b"250")
    s.sendall(b"QUIT\r\n")
    s.close()
    assert [len(m.rcpt_tos) for m in sink[0].messages] == [600, 200, 200, 200]


def test_past_max_recipients_452_for_that_rcpt_only(sink: tuple[SinkHandler, int],
                                                    make_gateway: Any) -> None:
    gw = make_gateway(f"smtp://127.0.0.1:{sink[1]}", gateway_extra="max_recipients = 5")
    s = raw_session(gw.port)
    read_replies(s, 1)
    s.sendall(b"EHLO c\r\n")
    read_replies(s, 1)
    for _ in range(3):  # any number of transactions, each with up to 5 recipients
        replies = _pipelined_transaction(s, [f"p{i}@example.org" for i in range(7)])
        rcpt = replies[1:8]
        assert all(r.startswith(b"250") for r in rcpt[:5])
        assert all(r.startswith(b"452 4.5.3") for r in rcpt[5:])
        assert replies[-1].startswith(b"250")
    s.close()
    assert [len(m.rcpt_tos) for m in sink[0].messages] == [5, 5, 5]


# -- 5. connection exhaustion by slow drips ----------------------------------------------------

def test_a_drip_cannot_lock_out_other_clients(sink: tuple[SinkHandler, int],
                                              make_gateway: Any) -> None:
    """Slow connections from several addresses, each under the per-address cap, fill the
    gateway: an internal client is still served (reserved slots), and each dripper is cut
    off once its dialogue passes dialogue_timeout, though it sends an EHLO every 0.2 s
    (main: the internal client gets 421 and the drip is served for ever)."""
    gw = make_gateway(f"smtp://127.0.0.1:{sink[1]}", internal='["127.0.0.1/32"]',
                      gateway_extra="max_connections = 16\nmax_connections_per_ip = 4\n"
                                    "reserved_connections = 4\ndialogue_timeout = 2.0")
    drips = [raw_session(gw.port, source=f"127.0.0.{2 + i // 4}") for i in range(12)]
    for s in drips:
        assert read_replies(s, 1)[0].startswith(b"220")
    stranger = raw_session(gw.port, source="127.0.0.20")
    assert read_replies(stranger, 1)[0].startswith(b"421 4.7.0")  # full for strangers
    stranger.close()
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=5,
                      source_address=("127.0.0.1", 0)) as c:  # internal: a reserved slot
        c.sendmail("someone@school.example", ["ouder@example.org"], make_message())
    assert len(sink[0].messages) == 1
    cut: dict[int, bytes] = {}
    started = time.monotonic()
    while len(cut) < len(drips) and time.monotonic() - started < 8:
        for i, s in enumerate(drips):
            if i in cut:
                continue
            try:
                s.sendall(b"EHLO drip.example\r\n")
                s.settimeout(0.01)
                data = s.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                cut[i] = b"closed"
                continue
            if b"421" in data or not data:
                cut[i] = data
        time.sleep(0.2)
    assert len(cut) == len(drips)
    assert all(b"421 4.4.2" in d or d == b"closed" for d in cut.values())
    assert any(b"421 4.4.2" in d for d in cut.values())
    for s in drips:
        s.close()
    time.sleep(0.2)
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=5,
                      source_address=("127.0.0.20", 0)) as c:  # the slots are free again
        c.sendmail("ouder@example.org", ["teacher@school.example"],
                   make_message(frm="ouder@example.org", to="teacher@school.example"))
    assert len(sink[0].messages) == 2


# -- 3. a next hop that closes idle sessions while the client uploads --------------------------

def test_slow_upload_survives_a_next_hop_that_drops_idle_sessions(make_gateway: Any) -> None:
    """The next hop closes sessions idle for 0.5 s; the client takes 1.5 s between RCPT and
    the end of DATA. The message is delivered once, with its record (main: 451, forever)."""
    handler = SinkHandler()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port,
                            timeout=0.5)
    controller.start()
    try:
        gw = make_gateway(f"smtp://127.0.0.1:{port}")
        with gw.client() as c:
            c.ehlo("slow.school.example")
            assert c.mail("someone@school.example")[0] == 250
            assert c.rcpt("ouder@example.org")[0] == 250
            assert c.rcpt("ander@example.org")[0] == 250
            assert c.docmd("DATA")[0] == 354
            time.sleep(1.5)  # a slow upload: the next hop has closed the held session
            c.send(make_message() + b".\r\n")
            code, text = c.getreply()
        assert code == 250, text
        assert len(handler.messages) == 1
        assert handler.messages[0].rcpt_tos == ["ouder@example.org", "ander@example.org"]
        events = [r.event for r in records(gw.config.parent)]
        assert events == ["intent", "delivered"]
    finally:
        controller.stop()


# -- 7. quarantine on a full disk --------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB file system (tmpfs, mounted as root) for the quarantine."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
                          capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"needs root to mount a small tmpfs: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_quarantine_on_a_full_disk_is_451_and_leaves_nothing(
        small_disk: Path, sink: tuple[SinkHandler, int], make_gateway: Any,
        tmp_path: Path) -> None:
    """A confidential attachment too big for the space left: the client hears 451 (and
    retries), and no .tmp-* entry is left behind (main: .tmp-*/message.eml stays, filling
    the disk further with every retry). A message that fits is held as before."""
    gw = make_gateway(f"smtp://127.0.0.1:{sink[1]}",
                      extra=f'[quarantine]\ndirectory = "{small_disk}"\n')
    docx = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
    label = files.docx(["x"], label="Vertrouwelijk")
    big = files.mail_with([("verslag.docx", label, docx),
                           ("bijlage.bin", random.Random(7).randbytes(400_000),
                            "application/octet-stream")])
    for _ in range(2):
        with gw.client() as c:
            c.ehlo("c.school.example")
            c.mail("someone@school.example")
            c.rcpt("ouder@example.org")
            code, text = c.data(big)
        assert code == 451 and b"storage failure" in text, (code, text)
    assert list(small_disk.iterdir()) == []
    with gw.client() as c:
        c.ehlo("c.school.example")
        c.mail("someone@school.example")
        c.rcpt("ouder@example.org")
        code, text = c.data(files.mail_with([("verslag.docx", label, docx)]))
    assert code == 250 and b"held" in text
    assert [p.name.startswith(".tmp-") for p in small_disk.iterdir()] == [False]
    assert sink[0].messages == []
    assert [r.event for r in records(tmp_path)] == ["quarantined"]


# -- 8. the next hop answers after our timeout ---------------------------------------------------

class LateSink(SinkHandler):
    """Queues the message at once (as Postfix does), then takes a second to say so."""

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(Received(envelope.mail_from, list(envelope.rcpt_tos),
                                      envelope.original_content))
        await asyncio.sleep(1.0)
        return self.data_reply


def test_next_hop_answering_too_late_is_recorded_unknown(
        make_gateway: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The next hop takes 1 s to answer the final dot, we wait 0.3 s: the client hears 451
    and retries, but the message was delivered. The audit says ``unknown`` (main:
    ``tempfailed``, as if nothing had been delivered), and ``audit verify`` warns of it."""
    from milter.cli import main

    late = LateSink()
    port = free_port()
    controller = Controller(late, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        gw = make_gateway(f"smtp://127.0.0.1:{port}", gateway_extra="next_hop_timeout = 0.3")
        with gw.client() as c:
            c.ehlo("c.school.example")
            c.mail("someone@school.example")
            c.rcpt("ouder@example.org")
            code, _ = c.data(make_message())
    finally:
        controller.stop()
    assert code == 451
    assert len(late.messages) == 1  # delivered after all
    recs = records(tmp_path)
    assert [r.event for r in recs] == ["intent", "unknown"]
    gw.stop()
    capsys.readouterr()
    main(["audit", "verify", "--config", str(gw.config)])
    out = capsys.readouterr().out
    assert f"ref={recs[0].txid} unknown" in out and "may have delivered" in out


def test_half_written_entries_from_a_crash_are_swept_at_start(tmp_path: Path,
                                                              make_gateway: Any) -> None:
    q = tmp_path / "quarantine"
    old, fresh = q / ".tmp-20260101-old-abc123", q / ".tmp-20260101-new-def456"
    for d in (old, fresh):
        d.mkdir(parents=True)
        (d / "message.eml").write_bytes(b"half")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    make_gateway("maildir:maildir")
    assert not old.exists() and fresh.exists()  # a young one may be another worker's


def test_postfix_proxy_sends_xforward_per_transaction_without_limit(
        sink: tuple[SinkHandler, int], make_gateway: Any) -> None:
    """Postfix's smtpd_proxy_filter sends XFORWARD before every MAIL; with command_limit =
    10, fifteen transactions on one connection all go through (main: XFORWARD number 11
    got 421 and the connection dropped)."""
    gw = make_gateway(f"smtp://127.0.0.1:{sink[1]}",
                      gateway_extra='command_limit = 10\nxforward_from = ["127.0.0.1/32"]')
    s = raw_session(gw.port)
    read_replies(s, 1)
    s.sendall(b"EHLO postfix.school.example\r\n")
    read_replies(s, 1)
    for _ in range(15):
        s.sendall(b"XFORWARD ADDR=127.0.0.9 NAME=pc1.school.example\r\n")
        assert read_replies(s, 1)[0].startswith(b"250")
        replies = _pipelined_transaction(s, ["ouder@example.org"])
        assert replies[-1].startswith(b"250"), replies
    s.close()
    assert len(sink[0].messages) == 15


def test_the_dialogue_before_data_is_bounded_in_commands(sink: tuple[SinkHandler, int],
                                                         make_gateway: Any) -> None:
    """dialogue_commands = 30: a client that keeps sending RCPTs (each refused past
    max_recipients) gets 421 at command 31; after a message the count starts again."""
    gw = make_gateway(f"smtp://127.0.0.1:{sink[1]}",
                      gateway_extra="max_recipients = 5\ndialogue_commands = 30")
    s = raw_session(gw.port)
    read_replies(s, 1)
    s.sendall(b"EHLO c\r\n")
    read_replies(s, 1)
    replies = _pipelined_transaction(s, [f"p{i}@example.org" for i in range(20)])
    assert replies[-1].startswith(b"250")  # 1 MAIL + 20 RCPT + DATA: within 30
    s.sendall(b"MAIL FROM:<someone@school.example>\r\n"
              + b"".join(f"RCPT TO:<q{i}@example.org>\r\n".encode() for i in range(40)))
    replies = read_replies(s, 41)
    assert replies[-1].startswith(b"421 4.7.0") and len(replies) == 31
    s.close()
