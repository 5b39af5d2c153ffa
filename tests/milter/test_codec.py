"""The sans-I/O milter codec: round trips, split packets, hostile bytes."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from milter.fronts.milter import codec

EVENTS: list[codec.Event] = [
    codec.OptNeg(6, 0x1FF, 0x1FFFFF),
    codec.Macro(b"C", {"j": "mx.school.example", "{daemon_name}": "smtpd"}),
    codec.Connect("client.example", "4", 41234, "192.0.2.7"),
    codec.Connect("v6.example", "6", 25, "IPv6:2001:db8::1"),
    codec.Helo("client.example"),
    codec.Mail(("<someone@school.example>", "SIZE=1234")),
    codec.Rcpt(("<ouder@example.org>",)),
    codec.Header("Subject", b"Hallo"),
    codec.EndOfHeaders(),
    codec.Body(b"line\r\n" * 100),
    codec.EndOfMessage(b""),
    codec.Abort(),
    codec.Data(),
    codec.Unknown(b"XYZZY"),
    codec.Quit(),
    codec.Quit(new_connection=True),
]


def test_every_command_round_trips() -> None:
    wire = b"".join(codec.encode_command(e) for e in EVENTS)
    assert codec.Decoder().feed(wire) == EVENTS


def test_byte_by_byte_feed_gives_same_events() -> None:
    wire = b"".join(codec.encode_command(e) for e in EVENTS)
    d = codec.Decoder()
    got: list[codec.Event] = []
    for i in range(len(wire)):
        got += d.feed(wire[i:i + 1])
    assert got == EVENTS and d.pending == 0


def test_addresses_without_angles() -> None:
    assert codec.Mail(("<a@b.example>", "BODY=8BITMIME")).address == "a@b.example"
    assert codec.Mail(("<>",)).address == ""


def test_replies_encode() -> None:
    out = codec.decode_replies(codec.encode_replycode("550 5.7.1 [B1] 100% nee / no")
                               + codec.encode_addheader("X-SKOT-Policy", "A5; article=A5")
                               + codec.encode_quarantine("held") + codec.encode_continue())
    assert [r.cmd for r in out] == [b"y", b"h", b"q", b"c"]
    assert out[0].data == b"550 5.7.1 [B1] 100%% nee / no\0"
    assert out[1].data == b"X-SKOT-Policy\0A5; article=A5\0"


def test_replycode_must_be_4xx_or_5xx() -> None:
    with pytest.raises(ValueError):
        codec.encode_replycode("250 ok")


@pytest.mark.parametrize("wire,why", [
    (struct.pack(">I", 0), "empty"),
    (struct.pack(">I", 5_000_000) + b"B", "exceeds"),
    (codec.packet(b"Z", b"x"), "unknown command"),
    (codec.packet(b"O", b"\0\0\0\6"), "short option"),
    (codec.packet(b"L", b"Subject\0no-terminator"), "malformed header"),
    (codec.packet(b"M", b"<a@b>"), "NUL-terminated"),
    (codec.packet(b"D", b"Cname\0"), "odd number"),
])
def test_malformed_packets_raise_protocol_error(wire: bytes, why: str) -> None:
    with pytest.raises(codec.ProtocolError, match=why):
        codec.Decoder().feed(wire)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_any_bytes_give_events_or_protocol_error(data: bytes) -> None:
    d = codec.Decoder(max_packet=4096)
    try:
        events = d.feed(data)
    except codec.ProtocolError:
        return
    assert all(isinstance(e, tuple(type(x) for x in EVENTS)) for e in events)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(EVENTS), max_size=20), st.integers(1, 50))
def test_any_split_of_valid_stream_decodes_identically(events: list[codec.Event],
                                                      step: int) -> None:
    wire = b"".join(codec.encode_command(e) for e in events)
    d = codec.Decoder()
    got: list[codec.Event] = []
    for i in range(0, len(wire), step):
        got += d.feed(wire[i:i + step])
    assert got == events


def test_optneg_reply_with_macro_lists_as_libmilter_writes_it() -> None:
    """After the three words: per stage a 32-bit SMFIM_* number and a NUL-terminated,
    space-separated list (libmilter's milter_addsymlist; Postfix's milter8_negotiate reads
    it so)."""
    wire = codec.encode_optneg(6, 0x131, 0x3C0, {codec.SMFIM_EOM: "i",
                                                 codec.SMFIM_ENVFROM: "i {auth_authen}"})
    assert wire == (struct.pack(">I", 1 + 12 + 4 + 16 + 4 + 2) + b"O"
                    + struct.pack(">III", 6, 0x131, 0x3C0)
                    + struct.pack(">I", 2) + b"i {auth_authen}\0" + struct.pack(">I", 5) + b"i\0")
    (reply,) = codec.decode_replies(wire)
    neg, macros = codec.decode_optneg_reply(reply.data)
    assert neg == codec.OptNeg(6, 0x131, 0x3C0)
    assert macros == {codec.SMFIM_ENVFROM: "i {auth_authen}", codec.SMFIM_EOM: "i"}
    assert codec.encode_optneg(6, 1, 0) == codec.packet(b"O", struct.pack(">III", 6, 1, 0))
    with pytest.raises(ValueError):  # Postfix would take it for "your default list"
        codec.encode_optneg(6, 0x100, 0, {codec.SMFIM_HELO: " "})
    with pytest.raises(codec.ProtocolError):
        codec.decode_optneg_reply(struct.pack(">III", 6, 0, 0) + struct.pack(">I", 1) + b"i")


def test_skipped_steps_may_be_passed_over_as_libmilter_does() -> None:
    """With SMFIP_NOEOH the headers are followed by the body directly: not out of order."""
    def run(protocol: int) -> list[tuple[bool, bool]]:
        order = codec.ProtocolOrder()
        order.skip(protocol)
        return [order.admit(e) for e in (codec.OptNeg(6, 0, 0), codec.Connect("c", "4", 1, "a"),
                                         codec.Mail(("<a@b>",)), codec.Rcpt(("<c@d>",)),
                                         codec.Header("S", b"x"), codec.Body(b"b"),
                                         codec.EndOfMessage(b""))]
    assert run(codec.SMFIP_NOEOH | codec.SMFIP_NODATA) == [(True, False)] * 7
    # without it, a body straight after a header is out of order (the transaction ends)
    assert run(0)[5] == (False, True)


def test_header_and_body_macros_can_be_dropped_unread_and_packets_counted() -> None:
    wire = b"".join(codec.encode_command(e) for e in [
        codec.Macro(b"M", {"{auth_authen}": "t"}), codec.Mail(("<a@b>",)),
        codec.Macro(b"L", {"i": "Q1"}), codec.Header("Subject", b"x"),
        codec.Macro(b"B", {"i": "Q1"}), codec.Body(b"body"),
        codec.Macro(b"E", {"i": "Q1"}), codec.EndOfMessage(b"")])
    d = codec.Decoder(skip_macros=b"LB")
    assert d.feed(wire) == [codec.Macro(b"M", {"{auth_authen}": "t"}), codec.Mail(("<a@b>",)),
                            codec.Header("Subject", b"x"), codec.Body(b"body"),
                            codec.Macro(b"E", {"i": "Q1"}), codec.EndOfMessage(b"")]
    assert d.packets == 8
    assert len(codec.Decoder().feed(wire)) == 8
