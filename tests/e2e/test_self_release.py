"""Release with a justification: the teacher replies to the notice of a held message, with a
reason, and the message goes out once; every other attempt is refused and on record."""

from __future__ import annotations

import email
import re
import smtplib
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from milter.audit.sqlite import SQLiteStore
from milter.cli import main
from tests.e2e.conftest import GatewayThread, SinkHandler
from tests.e2e.test_smtp_proxy import _set_internal
from tests.fixtures import files
from tests.milter.test_milter_server import MTA

DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
# A marking in an attachment's prose: medium confidence, which the bundled policy lets the
# sender release; a pupil list never.
MARKED = files.mail_with([("verslag.docx", files.docx(
    ["Verslag van het gesprek.", "Dit verslag is vertrouwelijk en bedoeld voor de ouders."]),
    DOCX)], to="ouder@example.org")
PUPIL_LIST = files.mail_with([("leerlingen.xlsx", files.xlsx(files.pupil_rows(15)),
                               "application/vnd.openxmlformats-officedocument.spreadsheetml"
                               ".sheet")])


def held_notice(sink: SinkHandler) -> email.message.Message:
    notices = [m for m in sink.messages if m.mail_from == "postmaster@school.example"]
    assert notices, "no notice was sent"
    return email.message_from_bytes(notices[-1].content)


def reply(to: str, reason: str, frm: str = "someone@school.example") -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = frm, to, "Re: Je bericht is tegengehouden"
    msg["Message-ID"] = "<reply@school.example>"
    msg.set_content(f"{reason}\n\nOp vrijdag schreef postmaster:\n> Je bericht is "
                    "tegengehouden")
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


def events(tmp: Path) -> list[Any]:
    return list(SQLiteStore(tmp / "audit.sqlite3", "test").records())


def to_parent(sink: SinkHandler) -> list[Any]:
    return [m for m in sink.messages if m.rcpt_tos == ["ouder@example.org"]]


def hold(gw: GatewayThread, sink: SinkHandler, raw: bytes = MARKED) -> str:
    with gw.client() as c:
        c.sendmail("someone@school.example", ["ouder@example.org"], raw)
    gw.call(gw.running.gateway.notifier.drain())  # type: ignore[union-attr]
    notice = held_notice(sink)
    address = str(notice["Reply-To"] or "")
    assert re.fullmatch(r"vrijgeven\+[A-Za-z0-9_-]{20,}@school\.example", address), address
    return address


def test_reply_with_a_reason_releases_once_and_tells_the_supervisor(
        gateway: GatewayThread, sink: tuple[SinkHandler, int], tmp_path: Path,
        capsys: Any) -> None:
    s = sink[0]
    address = hold(gateway, s)
    text = held_notice(s).get_payload()[0].get_payload(decode=True).decode()  # type: ignore
    assert address in text and "schrijf erbij waarom" in text
    assert to_parent(s) == []
    with gateway.client() as c:
        c.sendmail("someone@school.example", [address],
                   reply(address, "De ouders vroegen zelf om dit verslag."))
    gateway.call(gateway.running.gateway.notifier.drain())  # type: ignore[union-attr]
    (delivered,) = to_parent(s)
    assert delivered.content == MARKED  # the bytes as held
    assert gateway.running.gateway.quarantine.entries() == []
    recs = events(tmp_path)
    (release,) = [r for r in recs if r.event == "quarantine-release"]
    assert release.actor == "self:someone@school.example"
    assert release.evidence["reason"] == "De ouders vroegen zelf om dit verslag."
    assert any(r.event == "self-release" for r in recs)
    # The supervisor (director@, from the directory) gets a copy with the reason.
    copy = [m for m in s.messages if m.rcpt_tos == ["director@school.example"]]
    assert copy and b"De ouders vroegen zelf om dit verslag" in email.message_from_bytes(
        copy[-1].content).get_payload()[0].get_payload(decode=True)  # type: ignore
    # A second reply: refused, on record, nothing sent again.
    with gateway.client() as c, pytest.raises(smtplib.SMTPDataError) as err:
        c.sendmail("someone@school.example", [address], reply(address, "Nog een keer."))
    assert err.value.smtp_code == 550 and b"already released" in err.value.smtp_error
    assert len(to_parent(s)) == 1
    # The per-person report says what happened afterwards, with the reason.
    assert main(["audit", "report", "--config", str(gateway.config), "--person",
                 "someone@school.example", "--format", "csv"]) == 0
    assert "zelf vrijgegeven / released by the sender: De ouders vroegen zelf om dit " \
           "verslag." in capsys.readouterr().out


