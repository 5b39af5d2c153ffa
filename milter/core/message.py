"""The message model: one parse per message, shared by every rule.

The raw bytes are normalised to CRLF once at ingress (``normalize_line_endings``) and never
changed afterwards, so the bytes the rules inspect are the bytes relayed and stored.
Parsing is defensive: Python's ``email`` picks one reading of ambiguous MIME silently, so the
ambiguities it papers over are recorded as defects for the rules to see.
"""

from __future__ import annotations

import binascii
import contextlib
import functools
import hashlib
import quopri
import re
import secrets
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from email.headerregistry import HeaderRegistry
from email.message import EmailMessage
from email.message import Message as StdMessage
from email.parser import BytesParser
from email.policy import EmailPolicy, compat32
from functools import cached_property
from types import MappingProxyType
from typing import Any

MAX_DEPTH = 40          # MIME nesting deeper than this cannot be a real mail program's output
MAX_PARTS = 2000

_BARE = re.compile(rb"\r\n|\r|\n")
# Headers read through the rich header registry (decoded words, parsed addresses); every
# other header is handed out as the unfolded raw string, as compat32 does: parsing each
# Content-Type again for every get_param call cost more than the rest of the policy together.
_RICH = frozenset({"from", "subject", "to", "cc", "reply-to", "sender", "resent-from"})


class _Policy(EmailPolicy):
    def header_fetch_parse(self, name: str, value: str) -> Any:
        if name.lower() in _RICH or _SURROGATE.search(value):
            return super().header_fetch_parse(name, value)
        return compat32.header_fetch_parse(name, value)


class _Registry(HeaderRegistry):
    """The stdlib's registry makes a new class with type() for every header it parses; here
    one per kind of header, made once (the same classes, built and looked up again)."""

    def __init__(self) -> None:
        super().__init__()
        self._made: dict[type, type] = {}

    def __getitem__(self, name: str) -> type:
        kind = self.registry.get(name.lower(), self.default_class)
        made = self._made.get(kind)
        if made is None:
            made = self._made[kind] = super().__getitem__(name)
        return made


_SURROGATE = re.compile("[\udc80-\udcff]")
POLICY = _Policy(header_factory=_Registry())
_CTL = re.compile(r"[\x00-\x1f\x7f]")
_BAD_ADDRESS = re.compile(r"[\x00-\x20\x7f<>()\[\],;:\"\\]")


def normalize_line_endings(raw: bytes) -> bytes:
    """Turn every bare CR or LF into CRLF, so no hop can read a line end we did not see.

    Most messages have none (three counts in C tell): they are returned without a copy."""
    crlf = raw.count(b"\r\n")
    if crlf == raw.count(b"\r") == raw.count(b"\n"):
        return raw
    return _BARE.sub(b"\r\n", raw)


class Unparseable(Exception):
    """The message cannot be parsed and never will be: answer 554 5.6.0, do not retry."""


@dataclass(frozen=True)
class Author:
    """One address from a ``From:`` field, with whether it is a usable address at all."""

    display_name: str
    addr_spec: str
    valid: bool

    @property
    def domain(self) -> str:
        return self.addr_spec.rpartition("@")[2].lower() if self.valid else ""

    @property
    def address_ok(self) -> bool:
        """The address itself is usable even where the field is not: raw UTF-8 in a
        display name is a defect to the parser, yet mail programs show it and replies go
        to the address (rules that follow replies use this; B1's From: check does not)."""
        if self.valid:
            return True
        try:  # raw UTF-8 (an internationalised address, RFC 6531) as the parser left it
            spec = self.addr_spec.encode("utf-8", "surrogateescape").decode("utf-8")
        except UnicodeError:
            return False
        local, at, domain = spec.rpartition("@")
        return bool(local and at and domain) and "@" not in local and \
            not _BAD_ADDRESS.search(spec)


