"""The before-queue proxy over real sockets: smtplib client, gateway, aiosmtpd sink."""

from __future__ import annotations

import smtplib
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from milter.audit.sqlite import SQLiteStore
from milter.cli import main
from tests.conftest import make_message
from tests.e2e.conftest import GatewayThread, SinkHandler, free_port

CLEAN = make_message(frm="Sam <someone@school.example>", to="ouder@example.org",
                     body="Beste ouder,\r\n\r\nTot morgen.\r\n")


def events(tmp_path: Path) -> list[tuple[str, str, str]]:
    store = SQLiteStore(tmp_path / "audit.sqlite3", "test")
    out = [(r.event, r.action, r.txid) for r in store.records()]
    store.close()
    return out


def test_clean_mail_delivered_byte_for_byte(gateway: GatewayThread, sink: Any,
                                            tmp_path: Path) -> None:
    handler: SinkHandler = sink[0]
    with gateway.client() as c:
        c.ehlo("client.school.example")
        assert "size" in c.esmtp_features
        code, msg = c.mail("someone@school.example")
        assert code == 250
        assert c.rcpt("ouder@example.org")[0] == 250
        code, msg = c.data(CLEAN)
    assert code == 250 and b"ref=" in msg
    assert len(handler.messages) == 1
    got = handler.messages[0]
    assert got.content == CLEAN  # untouched: no rule fired, so not even a header was added
    assert got.mail_from == "someone@school.example" and got.rcpt_tos == ["ouder@example.org"]
    ev = events(tmp_path)
    assert [e[0] for e in ev] == ["intent", "delivered"]
    assert msg.decode().endswith(ev[0][2])  # the ref in the reply is the audit txid


def test_b1_violation_refused_and_not_delivered(gateway: GatewayThread, sink: Any,
                                                tmp_path: Path) -> None:
    raw = make_message(frm="me@gmail.example", to="ouder@example.org")
    with gateway.client() as c, pytest.raises(smtplib.SMTPDataError) as err:
        c.sendmail("me@gmail.example", ["ouder@example.org"], raw)
    assert err.value.smtp_code == 550
    text = err.value.smtp_error.decode()
    assert text.startswith("5.7.1 [B1.sender-domain] B1:") and "ref=" in text
    assert sink[0].messages == []
    assert [(e[0], e[1]) for e in events(tmp_path)] == [("rejected", "reject")]
    # The session goes on: a clean message on the same connection is delivered.


def test_session_continues_after_refusal(gateway: GatewayThread, sink: Any) -> None:
    with gateway.client() as c:
        with pytest.raises(smtplib.SMTPDataError):
            c.sendmail("me@gmail.example", ["ouder@example.org"],
                       make_message(frm="me@gmail.example"))
        c.sendmail("someone@school.example", ["ouder@example.org"], CLEAN)
    assert len(sink[0].messages) == 1


def test_recipient_refused_by_next_hop_is_refused_at_rcpt(gateway: GatewayThread,
                                                          sink: Any) -> None:
    sink[0].rcpt_replies["nobody@example.org"] = "550 5.1.1 No such user here"
    with gateway.client() as c:
        c.ehlo()
        c.mail("someone@school.example")
        code, msg = c.rcpt("nobody@example.org")
        assert (code, msg) == (550, b"5.1.1 No such user here")
        assert c.rcpt("ouder@example.org")[0] == 250
        assert c.data(CLEAN)[0] == 250
    assert sink[0].messages[0].rcpt_tos == ["ouder@example.org"]


def test_next_hop_down_gives_4xx(make_gateway: Any, tmp_path: Path) -> None:
    gw = make_gateway(f"smtp://127.0.0.1:{free_port()}")
    with gw.client() as c:
        c.ehlo()
        code, msg = c.mail("someone@school.example")
    assert code == 451 and msg.startswith(b"4.4.1")
    # the audit shows the attempt (HOSTILE-INPUTS 33)
    store = SQLiteStore(tmp_path / "audit.sqlite3", "test")
    (rec,) = list(store.records())
    store.close()
    assert (rec.event, rec.sender, rec.evidence["stage"]) == ("tempfailed",
                                                              "someone@school.example", "MAIL")
    assert rec.reply == f"451 {msg.decode()}" and rec.txid in rec.reply


