"""SPF, DKIM and DMARC against a real DNS server on loopback; B1.spoofed-school-domain."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dkim
import pytest

from milter.core.context import Envelope
from milter.daemon import make_authenticator
from milter.dkimsign import Signer, keygen, read_key
from milter.dnsauth import (
    DNSTempError,
    Resolver,
    authenticate,
    claimed_authserv_id,
    dkim_verify,
    dmarc_check,
    spf_check,
    strip_our_results,
)
from milter.runtime import Runtime
from tests.conftest import make_message, write_config
from tests.dnsserver import DNSServer, running


@pytest.fixture
def dnsd() -> Iterator[DNSServer]:
    with running() as server:
        server.txt("school.example", "v=spf1 ip4:192.0.2.0/24 include:_spf.mailer.example -all")
        server.txt("_spf.mailer.example", "v=spf1 ip4:198.51.100.10 ~all")
        server.txt("soft.example", "v=spf1 ~all")
        server.txt("_dmarc.school.example", "v=DMARC1; p=reject; adkim=r; aspf=r")
        server.add("school.example", "A", "192.0.2.25")
        server.txt("amx.example", "v=spf1 a mx/28 -all")
        server.add("amx.example", "A", "198.51.100.1")
        server.add("amx.example", "MX", "10 mail.amx.example.")
        server.add("mail.amx.example", "A", "198.51.100.33")
        server.txt("redir.example", "v=spf1 redirect=school.example")
        server.txt("loop.example", "v=spf1 include:loop.example -all")
        server.servfail.add("broken.example")
        server.silent.add("slow.example")
        server.silent.add("_dmarc.slow.example")
        yield server


@pytest.fixture
def resolver(dnsd: DNSServer) -> Resolver:
    return Resolver(["127.0.0.1"], dnsd.port, timeout=0.5)


@pytest.mark.parametrize("ip,sender,expected", [
    ("192.0.2.7", "a@school.example", "pass"),
    ("198.51.100.10", "a@school.example", "pass"),       # via include
    ("203.0.113.9", "a@school.example", "fail"),
    ("203.0.113.9", "a@soft.example", "softfail"),
    ("203.0.113.9", "a@nospf.example", "none"),
    ("203.0.113.9", "a@slow.example", "temperror"),
    ("203.0.113.9", "a@broken.example", "temperror"),    # SERVFAIL
    ("198.51.100.1", "a@amx.example", "pass"),           # a
    ("198.51.100.40", "a@amx.example", "pass"),          # mx/28
    ("198.51.100.60", "a@amx.example", "fail"),
    ("192.0.2.7", "a@redir.example", "pass"),            # redirect=
    ("192.0.2.7", "a@loop.example", "permerror"),        # include loop
])
def test_spf(resolver: Resolver, ip: str, sender: str, expected: str) -> None:
    assert spf_check(resolver, ip, sender, "helo.example") == expected


def signed(tmp_path: Path, dnsd: DNSServer, domain: str = "school.example",
           kind: str = "rsa", raw: bytes | None = None, length: bool = False) -> bytes:
    path, record = keygen(domain, "sel1", tmp_path, kind)
    dnsd.txt(f"sel1._domainkey.{domain}", record)
    key = read_key(path, domain, "sel1")
    message = raw or make_message(frm=f"someone@{domain}", to="ouder@example.org")
    sig = dkim.sign(message, b"sel1", domain.encode(), key.private, length=length,
                    signature_algorithm=key.algorithm, include_headers=[b"from", b"subject"])
    return bytes(sig) + message


@pytest.mark.parametrize("kind", ["rsa", "ed25519"])
def test_dkim_pass_and_tamper(tmp_path: Path, dnsd: DNSServer, resolver: Resolver,
                              kind: str) -> None:
    msg = signed(tmp_path, dnsd, kind=kind)
    (res,) = dkim_verify(resolver, msg)
    assert (res.result, res.domain, res.selector) == ("pass", "school.example", "sel1")
    (bad,) = dkim_verify(resolver, msg.replace(b"Goedemorgen", b"Goedenavond"))
    assert bad.result == "fail"


def test_dkim_dns_timeout_is_temperror(tmp_path: Path, dnsd: DNSServer,
                                       resolver: Resolver) -> None:
    msg = signed(tmp_path, dnsd)
    dnsd.silent.add("sel1._domainkey.school.example")
    assert dkim_verify(resolver, msg)[0].result == "temperror"


def test_dkim_l_tag_with_appended_text_not_aligned_pass(tmp_path: Path, dnsd: DNSServer,
                                                        resolver: Resolver) -> None:
    msg = signed(tmp_path, dnsd, length=True) + b"Klik hier: http://phish.example/\r\n"
    (res,) = dkim_verify(resolver, msg)
    assert res.result == "pass" and res.body_length is not None and not res.covers_body
    result = authenticate(resolver, msg, "203.0.113.9", "evil.example", "x@evil.example",
                          ["school.example"])
    assert result.dmarc[0].result == "fail"
    assert "unsigned text appended" in result.header_value("relay.school.example")


def runtime_with_dns(tmp_path: Path, dnsd: DNSServer) -> Runtime:
    cfg = write_config(tmp_path, dns=f'nameservers = ["127.0.0.1"]\nport = {dnsd.port}\n'
                                     'timeout = 0.5')
    return Runtime.load(str(cfg))


def inbound(rt: Runtime, raw: bytes, ip: str = "203.0.113.9",
            mail_from: str = "someone@school.example") -> Any:
    env = Envelope(mail_from, ("teacher@school.example",), ip, helo="mx.example", txid="T")
    return rt.evaluate(env, raw, authenticator=make_authenticator(rt))


def test_spoofed_school_domain_rejected(tmp_path: Path, dnsd: DNSServer) -> None:
    rt = runtime_with_dns(tmp_path, dnsd)
    ev = inbound(rt, make_message(frm="director@school.example", to="teacher@school.example"))
    v = ev.verdict.to_json()
    assert v["action"] == "reject" and v["rules"][0]["id"] == "B1.spoofed-school-domain"
    assert v["smtp_reply"].startswith("550 5.7.1 [B1.spoofed-school-domain]")


def test_school_mail_without_dmarc_record_judged_on_alignment(tmp_path: Path,
                                                              dnsd: DNSServer) -> None:
    del dnsd.zone[("_dmarc.school.example", "TXT")]
    rt = runtime_with_dns(tmp_path, dnsd)
    ok = inbound(rt, make_message(frm="director@school.example"), ip="192.0.2.7")
    assert ok.verdict.action == "accept" and "dmarc=none" in ok.summary["authentication"]
    spoof = inbound(rt, make_message(frm="director@school.example"))
    assert spoof.verdict.action == "reject"


def test_school_mail_via_authorised_server_passes(tmp_path: Path, dnsd: DNSServer) -> None:
    rt = runtime_with_dns(tmp_path, dnsd)
    ev = inbound(rt, make_message(frm="director@school.example"), ip="192.0.2.7")
    assert ev.verdict.action == "accept" and ev.auth.dmarc[0].result == "pass"
    assert "dmarc=pass (p=reject) header.from=school.example" in ev.summary["authentication"]


def test_dkim_aligned_pass_from_elsewhere(tmp_path: Path, dnsd: DNSServer) -> None:
    rt = runtime_with_dns(tmp_path, dnsd)
    msg = signed(tmp_path, dnsd)
    ev = inbound(rt, msg, mail_from="bounce@newsletter.example")
    assert ev.verdict.action == "accept" and ev.auth.dmarc[0].aligned_by == "dkim"


def test_dkim_replay_to_new_recipient_still_judged_on_alignment(tmp_path: Path,
                                                                dnsd: DNSServer) -> None:
    """HOSTILE 31: a DKIM-valid message replayed elsewhere: d=/s= logged, verdict unchanged."""
    rt = runtime_with_dns(tmp_path, dnsd)
    msg = signed(tmp_path, dnsd)
    ev = inbound(rt, msg, ip="203.0.113.66", mail_from="x@replay.example")
    assert ev.verdict.action == "accept"
    assert "header.d=school.example header.s=sel1" in ev.summary["authentication"]


def test_dns_timeout_tempfails_never_passes(tmp_path: Path, dnsd: DNSServer) -> None:
    rt = runtime_with_dns(tmp_path, dnsd)
    dnsd.silent.update({"school.example", "_dmarc.school.example"})
    ev = inbound(rt, make_message(frm="director@school.example"))
    assert ev.verdict.action == "tempfail"
    assert ev.verdict.smtp_reply.startswith("451 4.4.3 [B1.spoofed-school-domain]")


def test_two_authors_strictest_result(tmp_path: Path, dnsd: DNSServer) -> None:
    rt = runtime_with_dns(tmp_path, dnsd)
    raw = make_message(frm="a@example.org, director@school.example")
    ev = inbound(rt, raw, ip="192.0.2.7", mail_from="a@example.org")
    assert ev.verdict.action == "reject"


def test_external_sender_not_judged_by_b1(tmp_path: Path, dnsd: DNSServer) -> None:
    rt = runtime_with_dns(tmp_path, dnsd)
    ev = inbound(rt, make_message(frm="parent@example.org"), mail_from="parent@example.org")
    assert ev.verdict.action == "accept"


def test_forged_results_claiming_our_id_are_removed() -> None:
    raw = (b"Authentication-Results: relay.school.example; dmarc=pass\r\n"
           b"Authentication-Results: other.example; spf=pass\r\n"
           b"From: a@b.example\r\n\r\nbody\r\n")
    out = strip_our_results(raw, "relay.school.example")
    assert b"relay.school.example; dmarc=pass" not in out
    assert b"other.example; spf=pass" in out and out.endswith(b"\r\n\r\nbody\r\n")


@pytest.mark.parametrize("forged", [
    b"authentication-results: relay.school.example; dmarc=pass\r\n",
    b"AuThEnTiCaTiOn-ReSuLtS: RELAY.school.example; dmarc=pass\r\n",
    b"Authentication-Results:\r\n relay.school.example;\r\n\tdmarc=pass\r\n",  # folded
    b"Authentication-Results: (ours) relay.school.example 1; dmarc=pass\r\n",   # comment
    b'Authentication-Results: "relay.school.example"; dmarc=pass\r\n',          # quoted
    b"Authentication-Results : relay.school.example; dmarc=pass\r\n",           # obs WSP
])
def test_forged_results_in_any_spelling_are_removed(forged: bytes) -> None:
    raw = (b"Received: from x\r\n" + forged +
           b"Authentication-Results: other.example (relay.school.example); spf=pass\r\n"
           b"From: a@b.example\r\n\r\nAuthentication-Results: relay.school.example\r\n")
    out = strip_our_results(raw, "relay.school.example")
    assert b"dmarc=pass" not in out
    assert out == raw.replace(forged, b"")  # everything else untouched, the body too


def test_authserv_id_parsing() -> None:
    assert claimed_authserv_id(" (a (nested \\) one) b) relay.x 1; spf=pass") == "relay.x"
    assert claimed_authserv_id('"relay\\.x";') == "relay.x"
    assert claimed_authserv_id("(never closed relay.x;") == ""


def test_dmarc_without_record_is_none_but_alignment_counts(resolver: Resolver) -> None:
    """No DMARC record: the header says dmarc=none (RFC 7489), B1 still judges alignment."""
    aligned = dmarc_check(resolver, "norecord.example", "pass", "a@norecord.example", "h", [])
    assert (aligned.result, aligned.aligned_by, aligned.policy) == ("none", "spf", "")
    unaligned = dmarc_check(resolver, "norecord.example", "pass", "a@other.example", "h", [])
    assert (unaligned.result, unaligned.aligned_by) == ("none", "")


def test_resolver_caches_and_stays_bounded(dnsd: DNSServer) -> None:
    r = Resolver(["127.0.0.1"], dnsd.port, timeout=0.5, cache_entries=3)
    assert r.txt("soft.example") == ["v=spf1 ~all"]
    assert r.txt("soft.example") == ["v=spf1 ~all"]
    assert dnsd.queries.count(("soft.example", "TXT")) == 1
    for i in range(10):
        r.txt(f"n{i}.example")
    assert len(r._cache) == 3
    dnsd.silent.add("soft.example")  # failures are never cached, answers may be evicted
    with pytest.raises(DNSTempError, match="soft.example"):
        r.txt("soft.example")


@pytest.mark.parametrize("kind", ["rsa", "ed25519"])
def test_outbound_signature_verifies_with_published_record(tmp_path: Path, dnsd: DNSServer,
                                                           resolver: Resolver,
                                                           kind: str) -> None:
    path, record = keygen("school.example", "out1", tmp_path, kind)
    dnsd.txt("out1._domainkey.school.example", record)
    signer = Signer((read_key(path, "school.example", "out1"),))
    body = b"X-SKOT-Policy: A5.media-external; article=A5\r\n" + make_message()
    signed_msg = signer.sign(body, "someone@school.example")
    (res,) = dkim_verify(resolver, signed_msg)
    assert res.result == "pass" and res.domain == "school.example"
    assert signer.sign(body, "someone@other.example") == body  # not our domain: unsigned


def test_keygen_command_prints_record_that_verifies(tmp_path: Path, dnsd: DNSServer,
                                                    resolver: Resolver,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    import re

    from milter.cli import main

    assert main(["dkim", "keygen", "School.Example", "k2", "--type", "ed25519",
                 "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "k2._domainkey.school.example. IN TXT" in out
    record = "".join(re.findall(r'"([^"]*)"', out))
    assert record.startswith("v=DKIM1; k=ed25519; p=")
    key_file = tmp_path / "school.example.k2.ed25519.key"
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"
    dnsd.txt("k2._domainkey.school.example", record)
    signer = Signer((read_key(key_file, "school.example", "k2"),))
    (res,) = dkim_verify(resolver, signer.sign(make_message(), "someone@school.example"))
    assert res.result == "pass"
