"""Both fronts, one transaction path: the same message gets the same decision, the same reply
text and the same audit records, whether it came over SMTP or from Postfix's milter client."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from milter.audit.sqlite import SQLiteStore
from milter.core.engine import Engine
from milter.core.verdict import Finding
from tests.conftest import make_message, write_config
from tests.e2e.conftest import GatewayThread, SinkHandler, free_port
from tests.fixtures import files
from tests.milter.test_milter_server import MTA

DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
CLEAN = make_message()
VIOLATION = make_message(frm="me@gmail.example")
CONFIDENTIAL = files.mail_with([("verslag.docx", files.docx(["x"], label="Vertrouwelijk"),
                                 DOCX)])


@dataclass
class Outcome:
    code: int          # what the client (or the MTA) hears: 250 for "go on"
    text: str
    held: bool = False  # the milter's quarantine action (Postfix's hold queue)


@dataclass
class Both:
    gateway: GatewayThread
    sink: SinkHandler
    tmp: Path

    def send(self, front: str, raw: bytes, sender: str) -> Outcome:
        if front == "smtp":
            with self.gateway.client() as c:
                c.ehlo("client.school.example")
                code, text = c.mail(sender)
                if code == 250:
                    code, text = c.rcpt("ouder@example.org")
                if code == 250:
                    code, text = c.data(raw)
                return Outcome(code, text.decode())
        mta = MTA(self.gateway.running.milter_port)
        try:
            mta.negotiate()
            replies = mta.message(raw, sender, ["ouder@example.org"])
        finally:
            mta.close()
        last = replies[-1]
        if last.cmd == b"y":
            text = last.data.rstrip(b"\0").decode()
            return Outcome(int(text[:3]), text[4:])
        assert last.cmd == b"c", replies
        return Outcome(250, "", held=any(r.cmd == b"q" for r in replies))

    def events(self) -> list[str]:
        return [r.event for r in SQLiteStore(self.tmp / "audit.sqlite3", "test").records()]

    def records(self) -> list[Any]:
        return list(SQLiteStore(self.tmp / "audit.sqlite3", "test").records())

    def swap_rule(self, rule_id: str, fn: Callable[..., Finding | None]) -> None:
        """Replace one rule of the running policy (the engine is given its rules)."""
        async def swap() -> None:
            gw = self.gateway.running.gateway
            rt = gw.runtime
            rules = {**rt.engine.rules, rule_id: fn}
            gw.runtime = replace(rt, engine=Engine(rt.policy, rules))

        self.gateway.call(swap())


@pytest.fixture
def both(tmp_path: Path, sink: tuple[SinkHandler, int]) -> Iterator[Both]:
    cfg = write_config(tmp_path, next_hop=f"smtp://127.0.0.1:{sink[1]}",
                       extra=f'[milter]\nlisten = "127.0.0.1:{free_port()}"\n')
    g = GatewayThread(cfg)
    yield Both(g, sink[0], tmp_path)
    g.stop()


FRONTS = ["smtp", "milter"]


@pytest.mark.parametrize("front", FRONTS)
def test_clean_message_goes_on_and_is_delivered_on_record(both: Both, front: str) -> None:
    out = both.send(front, CLEAN, "someone@school.example")
    assert out.code == 250 and not out.held
    assert both.events()[-1] == "delivered"
    if front == "smtp":  # the SMTP front relays it itself, its intent durable first
        assert both.events() == ["intent", "delivered"]
        assert len(both.sink.messages) == 1
        assert out.text.startswith("2.0.0 Ok: queued ref=")


@pytest.mark.parametrize("front", FRONTS)
def test_reject_same_text_on_record(both: Both, front: str) -> None:
    out = both.send(front, VIOLATION, "me@gmail.example")
    assert out.code == 550 and out.text.startswith("5.7.1 [B1.sender-domain] B1:")
    (rec,) = both.records()
    assert rec.event == "rejected" and rec.reply == f"550 {out.text}"
    assert both.sink.messages == []


@pytest.mark.parametrize("front", FRONTS)
def test_quarantine_is_durable_before_the_answer(both: Both, front: str) -> None:
    out = both.send(front, CONFIDENTIAL, "someone@school.example")
    assert out.code == 250
    assert out.held == (front == "milter")  # and Postfix's hold queue on the milter front
    (entry,) = both.gateway.running.gateway.quarantine.entries()
    (rec,) = both.records()
    assert rec.event == "quarantined" and rec.evidence["quarantine_id"] == entry.id
    # the held message went nowhere (the sender's notice, from the postmaster, may have:
    # it is sent in the background and was once quicker than this check)
    assert [m.mail_from for m in both.sink.messages] in ([], ["postmaster@school.example"])


@pytest.mark.parametrize("front", FRONTS)
def test_policy_tempfail_is_451_on_record(both: Both, front: str) -> None:
    both.swap_rule("B1.sender-domain", lambda m, c, p: Finding("DNS timed out", transient=True))
    out = both.send(front, CLEAN, "someone@school.example")
    assert out.code == 451 and out.text.startswith("4.4.3 [B1.sender-domain]")
    assert both.events() == ["tempfailed"]


@pytest.mark.parametrize("front", FRONTS)
def test_a_crashing_rule_is_451_and_audited(both: Both, front: str) -> None:
    def crash(*_: Any) -> Finding | None:
        raise ZeroDivisionError("bug")

    both.swap_rule("A5.media-external", crash)
    out = both.send(front, CLEAN, "someone@school.example")
    assert out.code == 451 and out.text.startswith("4.3.0 Temporary policy failure, try again")
    (rec,) = both.records()
    assert rec.event == "tempfailed" and "A5.media-external" in rec.evidence["error"]
    assert both.sink.messages == []
    both.swap_rule("A5.media-external", lambda *_: None)
    assert both.send(front, CLEAN, "someone@school.example").code == 250  # and goes on


@pytest.mark.parametrize("front", FRONTS)
def test_audit_store_down_is_451_and_nothing_delivered(both: Both, front: str) -> None:
    con = sqlite3.connect(both.tmp / "audit.sqlite3")
    con.execute("CREATE TRIGGER deny BEFORE INSERT ON records "
                "BEGIN SELECT RAISE(ABORT, 'disk full'); END")
    con.commit()
    out = both.send(front, CLEAN, "someone@school.example")
    assert out.code == 451 and out.text.startswith("4.3.0 Audit store unavailable, try again")
    assert both.sink.messages == []
    con.execute("DROP TRIGGER deny")
    con.commit()
    con.close()
    assert both.send(front, CLEAN, "someone@school.example").code == 250


@pytest.mark.parametrize("front", FRONTS)
def test_next_hop_down(tmp_path: Path, front: str) -> None:
    """The SMTP front's next hop is down: 451 at MAIL, on record with the stage. The milter
    front's next hop is the MTA itself: its decision does not depend on ours."""
    cfg = write_config(tmp_path, next_hop=f"smtp://127.0.0.1:{free_port()}",
                       extra=f'[milter]\nlisten = "127.0.0.1:{free_port()}"\n')
    gateway = GatewayThread(cfg)
    try:
        out = Both(gateway, SinkHandler(), tmp_path).send(front, CLEAN,
                                                           "someone@school.example")
        (rec,) = SQLiteStore(tmp_path / "audit.sqlite3", "test").records()
    finally:
        gateway.stop()
    if front == "smtp":
        assert out.code == 451 and out.text.startswith("4.4.1 Next hop unavailable")
        assert rec.event == "tempfailed" and rec.evidence["stage"] == "MAIL"
    else:
        assert out.code == 250 and rec.event == "delivered"