def test_next_hop_451_at_end_of_data_gives_4xx(gateway: GatewayThread, sink: Any,
                                               tmp_path: Path) -> None:
    sink[0].data_reply = "451 4.3.0 Sink is busy"
    with gateway.client() as c, pytest.raises(smtplib.SMTPDataError) as err:
        c.sendmail("someone@school.example", ["ouder@example.org"], CLEAN)
    assert err.value.smtp_code == 451
    assert [e[0] for e in events(tmp_path)] == ["intent", "tempfailed"]


def test_next_hop_5xx_at_end_of_data_passed_on(gateway: GatewayThread, sink: Any,
                                               tmp_path: Path) -> None:
    sink[0].data_reply = "554 5.6.0 Content refused"
    with gateway.client() as c, pytest.raises(smtplib.SMTPDataError) as err:
        c.sendmail("someone@school.example", ["ouder@example.org"], CLEAN)
    assert err.value.smtp_code == 554
    assert [e[0] for e in events(tmp_path)] == ["intent", "rejected"]


def test_next_hop_timeout_gives_4xx(make_gateway: Any, tmp_path: Path) -> None:
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(5)  # accepts TCP but never greets
    try:
        gw = make_gateway(f"smtp://127.0.0.1:{silent.getsockname()[1]}",
                          gateway_extra="next_hop_timeout = 0.5")
        start = time.monotonic()
        with gw.client() as c:
            c.ehlo()
            code, _ = c.mail("someone@school.example")
        assert code == 451 and time.monotonic() - start < 8
    finally:
        silent.close()


def test_maildir_next_hop(make_gateway: Any, tmp_path: Path) -> None:
    gw = make_gateway("maildir:maildir")
    with gw.client() as c:
        c.sendmail("someone@school.example", ["ouder@example.org"], CLEAN)
        with pytest.raises(smtplib.SMTPDataError):
            c.sendmail("me@gmail.example", ["ouder@example.org"],
                       make_message(frm="me@gmail.example"))
    files = list((tmp_path / "maildir" / "new").iterdir())
    assert len(files) == 1 and files[0].read_bytes() == CLEAN


def test_relay_denied_for_external_client(make_gateway: Any, sink: Any) -> None:
    # 127.0.0.1 is not internal in this config: the client is an outside MTA.
    gw = make_gateway(f"smtp://127.0.0.1:{sink[1]}")
    gw.call(_set_internal(gw, []))
    with gw.client() as c:
        c.ehlo()
        assert c.mail("parent@example.org")[0] == 250
        code, msg = c.rcpt("friend@elsewhere.example")
        assert code == 554 and b"5.7.1" in msg
        assert c.rcpt("someone@school.example")[0] == 250
        assert c.data(make_message(frm="parent@example.org", to="someone@school.example"))[0] \
            == 250
    assert sink[0].messages[0].rcpt_tos == ["someone@school.example"]


async def _set_internal(gw: GatewayThread, networks: list[str]) -> None:
    """Swap the runtime for one whose internal networks exclude loopback."""
    import ipaddress
    from dataclasses import replace

    handler = gw.running.handler
    rt = handler.gateway.runtime
    gateway_settings = replace(rt.config.gateway, internal_networks=tuple(
        ipaddress.ip_network(n) for n in networks))
    handler.gateway.runtime = replace(rt, config=replace(rt.config, gateway=gateway_settings))


