"""Internationalised envelope addresses (RFC 6531): allowed with SMTPUTF8, relayed exactly as
given when the next hop speaks SMTPUTF8, refused at our front (553 5.6.7) when it does not,
instead of being sent where they would be mangled or bounced later."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from tests.conftest import make_message
from tests.e2e.conftest import GatewayThread, SinkHandler, free_port

RAW = make_message(frm="someone@school.example", to="jurgen@example.org")


@pytest.fixture
def ascii_sink() -> Iterator[tuple[SinkHandler, int]]:
    """A next hop that does not advertise SMTPUTF8 (aiosmtpd's Controller does by default)."""
    handler = SinkHandler()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port, enable_SMTPUTF8=False)
    controller.start()
    yield handler, port
    controller.stop()


def transaction(c: Any, mail: str, rcpt: str) -> tuple[int, int]:
    c.ehlo()
    c.send(f"MAIL FROM:<{mail}>\r\n".encode())
    mail_code = c.getreply()[0]
    c.send(f"RCPT TO:<{rcpt}>\r\n".encode())
    rcpt_code = c.getreply()[0]
    c.rset()
    return mail_code, rcpt_code


def test_non_ascii_recipient_without_smtputf8_refused(gateway: GatewayThread,
                                                      sink: Any) -> None:
    with gateway.client() as c:
        assert transaction(c, "someone@school.example", "jürgen@example.org") == (250, 553)
        c.send("MAIL FROM:<sömeone@school.example>\r\n".encode())
        code, msg = c.getreply()
        assert code == 553 and msg.startswith(b"5.6.7")
    assert sink[0].messages == []


def test_non_ascii_recipient_refused_when_next_hop_lacks_smtputf8(
        make_gateway: Any, ascii_sink: tuple[SinkHandler, int]) -> None:
    gw = make_gateway(f"smtp://127.0.0.1:{ascii_sink[1]}")
    with gw.client() as c:
        c.ehlo()
        c.send("MAIL FROM:<sömeone@school.example> SMTPUTF8\r\n".encode())
        code, msg = c.getreply()
        assert code == 553 and msg.startswith(b"5.6.7 Next hop")
        c.send(b"MAIL FROM:<someone@school.example> SMTPUTF8\r\n")
        assert c.getreply()[0] == 250
        c.send("RCPT TO:<jürgen@example.org>\r\n".encode())
        code, msg = c.getreply()
        assert code == 553 and msg.startswith(b"5.6.7 Next hop")
        c.send(b"RCPT TO:<jurgen@example.org>\r\n")  # the transaction goes on
        assert c.getreply()[0] == 250
        assert c.data(RAW)[0] == 250
    assert [m.rcpt_tos for m in ascii_sink[0].messages] == [["jurgen@example.org"]]


def test_non_ascii_recipient_relayed_exactly_to_smtputf8_next_hop(gateway: GatewayThread,
                                                                 sink: Any) -> None:
    with gateway.client() as c:
        c.ehlo()
        assert "smtputf8" in c.esmtp_features
        c.send(b"MAIL FROM:<someone@school.example> SMTPUTF8\r\n")
        assert c.getreply()[0] == 250
        c.send("RCPT TO:<jürgen@exämple.org>\r\n".encode())
        assert c.getreply()[0] == 250
        assert c.data(RAW)[0] == 250
    assert sink[0].messages[0].rcpt_tos == ["jürgen@exämple.org"]
