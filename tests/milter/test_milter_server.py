"""The milter front over a real socket, driven by a small MTA-side client speaking the codec."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import replace
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import pytest

from milter.audit.sqlite import SQLiteStore
from milter.core.engine import Engine
from milter.core.verdict import Finding
from milter.fronts.milter import codec
from milter.fronts.milter.server import NO_REPLY, NO_REPLY_ALL
from tests.conftest import make_message, write_config
from tests.e2e.conftest import GatewayThread, free_port
from tests.fixtures import files

DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"


class MTA:
    """What Postfix does, reduced to the commands a test needs."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.decoder_buf = b""
        self.connected = False  # a client's session is open (CONNECT was sent)
        self.no_reply = 0  # the SMFIP_NR_* steps the filter asked us not to wait for
        self.protocol = 0  # all the SMFIP_* flags the filter asked for
        self.macro_lists: dict[int, str] = {}  # the macros it asked for, per SMFIM_* stage
        self.awaiting = True

    def send(self, *events: codec.Event) -> None:
        self.sock.sendall(b"".join(codec.encode_command(e) for e in events))
        # as Postfix: no reply to wait for after a step the filter said it will not answer
        self.awaiting = any(not isinstance(e, codec.Macro)
                            and not self.no_reply & NO_REPLY.get(type(e), 0) for e in events)

    def replies(self, final: bool = True) -> list[codec.Response]:
        """Read replies up to (and including) one that ends the step."""
        out: list[codec.Response] = []
        if not self.awaiting:
            return out
        while True:
            while len(self.decoder_buf) < 4 or len(self.decoder_buf) < 4 + struct.unpack(
                    ">I", self.decoder_buf[:4])[0]:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return out
                self.decoder_buf += chunk
            (n,) = struct.unpack(">I", self.decoder_buf[:4])
            reply = codec.Response(self.decoder_buf[4:5], self.decoder_buf[5:4 + n])
            self.decoder_buf = self.decoder_buf[4 + n:]
            out.append(reply)
            if reply.cmd == b"O":
                neg, self.macro_lists = codec.decode_optneg_reply(reply.data)
                self.protocol = neg.protocol
                self.no_reply = neg.protocol & NO_REPLY_ALL
            if reply.cmd in (b"c", b"a", b"r", b"t", b"y", b"O", b"d"):
                return out

    def negotiate(self) -> codec.Response:
        self.send(codec.OptNeg(6, 0x1FF, 0x1FFFFF))
        return self.replies()[-1]

    def message(self, raw: bytes, mail_from: str, rcpts: list[str],
                client: str = "127.0.0.1", auth: str = "",
                queue_id: str = "4AbCdE") -> list[codec.Response]:
        """As Postfix: the queue id comes with the end of the message (it has none at MAIL
        before a recipient is accepted), and the steps the filter declined are not sent."""
        if not self.connected:  # the next message of the same client session starts at MAIL
            self.connected = True
            self.send(codec.Macro(b"C", {"j": "mx"}),
                      codec.Connect("c.example", "4", 4000, client))
            self.replies()
            self.send(codec.Helo("c.example"))
            self.replies()
        self.send(codec.Macro(b"M", {"{auth_authen}": auth} if auth else {}),
                  codec.Mail((f"<{mail_from}>",)))
        self.replies()
        for r in rcpts:
            self.send(codec.Rcpt((f"<{r}>",)))
            self.replies()
        msg = BytesParser().parsebytes(raw)
        head, _, body = raw.partition(b"\r\n\r\n")
        for name, value in msg.items():
            self.send(codec.Header(name, str(value).encode()))
            self.replies()
        if not self.protocol & codec.SMFIP_NOEOH:
            self.send(codec.EndOfHeaders())
            self.replies()
        for i in range(0, len(body), 65535):
            self.send(codec.Body(body[i:i + 65535]))
            self.replies()
        self.send(codec.Macro(b"E", {"i": queue_id}), codec.EndOfMessage(b""))
        return self.replies()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[GatewayThread]:
    cfg = write_config(tmp_path, listen="",
                       extra=f'[milter]\nlisten = "127.0.0.1:{free_port()}"\n')
    g = GatewayThread(cfg)
    yield g
    g.stop()


def records(tmp_path: Path) -> list[Any]:
    store = SQLiteStore(tmp_path / "audit.sqlite3", "test")
    return list(store.records())


