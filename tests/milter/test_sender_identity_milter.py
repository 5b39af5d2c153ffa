"""Issue 15 through the milter front: every sender-identity case, and the recipient's
warning applied as the same message the SMTP front relays."""

from __future__ import annotations

import base64
import re
import struct
from collections.abc import Iterator
from email import message_from_bytes
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller

from milter.audit.sqlite import SQLiteStore
from milter.fronts.milter import codec
from tests.conftest import make_message, write_config
from tests.e2e.conftest import GatewayThread, SinkHandler, free_port
from tests.fixtures.sender import (
    BANNER_MARK,
    CASES,
    OUTSIDE_IP,
    Case,
    enforce_policy,
    write_staff,
)
from tests.milter.test_milter_server import MTA


def start(tmp: Path, warning: str = "banner", next_hop: str = "maildir:maildir",
          milter: bool = True, internal: str = '["127.0.0.0/8"]') -> GatewayThread:
    tmp.mkdir()
    extra = "[notices]\nenabled = false\n"
    if milter:
        extra += f'[milter]\nlisten = "127.0.0.1:{free_port()}"\n'
    cfg = write_config(tmp, listen="" if milter else "127.0.0.1:0", next_hop=next_hop,
                       policy=enforce_policy(tmp, warning), internal=internal, extra=extra)
    write_staff(tmp)
    return GatewayThread(cfg)


@pytest.fixture(scope="module")
def milter_gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayThread, Path]]:
    tmp = tmp_path_factory.mktemp("sender-milter") / "gw"
    gw = start(tmp)
    yield gw, tmp
    gw.stop()


class RawMTA(MTA):
    """Hands header values over byte for byte, as Postfix does (8-bit names included)."""

    def message(self, raw: bytes, mail_from: str, rcpts: list[str],
                client: str = "127.0.0.1", auth: str = "") -> list[codec.Response]:
        self.send(codec.Macro(b"C", {"j": "mx"}), codec.Connect("c.example", "4", 4000, client))
        self.replies()
        self.send(codec.Helo("c.example"))
        self.replies()
        self.send(codec.Macro(b"M", {"i": "4AbCdE", **({"{auth_authen}": auth} if auth else {})}),
                  codec.Mail((f"<{mail_from}>",)))
        self.replies()
        for r in rcpts:
            self.send(codec.Rcpt((f"<{r}>",)))
            self.replies()
        head, _, body = raw.partition(b"\r\n\r\n")
        for field in re.split(rb"\r\n(?![ \t])", head):
            name, _, value = field.partition(b":")
            self.send(codec.Header(name.decode("ascii"), value.lstrip(b" ")))
            self.replies()
        self.send(codec.EndOfHeaders())
        self.replies()
        self.send(codec.Body(body))
        self.replies()
        self.send(codec.EndOfMessage(b""))
        return self.replies()


def run(gw: GatewayThread, case_raw: bytes, mail_from: str, rcpts: list[str], client: str,
        auth: str = "") -> list[codec.Response]:
    mta = RawMTA(gw.running.milter_port)
    try:
        mta.negotiate()
        return mta.message(case_raw, mail_from, rcpts, client=client, auth=auth)
    finally:
        mta.close()


def apply(raw: bytes, replies: list[codec.Response]) -> bytes:
    """What Postfix makes of the message after our edits (header change, additions, body)."""
    head, _, body = raw.partition(b"\r\n\r\n")
    fields: list[list[bytes]] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1][1] += b"\r\n" + line
        else:
            name, _, value = line.partition(b":")
            fields.append([name, value.lstrip(b" ")])
    new_body = b""
    replaced = False
    for r in replies:
        if r.cmd == codec.SMFIR_CHGHEADER:
            index = int.from_bytes(r.data[:4], "big")
            name, value = r.data[4:].rstrip(b"\0").split(b"\0", 1)
            same = [f for f in fields if f[0].lower() == name.lower()]
            same[index - 1][1] = value
        elif r.cmd == codec.SMFIR_ADDHEADER:
            name, value = r.data.rstrip(b"\0").split(b"\0", 1)
            fields.append([name, value])
        elif r.cmd == codec.SMFIR_REPLBODY:
            new_body += r.data
            replaced = True
    out = b"\r\n".join(n + b": " + v for n, v in fields)
    return out + b"\r\n\r\n" + (new_body if replaced else body)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_sender_identity_through_the_milter(milter_gw: tuple[GatewayThread, Path],
                                            case: Case) -> None:
    gw, state = milter_gw
    client = OUTSIDE_IP if case.inbound else "127.0.0.1"
    replies = run(gw, case.raw, case.mail_from, list(case.rcpts), client, case.auth)
    if case.action == "reject":
        assert replies[-1].cmd == b"y"
        assert replies[-1].data.startswith(f"550 5.7.1 [{case.rule}]".encode())
    else:
        assert replies[-1].cmd == b"c"
        added = [r.data for r in replies if r.cmd == codec.SMFIR_ADDHEADER]
        if case.rule is None:
            assert [r.cmd for r in replies] == [b"c"]  # no edit at all
        else:
            assert any(a.startswith(b"X-SKOT-Policy\0" + case.rule.encode() + b"; ")
                       for a in added)
        if case.rule == "B1.lookalike-sender":
            assert BANNER_MARK.encode() in apply(case.raw, replies).partition(b"\r\n\r\n")[2]
    record = list(SQLiteStore(state / "audit.sqlite3", "test").records())[-1]
    fired = {r["id"]: r for r in record.rules}
    assert record.evidence["front"] == "milter"
    if case.rule is None:
        assert not {"B1.sender-headers", "B1.lookalike-sender"} & set(fired)
    else:
        key, value = case.evidence or ("", "")
        assert value in fired[case.rule]["evidence"][key]