@pytest.mark.parametrize("case", ["wrong-token", "other-sender", "no-reason", "from-outside"])
def test_other_attempts_are_refused_and_on_record(
        gateway: GatewayThread, sink: tuple[SinkHandler, int], tmp_path: Path,
        case: str) -> None:
    s = sink[0]
    address = hold(gateway, s)
    sender, to, body = "someone@school.example", address, reply(address, "Het mag.")
    if case == "wrong-token":
        to = "vrijgeven+" + "x" * 24 + "@school.example"
        body = reply(to, "Het mag.")
    elif case == "other-sender":
        sender = "director@school.example"
        body = reply(address, "Het mag.", frm=sender)
    elif case == "no-reason":
        body = reply(address, "")
    else:
        gateway.call(_set_internal(gateway, []))  # the reply comes from an outside MTA
    with gateway.client() as c, pytest.raises(smtplib.SMTPDataError) as err:
        c.sendmail(sender, [to], body)
    assert err.value.smtp_code == 550
    assert to_parent(s) == [] and len(gateway.running.gateway.quarantine.entries()) == 1
    (refused,) = [r for r in events(tmp_path) if r.event == "self-release-refused"]
    assert refused.reply.startswith("550 5.7.1 Vrijgeven geweigerd / release refused")


def test_a_pupil_list_waits_for_an_admin(gateway: GatewayThread,
                                         sink: tuple[SinkHandler, int]) -> None:
    with gateway.client() as c:
        c.sendmail("someone@school.example", ["ouder@example.org"], PUPIL_LIST)
    gateway.call(gateway.running.gateway.notifier.drain())  # type: ignore[union-attr]
    notice = held_notice(sink[0])
    assert notice["Reply-To"] is None
    (entry,) = gateway.running.gateway.quarantine.entries()
    assert "release_token_sha256" not in entry.meta["envelope"]


def test_release_address_cannot_share_a_transaction(gateway: GatewayThread,
                                                    sink: tuple[SinkHandler, int]) -> None:
    address = hold(gateway, sink[0])
    with gateway.client() as c:
        c.ehlo("client")
        assert c.mail("someone@school.example")[0] == 250
        assert c.rcpt("ouder@example.org")[0] == 250
        assert c.rcpt(address)[0] == 550


def test_release_by_reply_through_the_milter_front(tmp_path: Path,
                                                   sink: tuple[SinkHandler, int]) -> None:
    """Postfix hands the reply to the milter: it is answered there and then discarded."""
    from tests.conftest import write_config
    from tests.e2e.conftest import free_port

    cfg = write_config(tmp_path, next_hop=f"smtp://127.0.0.1:{sink[1]}",
                       extra=f'[milter]\nlisten = "127.0.0.1:{free_port()}"\n')
    gw = GatewayThread(cfg)
    try:
        address = hold(gw, sink[0])
        mta = MTA(gw.running.milter_port)
        mta.negotiate()
        replies = mta.message(reply(address, "Afgesproken met de ouders."),
                              "someone@school.example", [address])
        mta.close()
        assert [r.cmd for r in replies] == [b"d"]  # discard: answered, delivered nowhere
        assert len(to_parent(sink[0])) == 1
    finally:
        gw.stop()


def test_a_reply_that_loses_a_release_race_is_refused_not_tempfailed(
        gateway: GatewayThread, sink: tuple[SinkHandler, int], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An admin (on any node) claims the message between the lookup and the release: the
    quarantine's claim decides, and the teacher hears 550 "already released", not a 451
    that would make their client retry."""
    from milter import quarantine as quarantine_mod

    address = hold(gateway, sink[0])
    store = gateway.running.gateway.quarantine
    (entry,) = store.entries()
    monkeypatch.setattr(quarantine_mod, "find_by_token", lambda _store, _hash: entry)
    assert store.claim(entry.id, "web:bert") is not None  # the admin got there first
    with gateway.client() as c, pytest.raises(smtplib.SMTPDataError) as err:
        c.sendmail("someone@school.example", [address], reply(address, "Het mag."))
    assert err.value.smtp_code == 550 and b"already released" in err.value.smtp_error
    assert to_parent(sink[0]) == []
