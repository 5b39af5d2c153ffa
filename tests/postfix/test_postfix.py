"""Postfix in front of skot-milter, for real: both modes Postfix offers, with the recipes from
deploy/postfix/, a real SMTP client, and a sink as the final destination."""

from __future__ import annotations

import re
import smtplib
import time
from collections.abc import Callable
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from milter.audit.sqlite import SQLiteStore
from tests.conftest import make_message, write_config
from tests.e2e.conftest import GatewayThread, SinkHandler, free_port
from tests.fixtures import files
from tests.postfix.conftest import DEPLOY, PrivatePostfix
from tests.postfix.submission import ports

DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"


def confidential() -> bytes:
    return files.mail_with([("verslag.docx", files.docx(["x"], label="Vertrouwelijk"), DOCX)])


def wait(pred: Callable[[], bool], seconds: float = 20) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.1)
    return False


def events(tmp_path: Path) -> list[str]:
    return [r.event for r in SQLiteStore(tmp_path / "audit.sqlite3", "test").records()
            if not r.event.startswith("notice")]


def proxy_setup(tmp_path: Path, sink_port: int, pf: list[PrivatePostfix]
                ) -> tuple[GatewayThread, int, PrivatePostfix]:
    gw = GatewayThread(write_config(tmp_path, next_hop=f"smtp://127.0.0.1:{sink_port}",
                                    gateway_extra='xforward_from = ["127.0.0.1/32"]',
                                    extra="[notices]\nenabled = false\n"))
    port = free_port()
    # every service of the recipe on a loopback high port (submission too: never 587/465)
    master = ports((DEPLOY / "master.cf.proxy").read_text(), smtp=port,
                   submission=free_port(), submissions=free_port())
    master = master.replace("127.0.0.1:10025", f"127.0.0.1:{gw.port}")
    master = master.replace("127.0.0.1:10026", f"127.0.0.1:{free_port()}")
    postfix = PrivatePostfix((DEPLOY / "main.cf.proxy").read_text(), master, sink_port)
    pf.append(postfix)
    postfix.start(port)
    return gw, port, postfix


def milter_setup(tmp_path: Path, sink_port: int, pf: list[PrivatePostfix]
                 ) -> tuple[GatewayThread, int, PrivatePostfix]:
    mport = free_port()
    gw = GatewayThread(write_config(tmp_path, listen="", next_hop=f"smtp://127.0.0.1:{sink_port}",
                                    extra=f'[milter]\nlisten = "127.0.0.1:{mport}"\n'
                                          "[notices]\nenabled = false\n"))
    port = free_port()
    main = (DEPLOY / "main.cf.milter").read_text().replace("127.0.0.1:8894",
                                                          f"127.0.0.1:{mport}")
    postfix = PrivatePostfix(main, f"127.0.0.1:{port} inet n - n - - smtpd\n", sink_port)
    pf.append(postfix)
    postfix.start(port)
    return gw, port, postfix


SETUPS = {"proxy": proxy_setup, "milter": milter_setup}