class Part:
    """A leaf MIME part. The payload is decoded only when a rule asks for it."""

    def __init__(self, msg: StdMessage, depth: int, index: int, path: str,
                 elided: Elided | None = None) -> None:
        self._msg = msg
        self._elided = elided
        self.depth = depth
        self.index = index
        self.path = path
        self.content_type = msg.get_content_type()
        self.filename = _filename(msg)
        disp = msg.get_content_disposition()
        self.disposition = disp or ""
        self.is_attachment = (disp == "attachment" or bool(self.filename)
                              or self.content_type.split("/")[0] not in ("text", "multipart"))
        self.defects = tuple(type(d).__name__ for d in msg.defects)

    @cached_property
    def payload(self) -> bytes:
        if self._elided is not None:
            return self._elided.payload(self._msg)
        try:
            data = self._msg.get_payload(decode=True)
        except Exception:  # noqa: BLE001 - a broken transfer encoding must not crash a rule
            return b""
        return data if isinstance(data, bytes) else b""

    @cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.payload).hexdigest()

    @property
    def size(self) -> int:
        return len(self.payload)

    def text_charset(self) -> str | None:
        return self._charset

    @cached_property
    def _charset(self) -> str | None:
        value = _first_raw(self._msg, "content-type")
        if isinstance(value, str) and value.isascii() and len(value) <= _CACHED_VALUE:
            return _cached_charset(value)  # what the stdlib reads from this value
        return _content_charset(self._msg)

    @cached_property
    def text(self) -> str:
        """Decoded text of a text/* part (lenient: undecodable bytes are replaced)."""
        charset = self._charset or "utf-8"
        try:
            return self.payload.decode(charset, errors="replace")
        except LookupError:
            return self.payload.decode("utf-8", errors="replace")

    def evidence(self) -> dict[str, object]:
        """What the audit may keep about this part: never its content."""
        return {"name": self.filename, "type": self.content_type, "size": self.size,
                "sha256": self.sha256}


# Runs of 32 or more "plain" lines: not empty, no colon, not starting with white space, "-"
# or "From ". Such a line is never a boundary (those start with "--"), a header or its
# continuation, or a blank line, so the stdlib parser reads the same structure when a run is
# replaced by one such line (the token); a part's bytes are then taken straight from the raw
# message. The body of an encoded attachment is one long run, and so is most plain text:
# parsing a 10 MB attachment line by line in Python cost a second and 100 MB.
# The classes are written as the bytes they allow, not as ``[^\r\n:]``: the regex engine
# tests a negated class in three steps a byte, an allowed one in one (half the time).
_RUN = re.compile(rb"\n((?:(?!From )[\x00-\x08\x0b\x0c\x0e-\x1f!-,.-9;-\xff]"
                  rb"[\x00-\x09\x0b\x0c\x0e-9;-\xff]*+\r\n)++)")
_MIN_LINES = 32
_B64_RUN = re.compile(rb"\n((?:[A-Za-z0-9+/]++\r\n){%d,}+)" % _MIN_LINES)  # found faster
_B64_LINES = re.compile(rb"(?:[A-Za-z0-9+/]++(?:\r\n|\Z))*+")
_B64_TEXT = re.compile(r"[A-Za-z0-9+/]*")
_B64_LAST = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_TOKEN = re.compile("0SKOTELIDED([0-9a-f]{16})N([0-9]+)(\r\n)?")
_UU = ("x-uuencode", "uuencode", "uue", "x-uue")


