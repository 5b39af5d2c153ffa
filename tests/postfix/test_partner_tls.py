"""An OPP to an approved partner, end to end: the gateway tags it and hands it to a real
Postfix, which delivers it to the partner's "MX" (aiosmtpd on loopback) only over TLS, by the
TLS policy map `skot-milter partners tls-map` prints for the recipe
(deploy/postfix/main.cf.partners). Without STARTTLS at the partner the message stays in
Postfix's queue, never sent in clear.

The partner's mail goes to ``smtp:[127.0.0.1]:PORT`` (a transport entry: tests have no DNS
for the partner's MX). That is also the case the lookup key matters in: Postfix asks its TLS
policy for the next hop, ``[127.0.0.1]:PORT``, not for ``jeugdzorg.example``
(postconf(5) smtp_tls_policy_maps), so a line for the domain alone sends the OPP in clear;
the last test shows it."""

from __future__ import annotations

import contextlib
import datetime
import io
import ipaddress
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from milter.audit.sqlite import SQLiteStore
from milter.cli import main
from tests.conftest import POLICY, write_config
from tests.e2e.conftest import GatewayThread, SinkHandler, free_port
from tests.e2e.test_partners import OPP
from tests.postfix.conftest import DEPLOY, PrivatePostfix
from tests.postfix.test_postfix import wait

PARTNER = """
[[partners]]
name = "Jeugdzorg Regio"
ground = "Jeugdwet art. 7.4.0"
domains = ["jeugdzorg.example"]
"""
TO = "intake@jeugdzorg.example"


def certificates(tmp: Path, name: str) -> tuple[Path, Path, Path]:
    """A test CA and the partner MX's certificate for ``name`` signed by it, made here:
    (CA certificate, certificate, key). Level encrypt verifies nothing; level secure checks
    the name against the next hop with the CA as smtp_tls_CAfile."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def build(subject: str, key: Any, issuer: str, signer: Any, ca: bool) -> Any:
        b = (x509.CertificateBuilder()
             .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
             .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(minutes=5))
             .not_valid_after(now + datetime.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if not ca:
            b = b.add_extension(x509.SubjectAlternativeName([
                x509.DNSName(subject), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
        return b.sign(signer, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(
        ec.SECP256R1())
    ca = build("SKOT test CA", ca_key, "SKOT test CA", ca_key, True)
    cert = build(name, key, "SKOT test CA", ca_key, False)
    paths = tmp / "ca.crt", tmp / "mx.crt", tmp / "mx.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


@dataclass
class PartnerMX(SinkHandler):
    """The partner's mail server: records each message and whether it came over TLS."""

    over_tls: list[bool] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.over_tls.append(session.ssl is not None)
        return await super().handle_DATA(server, session, envelope)


@pytest.fixture
def partner_mx(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[PartnerMX, int]]:
    """The MX, offering STARTTLS with a certificate for mx.jeugdzorg.example, unless the
    test says otherwise (``(starttls, certificate name)``)."""
    starttls, name = getattr(request, "param", (True, "mx.jeugdzorg.example"))
    handler, port = PartnerMX(), free_port()
    context = None
    if starttls:
        _, crt, pem = certificates(tmp_path, name)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(crt, pem)
    controller = Controller(handler, hostname="127.0.0.1", port=port, tls_context=context,
                            require_starttls=False, server_hostname=name)
    controller.start()
    yield handler, port
    controller.stop()


def setup(tmp: Path, mx_port: int, sink_port: int, pf: list[PrivatePostfix],
          tls_lines: str | None = None, host: str = "[127.0.0.1]", level: str = "encrypt",
          main_extra: str = "") -> tuple[GatewayThread, PrivatePostfix, Path]:
    """Gateway -> private Postfix (the recipe's TLS settings, the partner routed to the MX
    at ``host``) -> partner MX; everything else to the sink (relayhost). The TLS map is what
    `partners tls-map --level LEVEL` prints for this Postfix, unless ``tls_lines`` says
    otherwise."""
    port = free_port()
    recipe = (DEPLOY / "main.cf.partners").read_text()
    postfix = PrivatePostfix("", f"127.0.0.1:{port} inet n - n - - smtpd\n", sink_port)
    pf.append(postfix)
    tls_map = postfix.dir / "tls_policy"
    transport = postfix.dir / "transport"
    transport.write_text(f"jeugdzorg.example smtp:{host}:{mx_port}\n")
    main_cf = postfix.conf / "main.cf"
    main_cf.write_text(main_cf.read_text() + recipe.replace(
        "/etc/postfix/tls_policy", str(tls_map)) + f"""
transport_maps = hash:{transport}
smtp_tls_loglevel = 1
{main_extra}
""")
    postmap = ["postmap", "-c", str(postfix.conf)]
    subprocess.run([*postmap, f"hash:{transport}"], check=True)
    policy = tmp / "policy.toml"
    policy.write_text(POLICY.read_text() + PARTNER)
    if not (tmp / "notices").exists():
        (tmp / "notices").symlink_to(POLICY.parent / "notices")
    cfg = write_config(tmp, policy=policy, next_hop=f"smtp://127.0.0.1:{port}",
                       gateway_extra=f'tls_policy_map = "{tls_map}"\n'
                                     f'postfix_config = "{postfix.conf}"',
                       extra="[notices]\nenabled = false\n")
    tls_map.write_text(tls_map_of(cfg, level) if tls_lines is None else tls_lines)
    subprocess.run([*postmap, f"hash:{tls_map}"], check=True)
    postfix.start(port)
    return GatewayThread(cfg), postfix, cfg


