"""The warning a recipient sees on a tagged message: a subject prefix or a banner.

Schools know the "External sender" banner; a rule whose policy params carry ``warning``
(``B1.lookalike-sender``) gets one when it fired in enforce mode and the message is
delivered. This module is pure and works on the message bytes only, so both fronts deliver
the same message: the SMTP front relays ``marked(...)`` as it is; the milter front turns
the same result into a ``Subject:`` change and a body replacement (``milter_changes``).

The banner goes into the first ``text/plain`` and the first ``text/html`` part (the two
views of one body), encoded as the part already is (same charset and transfer encoding),
so no header but ``Subject:`` ever changes. A message whose MIME the parser found
ambiguous, or a body this module cannot rewrite safely, gets the subject prefix instead:
the warning is never silently dropped and the message never corrupted.
"""

from __future__ import annotations

import binascii
import codecs
import html
import quopri
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from email.header import Header
from email.message import Message as StdMessage
from email.parser import BytesHeaderParser
from email.policy import compat32
from typing import Any

from milter.core.message import Message
from milter.core.verdict import Verdict, ascii_line
from milter.policy import Policy

MAX_DEPTH = 10
_HTML_ANCHORS = tuple(re.compile(p, re.IGNORECASE) for p in (
    rb"<body\b[^>]*>", rb"</head\s*>", rb"<html\b[^>]*>", rb"<!doctype\b[^>]*>"))


@dataclass(frozen=True)
class Caution:
    kind: str            # "banner" or "subject"
    subject_prefix: str
    banner_text: str


def warning_for(verdict: Verdict, params: Mapping[str, Mapping[str, Any]]) -> Caution | None:
    """The warning owed for a delivered verdict: from the first enforced rule that fired
    with a ``warning`` param other than "none" (``params``: rule id -> policy params)."""
    if verdict.action not in ("accept", "tag"):
        return None
    for r in verdict.enforced:
        p = params.get(r.id, {})
        kind = str(p.get("warning", "none"))
        if kind != "none" and r.action == "tag":
            return Caution(kind, str(p.get("subject_prefix", "")), str(p.get("banner_text", "")))
    return None


def delivered(raw: bytes, message: Message | None, verdict: Verdict, policy: Policy,
              banner: bool = True) -> bytes:
    """The message as the recipient gets it under ``policy``; ``banner`` False when the
    front cannot replace the body (the subject prefix is used instead)."""
    if not any(r.action == "tag" for r in verdict.enforced):
        return raw  # almost every message: no copy, no look-up
    caution = warning_for(verdict, {r.id: policy.rules[r.id].params for r in verdict.enforced
                                    if r.id in policy.rules})
    if caution is not None and not banner:
        caution = Caution("subject", caution.subject_prefix, caution.banner_text)
    return marked(raw, message, caution)


def marked(raw: bytes, message: Message | None, warning: Caution | None) -> bytes:
    """The message as the recipient gets it: ``raw`` with the warning, or ``raw`` itself."""
    if warning is None:
        return raw
    if warning.kind == "banner" and warning.banner_text and message is not None \
            and not message.defects:
        bannered = add_banner(raw, warning.banner_text)
        if bannered is not None:
            return bannered
    return prefix_subject(raw, warning.subject_prefix or "[!]")


def milter_changes(raw: bytes, new: bytes) -> tuple[bytes | None, bytes | None]:
    """What the milter front asks of the MTA to turn ``raw`` into ``new``: the new
    ``Subject:`` value (None: unchanged) and the new body (None: unchanged)."""
    head, _, body = raw.partition(b"\r\n\r\n")
    new_head, _, new_body = new.partition(b"\r\n\r\n")
    subject = None
    if new_head != head:
        subject = _subject_value(new_head)
    return subject, (new_body if new_body != body else None)


# -- subject ------------------------------------------------------------------------------

def _subject_value(head: bytes) -> bytes:
    """The (first) Subject value of a header block, unfolded, without the leading space."""
    for field in _fields(head):
        name, _, value = field.partition(b":")
        if name.strip().lower() == b"subject":
            # NUL cannot travel in a milter header change (HOSTILE-INPUTS 8): dropped on
            # both fronts alike.
            return re.sub(rb"\r\n(?=[ \t])", b"", value).replace(b"\0", b"").strip()
    return b""


def _fields(head: bytes) -> list[bytes]:
    out: list[bytes] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and out:
            out[-1] += b"\r\n" + line
        else:
            out.append(line)
    return out