def test_negotiation(gw: GatewayThread) -> None:
    mta = MTA(gw.running.milter_port)
    reply = mta.negotiate()
    neg, macros = codec.decode_optneg_reply(reply.data)
    version, actions, protocol = neg.version, neg.actions, neg.protocol
    assert reply.cmd == b"O" and version == 6
    # the steps we read are sent (connect, HELO, MAIL, RCPT, headers, body), the ones we
    # do not (DATA, end of headers, unknown commands) are not
    assert protocol & 0x37F == codec.SMFIP_NOEOH | codec.SMFIP_NODATA | codec.SMFIP_NOUNKNOWN
    # the MTA need not wait for our "continue"
    assert protocol & codec.SMFIP_NR_HDR
    assert protocol & codec.SMFIP_NR_BODY and protocol & codec.SMFIP_NR_CONN
    # but MAIL and RCPT are answered: an address that is not valid UTF-8 is refused there
    assert not protocol & (codec.SMFIP_NR_MAIL | codec.SMFIP_NR_RCPT)
    assert actions & codec.SMFIF_ADDHDRS and actions & codec.SMFIF_QUARANTINE
    # only the macros we read, at the stage we read them; nothing at the other stages
    assert actions & codec.SMFIF_SETSYMLIST
    assert macros == {codec.SMFIM_CONNECT: "{client_addr}", codec.SMFIM_HELO: "{skot_none}",
                      codec.SMFIM_ENVFROM: "i {auth_authen}", codec.SMFIM_ENVRCPT: "{skot_none}",
                      codec.SMFIM_DATA: "{skot_none}", codec.SMFIM_EOM: "i",
                      codec.SMFIM_EOH: "{skot_none}"}
    mta.close()


@pytest.mark.parametrize("version,actions", [(6, 0x1FF & ~codec.SMFIF_SETSYMLIST), (4, 0x1FF),
                                             (2, 0x3F)])
def test_no_macro_lists_to_an_mta_that_cannot_take_them(gw: GatewayThread, version: int,
                                                         actions: int) -> None:
    """Sendmail reads macro lists only from protocol 6 and with SMFIF_SETSYMLIST offered;
    an older MTA gets the three words it expects (and no flag it did not offer)."""
    mta = MTA(gw.running.milter_port)
    mta.send(codec.OptNeg(version, actions, 0x7F))
    reply = mta.replies()[-1]
    assert reply.cmd == b"O" and len(reply.data) == 12
    neg, macros = codec.decode_optneg_reply(reply.data)
    assert neg.version == version and macros == {}
    assert neg.actions & ~actions == 0 and neg.protocol & ~0x7F == 0
    mta.close()


def test_queue_id_is_each_messages_own(gw: GatewayThread, tmp_path: Path) -> None:
    """The audit record names the MTA's queue id of that message: Postfix sends it with
    the end of the message, not at MAIL; a second message on the connection has its own."""
    mta = MTA(gw.running.milter_port)
    mta.negotiate()
    for queue_id in ("AA922214E7B", "B8797214E7F"):
        assert mta.message(make_message(), "someone@school.example", ["o@example.org"],
                           queue_id=queue_id)[-1].cmd == b"c"
    assert [r.evidence["queue_id"] for r in records(tmp_path)] == ["AA922214E7B",
                                                                     "B8797214E7F"]
    mta.close()


@pytest.mark.parametrize("offered", [0x1FFFFF, 0x7F], ids=["no-reply-steps", "reply-each-step"])
def test_one_answer_per_message_when_the_mta_allows(gw: GatewayThread, tmp_path: Path,
                                                     offered: int) -> None:
    """With the no-reply steps negotiated the filter answers only MAIL, RCPT (where an
    invalid address is refused) and the end of the message; an MTA that does not offer them
    hears "continue" after every step, as before."""
    mta = MTA(gw.running.milter_port)
    mta.send(codec.OptNeg(6, 0x1FF, offered))
    mta.replies()
    mta.no_reply = 0  # read every packet the filter sends
    raw = make_message()
    events: list[codec.Event] = [codec.Connect("c.example", "4", 4000, "127.0.0.1"),
                                 codec.Helo("c.example"), codec.Mail(("<someone@school.example>",)),
                                 codec.Rcpt(("<ouder@example.org>",))]
    events += [codec.Header(n, str(v).encode()) for n, v in BytesParser().parsebytes(raw).items()]
    events += [codec.EndOfHeaders(), codec.Body(raw.partition(b"\r\n\r\n")[2]),
               codec.EndOfMessage(b"")]
    mta.send(*events)
    got: list[codec.Response] = []
    answered = 3 if offered & 0x80 else len(events)  # MAIL, RCPT, end of message
    while not got or got[-1].cmd != b"c" or len(got) < answered:
        got += mta.replies()
    assert [r.cmd for r in got] == [b"c"] * answered
    assert records(tmp_path)[0].event == "delivered"  # so the last "c" answered the end
    mta.sock.settimeout(0.3)
    with pytest.raises(TimeoutError):  # and nothing else follows
        mta.sock.recv(1)
    mta.close()


