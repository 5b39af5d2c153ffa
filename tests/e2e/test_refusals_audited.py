"""Refusals before any policy runs are in Dutch and English, name the limit, and are on
record: a message over the size limit (both fronts, and MAIL ... SIZE= on the SMTP front) and
a DATA line over 1000 octets. And an automatic forward's notice reaches the mailbox's owner."""

from __future__ import annotations

import email
import smtplib
import time
from collections.abc import Iterator
from email import policy
from pathlib import Path
from typing import Any

import pytest

from milter.audit.sqlite import SQLiteStore
from tests.conftest import make_message, write_config
from tests.e2e.conftest import GatewayThread, SinkHandler, free_port
from tests.milter.test_milter_server import MTA

LIMIT = 4096
TOO_BIG = ("552 5.3.4 Bericht te groot: maximaal 4 KB (4096 bytes) / "
           "Message too big: limit 4 KB (4096 bytes)")


@pytest.fixture
def small(tmp_path: Path, sink: tuple[SinkHandler, int]) -> Iterator[GatewayThread]:
    cfg = write_config(tmp_path, next_hop=f"smtp://127.0.0.1:{sink[1]}",
                       gateway_extra=f"max_message_size = {LIMIT}",
                       extra=f'[milter]\nlisten = "127.0.0.1:{free_port()}"\n'
                             "[notices]\nretry_delay = 0.1\n")
    g = GatewayThread(cfg)
    yield g
    g.stop()


def records(tmp: Path) -> list[Any]:
    return list(SQLiteStore(tmp / "audit.sqlite3", "test").records())


BIG = make_message(body=("y" * 70 + "\r\n") * 100)


def test_too_big_over_smtp_names_the_limit_and_is_on_record(small: GatewayThread,
                                                             sink: Any, tmp_path: Path) -> None:
    with small.client() as c:
        c.ehlo("client.school.example")
        c.mail("someone@school.example")
        c.rcpt("ouder@example.org")
        code, text = c.data(BIG)
        assert f"{code} {text.decode()}" == TOO_BIG
        assert c.noop()[0] == 250  # the session goes on
    (rec,) = records(tmp_path)
    assert (rec.event, rec.reply, rec.sender) == ("rejected", TOO_BIG, "someone@school.example")
    assert rec.recipients == ("ouder@example.org",)
    assert rec.evidence["refused"] == "too-big" and rec.evidence["limit"] == LIMIT
    assert rec.evidence["size"] >= len(BIG)
    assert sink[0].messages == []


def test_too_big_announced_at_mail_is_on_record(small: GatewayThread, tmp_path: Path) -> None:
    with small.client() as c:
        c.ehlo("client.school.example")
        code, text = c.mail("someone@school.example", ["SIZE=999999"])
        assert f"{code} {text.decode()}" == TOO_BIG
    (rec,) = records(tmp_path)
    assert (rec.event, rec.reply, rec.sender) == ("rejected", TOO_BIG, "someone@school.example")
    assert rec.evidence["size"] == 999999 and rec.evidence["stage"] == "MAIL"


def test_too_big_over_the_milter_front_is_on_record(small: GatewayThread,
                                                    tmp_path: Path) -> None:
    mta = MTA(small.running.milter_port)
    try:
        mta.negotiate()
        replies = mta.message(BIG, "someone@school.example", ["ouder@example.org"])
    finally:
        mta.close()
    text = replies[-1].data.rstrip(b"\0").decode()
    assert text.startswith(TOO_BIG + " ref=")
    (rec,) = records(tmp_path)
    assert rec.event == "rejected" and rec.reply == text
    assert rec.evidence["refused"] == "too-big" and rec.evidence["limit"] == LIMIT


def test_line_too_long_in_both_languages_and_on_record(gateway: GatewayThread,
                                                       tmp_path: Path) -> None:
    raw = make_message(body="z" * 1200 + "\r\n")
    with gateway.client() as c:
        c.ehlo("client.school.example")
        c.mail("someone@school.example")
        c.rcpt("ouder@example.org")
        code, text = c.data(raw)
    reply = f"{code} {text.decode()}"
    assert reply == ("500 5.5.2 Regel te lang: maximaal 1000 tekens per regel / "
                     "Line too long: limit 1000 octets per line")
    (rec,) = records(tmp_path)
    assert (rec.event, rec.reply) == ("rejected", reply)
    assert rec.evidence["refused"] == "line-too-long"


def test_an_automatic_forward_is_refused_and_its_mailbox_owner_told(
        gateway: GatewayThread, sink: Any, tmp_path: Path) -> None:
    handler: SinkHandler = sink[0]
    raw = make_message(frm="Ouder <ouder@example.org>", to="teacher@school.example",
                       subject="Vraag over huiswerk",
                       extra_headers="Auto-Submitted: auto-forwarded\r\nX-Forwarded-For: "
                                     "teacher@school.example theo@home.example\r\n")
    with gateway.client() as c, pytest.raises(smtplib.SMTPDataError) as refused:
        c.sendmail("teacher@school.example", ["theo@home.example"], raw)
    assert refused.value.smtp_code == 550
    end = time.monotonic() + 10
    while not handler.messages and time.monotonic() < end:
        time.sleep(0.05)
    (notice,) = handler.messages
    assert notice.rcpt_tos == ["teacher@school.example"]
    parsed = email.message_from_bytes(notice.content, policy=policy.default)
    assert parsed["Subject"] == "[Mailcontrole] Een bericht is niet doorgestuurd: " \
                                "Vraag over huiswerk"
    text = parsed.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert text.startswith("Beste Theo Teacher,")
    assert "automatisch doorgestuurd naar theo@home.example" in text
    while "notice-sent" not in [r.event for r in records(tmp_path)] and \
            time.monotonic() < end:
        time.sleep(0.05)
    assert [r.event for r in records(tmp_path)] == ["rejected", "notice-sent"]