def prefix_subject(raw: bytes, prefix: str) -> bytes:
    """``raw`` with ``prefix`` in front of its (first) subject, unfolded to one line;
    a subject that already holds it ("Re: [prefix] ...") keeps one."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        head, body = raw, b""
    try:
        word = prefix.encode("ascii")
    except UnicodeEncodeError:
        word = Header(prefix, "utf-8").encode().encode("ascii")
    fields = _fields(head)
    for i, field in enumerate(fields):
        name, _, _value = field.partition(b":")
        if name.strip().lower() == b"subject":
            value = _subject_value(field)
            if word not in value:  # a reply to a warned message already carries it
                value = word + b" " + value if value else word
            fields[i] = b"Subject: " + value
            break
    else:
        fields.append(b"Subject: " + word)
    return b"\r\n".join(fields) + b"\r\n\r\n" + body


# -- banner -------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Leaf:
    ctype: str
    headers: StdMessage
    start: int   # the part's body in raw: raw[start:end]
    end: int


def _entity(raw: bytes, start: int, end: int, depth: int) -> Iterator[_Leaf]:
    """The leaves of the entity ``raw[start:end]``; ValueError when its structure is not
    one this module can splice safely (no closing delimiter, too deep)."""
    if depth > MAX_DEPTH:
        raise ValueError("too deep")
    sep = raw.find(b"\r\n\r\n", start, end)
    if raw.startswith(b"\r\n", start):
        head_end, body_start = start, start + 2
    elif sep < 0:
        raise ValueError("no header end")
    else:
        head_end, body_start = sep, sep + 4
    headers = BytesHeaderParser(policy=compat32).parsebytes(raw[start:head_end] + b"\r\n\r\n")
    ctype = headers.get_content_type()
    if not ctype.startswith("multipart/"):
        yield _Leaf(ctype, headers, body_start, end)
        return
    boundary = headers.get_boundary()
    if not boundary:
        raise ValueError("multipart without boundary")
    delim = re.compile(rb"\r\n--" + re.escape(boundary.encode("ascii", "replace"))
                       + rb"(--)?[ \t]*(?:\r\n|\Z)")
    pos = body_start - 2  # the blank line's CRLF: a delimiter may be the first body line
    first = delim.search(raw, pos, end)
    if first is None or first.group(1):
        raise ValueError("no first delimiter")
    part_start = first.end()
    while True:
        nxt = delim.search(raw, part_start, end)
        if nxt is None:
            raise ValueError("no closing delimiter")
        yield from _entity(raw, part_start, nxt.start(), depth + 1)
        if nxt.group(1):
            return
        part_start = nxt.end()


def _is_body_text(leaf: _Leaf) -> bool:
    disposition = (leaf.headers.get("content-disposition") or "").split(";")[0].strip().lower()
    return (leaf.ctype in ("text/plain", "text/html") and disposition != "attachment"
            and not leaf.headers.get_filename())


def add_banner(raw: bytes, text: str) -> bytes | None:
    """``raw`` with ``text`` at the top of its first plain-text and first HTML part, or
    None when there is none or it cannot be rewritten safely."""
    try:
        leaves = list(_entity(raw, 0, len(raw), 0))
    except (ValueError, LookupError):
        return None
    chosen: dict[str, _Leaf] = {}
    for leaf in leaves:
        if _is_body_text(leaf):
            chosen.setdefault(leaf.ctype, leaf)
    out = raw
    # From the last part to the first, so the earlier offsets stay valid.
    for leaf in sorted(chosen.values(), key=lambda f: f.start, reverse=True):
        new = _with_banner(raw[leaf.start:leaf.end], leaf, text)
        if new is None:
            return None
        out = out[:leaf.start] + new + out[leaf.end:]
    return out if chosen else None


def _with_banner(content: bytes, leaf: _Leaf, text: str) -> bytes | None:
    cte = (leaf.headers.get("content-transfer-encoding") or "7bit").strip().lower()
    charset = leaf.headers.get_content_charset() or "us-ascii"
    try:
        info = codecs.lookup(charset)
    except LookupError:
        return None
    if "utf_16" in info.name or "utf_32" in info.name:
        return None  # not ASCII-compatible: no safe byte splice
    if cte == "base64":
        try:
            data = binascii.a2b_base64(content)
        except binascii.Error:
            return None
    elif cte == "quoted-printable":
        data = quopri.decodestring(content)
    elif cte in ("7bit", "8bit", "binary"):
        data = content
    else:
        return None
    if cte == "7bit":
        text = ascii_line(text)
    try:
        encoded = text.encode(info.name)
    except UnicodeEncodeError:
        encoded = ascii_line(text).encode("ascii")
    if leaf.ctype == "text/html":
        banner = (b'<div style="border:2px solid #c00000;background:#fff0f0;padding:8px;'
                  b'margin:0 0 12px 0;font-family:sans-serif;color:#000000">'
                  + html.escape(encoded.decode(info.name)).encode(info.name, "xmlcharrefreplace")
                  + b"</div>\r\n")
        # After <body>; without one after </head>, <html> or the doctype: never before a
        # doctype (that would switch the mail program's renderer to quirks mode).
        tag = next((m for m in (p.search(data) for p in _HTML_ANCHORS) if m), None)
        at = tag.end() if tag else 0
        data = data[:at] + banner + data[at:]
    else:
        data = encoded + b"\r\n\r\n" + data
    if cte == "base64":
        b64 = binascii.b2a_base64(data, newline=False)
        lines = [b64[i:i + 76] for i in range(0, len(b64), 76)]
        return b"\r\n".join(lines) + (b"\r\n" if content.endswith(b"\n") else b"")
    if cte == "quoted-printable":
        return quopri.encodestring(data.replace(b"\r\n", b"\n")).replace(b"\n", b"\r\n")
    return data


__all__ = ["Caution", "add_banner", "delivered", "marked", "milter_changes", "prefix_subject",
           "warning_for"]