class Elided:
    """The runs cut out of one parse, and the tokens that stand in for them."""

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.nonce = ""  # drawn only for a message that has runs (a system call each)
        self.spans: list[tuple[int, int]] = []
        self.base64: set[int] = set()  # spans ``_B64_RUN`` found: base64 lines, checked

    def skeleton(self) -> bytes:
        """The message with every long run of plain lines replaced by one token line."""
        raw = self.raw
        gap = 0
        for m in _B64_RUN.finditer(raw):  # attachments first; other text between them
            self._plain_runs(gap, m.start(1))
            self.base64.add(len(self.spans))
            self.spans.append(m.span(1))
            gap = m.end(1)
        self._plain_runs(gap, len(raw))
        if not self.spans:
            return raw
        self.nonce = secrets.token_hex(8)  # unguessable: a sender cannot forge a token
        out: list[bytes] = []
        pos = 0
        for n, (start, end) in enumerate(self.spans):
            out += [raw[pos:start], f"0SKOTELIDED{self.nonce}N{n}\r\n".encode()]
            pos = end
        out.append(raw[pos:])
        return b"".join(out)

    def _plain_runs(self, start: int, end: int) -> None:
        raw = self.raw
        for m in _RUN.finditer(raw, max(start - 1, 0), end):
            a, b = m.span(1)
            if b - a >= 2 * _MIN_LINES and raw.count(b"\n", a, b) >= _MIN_LINES:
                self.spans.append((a, b))

    def has_token(self, text: object) -> bool:
        return bool(self.nonce) and isinstance(text, str) and self.nonce in text

    def tokens(self, text: str) -> Iterator[re.Match[str]]:
        return (m for m in _TOKEN.finditer(text) if m.group(1) == self.nonce)

    def restore(self, text: str) -> str:
        return _TOKEN.sub(lambda m: self._span(m).decode("ascii", "surrogateescape")
                          if m.group(1) == self.nonce else m.group(0), text)

    def _span(self, m: re.Match[str]) -> bytes:
        """The run a token stands for; without its last line end where the parser took the
        token's (the line before a boundary, the end of a preamble)."""
        start, end = self.spans[int(m.group(2))]
        return self.raw[start:end if m.group(3) else end - 2]

    def payload(self, msg: StdMessage) -> bytes:
        """What ``get_payload(decode=True)`` gives for the restored payload, without
        building it as text: the raw bytes as they are, quoted-printable decoded, or valid
        base64 (the common case) decoded straight from them."""
        text = _stored(msg)
        if not isinstance(text, str):
            return b""
        cte = str(msg.get("content-transfer-encoding", "")).lower()  # exactly as the stdlib
        if cte in _UU:
            return self._stdlib(msg, text)
        pieces: list[bytes] = []
        runs: list[bytes] = []
        unchecked: list[bytes] = []  # runs not yet known to be base64 lines
        pos = 0
        for m in self.tokens(text):
            runs.append(self._span(m))
            if int(m.group(2)) not in self.base64:
                unchecked.append(runs[-1])
            pieces += [text[pos:m.start()].encode("ascii", "surrogateescape"), runs[-1]]
            pos = m.end()
        pieces.append(text[pos:].encode("ascii", "surrogateescape"))
        if cte == "quoted-printable":
            return quopri.decodestring(b"".join(pieces))
        if cte != "base64":
            return b"".join(pieces)
        texts = ["".join(p.decode("ascii", "surrogateescape").splitlines())
                 for p in pieces[0::2]]
        # A run is whole lines, each ending in CRLF (the last one's may be cut), with no
        # other CR or LF in it (``_RUN``, ``_B64_RUN``): its LFs count its line ends, and a
        # run ``_B64_RUN`` found is base64 lines already (what ``_B64_LINES`` would check
        # again, a regex step per byte).
        total = sum(map(len, texts)) + sum(len(r) - 2 * r.count(b"\n") for r in runs)
        if total % 4 == 0 and all(_B64_TEXT.fullmatch(t) for t in texts[:-1]) \
                and _B64_LAST.fullmatch(texts[-1]) \
                and all(_B64_LINES.fullmatch(r) for r in unchecked):
            return binascii.a2b_base64(b"".join(pieces))  # skips line ends, as the join does
        return self._stdlib(msg, text)

    def _stdlib(self, msg: StdMessage, text: str) -> bytes:
        """Anything odd: the stdlib's own reading of the restored text, defects and all."""
        msg.set_payload(self.restore(text))
        try:
            value = msg.get_payload(decode=True)
        except Exception:  # noqa: BLE001 - a broken transfer encoding must not crash a rule
            return b""
        return value if isinstance(value, bytes) else b""


def _stored(msg: StdMessage) -> object:
    """The payload as the parser stored it: ``get_payload()`` would decode 8-bit text by
    its declared charset first."""
    return msg._payload  # type: ignore[attr-defined]


def _content_charset(msg: StdMessage) -> str | None:
    try:
        return msg.get_content_charset()
    except Exception:  # noqa: BLE001
        return None