def test_clean_message_continues_and_is_audited(gw: GatewayThread, tmp_path: Path) -> None:
    mta = MTA(gw.running.milter_port)
    mta.negotiate()
    replies = mta.message(make_message(), "someone@school.example", ["ouder@example.org"])
    assert [r.cmd for r in replies] == [b"c"]
    (rec,) = records(tmp_path)
    assert rec.event == "delivered" and rec.evidence["front"] == "milter"
    assert rec.evidence["queue_id"] == "4AbCdE"
    mta.close()


def test_b1_violation_gets_our_reply_code(gw: GatewayThread, tmp_path: Path) -> None:
    mta = MTA(gw.running.milter_port)
    mta.negotiate()
    replies = mta.message(make_message(frm="me@gmail.example"), "me@gmail.example",
                          ["ouder@example.org"])
    assert replies[-1].cmd == b"y"
    assert replies[-1].data.startswith(b"550 5.7.1 [B1.sender-domain] B1:")
    assert records(tmp_path)[0].event == "rejected"
    # the same connection carries on with the next message
    assert mta.message(make_message(), "someone@school.example", ["o@example.org"])[-1].cmd \
        == b"c"
    mta.close()


def test_confidential_attachment_is_quarantined(gw: GatewayThread, tmp_path: Path) -> None:
    raw = files.mail_with([("verslag.docx", files.docx(["x"], label="Vertrouwelijk"), DOCX)])
    mta = MTA(gw.running.milter_port)
    mta.negotiate()
    replies = mta.message(raw, "someone@school.example", ["ouder@example.org"])
    assert [r.cmd for r in replies] == [b"q", b"c"]
    assert b"A1.confidential-attachment" in replies[0].data
    (entry,) = gw.running.gateway.quarantine.entries()
    assert entry.meta["envelope"]["rcpt_tos"] == ["ouder@example.org"]
    assert [r.event for r in records(tmp_path)] == ["quarantined"]
    mta.close()


def test_auth_user_from_macro_drives_auth_identity(gw: GatewayThread) -> None:
    mta = MTA(gw.running.milter_port)
    mta.negotiate()
    replies = mta.message(make_message(frm="director@school.example"),
                          "director@school.example", ["o@example.org"], client="203.0.113.5",
                          auth="teacher")
    assert replies[-1].data.startswith(b"550 5.7.1 [B1.auth-identity]")
    mta.close()


def test_tag_adds_header(tmp_path: Path) -> None:
    from tests.conftest import POLICY

    pol = tmp_path / "tag.toml"
    pol.write_text(POLICY.read_text().replace('action = "reject"', 'action = "tag"', 1))
    cfg = write_config(tmp_path, listen="", policy=pol,
                       extra=f'[milter]\nlisten = "127.0.0.1:{free_port()}"\n')
    g = GatewayThread(cfg)
    try:
        mta = MTA(g.running.milter_port)
        mta.negotiate()
        replies = mta.message(make_message(frm="me@gmail.example"), "me@gmail.example",
                              ["o@example.org"])
        assert [r.cmd for r in replies] == [b"h", b"c"]
        assert replies[0].data.startswith(b"X-SKOT-Policy\0B1.sender-domain; article=B1")
        mta.close()
    finally:
        g.stop()


@pytest.mark.parametrize("garbage", [
    struct.pack(">I", 50_000_000) + b"B",          # oversized packet
    codec.packet(b"Z", b"what"),                    # unknown command
    b"\x00\x00\x00\x00",                            # empty packet
    codec.packet(b"L", b"no-nul"),                  # malformed header
])
def test_garbage_closes_connection_server_survives(gw: GatewayThread, garbage: bytes,
                                                   tmp_path: Path) -> None:
    mta = MTA(gw.running.milter_port)
    mta.negotiate()
    mta.sock.sendall(garbage)
    assert mta.sock.recv(100) == b""  # closed cleanly
    mta.close()
    again = MTA(gw.running.milter_port)
    assert again.negotiate().cmd == b"O"
    assert again.message(make_message(), "someone@school.example", ["o@example.org"])[-1].cmd \
        == b"c"
    again.close()


def test_connection_cut_mid_message_applies_nothing(gw: GatewayThread, tmp_path: Path) -> None:
    mta = MTA(gw.running.milter_port)
    mta.negotiate()
    mta.send(codec.Mail(("<someone@school.example>",)))
    mta.replies()
    mta.send(codec.Rcpt(("<ouder@example.org>",)))
    mta.replies()
    mta.send(codec.Header("Subject", b"half"))
    mta.replies()
    mta.close()
    assert records(tmp_path) == []
    again = MTA(gw.running.milter_port)
    assert again.negotiate().cmd == b"O"
    again.close()