def test_audit_intent_failure_gives_451_and_delivers_nothing(gateway: GatewayThread, sink: Any,
                                                            tmp_path: Path) -> None:
    db = tmp_path / "audit.sqlite3"
    # Make the store refuse writes: a trigger that aborts every insert.
    con = sqlite3.connect(db)
    con.execute("CREATE TRIGGER deny BEFORE INSERT ON records "
                "BEGIN SELECT RAISE(ABORT, 'disk full'); END")
    con.commit()
    con.close()
    with gateway.client() as c, pytest.raises(smtplib.SMTPDataError) as err:
        c.sendmail("someone@school.example", ["ouder@example.org"], CLEAN)
    assert err.value.smtp_code == 451 and err.value.smtp_error.startswith(b"4.3.0")
    # the message went downstream while the intent was being written, but never its final
    # dot: the next hop delivered nothing, and that half-sent session is not used again
    assert sink[0].messages == []
    con = sqlite3.connect(db)
    con.execute("DROP TRIGGER deny")
    con.commit()
    con.close()
    with gateway.client() as c:
        c.sendmail("someone@school.example", ["ouder@example.org"], CLEAN)
    assert len(sink[0].messages) == 1 and sink[0].messages[0].content.endswith(
        CLEAN.split(b"\r\n\r\n", 1)[1])


def deny_writes(db: Path, on: bool) -> None:
    """Make the audit store refuse (or take again) every insert: a trigger that aborts."""
    con = sqlite3.connect(db, timeout=30)
    con.execute("CREATE TRIGGER deny BEFORE INSERT ON records BEGIN "
                "SELECT RAISE(ABORT, 'disk full'); END" if on else "DROP TRIGGER deny")
    con.commit()
    con.close()


class RefusingSink(SinkHandler):
    """A next hop that takes the message and, before its 250, makes the audit store refuse
    writes: the intent is on record, the outcome write fails."""

    db: Path

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        deny_writes(self.db, True)
        return await super().handle_DATA(server, session, envelope)


def test_outcome_refused_after_relay_is_250_and_recorded_once_store_is_back(
        make_gateway: Any, tmp_path: Path) -> None:
    handler = RefusingSink()
    handler.db = tmp_path / "audit.sqlite3"
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        gw = make_gateway(f"smtp://127.0.0.1:{port}")
        with gw.client() as c:
            # The next hop has it: a 4xx now would only make the client send it twice.
            c.sendmail("someone@school.example", ["ouder@example.org"], CLEAN)
            # While the store refuses, a policy rejection is not given: 451, and it stays
            # unrecorded (the client was never told 550).
            with pytest.raises(smtplib.SMTPDataError) as err:
                c.sendmail("me@gmail.example", ["ouder@example.org"],
                           make_message(frm="me@gmail.example", to="ouder@example.org"))
            assert err.value.smtp_code == 451
        assert len(handler.messages) == 1
        deny_writes(handler.db, False)
        deadline = time.monotonic() + 20
        while [e[0] for e in events(tmp_path)] != ["intent", "delivered"]:
            assert time.monotonic() < deadline, events(tmp_path)
            time.sleep(0.05)
        store = SQLiteStore(handler.db, "test")
        delivered = [r for r in store.records() if r.event == "delivered"][0]
        assert delivered.reply.startswith("250 ") and "deferred_since" in delivered.evidence
        assert store.verify().ok and not store.verify().warnings
        store.close()
    finally:
        controller.stop()


def test_audit_verify_passes_then_fails_after_sqlite_edit(gateway: GatewayThread, sink: Any,
                                                          tmp_path: Path,
                                                          capsys: Any) -> None:
    with gateway.client() as c:
        for _ in range(3):
            c.sendmail("someone@school.example", ["ouder@example.org"], CLEAN)
    cfg = str(gateway.config)
    assert main(["audit", "verify", "--config", cfg]) == 0
    con = sqlite3.connect(tmp_path / "audit.sqlite3")
    con.execute("DROP TRIGGER records_no_update")
    con.execute("UPDATE records SET sender='other@school.example' WHERE seq=3")
    con.commit()
    con.close()
    capsys.readouterr()
    assert main(["audit", "verify", "--config", cfg]) == 1
    assert "seq=3" in capsys.readouterr().out