# -- the same warning on both fronts -----------------------------------------------------

FROM = '"Anouk Mulder (SKOT)" <anouk.mulder.skot@gmail.example>'
HTML = base64.encodebytes("<html><body><p>Klik hier: café</p></body></html>".encode())
WARNED = {
    "plain": make_message(frm=FROM, to="teacher@school.example", body="Beste juf,\r\n"),
    "alternative": (
        f"From: {FROM}\r\nTo: teacher@school.example\r\nSubject: =?utf-8?q?Factuur_caf=C3=A9?="
        "\r\nMIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=b1\r\n\r\n"
        "--b1\r\nContent-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: quoted-printable\r\n\r\nKlik hier: caf=C3=A9\r\n"
        "--b1\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: base64"
        "\r\n\r\n").encode() + HTML.replace(b"\n", b"\r\n") + b"--b1--\r\n",
    "attachment-only": (
        f"From: {FROM}\r\nTo: teacher@school.example\r\nSubject: Scan\r\nMIME-Version: 1.0\r\n"
        "Content-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        "JVBERi0xLjQK\r\n").encode(),
}


@pytest.fixture(scope="module")
def both_fronts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[
        tuple[dict[str, GatewayThread], SinkHandler]]:
    base = tmp_path_factory.mktemp("warning-fronts")
    sink = SinkHandler()
    controller = Controller(sink, hostname="127.0.0.1", port=free_port())
    controller.start()
    gws: dict[str, GatewayThread] = {}
    for warning in ("banner", "subject"):
        gws[f"milter-{warning}"] = start(base / f"m-{warning}", warning)
        gws[f"smtp-{warning}"] = start(base / f"s-{warning}", warning,
                                       next_hop=f"smtp://127.0.0.1:{controller.port}",
                                       milter=False, internal='["10.255.0.0/16"]')
    yield gws, sink
    for gw in gws.values():
        gw.stop()
    controller.stop()


@pytest.mark.parametrize("warning", ["banner", "subject"])
@pytest.mark.parametrize("name", list(WARNED))
def test_warning_is_the_same_message_on_both_fronts(
        both_fronts: tuple[dict[str, GatewayThread], SinkHandler], name: str,
        warning: str) -> None:
    gws, sink = both_fronts
    raw = WARNED[name]
    sink.messages.clear()
    with gws[f"smtp-{warning}"].client() as c:
        c.sendmail("anouk.mulder.skot@gmail.example", ["teacher@school.example"], raw)
    (relayed,) = sink.messages
    replies = run(gws[f"milter-{warning}"], raw, "anouk.mulder.skot@gmail.example",
                  ["teacher@school.example"], OUTSIDE_IP)
    via_milter = apply(raw, replies)
    smtp_msg, milter_msg = message_from_bytes(relayed.content), message_from_bytes(via_milter)
    assert smtp_msg["Subject"] == milter_msg["Subject"]
    assert relayed.content.partition(b"\r\n\r\n")[2] == via_milter.partition(b"\r\n\r\n")[2]
    if warning == "subject" or name == "attachment-only":
        assert str(smtp_msg["Subject"]).startswith("[Let op: externe afzender] ")
        assert via_milter.partition(b"\r\n\r\n")[2] == raw.partition(b"\r\n\r\n")[2]
    else:
        assert BANNER_MARK.encode() in via_milter.partition(b"\r\n\r\n")[2]
        assert smtp_msg["Subject"] == message_from_bytes(raw)["Subject"]


def test_mta_without_body_changes_gets_the_subject_prefix(
        both_fronts: tuple[dict[str, GatewayThread], SinkHandler]) -> None:
    gws, _ = both_fronts
    mta = RawMTA(gws["milter-banner"].running.milter_port)
    try:
        mta.send(codec.OptNeg(6, 0x1FF & ~codec.SMFIF_CHGBODY, 0x1FFFFF))
        actions = codec.decode_optneg_reply(mta.replies()[-1].data)[0].actions
        assert not actions & codec.SMFIF_CHGBODY
        replies = mta.message(WARNED["plain"], "anouk.mulder.skot@gmail.example",
                              ["teacher@school.example"], client=OUTSIDE_IP)
    finally:
        mta.close()
    assert codec.SMFIR_REPLBODY not in [r.cmd for r in replies]
    (change,) = [r.data for r in replies if r.cmd == codec.SMFIR_CHGHEADER]
    assert change == struct.pack(">I", 1) + b"Subject\0[Let op: externe afzender] Hallo\0"