def test_large_message_is_spooled_and_judged_as_in_memory(tmp_path: Path) -> None:
    """Past gateway.spool_threshold the milter front keeps the message on disk; the verdict,
    the quarantined bytes and the audit evidence are those of the in-memory path."""
    raw = files.mail_with([("verslag.docx", files.docx(["x"] * 400, label="Vertrouwelijk"), DOCX),
                           ("foto.jpg", files.photo(300, 200), "image/jpeg")])
    assert len(raw) > 20_000
    held = []
    for name, extra in (("memory", ""), ("spool", "spool_threshold = 4096")):
        d = tmp_path / name
        d.mkdir()
        g = GatewayThread(write_config(d, listen="", gateway_extra=extra,
                                       extra=f'[milter]\nlisten = "127.0.0.1:{free_port()}"\n'))
        try:
            mta = MTA(g.running.milter_port)
            mta.negotiate()
            replies = mta.message(raw, "someone@school.example", ["ouder@example.org"])
            assert replies[0].cmd == b"q" and replies[-1].cmd == b"c"
            (entry,) = g.running.gateway.quarantine.entries()
            (record,) = records(d)
            held.append(([(r.cmd, r.data.split(b"ref=")[0]) for r in replies], entry.raw,
                         record.evidence["sha256"], record.evidence["attachments"]))
            # the next message on the same connection is judged on its own
            assert mta.message(make_message(), "someone@school.example",
                               ["o@example.org"])[-1].cmd == b"c"
            mta.close()
            assert (d / "spool").is_dir() == (name == "spool")  # the spooled run used it ...
            assert list(d.glob("spool/*")) == []                # ... and left nothing there
        finally:
            g.stop()
    assert held[0] == held[1]


@pytest.mark.parametrize("gateway_extra,answer", [
    ("max_message_size = 4096", b"552 5.3.4"),                        # over the size limit
    ('spool_threshold = 4096\nstate_dir = "state"', b"451 4.3.0"),    # spool not writable
])
def test_large_body_refused_or_tempfailed(tmp_path: Path, gateway_extra: str,
                                          answer: bytes) -> None:
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "spool").write_text("not a directory")
    g = GatewayThread(write_config(tmp_path, listen="", gateway_extra=gateway_extra,
                                   extra=f'[milter]\nlisten = "127.0.0.1:{free_port()}"\n'))
    try:
        mta = MTA(g.running.milter_port)
        mta.negotiate()
        big = make_message(body=("x" * 70 + "\r\n") * 200)
        replies = mta.message(big, "someone@school.example", ["o@example.org"])
        assert replies[-1].cmd == b"y" and replies[-1].data.startswith(answer)
        # the connection carries on, and a small message passes
        assert mta.message(make_message(), "someone@school.example",
                           ["o@example.org"])[-1].cmd == b"c"
        mta.close()
    finally:
        g.stop()


def test_idle_connection_is_closed_after_idle_timeout(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, listen="", extra=f'[milter]\nlisten = "127.0.0.1:{free_port()}"'
                                                  "\nidle_timeout = 1.0\n")
    g = GatewayThread(cfg)
    try:
        mta = MTA(g.running.milter_port)
        mta.negotiate()
        mta.sock.settimeout(5)
        started = time.monotonic()
        assert mta.sock.recv(100) == b""  # closed by the filter, not by us
        assert 0.9 < time.monotonic() - started < 4
        mta.close()
    finally:
        g.stop()
def test_a_decision_longer_than_the_idle_timeout_is_still_answered(tmp_path: Path) -> None:
    """The idle timeout is the MTA's silence, not our own: a message whose policy takes
    longer than ``idle_timeout`` gets its answer, and the connection carries on."""
    cfg = write_config(tmp_path, listen="", extra=f'[milter]\nlisten = "127.0.0.1:{free_port()}"'
                                                  "\nidle_timeout = 1.0\n")
    g = GatewayThread(cfg)
    try:
        def slow(*_: Any) -> Finding | None:
            time.sleep(2.5)
            return None

        async def swap() -> None:
            gw = g.running.gateway
            rt = gw.runtime
            gw.runtime = replace(rt, engine=Engine(rt.policy, {**rt.engine.rules,
                                                               "B1.sender-domain": slow}))

        g.call(swap())
        mta = MTA(g.running.milter_port)
        mta.negotiate()
        assert mta.message(make_message(), "someone@school.example",
                           ["o@example.org"])[-1].cmd == b"c"
        assert mta.message(make_message(), "someone@school.example",
                           ["o@example.org"])[-1].cmd == b"c"
        mta.close()
    finally:
        g.stop()


