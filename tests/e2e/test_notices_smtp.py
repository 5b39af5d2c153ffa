"""Notices over real SMTP: after the answer, a separate transaction from the postmaster."""

from __future__ import annotations

import email
import smtplib
import time
from email import policy
from pathlib import Path
from typing import Any

import pytest

from milter.audit.sqlite import SQLiteStore
from milter.policy import load
from tests.conftest import POLICY, make_message
from tests.e2e.conftest import SinkHandler
from tests.fixtures import files

DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"


def wait_for(pred: Any, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.05)


def notices(handler: SinkHandler) -> list[Any]:
    return [m for m in handler.messages if b"X-SKOT-Notice:" in m.content]


@pytest.fixture
def gw(sink: Any, make_gateway: Any) -> Any:
    return make_gateway(f"smtp://127.0.0.1:{sink[1]}",
                        extra="[notices]\nrate_per_hour = 5\nretry_delay = 0.1\n")


def confidential(subject: str = "Verslag") -> bytes:
    return files.mail_with([("verslag.docx", files.docx(["x"], label="Vertrouwelijk"), DOCX)],
                           subject=subject)


def test_quarantine_gives_exactly_one_notice(gw: Any, sink: Any, tmp_path: Path) -> None:
    handler: SinkHandler = sink[0]
    with gw.client() as c:
        c.ehlo()
        c.mail("someone@school.example")
        c.rcpt("ouder@example.org")
        code, msg = c.data(confidential("Verslag groep 5"))
        assert code == 250
    wait_for(lambda: notices(handler))
    time.sleep(0.3)
    (notice,) = notices(handler)
    assert handler.messages == [notice]  # the held message itself was not delivered
    assert notice.mail_from == "postmaster@school.example"
    assert notice.rcpt_tos == ["someone@school.example"]
    parsed = email.message_from_bytes(notice.content, policy=policy.default)
    assert parsed["From"] == "postmaster@school.example"
    assert parsed["Auto-Submitted"] == "auto-replied"
    ref = msg.decode().rsplit("ref=", 1)[1]
    assert parsed["X-SKOT-Notice"] == ref
    assert parsed.get_content_type() == "multipart/alternative"
    text = parsed.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "Verslag groep 5" in text and "ouder@example.org" in text and ref in text
    assert "documentsysteem" in text and "leidinggevende" in text
    assert parsed.get_body(("html",)) is not None
    store = SQLiteStore(tmp_path / "audit.sqlite3", "test")
    wait_for(lambda: any(r.event == "notice-sent" for r in store.records()))
    assert [r.event for r in store.records()] == ["quarantined", "notice-sent"]


def test_auto_submitted_violation_gets_no_notice(gw: Any, sink: Any) -> None:
    raw = confidential().replace(b"Subject:", b"Auto-Submitted: auto-generated\r\nSubject:", 1)
    with gw.client() as c:
        c.sendmail("someone@school.example", ["ouder@example.org"], raw)
        c.sendmail("someone@school.example", ["ouder@example.org"], confidential())
    wait_for(lambda: notices(sink[0]))
    time.sleep(0.3)
    assert len(notices(sink[0])) == 1  # only for the second, human-sent message


def test_rate_limit_holds_for_50_violations(gw: Any, sink: Any, tmp_path: Path) -> None:
    with gw.client() as c:
        for i in range(50):
            c.sendmail("someone@school.example", ["ouder@example.org"], confidential(f"n{i}"))
    wait_for(lambda: len(notices(sink[0])) >= 5)
    time.sleep(0.5)
    assert len(notices(sink[0])) == 5
    # the 45 held back are in the audit store, each with the reference of its message
    store = SQLiteStore(tmp_path / "audit.sqlite3", "test")
    wait_for(lambda: sum(r.event == "notice-suppressed" for r in store.records()) >= 45)
    held = [r for r in store.records() if r.event == "notice-suppressed"]
    assert len(held) == 45 and {r.recipients for r in held} == {("someone@school.example",)}
    assert all(r.evidence["reason"] == "rate limit" and r.txid for r in held)


def test_reject_gets_no_notice_unless_policy_asks(gw: Any, sink: Any) -> None:
    with gw.client() as c, pytest.raises(smtplib.SMTPDataError):
        c.sendmail("me@gmail.example", ["ouder@example.org"], make_message(frm="me@gmail.example"))
    time.sleep(0.3)
    assert notices(sink[0]) == []  # B1.sender-domain has notice = false; the bounce tells


def test_reject_replies_are_one_line_with_rule_and_ref() -> None:
    from milter.core.context import Context, Envelope
    from milter.core.engine import combine
    from milter.core.verdict import FiredRule

    for rp in load(POLICY).rules.values():
        ctx = Context(Envelope("a@school.example", ("b@x.example",), txid="01abcdefghjkmnpq"),
                      ("school.example",))
        fired = FiredRule(rp.id, rp.article, "reject", "enforce", "r")
        reply = combine([(rp, fired)], ctx).smtp_reply
        assert reply.startswith("550 5.7.1 ") and len(reply) <= 510 and reply.isascii()
        assert "\r" not in reply and "\n" not in reply
        assert f"[{rp.id}]" in reply and "ref=01abcdefghjkmnpq" in reply
        assert rp.text("reason", "nl")[:10] in reply and rp.text("reason", "en")[:10] in reply


def test_notice_to_unreachable_next_hop_is_retried_and_audited(make_gateway: Any, sink: Any,
                                                               tmp_path: Path) -> None:
    handler: SinkHandler = sink[0]
    gw = make_gateway(f"smtp://127.0.0.1:{sink[1]}",
                      extra="[notices]\nretries = 2\nretry_delay = 0.1\n")
    handler.rcpt_replies["someone@school.example"] = "451 4.3.0 try later"
    with gw.client() as c:
        code = c.sendmail("someone@school.example", ["ouder@example.org"], confidential())
    assert code == {}
    store = SQLiteStore(tmp_path / "audit.sqlite3", "test")
    wait_for(lambda: any(r.event == "notice-failed" for r in store.records()))
    assert [r.event for r in store.records()] == ["quarantined", "notice-failed"]


def test_reject_reply_over_smtp_is_one_line_with_rule_and_ref(gw: Any, tmp_path: Path) -> None:
    with gw.client() as c:
        c.ehlo()
        c.mail("me@gmail.example")
        c.rcpt("ouder@example.org")
        code, msg = c.data(make_message(frm="Me <me@gmail.example>", subject="Geheim rapport"))
    reply = msg.decode("ascii")
    assert code == 550 and "\n" not in reply  # smtplib joins continuation lines with \n
    assert len(f"{code} {reply}\r\n") <= 512  # RFC 5321 4.5.3.1.5
    assert reply.startswith("5.7.1 [B1.sender-domain] B1")
    assert "me@gmail.example" not in reply and "Geheim" not in reply  # never the content
    store = SQLiteStore(tmp_path / "audit.sqlite3", "test")
    wait_for(lambda: any(r.event == "rejected" for r in store.records()))
    (record,) = [r for r in store.records() if r.event == "rejected"]
    assert reply.endswith(f"ref={record.txid}")