@pytest.mark.parametrize("mode", ["proxy", "milter"])
def test_postfix_in_front(mode: str, tmp_path: Path, sink: tuple[SinkHandler, int],
                          private_postfix: list[PrivatePostfix]) -> None:
    handler, sink_port = sink
    gw, port, postfix = SETUPS[mode](tmp_path, sink_port, private_postfix)
    try:
        # 1. a clean message arrives at the sink
        clean = make_message(frm="someone@school.example", to="ouder@example.org")
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
            c.sendmail("someone@school.example", ["ouder@example.org"], clean)
        assert wait(lambda: len(handler.messages) == 1), postfix.maillog()
        assert b"Goedemorgen." in handler.messages[0].content
        # 1b. a 2 MB message (spooled to disk by either front) arrives whole
        big = make_message(frm="someone@school.example", to="ouder@example.org",
                           body=("regel tekst voor de ouders " * 3 + "\r\n") * 25_000)
        with smtplib.SMTP("127.0.0.1", port, timeout=60) as c:
            c.sendmail("someone@school.example", ["ouder@example.org"], big)
        assert wait(lambda: len(handler.messages) == 2), postfix.maillog()
        assert handler.messages[1].content.split(b"\r\n\r\n", 1)[1] == \
            big.split(b"\r\n\r\n", 1)[1]
        # 2. a B1 violation is refused in Postfix's SMTP dialogue with our reply text
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as c, \
                pytest.raises(smtplib.SMTPDataError) as err:
            c.sendmail("me@gmail.example", ["ouder@example.org"],
                       make_message(frm="me@gmail.example"))
        assert err.value.smtp_code == 550
        assert b"[B1.sender-domain] B1:" in err.value.smtp_error
        # 3. a confidential attachment is held
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
            c.sendmail("someone@school.example", ["ouder@example.org"], confidential())
        assert len(gw.running.gateway.quarantine.entries()) == 1
        if mode == "milter":
            assert wait(lambda: len(postfix.held()) == 1), postfix.maillog()
        time.sleep(1)
        assert len(handler.messages) == 2  # nothing more reached the destination
        # 4. the audit store has each
        expected = (["intent", "delivered", "intent", "delivered", "rejected", "quarantined"]
                    if mode == "proxy" else ["delivered", "delivered", "rejected", "quarantined"])
        assert events(tmp_path) == expected
    finally:
        gw.stop()
    # 5. with skot-milter stopped, Postfix tempfails: never unfiltered mail
    refused = (smtplib.SMTPDataError, smtplib.SMTPRecipientsRefused, smtplib.SMTPSenderRefused)
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as c, pytest.raises(refused) as down:
        c.sendmail("someone@school.example", ["ouder@example.org"], clean)
    err_any: Any = down.value
    codes = ([v[0] for v in err_any.recipients.values()]
             if isinstance(err_any, smtplib.SMTPRecipientsRefused) else [err_any.smtp_code])
    assert all(400 <= code < 500 for code in codes)
    time.sleep(0.5)
    assert len(handler.messages) == 2


def test_milter_gets_only_the_packets_and_macros_it_reads(
        tmp_path: Path, sink: tuple[SinkHandler, int],
        private_postfix: list[PrivatePostfix]) -> None:
    """Issue 19: the filter tells Postfix which steps and macros it reads. Postfix still
    sends one macro packet per step it takes (even an empty one: milter8.c), but no DATA
    step and no end of headers (nor its macros), and it looks up and sends only the macros
    we read: the client address, and each message's own queue id (which used to be missing,
    or the previous message's)."""
    handler, sink_port = sink
    gw, port, postfix = milter_setup(tmp_path, sink_port, private_postfix)

    def packets() -> float:
        return REGISTRY.get_sample_value("skot_milter_packets_total") or 0.0

    try:
        msg = make_message(frm="someone@school.example", to="ouder@example.org")
        counted = []
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
            for _ in range(3):
                c.sendmail("someone@school.example", ["ouder@example.org"], msg)
                counted.append(packets())
        assert wait(lambda: len(handler.messages) == 3), postfix.maillog()
        # the fields Postfix shows a milter: all but its own Received (it added a Date)
        fields = len(BytesParser().parsebytes(handler.messages[2].content).keys()) - 1
        # per later message on the connection: the abort after the previous one; MAIL, RCPT,
        # one body chunk and the end of the message with their macros; the DATA step's
        # macros; each header with its macros (13 + 2 per header before: DATA and the end of
        # headers with their macros)
        assert counted[2] - counted[1] == counted[1] - counted[0] == 10 + 2 * fields
        records = list(SQLiteStore(tmp_path / "audit.sqlite3", "test").records())
        queue_ids = re.findall(r"\]: ([0-9A-F]+): client=localhost", postfix.maillog())
        assert [r.evidence["queue_id"] for r in records] == queue_ids and len(queue_ids) == 3
        assert {r.client for r in records} == {"127.0.0.1"}
    finally:
        gw.stop()
