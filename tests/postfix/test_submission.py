"""Staff submitting on 587 (STARTTLS) and 465 (implicit TLS) pass the gateway, both ways
Postfix offers, with the recipes from deploy/postfix/: the SASL login reaches skot-milter,
so B1.auth-identity holds them to their own address (issue 16: submission used to bypass
the gateway)."""

from __future__ import annotations

import smtplib
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import make_message, write_config
from tests.e2e.conftest import GatewayThread, SinkHandler, free_port
from tests.postfix.conftest import DEPLOY, PrivatePostfix
from tests.postfix.submission import DovecotAuth, main_cf, ports, self_signed
from tests.postfix.test_postfix import events, wait

USERS = {"someone@school.example": "geheim-wachtwoord"}


@pytest.fixture
def sasl() -> Iterator[DovecotAuth]:
    auth = DovecotAuth(USERS)
    yield auth
    auth.stop()


def site(mode: str, tmp_path: Path, sink_port: int, sasl: DovecotAuth,
         pf: list[PrivatePostfix]) -> tuple[GatewayThread, dict[str, int]]:
    """skot-milter and a private Postfix with the recipe for ``mode``: smtp, submission and
    submissions on loopback high ports."""
    p = {"submission": free_port(), "submissions": free_port()}
    cert, key = self_signed(Path(tmp_path))
    tls = main_cf(cert, key, sasl.port)
    if mode == "proxy":  # port 25 through the proxy front, submission through the milter
        mport = free_port()
        gw = GatewayThread(write_config(tmp_path, next_hop=f"smtp://127.0.0.1:{sink_port}",
                                        gateway_extra='xforward_from = ["127.0.0.1/32"]',
                                        extra=f'[milter]\nlisten = "127.0.0.1:{mport}"\n'
                                              "[notices]\nenabled = false\n"))
        master = ports((DEPLOY / "master.cf.proxy").read_text(), smtp=free_port(), **p)
        master = master.replace("127.0.0.1:10025", f"127.0.0.1:{gw.port}")
        master = master.replace("127.0.0.1:8894", f"127.0.0.1:{mport}")
        master = master.replace("127.0.0.1:10026", f"127.0.0.1:{free_port()}")
        main = (DEPLOY / "main.cf.proxy").read_text()
    else:
        mport = free_port()
        gw = GatewayThread(write_config(tmp_path, listen="",
                                        next_hop=f"smtp://127.0.0.1:{sink_port}",
                                        extra=f'[milter]\nlisten = "127.0.0.1:{mport}"\n'
                                              "[notices]\nenabled = false\n"))
        master = ports((DEPLOY / "master.cf.milter").read_text(), **p)
        main = (DEPLOY / "main.cf.milter").read_text().replace("127.0.0.1:8894",
                                                              f"127.0.0.1:{mport}")
    postfix = PrivatePostfix(main + "\n" + tls, master, sink_port)
    pf.append(postfix)
    postfix.start(p["submissions"])
    return gw, p


def client(service: str, port: int) -> smtplib.SMTP:
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # the test's own certificate
    if service == "submissions":
        c: smtplib.SMTP = smtplib.SMTP_SSL("127.0.0.1", port, timeout=30, context=ctx)
    else:
        c = smtplib.SMTP("127.0.0.1", port, timeout=30)
        c.starttls(context=ctx)
    c.login("someone@school.example", USERS["someone@school.example"])
    return c


@pytest.mark.parametrize("mode", ["proxy", "milter"])
def test_submission_587_and_465_pass_the_gateway(mode: str, tmp_path: Path,
                                                 sink: tuple[SinkHandler, int],
                                                 sasl: DovecotAuth,
                                                 private_postfix: list[PrivatePostfix]) -> None:
    handler, sink_port = sink
    gw, p = site(mode, tmp_path, sink_port, sasl, private_postfix)
    try:
        for n, service in enumerate(("submission", "submissions"), start=1):
            with client(service, p[service]) as c:
                # as themselves: delivered
                c.sendmail("someone@school.example", ["ouder@example.org"], make_message(
                    frm="someone@school.example", to="ouder@example.org",
                    subject=f"via {service}"))
                # as a colleague: refused by the gateway, in Postfix's dialogue
                with pytest.raises(smtplib.SMTPDataError) as err:
                    c.sendmail("director@school.example", ["ouder@example.org"], make_message(
                        frm="director@school.example", to="ouder@example.org"))
            assert err.value.smtp_code == 550
            assert b"[B1.auth-identity]" in err.value.smtp_error, err.value.smtp_error
            assert wait(lambda n=n: len(handler.messages) == n), private_postfix[0].maillog()
            assert f"Subject: via {service}".encode() in handler.messages[-1].content
        assert sasl.logins == ["someone@school.example"] * 2
        audited = events(tmp_path)
        assert audited.count("rejected") == 2
        assert audited.count("delivered") == 2
    finally:
        gw.stop()