def _first_raw(msg: StdMessage, name: str) -> object:
    """The first ``name`` field's value as the parser stored it (what ``get`` hands the
    policy), or None."""
    for k, v in msg._headers:  # type: ignore[attr-defined]
        if k.lower() == name:
            return v
    return None


@functools.lru_cache(maxsize=1024)
def _cached_charset(value: str) -> str | None:
    """The charset of a Content-Type value, read by the stdlib once per value (its
    parameter parsing cost as much as a small message's parse): an ASCII value is handed
    out unchanged by our policy and by compat32 alike, so this reading is the part's."""
    probe = StdMessage(policy=compat32)
    probe["Content-Type"] = value
    return _content_charset(probe)


def _filename(msg: StdMessage) -> str:
    """The name a mail client shows: Content-Disposition ``filename`` before Content-Type
    ``name``, and of each the RFC 2231 form (``filename*``, continuations) before the plain
    one. Python's ``get_filename`` prefers the plain one; Thunderbird, Outlook and Apple Mail
    show the RFC 2231 one, and the name the policy and the notice give must be theirs."""
    for header, param in (("content-disposition", "filename"), ("content-type", "name")):
        values = _param_values(msg, header, param)
        for key in ("extended", "plain"):
            if key in values:
                return values[key]
    return ""


def _header_value(msg: StdMessage, header: str) -> str | None:
    """The first ``header`` field's value as ``get`` gives it, or None. ``header``: a
    lower-case name outside ``_RICH``, whose ASCII value our policy hands out as stored, so
    that value is taken straight (each node's are read about ten times in the walk)."""
    stored = _first_raw(msg, header)
    if stored is None:
        return None
    if isinstance(stored, str) and stored.isascii():
        return stored
    try:
        raw = msg.get(header)
    except Exception:  # noqa: BLE001
        return None
    return None if raw is None else str(raw)


def _header_params(msg: StdMessage, header: str) -> tuple[tuple[str, str], ...]:
    """The parameters of the first ``header`` field as written: (lower-case name, raw value)."""
    value = _header_value(msg, header)
    return () if value is None else _params_of(value)


# The same few Content-Type and Content-Disposition values come in all day, and each node's
# are read for several parameters (the walk, its defects, the part's name): the parameters
# of a value are split once (values of a sane length only, so the cache stays small).
_CACHED_VALUE = 512


def _params_of(value: str) -> tuple[tuple[str, str], ...]:
    if len(value) > _CACHED_VALUE:
        return tuple(_split_params(value))
    return _cached_params(value)


@functools.lru_cache(maxsize=2048)
def _cached_params(value: str) -> tuple[tuple[str, str], ...]:
    return tuple(_split_params(value))


def _split_params(value: str) -> list[tuple[str, str]]:
    """``type/sub; a=1; b="x;y"`` -> [("a", "1"), ("b", '"x;y"')], quotes respected."""
    pieces: list[str] = []
    buf: list[str] = []
    quoted = escaped = False
    for ch in value:
        if escaped:
            escaped = False
        elif ch == "\\" and quoted:
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == ";" and not quoted:
            pieces.append("".join(buf))
            buf = []
            continue
        buf.append(ch)
    pieces.append("".join(buf))
    out: list[tuple[str, str]] = []
    for piece in pieces[1:]:
        name, eq, val = piece.partition("=")
        if eq:
            out.append((name.strip().lower(), val.strip()))
    return out


def _param_values(msg: StdMessage, header: str, param: str) -> Mapping[str, str]:
    """The plain and the RFC 2231 (``param*``, ``param*0``...) value of one parameter,
    decoded, as {"plain": ..., "extended": ...} (only those present)."""
    value = _header_value(msg, header)
    if value is None:
        return {}
    if len(value) > _CACHED_VALUE:
        return _values_of(value, param)
    return _cached_values(value, param)


@functools.lru_cache(maxsize=4096)
def _cached_values(value: str, param: str) -> Mapping[str, str]:
    return MappingProxyType(_values_of(value, param))  # shared: read-only