@pytest.mark.parametrize("raw", [
    b"To: ouder@example.org\r\nSubject: no from\r\n\r\nbody\r\n",
    b"From: someone@school.example\r\nSubject: caf\xe9 8-bit\r\n\r\nbody\r\n",
    b"From: someone@school.example\r\nSubject: nul\r\n\r\nbo\x00dy\r\n",
    b"From: someone@school.example\r\nSubject: long\r\n\r\n" + b"x" * 990 + b"\r\n",
    # over RFC 5322's 998, within aiosmtpd's 1001 octets with CRLF: accepted, relayed whole
    b"From: someone@school.example\r\nSubject: longer\r\n\r\n" + b"x" * 999 + b"\r\n",
    b"From: someone@school.example\r\nSubject: headers only\r\n",
    b"From: someone@school.example\r\nContent-Type: multipart/mixed; boundary=q\r\n\r\n"
    b"--q\r\nContent-Type: text/plain\r\n\r\nunterminated",
])
def test_bad_input_defined_reply_and_session_goes_on(gateway: GatewayThread, sink: Any,
                                                      raw: bytes) -> None:
    with gateway.client() as c:
        c.ehlo()
        c.mail("someone@school.example")
        c.rcpt("ouder@example.org")
        code, _ = c.data(raw)
        assert code in (250, 550, 554)
        c.sendmail("someone@school.example", ["ouder@example.org"], CLEAN)
    assert sink[0].messages[-1].content == CLEAN
    assert len(sink[0].messages) == (2 if code == 250 else 1)


def test_smuggling_bare_lf_dot_yields_one_message(gateway: GatewayThread, sink: Any) -> None:
    smuggled = (b"From: someone@school.example\r\nTo: ouder@example.org\r\nSubject: s\r\n\r\n"
                b"hello\n.\nMAIL FROM:<someone@school.example>\nRCPT TO:<victim@example.org>\n"
                b"DATA\nFrom: someone@school.example\n\nsmuggled\n.\n")
    with gateway.client() as c:
        c.ehlo()
        c.mail("someone@school.example")
        c.rcpt("ouder@example.org")
        c.send(b"DATA\r\n")
        assert c.getreply()[0] == 354
        c.send(smuggled + b"\r\n.\r\n")
        assert c.getreply()[0] == 250
    assert len(sink[0].messages) == 1
    got = sink[0].messages[0]
    assert got.rcpt_tos == ["ouder@example.org"]
    # bare LFs became CRLF; the lone dot line arrived as a dot-stuffed data line, unstuffed
    assert b"\r\n.\r\nMAIL FROM:" in got.content and b"\n.\n" not in got.content


def test_envelope_with_control_characters_refused(gateway: GatewayThread, sink: Any) -> None:
    with gateway.client() as c:
        c.ehlo()
        c.send(b"MAIL FROM:<a\rX-Inj: 1@school.example>\r\n")
        assert c.getreply()[0] == 501
        c.send(b"MAIL FROM:<someone@school.example>\r\n")
        assert c.getreply()[0] == 250
        c.send(b"RCPT TO:<ouder\x00@example.org>\r\n")
        assert c.getreply()[0] == 501
    assert sink[0].messages == [] and sink[0].sessions <= 1


def test_address_the_library_would_rewrite_is_refused(gateway: GatewayThread, sink: Any) -> None:
    with gateway.client() as c:
        c.ehlo()
        c.send(b"MAIL FROM:<some(comment)one@school.example>\r\n")
        code, _ = c.getreply()
        assert code in (501, 553)


def test_null_sender_accepted(gateway: GatewayThread, sink: Any) -> None:
    raw = make_message(frm="MAILER-DAEMON@school.example", to="ouder@example.org")
    with gateway.client() as c:
        c.sendmail("", ["ouder@example.org"], raw)
    assert sink[0].messages[0].mail_from == ""


def test_size_limit_enforced(make_gateway: Any, sink: Any) -> None:
    gw = make_gateway(f"smtp://127.0.0.1:{sink[1]}", gateway_extra="max_message_size = 2048")
    with gw.client() as c:
        c.ehlo()
        assert c.esmtp_features["size"] == "2048"
        code, _ = c.mail("someone@school.example", ["SIZE=999999"])
        assert code == 552
        big = make_message(body=("y" * 70 + "\r\n") * 100)
        # without a SIZE parameter the limit is enforced after draining DATA
        assert c.mail("someone@school.example")[0] == 250
        assert c.rcpt("ouder@example.org")[0] == 250
        code, msg = c.data(big)
        assert code == 552 and msg.startswith(b"5.3.4")
        # the session goes on
        c.sendmail("someone@school.example", ["ouder@example.org"], CLEAN)
    assert len(sink[0].messages) == 1


