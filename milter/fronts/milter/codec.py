"""The Sendmail/Postfix milter protocol (version 6) as a sans-I/O codec.

Bytes in, events out (``Decoder.feed``); replies in, bytes out (the ``encode_*`` functions).
No sockets, no clock: a server loop of any kind drives it, and tests feed it bytes directly.
Every packet is ``uint32 length`` (big-endian, counting the command byte) + command + data.
Anything malformed raises ``ProtocolError``; the caller answers by closing the connection.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

VERSION = 6
MAX_PACKET = 1 << 20          # Postfix sends body chunks of at most 64 KiB

# Commands from the MTA (libmilter mfdef.h)
SMFIC_ABORT, SMFIC_BODY, SMFIC_CONNECT, SMFIC_MACRO = b"A", b"B", b"C", b"D"
SMFIC_BODYEOB, SMFIC_HELO, SMFIC_QUIT_NC, SMFIC_HEADER = b"E", b"H", b"K", b"L"
SMFIC_MAIL, SMFIC_EOH, SMFIC_OPTNEG, SMFIC_QUIT = b"M", b"N", b"O", b"Q"
SMFIC_RCPT, SMFIC_DATA, SMFIC_UNKNOWN = b"R", b"T", b"U"

# Replies to the MTA
SMFIR_ADDRCPT, SMFIR_DELRCPT, SMFIR_ACCEPT, SMFIR_REPLBODY = b"+", b"-", b"a", b"b"
SMFIR_CONTINUE, SMFIR_DISCARD, SMFIR_CHGFROM, SMFIR_CONN_FAIL = b"c", b"d", b"e", b"f"
SMFIR_ADDHEADER, SMFIR_INSHEADER, SMFIR_SETSYMLIST, SMFIR_CHGHEADER = b"h", b"i", b"l", b"m"
SMFIR_PROGRESS, SMFIR_QUARANTINE, SMFIR_REJECT, SMFIR_SKIP = b"p", b"q", b"r", b"s"
SMFIR_TEMPFAIL, SMFIR_REPLYCODE = b"t", b"y"

# Actions a filter may take (SMFIF_*) and protocol steps it may skip (SMFIP_*)
SMFIF_ADDHDRS, SMFIF_CHGBODY, SMFIF_ADDRCPT, SMFIF_DELRCPT = 0x01, 0x02, 0x04, 0x08
SMFIF_CHGHDRS, SMFIF_QUARANTINE, SMFIF_CHGFROM = 0x10, 0x20, 0x40
SMFIF_SETSYMLIST = 0x100     # the filter's reply to SMFIC_OPTNEG may carry macro lists
SMFIP_NOCONNECT, SMFIP_NOHELO, SMFIP_NOMAIL, SMFIP_NORCPT = 0x01, 0x02, 0x04, 0x08
SMFIP_NOBODY, SMFIP_NOHDRS, SMFIP_NOEOH, SMFIP_NR_HDR = 0x10, 0x20, 0x40, 0x80
SMFIP_NOUNKNOWN, SMFIP_NODATA, SMFIP_SKIP, SMFIP_RCPT_REJ = 0x100, 0x200, 0x400, 0x800
SMFIP_NR_CONN, SMFIP_NR_HELO, SMFIP_NR_MAIL, SMFIP_NR_RCPT = 0x1000, 0x2000, 0x4000, 0x8000
SMFIP_NR_DATA, SMFIP_NR_UNKN, SMFIP_NR_EOH, SMFIP_NR_BODY = 0x10000, 0x20000, 0x40000, 0x80000
SMFIP_HDR_LEADSPC = 0x100000

# The stages a macro list is for, in the reply to SMFIC_OPTNEG (libmilter mfapi.h SMFIM_*)
SMFIM_CONNECT, SMFIM_HELO, SMFIM_ENVFROM, SMFIM_ENVRCPT = 0, 1, 2, 3
SMFIM_DATA, SMFIM_EOM, SMFIM_EOH = 4, 5, 6


class ProtocolError(Exception):
    """The peer broke the protocol: close the connection (never crash, never guess)."""


@dataclass(frozen=True)
class OptNeg:
    version: int
    actions: int
    protocol: int


@dataclass(frozen=True)
class Macro:
    for_command: bytes
    macros: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Connect:
    hostname: str
    family: str        # '4', '6', 'L' (unix), 'U' (unknown)
    port: int
    address: str


@dataclass(frozen=True)
class Helo:
    name: str


@dataclass(frozen=True)
class Mail:
    args: tuple[str, ...]   # sender first ("<a@b>"), then ESMTP parameters

    @property
    def address(self) -> str:
        return strip_angle(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class Rcpt:
    args: tuple[str, ...]

    @property
    def address(self) -> str:
        return strip_angle(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class Header:
    name: str
    value: bytes


@dataclass(frozen=True)
class EndOfHeaders:
    pass


@dataclass(frozen=True)
class Body:
    chunk: bytes


@dataclass(frozen=True)
class EndOfMessage:
    chunk: bytes


@dataclass(frozen=True)
class Abort:
    pass


@dataclass(frozen=True)
class Quit:
    new_connection: bool = False


@dataclass(frozen=True)
class Data:
    pass


@dataclass(frozen=True)
class Unknown:
    command: bytes


Event = (OptNeg | Macro | Connect | Helo | Mail | Rcpt | Header | EndOfHeaders | Body
         | EndOfMessage | Abort | Quit | Data | Unknown)


def strip_angle(s: str) -> str:
    s = s.strip()
    return s[1:-1] if s.startswith("<") and s.endswith(">") else s


def _strings(data: bytes) -> list[str]:
    if data and not data.endswith(b"\0"):
        raise ProtocolError("string argument not NUL-terminated")
    return [p.decode("utf-8", "surrogateescape") for p in data[:-1].split(b"\0")] if data else []


_LENGTH = struct.Struct(">I")


class Decoder:
    """Accumulates bytes; ``feed`` returns every complete event, in order.

    ``skip_macros`` names commands (as bytes, e.g. ``b"LB"``) whose macro packets are
    dropped unread, as libmilter drops them (its st_macros keeps macros for the connect,
    HELO, MAIL, RCPT, DATA, end-of-header and end-of-message stages only): Postfix sends one
    before every header and body chunk. ``packets`` counts every packet read."""

    def __init__(self, max_packet: int = MAX_PACKET, skip_macros: bytes = b"") -> None:
        self.max_packet = max_packet
        self._buf = bytearray()
        self._skip = frozenset(skip_macros)  # command bytes, as ints
        self.packets = 0

    def feed(self, data: bytes) -> list[Event]:
        # Packets are cut from the bytes as read (one copy each); only an incomplete
        # packet's bytes are kept, in a bytearray that grows without copying it all again.
        buf: bytes | bytearray = data
        if self._buf:
            self._buf += data
            buf = self._buf
        events: list[Event] = []
        pos, size, skip, count = 0, len(buf), self._skip, 0
        with memoryview(buf) as view:
            while size - pos >= 4:
                (length,) = _LENGTH.unpack_from(buf, pos)
                if length == 0:
                    raise ProtocolError("empty packet")
                if length > self.max_packet:
                    raise ProtocolError(f"packet of {length} bytes exceeds {self.max_packet}")
                end = pos + 4 + length
                if end > size:
                    break
                count += 1
                if not (skip and buf[pos + 4] == 0x44 and length > 1  # 0x44: SMFIC_MACRO
                        and buf[pos + 5] in skip):
                    events.append(decode_packet(bytes(view[pos + 4:pos + 5]),
                                                bytes(view[pos + 5:end])))
                pos = end
        self.packets += count
        if buf is self._buf:
            del self._buf[:pos]
        elif pos < size:
            self._buf = bytearray(data[pos:])
        return events

    @property
    def pending(self) -> int:
        return len(self._buf)


def decode_packet(cmd: bytes, data: bytes) -> Event:
    if cmd == SMFIC_OPTNEG:
        if len(data) < 12:
            raise ProtocolError("short option negotiation")
        return OptNeg(*struct.unpack(">III", data[:12]))
    if cmd == SMFIC_MACRO:
        if not data:
            raise ProtocolError("macro packet without command")
        parts = _strings(data[1:])
        if len(parts) % 2:
            raise ProtocolError("odd number of macro strings")
        return Macro(data[:1], dict(zip(parts[::2], parts[1::2], strict=True)))
    if cmd == SMFIC_CONNECT:
        host, sep, rest = data.partition(b"\0")
        if not sep or not rest:
            raise ProtocolError("malformed connect")
        family = rest[:1].decode("ascii", "replace")
        if family in ("4", "6"):
            if len(rest) < 4:
                raise ProtocolError("malformed connect address")
            (port,) = struct.unpack(">H", rest[1:3])
            address = _strings(rest[3:])
            return Connect(host.decode("utf-8", "replace"), family, port,
                           address[0] if address else "")
        if family == "L":
            (port,) = struct.unpack(">H", rest[1:3]) if len(rest) >= 3 else (0,)
            address = _strings(rest[3:]) if len(rest) > 3 else [""]
            return Connect(host.decode("utf-8", "replace"), family, port, address[0])
        return Connect(host.decode("utf-8", "replace"), "U", 0, "")
    if cmd == SMFIC_HELO:
        parts = _strings(data)
        return Helo(parts[0] if parts else "")
    if cmd == SMFIC_MAIL:
        return Mail(tuple(_strings(data)))
    if cmd == SMFIC_RCPT:
        return Rcpt(tuple(_strings(data)))
    if cmd == SMFIC_HEADER:
        name, sep, rest = data.partition(b"\0")
        if not sep or not rest.endswith(b"\0"):
            raise ProtocolError("malformed header")
        return Header(name.decode("utf-8", "replace"), rest[:-1])
    if cmd == SMFIC_EOH:
        return EndOfHeaders()
    if cmd == SMFIC_BODY:
        return Body(data)
    if cmd == SMFIC_BODYEOB:
        return EndOfMessage(data)
    if cmd == SMFIC_ABORT:
        return Abort()
    if cmd == SMFIC_QUIT:
        return Quit()
    if cmd == SMFIC_QUIT_NC:
        return Quit(new_connection=True)
    if cmd == SMFIC_DATA:
        return Data()
    if cmd == SMFIC_UNKNOWN:
        return Unknown(data.rstrip(b"\0"))
    raise ProtocolError(f"unknown command {cmd!r}")


# -- the order of commands, as libmilter enforces it ------------------------------------
# libmilter (engine.c) keeps a state per connection and a set of states allowed after each.
# A command out of order aborts the transaction in progress; if it would be allowed after
# HELO it is then taken as if from there, else it is ignored: no callback and no reply.

(ST_INIT, ST_OPTS, ST_CONN, ST_HELO, ST_MAIL, ST_RCPT, ST_DATA, ST_HDRS, ST_EOHS, ST_BODY,
 ST_ENDM, ST_QUIT, ST_ABRT, ST_UNKN, ST_Q_NC) = range(15)


def _mask(*states: int) -> int:
    return sum(1 << s for s in states)


_NEXT = {
    ST_INIT: _mask(ST_OPTS),
    ST_OPTS: _mask(ST_CONN, ST_UNKN),
    ST_CONN: _mask(ST_HELO, ST_MAIL, ST_UNKN),
    ST_HELO: _mask(ST_HELO, ST_MAIL, ST_UNKN),
    ST_MAIL: _mask(ST_RCPT, ST_ABRT, ST_UNKN),
    ST_RCPT: _mask(ST_HDRS, ST_EOHS, ST_DATA, ST_BODY, ST_ENDM, ST_RCPT, ST_ABRT, ST_UNKN),
    ST_DATA: _mask(ST_EOHS, ST_HDRS, ST_ABRT),
    ST_HDRS: _mask(ST_EOHS, ST_HDRS, ST_ABRT),
    ST_EOHS: _mask(ST_BODY, ST_ENDM, ST_ABRT),
    ST_BODY: _mask(ST_ENDM, ST_BODY, ST_ABRT),
    ST_ENDM: _mask(ST_QUIT, ST_MAIL, ST_UNKN, ST_Q_NC),
    ST_QUIT: 0,
    ST_ABRT: 0,
    ST_UNKN: _mask(ST_HELO, ST_MAIL, ST_RCPT, ST_ABRT, ST_DATA, ST_BODY, ST_UNKN, ST_QUIT,
                   ST_Q_NC),
    ST_Q_NC: _mask(ST_CONN, ST_UNKN),
}


class ProtocolOrder:
    """libmilter's check of the command order (sans-I/O). ``admit`` says whether to handle
    an event, and whether the transaction in progress is aborted first.

    ``skip(protocol)`` takes the SMFIP_NO* steps the filter asked the MTA not to send: as
    libmilter's fix_stm and trans_ok, such a state may be passed over (headers straight to
    the body when there is no end-of-headers step)."""

    def __init__(self) -> None:
        self.state = ST_INIT
        self._skippable = 0

    def skip(self, protocol: int) -> None:
        self._skippable = sum(1 << state for flag, state in _NO_STEP if protocol & flag)

    def _allowed(self, state: int, new: int) -> bool:
        while True:
            if _NEXT[state] & (1 << new):
                return True
            state += 1  # the states of a transaction are in protocol order
            if state > ST_ENDM or not self._skippable & (1 << state):
                return False

    @staticmethod
    def state_of(event: Event) -> int | None:
        if isinstance(event, Quit):
            return ST_Q_NC if event.new_connection else ST_QUIT
        return _STATE_OF.get(type(event))

    def admit(self, event: Event) -> tuple[bool, bool]:
        """(handle it, abort the transaction in progress first)."""
        new = self.state_of(event)
        if new is None:  # macros: no state of their own
            return True, False
        aborted = False
        if not _NEXT[self.state] & (1 << new) and not (
                self._skippable and self._allowed(self.state, new)):
            aborted = ST_MAIL <= self.state < ST_ENDM
            self.state = ST_HELO
            if not self._allowed(ST_HELO, new):
                return False, aborted
        self.state = new
        return True, aborted

    def replied(self, event: Event, reply: bytes) -> None:
        """After accept, reject or tempfail the transaction is over: back to HELO (RCPT and
        unknown commands excepted: a refused recipient leaves the others)."""
        if isinstance(event, (Rcpt, Unknown)) or len(reply) < 5:  # a tuple: no union built
            return
        if reply[4:5] in (SMFIR_ACCEPT, SMFIR_REJECT, SMFIR_TEMPFAIL, SMFIR_REPLYCODE,
                          SMFIR_DISCARD):
            self.state = ST_HELO


# -- encoding replies --------------------------------------------------------------------

def packet(cmd: bytes, data: bytes = b"") -> bytes:
    return struct.pack(">I", len(data) + 1) + cmd + data


def _cstr(s: str) -> bytes:
    b = s.encode("utf-8")
    if b"\0" in b:
        raise ValueError("NUL in a milter string")
    return b + b"\0"


def encode_optneg(version: int, actions: int, protocol: int,
                  macros: dict[int, str] | None = None) -> bytes:
    """The filter's reply to SMFIC_OPTNEG; ``macros`` (SMFIM_* stage -> space-separated
    macro names) asks the MTA for those macros at those stages only. Send them only with
    SMFIF_SETSYMLIST in ``actions`` (protocol 6: Sendmail reads lists only then)."""
    data = struct.pack(">III", version, actions, protocol)
    for stage, names in sorted((macros or {}).items()):
        if not names.strip():
            raise ValueError("an empty macro list means the MTA's default list to Postfix")
        data += struct.pack(">I", stage) + _cstr(names)
    return packet(SMFIC_OPTNEG, data)


def decode_optneg_reply(data: bytes) -> tuple[OptNeg, dict[int, str]]:
    """The filter's reply to SMFIC_OPTNEG as an MTA reads it (tests, MTA-side tools)."""
    if len(data) < 12:
        raise ProtocolError("short option negotiation")
    reply, rest, macros = OptNeg(*struct.unpack(">III", data[:12])), data[12:], {}
    while rest:
        if len(rest) < 5 or b"\0" not in rest[4:]:
            raise ProtocolError("malformed macro list")
        (stage,) = struct.unpack(">I", rest[:4])
        names, _, rest = rest[4:].partition(b"\0")
        macros[stage] = names.decode("utf-8")
    return reply, macros