def _values_of(value: str, param: str) -> dict[str, str]:
    from email.utils import collapse_rfc2231_value, decode_params

    params = _params_of(value)
    out: dict[str, str] = {}
    plain = [v for n, v in params if n == param]
    if plain:
        value = _unquote(plain[0])
        if "=?" in value:  # an encoded-word in quotes: mail programs write it, RFC 2047 does not
            from email.header import decode_header, make_header
            with contextlib.suppress(Exception):
                value = str(make_header(decode_header(value)))
        out["plain"] = _CTL.sub("", value).strip()
    extended = [(n, v) for n, v in params if n.startswith(param + "*")]
    if extended:
        with contextlib.suppress(Exception):
            decoded = decode_params([("", ""), *extended])
            for n, v in decoded[1:]:
                if n == param:
                    out["extended"] = _CTL.sub("", _unquote(collapse_rfc2231_value(v))).strip()
                    break
    return out


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


# Parameters whose doubles mail programs resolve differently (first or last, plain or RFC
# 2231), and headers likewise: the reader of the message may see another structure, another
# charset or another attachment name than we inspected.
_WATCHED = {"content-type": ("boundary", "charset", "name"),
            "content-disposition": ("filename",)}
_SINGLE_HEADERS = ("content-disposition", "content-transfer-encoding")


def mime_defects(node: StdMessage) -> list[str]:
    """``DuplicateMimeParameter:<name>``, ``ConflictingMimeParameter:<name>`` and
    ``DuplicateMimeHeader:<name>`` for one MIME node."""
    defects: list[str] = []
    for header, watched in _WATCHED.items():
        params = _header_params(node, header)
        if not params:
            continue
        names = [n for n, _ in params]
        for param in watched:
            family = [n for n in names if n == param or n.startswith(param + "*")]
            if len(family) != len(set(family)):
                defects.append(f"DuplicateMimeParameter:{param}")
            values = _param_values(node, header, param)
            if len(set(values.values())) > 1:
                defects.append(f"ConflictingMimeParameter:{param}")
    shown = {k: v for k, v in (
        ("filename", _param_values(node, "content-disposition", "filename")),
        ("name", _param_values(node, "content-type", "name"))) if v}
    if len(shown) == 2:
        a = shown["filename"].get("extended", shown["filename"].get("plain"))
        b = shown["name"].get("extended", shown["name"].get("plain"))
        if a and b and a != b:
            defects.append("ConflictingMimeParameter:filename/name")
    for header in _SINGLE_HEADERS:
        if sum(1 for k in node if k.lower() == header) > 1:
            defects.append(f"DuplicateMimeHeader:{header}")
    return defects


@dataclass(frozen=True)
class Message:
    """A parsed message. ``email`` is the stdlib tree for rules that need more."""

    raw: bytes
    email: EmailMessage
    authors: tuple[Author, ...]
    from_field_count: int
    subject: str
    message_id: str
    parts: tuple[Part, ...]
    defects: tuple[str, ...]
    headers: tuple[tuple[str, str], ...]
    nested_messages: tuple[EmailMessage, ...]
    # Results derived from this message (inspection, authentication), computed once and
    # shared by every rule: one parse, one inspection per message.
    cache: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def attachments(self) -> tuple[Part, ...]:
        return tuple(p for p in self.parts if p.is_attachment)

    @property
    def body_parts(self) -> tuple[Part, ...]:
        return tuple(p for p in self.parts if not p.is_attachment)

    @cached_property
    def body_sha256(self) -> str:
        return hashlib.sha256(self.raw).hexdigest()

    def header(self, name: str) -> list[str]:
        """All raw values of a header, unfolded, in order."""
        lname = name.lower()
        return [v for k, v in self.headers if k.lower() == lname]

    def addresses(self, name: str) -> tuple[Author, ...]:
        """Every address in the address-list header ``name`` (all its fields), parsed as
        ``From:`` is; an empty value (``Return-Path: <>``) gives none."""
        values = tuple(v for v in self.header(name) if v.strip() not in ("", "<>"))
        return _parse_authors(values)[0] if values else ()


def _header_str(msg: StdMessage, name: str) -> str:
    try:
        v = msg.get(name)
    except Exception:  # noqa: BLE001
        return ""
    return _CTL.sub(" ", str(v)).strip() if v is not None else ""


