"""XFORWARD: behind Postfix's smtpd_proxy_filter the real client is told, by trusted peers only."""

from __future__ import annotations

import smtplib
from pathlib import Path
from typing import Any

import pytest

from milter.audit.sqlite import SQLiteStore
from tests.conftest import make_message


def test_xforward_from_trusted_peer_sets_client_and_login(sink: Any, make_gateway: Any,
                                                          tmp_path: Path) -> None:
    gw = make_gateway(f"smtp://127.0.0.1:{sink[1]}",
                      gateway_extra='xforward_from = ["127.0.0.0/8"]',
                      internal='["10.0.0.0/8"]')
    with gw.client() as c:
        c.ehlo("postfix.school.example")
        assert c.has_extn("xforward")
        assert c.docmd("XFORWARD", "NAME=pc1.example ADDR=198.51.100.20 PROTO=ESMTP "
                                   "HELO=pc1.example")[0] == 250
        assert c.docmd("XFORWARD", "LOGIN=teacher SOURCE=REMOTE")[0] == 250
        with pytest.raises(smtplib.SMTPDataError) as err:
            c.sendmail("director@school.example", ["ouder@example.org"],
                       make_message(frm="director@school.example"))
    assert err.value.smtp_code == 550 and b"[B1.auth-identity]" in err.value.smtp_error
    (rec,) = list(SQLiteStore(tmp_path / "audit.sqlite3", "test").records())
    assert rec.client == "198.51.100.20" and rec.auth_user == "teacher"
    assert rec.direction == "outbound"  # authenticated, though not from an internal network


def test_xforward_refused_from_untrusted_peer(sink: Any, make_gateway: Any) -> None:
    gw = make_gateway(f"smtp://127.0.0.1:{sink[1]}")
    with gw.client() as c:
        c.ehlo()
        assert not c.has_extn("xforward")
        assert c.docmd("XFORWARD", "ADDR=198.51.100.20")[0] == 550


def test_xforward_inside_transaction_refused(sink: Any, make_gateway: Any) -> None:
    gw = make_gateway(f"smtp://127.0.0.1:{sink[1]}",
                      gateway_extra='xforward_from = ["127.0.0.1/32"]')
    with gw.client() as c:
        c.ehlo()
        c.mail("someone@school.example")
        assert c.docmd("XFORWARD", "ADDR=198.51.100.20")[0] == 503
        assert c.docmd("XFORWARD", "BOGUS=1")[0] in (501, 503)