def encode_continue() -> bytes:
    return packet(SMFIR_CONTINUE)


def encode_accept() -> bytes:
    return packet(SMFIR_ACCEPT)


def encode_tempfail() -> bytes:
    return packet(SMFIR_TEMPFAIL)


def encode_discard() -> bytes:
    """Accept the message and drop it (the client hears the MTA's 250)."""
    return packet(SMFIR_DISCARD)


def encode_reject() -> bytes:
    return packet(SMFIR_REJECT)


def encode_replycode(line: str) -> bytes:
    """A full SMTP reply (``550 5.7.1 text``); '%' must be doubled for the MTA's printf."""
    code = line[:3]
    if not (code.isdigit() and code[0] in "45" and line[3:4] == " "):
        raise ValueError(f"not a 4xx/5xx reply line: {line!r}")
    return packet(SMFIR_REPLYCODE, _cstr(line.replace("%", "%%").replace("\r", " ")
                                          .replace("\n", " ")))


def encode_addheader(name: str, value: str) -> bytes:
    return packet(SMFIR_ADDHEADER, _cstr(name) + _cstr(value))


def encode_insheader(index: int, name: str, value: str) -> bytes:
    return packet(SMFIR_INSHEADER, struct.pack(">I", index) + _cstr(name) + _cstr(value))


