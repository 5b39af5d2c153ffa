"""Postfix in front, both modes: a look-alike sender's message reaches the destination with the
same warning (issue 15): the proxy relays our bytes, Postfix applies the milter's edits."""

from __future__ import annotations

import smtplib
from email import message_from_bytes
from pathlib import Path

from tests.conftest import write_config
from tests.e2e.conftest import GatewayThread, SinkHandler, free_port
from tests.fixtures.sender import BANNER_MARK, enforce_policy, write_staff
from tests.postfix.conftest import DEPLOY, PrivatePostfix
from tests.postfix.submission import ports
from tests.postfix.test_postfix import wait

LOOKALIKE = (b'From: "Anouk Mulder (SKOT)" <anouk.mulder.skot@gmail.example>\r\n'
             b"To: teacher@school.example\r\nSubject: Nieuwe inlog voor het ouderportaal\r\n"
             b"Message-ID: <la1@gmail.example>\r\nMIME-Version: 1.0\r\n"
             b"Content-Type: multipart/alternative; boundary=b1\r\n\r\n"
             b"--b1\r\nContent-Type: text/plain; charset=utf-8\r\n"
             b"Content-Transfer-Encoding: quoted-printable\r\n\r\nLog hier in: caf=C3=A9\r\n"
             b"--b1\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
             b"<html><body><p>Log hier in</p></body></html>\r\n--b1--\r\n")


def start(mode: str, tmp: Path, sink_port: int, pf: list[PrivatePostfix]
          ) -> tuple[GatewayThread, int]:
    tmp.mkdir()
    mport = free_port()
    inside = '["10.255.0.0/16"]'  # loopback is the outside here: the message is inbound
    policy = enforce_policy(tmp)
    if mode == "proxy":
        cfg = write_config(tmp, next_hop=f"smtp://127.0.0.1:{sink_port}", policy=policy,
                           internal=inside, gateway_extra='xforward_from = ["127.0.0.1/32"]',
                           extra="[notices]\nenabled = false\n")
    else:
        cfg = write_config(tmp, listen="", next_hop=f"smtp://127.0.0.1:{sink_port}",
                           policy=policy, internal=inside,
                           extra=f'[milter]\nlisten = "127.0.0.1:{mport}"\n'
                                 "[notices]\nenabled = false\n")
    write_staff(tmp)
    gw = GatewayThread(cfg)
    port = free_port()
    if mode == "proxy":
        master = (DEPLOY / "master.cf.proxy").read_text()
        master = ports(master, smtp=port, submission=free_port(), submissions=free_port())
        master = master.replace("127.0.0.1:10025", f"127.0.0.1:{gw.port}")
        master = master.replace("127.0.0.1:10026", f"127.0.0.1:{free_port()}")
        postfix = PrivatePostfix((DEPLOY / "main.cf.proxy").read_text(), master, sink_port)
    else:
        main = (DEPLOY / "main.cf.milter").read_text().replace("127.0.0.1:8894",
                                                              f"127.0.0.1:{mport}")
        postfix = PrivatePostfix(main, f"127.0.0.1:{port} inet n - n - - smtpd\n", sink_port)
    pf.append(postfix)
    postfix.start(port)
    return gw, port


def test_lookalike_warning_is_the_same_through_postfix_in_both_modes(
        tmp_path: Path, sink: tuple[SinkHandler, int],
        private_postfix: list[PrivatePostfix]) -> None:
    handler, sink_port = sink
    got: dict[str, bytes] = {}
    for mode in ("proxy", "milter"):
        gw, port = start(mode, tmp_path / mode, sink_port, private_postfix)
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
                c.sendmail("anouk.mulder.skot@gmail.example", ["teacher@school.example"],
                           LOOKALIKE)
            assert wait(lambda: len(handler.messages) == len(got) + 1), \
                private_postfix[-1].maillog()
            got[mode] = handler.messages[-1].content
        finally:
            gw.stop()
    proxy, milter = (message_from_bytes(got[m]) for m in ("proxy", "milter"))
    for msg in (proxy, milter):
        assert str(msg["X-SKOT-Policy"]).startswith("B1.lookalike-sender; article=A7")
        assert msg["Subject"] == "Nieuwe inlog voor het ouderportaal"
    bodies = [got[m].partition(b"\r\n\r\n")[2] for m in ("proxy", "milter")]
    assert bodies[0] == bodies[1]
    assert bodies[0].count(BANNER_MARK.encode()) == 2  # plain text and HTML