def tls_map_of(cfg: Path, level: str) -> str:
    """What `skot-milter partners tls-map --level LEVEL` prints for this site."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["partners", "tls-map", "--config", str(cfg), "--level", level]) == 0
    return buf.getvalue()


def queue(postfix: PrivatePostfix) -> str:
    return subprocess.run(["postqueue", "-c", str(postfix.conf), "-p"], capture_output=True,
                          text=True, timeout=30).stdout


def send_opp(gw: GatewayThread) -> None:
    with gw.client() as c:
        c.sendmail("someone@school.example", [TO], OPP)


def decision(tmp: Path) -> Any:
    return [r for r in SQLiteStore(tmp / "audit.sqlite3", "test").records()
            if r.event in ("delivered", "quarantined", "rejected")][-1]


def test_the_opp_reaches_the_partner_over_tls_tagged_and_audited(
        tmp_path: Path, sink: tuple[SinkHandler, int], partner_mx: tuple[PartnerMX, int],
        private_postfix: list[PrivatePostfix], capsys: Any) -> None:
    mx, mx_port = partner_mx
    gw, postfix, cfg = setup(tmp_path, mx_port, sink[1], private_postfix)
    try:
        # the map names the key Postfix really looks up: the transport's next hop
        lines = (postfix.dir / "tls_policy").read_text().splitlines()
        assert "jeugdzorg.example encrypt" in lines
        assert f"[127.0.0.1]:{mx_port} encrypt" in lines
        assert main(["config", "check", "--config", str(cfg)]) == 0, capsys.readouterr().err
        send_opp(gw)
        assert wait(lambda: len(mx.messages) == 1, 30), postfix.maillog()
        (got,) = mx.messages
        assert mx.over_tls == [True]
        assert got.rcpt_tos == [TO]
        assert b"X-SKOT-Policy: A1.confidential-attachment; article=A1; action=tag" in \
            got.content
        log = postfix.maillog()
        assert f"TLS connection established to 127.0.0.1[127.0.0.1]:{mx_port}" in log
        assert "status=sent" in log and sink[0].messages == []
        rec = decision(tmp_path)
        assert rec.event == "delivered" and rec.action == "tag"
        fired = next(r for r in rec.rules if r["id"] == "A1.confidential-attachment")
        assert fired["evidence"]["partners"] == ["Jeugdzorg Regio"]
        assert fired["evidence"]["grounds"] == ["Jeugdwet art. 7.4.0"]
    finally:
        gw.stop()


@pytest.mark.parametrize("partner_mx", [(False, "")], indirect=True, ids=["no-starttls"])
def test_without_starttls_postfix_keeps_it_in_the_queue(
        tmp_path: Path, sink: tuple[SinkHandler, int], partner_mx: tuple[PartnerMX, int],
        private_postfix: list[PrivatePostfix]) -> None:
    mx, mx_port = partner_mx
    gw, postfix, _ = setup(tmp_path, mx_port, sink[1], private_postfix)
    try:
        send_opp(gw)  # the gateway's part is done: tagged, handed to Postfix
        assert decision(tmp_path).event == "delivered"
        assert wait(lambda: "TLS is required, but was not offered" in postfix.maillog(), 30), \
            postfix.maillog()
        assert mx.messages == [] and mx.sessions == 0  # no MAIL FROM was ever sent
        waiting = queue(postfix)
        assert TO in waiting and "TLS is required, but was not offered" in waiting
        assert "status=sent" not in postfix.maillog()
    finally:
        gw.stop()


@pytest.mark.parametrize("partner_mx", [(False, "")], indirect=True, ids=["no-starttls"])
def test_a_line_for_the_domain_alone_does_not_apply_to_a_transport_next_hop(
        tmp_path: Path, sink: tuple[SinkHandler, int], partner_mx: tuple[PartnerMX, int],
        private_postfix: list[PrivatePostfix], capsys: Any) -> None:
    """Why `tls-map` asks Postfix: with only 'jeugdzorg.example encrypt' Postfix looks up
    '[127.0.0.1]:PORT', finds nothing, and sends the OPP in clear. `config check` says so."""
    mx, mx_port = partner_mx
    gw, postfix, cfg = setup(tmp_path, mx_port, sink[1], private_postfix,
                             tls_lines="jeugdzorg.example encrypt\n")
    try:
        assert main(["config", "check", "--config", str(cfg)]) == 1
        err = capsys.readouterr().err
        assert (f"partner domain jeugdzorg.example (Postfix sends its mail to "
                f"[127.0.0.1]:{mx_port}, via transport: that is the lookup key) "
                f"(add: '[127.0.0.1]:{mx_port} secure')") in err
        send_opp(gw)
        assert wait(lambda: len(mx.messages) == 1, 30), postfix.maillog()
        assert mx.over_tls == [False]  # in clear: the pitfall the check names
    finally:
        gw.stop()


def test_config_check_warns_when_partner_mail_goes_through_a_relayhost(
        tmp_path: Path, sink: tuple[SinkHandler, int],
        private_postfix: list[PrivatePostfix], capsys: Any) -> None:
    """No route of its own: the partner's mail follows relayhost, and the TLS policy is
    looked up for the relay; per-domain lines never apply."""
    gw, postfix, cfg = setup(tmp_path, free_port(), sink[1], private_postfix)
    gw.stop()
    (postfix.dir / "transport").write_text("# no route for the partner\n")
    subprocess.run(["postmap", "-c", str(postfix.conf), f"hash:{postfix.dir / 'transport'}"],
                   check=True)
    assert main(["config", "check", "--config", str(cfg)]) == 1
    err = capsys.readouterr().err
    relay = f"[127.0.0.1]:{sink[1]}"
    assert f"relayhost = {relay}: Postfix sends mail for partner domain jeugdzorg.example " \
           "through it" in err
    assert main(["partners", "tls-map", "--config", str(cfg)]) == 0
    out = capsys.readouterr()
    assert f"{relay} secure" in out.out and "goes through relayhost" in out.err
    # the fix the warning names: a route of its own ("smtp:", the partner's MX records);
    # then the domain is the key again and its line is enough
    (postfix.dir / "transport").write_text("jeugdzorg.example smtp:\n")
    subprocess.run(["postmap", "-c", str(postfix.conf), f"hash:{postfix.dir / 'transport'}"],
                   check=True)
    (postfix.dir / "tls_policy").write_text("jeugdzorg.example secure\n")
    assert main(["config", "check", "--config", str(cfg)]) == 0, capsys.readouterr().err


@pytest.mark.parametrize("partner_mx", [(True, "localhost"), (True, "mx.elders.example")],
                         indirect=True, ids=["right-name", "wrong-name"])
def test_level_secure_verifies_the_partners_certificate(
        tmp_path: Path, sink: tuple[SinkHandler, int], partner_mx: tuple[PartnerMX, int],
        private_postfix: list[PrivatePostfix], request: pytest.FixtureRequest) -> None:
    """The recipe's default level, secure: the certificate must be signed by a CA Postfix
    trusts (smtp_tls_CAfile, here the test CA) and name the next hop ("localhost", found
    through /etc/hosts: tests have no DNS). A certificate for another name: not sent."""
    mx, mx_port = partner_mx
    right = request.node.callspec.id == "right-name"
    ca = tmp_path / "ca.crt"
    gw, postfix, _ = setup(tmp_path, mx_port, sink[1], private_postfix, host="[localhost]",
                           level="secure", main_extra=f"smtp_host_lookup = native\n"
                                                      f"smtp_tls_CAfile = {ca}\n")
    try:
        assert f"[localhost]:{mx_port} secure" in (postfix.dir / "tls_policy").read_text()
        send_opp(gw)
        if right:
            assert wait(lambda: len(mx.messages) == 1, 30), postfix.maillog()
            assert mx.over_tls == [True]
            assert "Verified TLS connection established to localhost" in postfix.maillog()
        else:
            assert wait(lambda: "certificate verification failed" in postfix.maillog()
                        or "Server certificate not verified" in postfix.maillog(), 30), \
                postfix.maillog()
            assert mx.messages == [] and TO in queue(postfix)
    finally:
        gw.stop()