def encode_chgheader(index: int, name: str, value: str | bytes) -> bytes:
    """Change the ``index``-th (1-based) header called ``name``; an empty value deletes it.
    A bytes value goes as it is (a subject in 8-bit text keeps its bytes)."""
    raw = value if isinstance(value, bytes) else value.encode("utf-8")
    if b"\0" in raw:
        raise ValueError("NUL in a milter string")
    return packet(SMFIR_CHGHEADER, struct.pack(">I", index) + _cstr(name) + raw + b"\0")


def encode_replbody(body: bytes, chunk: int = 65535) -> bytes:
    """Replace the message body (several packets for a large one; the MTA joins them)."""
    return b"".join(packet(SMFIR_REPLBODY, body[i:i + chunk])
                    for i in range(0, max(len(body), 1), chunk))


def encode_quarantine(reason: str) -> bytes:
    return packet(SMFIR_QUARANTINE, _cstr(reason))


def encode_progress() -> bytes:
    return packet(SMFIR_PROGRESS)


# -- encoding commands (what an MTA sends; used by tests and tools) ------------------------

def encode_command(event: Event) -> bytes:
    if isinstance(event, OptNeg):
        return packet(SMFIC_OPTNEG, struct.pack(">III", event.version, event.actions,
                                                event.protocol))
    if isinstance(event, Macro):
        return packet(SMFIC_MACRO, event.for_command + b"".join(
            _cstr(k) + _cstr(v) for k, v in event.macros.items()))
    if isinstance(event, Connect):
        return packet(SMFIC_CONNECT, _cstr(event.hostname) + event.family.encode()
                      + struct.pack(">H", event.port) + _cstr(event.address))
    if isinstance(event, Helo):
        return packet(SMFIC_HELO, _cstr(event.name))
    if isinstance(event, Mail):
        return packet(SMFIC_MAIL, b"".join(_cstr(a) for a in event.args))
    if isinstance(event, Rcpt):
        return packet(SMFIC_RCPT, b"".join(_cstr(a) for a in event.args))
    if isinstance(event, Header):
        return packet(SMFIC_HEADER, _cstr(event.name) + event.value + b"\0")
    if isinstance(event, EndOfHeaders):
        return packet(SMFIC_EOH)
    if isinstance(event, Body):
        return packet(SMFIC_BODY, event.chunk)
    if isinstance(event, EndOfMessage):
        return packet(SMFIC_BODYEOB, event.chunk)
    if isinstance(event, Abort):
        return packet(SMFIC_ABORT)
    if isinstance(event, Quit):
        return packet(SMFIC_QUIT_NC if event.new_connection else SMFIC_QUIT)
    if isinstance(event, Data):
        return packet(SMFIC_DATA)
    return packet(SMFIC_UNKNOWN, event.command + b"\0")