def _authors(msg: EmailMessage) -> tuple[tuple[Author, ...], int]:
    values = tuple(v for k, v in msg.raw_items() if k.lower() == "from")
    return _parse_authors(values)


@functools.lru_cache(maxsize=2048)
def _parse_authors(values: tuple[str, ...]) -> tuple[tuple[Author, ...], int]:
    """The authors of raw ``From:`` values. A relay sees the same few thousand senders all
    day; the address parser costs more than the rest of the message parse."""
    out: list[Author] = []
    for value in values:
        try:
            f = POLICY.header_fetch_parse("From", value)
            addresses = f.addresses
            defects = f.defects
        except Exception:  # noqa: BLE001 - header objects that fail to parse
            out.append(Author("", str(value), False))
            continue
        if not addresses:
            out.append(Author("", "", False))
        for a in addresses:
            spec = a.addr_spec
            valid = (not defects and bool(a.username) and bool(a.domain)
                     and not _CTL.search(spec) and not _CTL.search(a.display_name or "")
                     and spec.count("@") == 1)
            out.append(Author(a.display_name or "", spec, valid))
    return tuple(out), len(values)


def parse(raw: bytes, *, elide: bool = True) -> Message:
    """Parse normalised bytes once. Raises Unparseable for a message no retry will fix.

    With ``elide`` (always, outside the tests that prove it changes nothing) long runs of
    plain lines are parsed as one line each and read from ``raw`` when a rule asks."""
    try:
        elided = Elided(raw) if elide else None
        msg = BytesParser(policy=POLICY).parsebytes(elided.skeleton() if elided else raw)
        if elided is not None and not elided.spans:
            elided = None
        assert isinstance(msg, EmailMessage)
        parts: list[Part] = []
        nested: list[EmailMessage] = []
        defects: list[str] = [type(d).__name__ for d in msg.defects]
        # Iterative walk with an explicit stack: deep nesting must not exhaust the C stack.
        stack: list[tuple[StdMessage, int, str]] = [(msg, 0, "1")]
        count = 0
        while stack:
            node, depth, path = stack.pop()
            count += 1
            if depth > MAX_DEPTH:
                raise Unparseable(f"MIME nesting deeper than {MAX_DEPTH} levels")
            if count > MAX_PARTS:
                raise Unparseable(f"more than {MAX_PARTS} MIME parts")
            if sum(1 for k in node if k.lower() == "content-type") > 1:
                defects.append("DuplicateContentType")
            defects.extend(mime_defects(node))
            if node is not msg:
                defects.extend(type(d).__name__ for d in node.defects)
            if elided is not None:
                for attr in ("preamble", "epilogue"):
                    if elided.has_token(getattr(node, attr, None)):
                        setattr(node, attr, elided.restore(getattr(node, attr)))
            if node.is_multipart():
                children = node.get_payload()
                if not isinstance(children, list):
                    continue
                if node.get_content_type() == "message/rfc822":
                    for child in children:
                        if isinstance(child, EmailMessage):
                            nested.append(child)
                for i, child in reversed(list(enumerate(children, start=1))):
                    if isinstance(child, StdMessage):
                        stack.append((child, depth + 1, f"{path}.{i}"))
            else:
                text = _stored(node)
                lean = elided if elided is not None and elided.has_token(text) else None
                parts.append(Part(node, depth, len(parts), path, lean))  # bytes from raw
        authors, count_from = _authors(msg)
        headers = tuple((k, _CTL.sub(" ", str(v))) for k, v in msg.raw_items())
        return Message(raw=raw, email=msg, authors=authors, from_field_count=count_from,
                       subject=_header_str(msg, "Subject"),
                       message_id=_header_str(msg, "Message-ID"), parts=tuple(parts),
                       defects=tuple(defects), headers=headers, nested_messages=tuple(nested))
    except Unparseable:
        raise
    except RecursionError:
        raise Unparseable("MIME structure too deeply nested to parse") from None
    except (MemoryError, AssertionError) as exc:
        raise Unparseable(f"message cannot be parsed: {type(exc).__name__}") from None