def test_data_line_over_1000_bytes_refused_never_half_relayed(gateway: GatewayThread,
                                                               sink: Any) -> None:
    raw = make_message(body="z" * 1200 + "\r\n")
    with gateway.client() as c:
        c.ehlo()
        c.mail("someone@school.example")
        c.rcpt("ouder@example.org")
        code, msg = c.data(raw)
        assert code == 500 and msg.startswith(b"5.5.2")
        c.sendmail("someone@school.example", ["ouder@example.org"], CLEAN)
    assert [m.content for m in sink[0].messages] == [CLEAN]


def test_command_line_over_512_bytes_gets_500(gateway: GatewayThread) -> None:
    with gateway.client() as c:
        c.ehlo()
        c.send(b"NOOP " + b"x" * 600 + b"\r\n")
        assert c.getreply()[0] == 500
        assert c.noop()[0] == 250


def test_tag_adds_policy_header_and_changes_nothing_else(make_gateway: Any, sink: Any,
                                                         tmp_path: Path) -> None:
    from tests.conftest import POLICY

    policy = tmp_path / "tag.toml"
    policy.write_text(POLICY.read_text().replace('action = "reject"', 'action = "tag"', 1))
    gw = make_gateway(f"smtp://127.0.0.1:{sink[1]}", policy=policy)
    raw = make_message(frm="me@gmail.example", to="ouder@example.org")
    with gw.client() as c:
        c.sendmail("me@gmail.example", ["ouder@example.org"], raw)
    got = sink[0].messages[0].content
    head, _, rest = got.partition(b"\r\n")
    assert head.startswith(b"X-SKOT-Policy: B1.sender-domain; article=B1; action=tag; ref=")
    assert rest == raw


def test_check_command_matches_gateway(tmp_path: Path, capsys: Any) -> None:
    import json

    from tests.conftest import write_config

    cfg = write_config(tmp_path)
    eml = tmp_path / "m.eml"
    eml.write_bytes(make_message(frm="me@gmail.example"))
    assert main(["check", "--config", str(cfg), "--json", str(eml)]) == 0
    verdict = json.loads(capsys.readouterr().out)
    assert verdict["action"] == "reject" and verdict["direction"] == "outbound"
    assert verdict["rules"][0]["id"] == "B1.sender-domain"
    assert verdict["smtp_reply"].startswith("550 5.7.1 [B1.sender-domain]")
    # no side effects: nothing audited, nothing delivered
    assert not (tmp_path / "audit.sqlite3").exists() and not (tmp_path / "maildir").exists()
    assert main(["check", "--config", str(cfg), "--client-ip", "198.51.100.1",
                 "--rcpt", "someone@school.example", str(eml)]) == 0
    out = capsys.readouterr().out
    assert "verdict:   accept (inbound)" in out


def test_next_hop_sessions_are_reused(gateway: GatewayThread, sink: Any) -> None:
    for _ in range(5):
        with gateway.client() as c:
            c.sendmail("someone@school.example", ["ouder@example.org"], CLEAN)
    assert len(sink[0].messages) == 5
    assert sink[0].greetings == 1  # one next-hop connection for all of them
    assert sink[0].resets == 0     # a completed transaction needs no RSET (RFC 5321 4.1.1.4)
    with gateway.client() as c, pytest.raises(smtplib.SMTPDataError):
        c.sendmail("me@gmail.example", ["ouder@example.org"], make_message(frm="me@gmail.example"))
    with gateway.client() as c:
        c.sendmail("someone@school.example", ["ouder@example.org"], CLEAN)
    assert len(sink[0].messages) == 6 and sink[0].greetings == 1
    assert sink[0].resets == 1     # the refused one left MAIL/RCPT open there: reset