@dataclass(frozen=True)
class Response:
    """A decoded reply from a filter (for tests and an MTA-side client)."""

    cmd: bytes
    data: bytes


def decode_replies(data: bytes) -> list[Response]:
    out = []
    while len(data) >= 4:
        (length,) = struct.unpack(">I", data[:4])
        if len(data) < 4 + length or length == 0:
            break
        out.append(Response(data[4:5], data[5:4 + length]))
        data = data[4 + length:]
    return out


# The steps a filter may ask not to be sent, and the state each would have been.
_NO_STEP = ((SMFIP_NOCONNECT, ST_CONN), (SMFIP_NOHELO, ST_HELO), (SMFIP_NOMAIL, ST_MAIL),
            (SMFIP_NORCPT, ST_RCPT), (SMFIP_NODATA, ST_DATA), (SMFIP_NOHDRS, ST_HDRS),
            (SMFIP_NOEOH, ST_EOHS), (SMFIP_NOBODY, ST_BODY))

_STATE_OF: dict[type, int] = {
    OptNeg: ST_OPTS, Connect: ST_CONN, Helo: ST_HELO, Mail: ST_MAIL, Rcpt: ST_RCPT,
    Data: ST_DATA, Header: ST_HDRS, EndOfHeaders: ST_EOHS, Body: ST_BODY,
    EndOfMessage: ST_ENDM, Abort: ST_ABRT, Unknown: ST_UNKN,
}
