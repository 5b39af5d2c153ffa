"""Sender authentication and DKIM signing through the running gateway."""

from __future__ import annotations

import re
import smtplib
from collections.abc import Iterator
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import dkim
import pytest

from milter.dkimsign import keygen
from milter.dnsauth import Resolver, dkim_verify
from tests.conftest import make_message
from tests.dnsserver import DNSServer, running
from tests.e2e.conftest import GatewayThread


@pytest.fixture
def dnsd() -> Iterator[DNSServer]:
    with running() as server:
        server.txt("school.example", "v=spf1 ip4:192.0.2.0/24 -all")
        server.txt("_dmarc.school.example", "v=DMARC1; p=reject")
        yield server


@pytest.fixture
def gw(tmp_path: Path, sink: Any, make_gateway: Any, dnsd: DNSServer) -> GatewayThread:
    _, record = keygen("school.example", "gw1", tmp_path / "keys", "rsa")
    dnsd.txt("gw1._domainkey.school.example", record)
    gateway: GatewayThread = make_gateway(
        f"smtp://127.0.0.1:{sink[1]}",
        dns=f'nameservers = ["127.0.0.1"]\nport = {dnsd.port}\ntimeout = 0.5',
        extra='[dkim]\nkeys = [{domain = "school.example", selector = "gw1", '
              'key = "keys/school.example.gw1.rsa.key"}]\n')
    return gateway


def make_inbound(gateway: GatewayThread) -> None:
    """Loopback is the only address here: treat it as an outside MTA for these tests."""
    import ipaddress
    from dataclasses import replace

    async def swap() -> None:
        handler = gateway.running.handler
        rt = handler.gateway.runtime
        gateway_settings = replace(rt.config.gateway, internal_networks=(
            ipaddress.ip_network("10.255.0.0/16"),))
        handler.gateway.runtime = replace(rt, config=replace(rt.config,
                                                             gateway=gateway_settings))

    gateway.call(swap())


def test_outbound_mail_is_dkim_signed_and_verifies(gw: GatewayThread, sink: Any,
                                                   dnsd: DNSServer) -> None:
    with gw.client() as c:
        c.sendmail("someone@school.example", ["ouder@example.org"], make_message())
    got = sink[0].messages[0].content
    assert got.startswith(b"DKIM-Signature:")
    (res,) = dkim_verify(Resolver(["127.0.0.1"], dnsd.port, 0.5), got)
    assert res.result == "pass" and res.selector == "gw1"


def test_tagged_outbound_forward_still_verifies(gw: GatewayThread, sink: Any,
                                                dnsd: DNSServer) -> None:
    """The gateway's X-SKOT-Policy tag is added before signing and is covered by the
    signature: the receiver sees the tag and a valid DKIM signature."""
    body = ("Zie hieronder.\r\n\r\n---------- Forwarded message ---------\r\n"
            "From: Dana Director <director@school.example>\r\nDate: Mon, 3 Mar 2025\r\n"
            "Subject: rooster\r\n\r\nInterne notities.\r\n")
    with gw.client() as c:
        c.sendmail("someone@school.example", ["ouder@example.org"],
                   make_message(to="ouder@example.org", subject="Fwd: rooster", body=body))
    got = sink[0].messages[0].content
    head = got.split(b"\r\n\r\n", 1)[0]
    assert b"X-SKOT-Policy: FWD.manual-external; article=A1; action=tag" in head
    (res,) = dkim_verify(Resolver(["127.0.0.1"], dnsd.port, 0.5), got)
    assert res.result == "pass" and res.domain == "school.example"
    signature = BytesParser().parsebytes(got, headersonly=True)["DKIM-Signature"]
    tags = dkim.util.parse_tag_value(re.sub(r"\s+", "", signature).encode())
    assert b"x-skot-policy" in tags[b"h"].lower().split(b":")
    # Changing the tag breaks the signature: it really is covered.
    (bad,) = dkim_verify(Resolver(["127.0.0.1"], dnsd.port, 0.5),
                         got.replace(b"action=tag", b"action=none"))
    assert bad.result == "fail"


def test_inbound_spoof_of_school_domain_refused(gw: GatewayThread, sink: Any) -> None:
    make_inbound(gw)
    with gw.client() as c, pytest.raises(smtplib.SMTPDataError) as err:
        c.sendmail("director@school.example", ["teacher@school.example"],
                   make_message(frm="director@school.example", to="teacher@school.example"))
    assert err.value.smtp_code == 550
    assert b"[B1.spoofed-school-domain]" in err.value.smtp_error
    assert sink[0].messages == []


def test_inbound_gets_our_authentication_results(gw: GatewayThread, sink: Any) -> None:
    make_inbound(gw)
    forged = make_message(frm="parent@example.org", to="teacher@school.example",
                          extra_headers="Authentication-Results: relay.school.example; "
                                        "dmarc=pass header.from=school.example\r\n")
    with gw.client() as c:
        c.sendmail("parent@example.org", ["teacher@school.example"], forged)
    got = sink[0].messages[0].content
    head = got.split(b"\r\n\r\n", 1)[0]
    assert head.count(b"Authentication-Results: relay.school.example") == 1
    assert b"Authentication-Results: relay.school.example; spf=none" in head
    assert b"dmarc=pass header.from=school.example" not in head


def test_inbound_dns_timeout_gives_451(gw: GatewayThread, sink: Any, dnsd: DNSServer) -> None:
    make_inbound(gw)
    dnsd.silent.update({"school.example", "_dmarc.school.example"})
    with gw.client() as c, pytest.raises(smtplib.SMTPDataError) as err:
        c.sendmail("director@school.example", ["teacher@school.example"],
                   make_message(frm="director@school.example"))
    assert err.value.smtp_code == 451 and err.value.smtp_error.startswith(b"4.4.3")


