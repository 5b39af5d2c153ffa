"""School mail forwarded to outside mailboxes: automatically (A1/B1) or by hand (A1).

Each rule combines several signals and names the ones that matched; a weak signal (a header
that only says the message was delivered to a mailbox before, or an envelope sender that is not
the author) never fires on its own.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping
from email.message import EmailMessage
from email.utils import getaddresses
from typing import Any

from milter.core.context import Context
from milter.core.message import Message
from milter.rules import Finding, rule

# Headers mail systems add when they forward or redirect automatically: (signal, strong).
AUTO_HEADERS: dict[str, tuple[str, bool]] = {
    "x-ms-exchange-inbox-rules-loop": ("exchange-inbox-rule", True),
    "x-ms-exchange-organization-autoforwarded": ("exchange-autoforwarded", True),
    "x-ms-exchange-forwardingloop": ("exchange-forwarding-loop", True),
    "x-forwarded-for": ("gmail-forwarded", True),
    "x-forwarded-to": ("gmail-forwarded", True),
    "x-sieve-redirected-from": ("sieve-redirect", True),
    # Written at final delivery (Postfix local/virtual, Dovecot, Gmail): a message carrying
    # them for a school mailbox has been delivered once and is now leaving again.
    "delivered-to": ("delivered-to-school-mailbox", False),
    "x-original-to": ("original-to-school-mailbox", False),
}
# Which header names the forwarding mailbox, most specific first.
_MAILBOX_HEADERS = ("x-ms-exchange-inbox-rules-loop", "x-sieve-redirected-from",
                    "x-forwarded-for", "x-ms-exchange-forwardingloop", "resent-from",
                    "resent-sender", "delivered-to", "x-original-to")
_SRS = re.compile(r"^srs[01][=+-]", re.I)
# Addresses in machine-written headers ("a@x b@y", "a@x;tenant-id"), not address lists.
_BARE_ADDRESS = re.compile(r"[\w.!#$%&'*+/=?^`{|}~-]+@[\w-]+(?:\.[\w-]+)+")

# Subject prefixes mail programs write, in the languages staff use: the first one tells a
# forward (FW:, Fwd:, Doorst:, TR:, WG:, RV:, VS:, ENC:, I:) from a reply (Re:, Antw:, AW:...).
_FORWARD_PREFIXES = {"fw", "fwd", "doorst", "tr", "wg", "rv", "vs", "vb", "enc", "i"}
_REPLY_PREFIXES = {"re", "antw", "aw", "sv", "r", "rif", "ref", "odp", "ynt"}
_LEADING_PREFIX = re.compile(r"^\s*(?:\[[^\]]{0,40}\]\s*)?([a-z]{1,6})\s*(?:\[\d+\])?\s*:", re.I)

# Lines of a quoted original header block (Outlook nl/en, Gmail, Thunderbird, Apple Mail).
_FIELD = re.compile(r"^[> \t]*(van|from|verzonden|sent|date|datum|aan|to|cc|onderwerp|subject)"
                    r"[ \t]*:[ \t]*(.*?)[ \t\r]*$", re.I | re.M)
_BETWEEN_FIELDS = re.compile(r"[\s>]*")  # blank or quoted-blank lines keep a block together
_AUTHOR_FIELDS = {"van", "from"}
_DATE_FIELDS = {"verzonden", "sent", "date", "datum"}
# Every block has one of these: a text without them is not scanned (plain substring search).
_DATE_MARKS = ("verzonden:", "sent:", "date:", "datum:")
_HTML_BREAK = re.compile(r"<\s*(?:br|/p|/div|/tr|/h\d|/li)\b[^>]*>", re.I)
_HTML_TAG = re.compile(r"<[^>]*>")
_WHITESPACE = re.compile(r"\s+")


def _addresses(value: str) -> list[str]:
    return [a.lower() for _, a in getaddresses([value]) if "@" in a]


def _author(message: Message) -> str:
    valid = [a.addr_spec.lower() for a in message.authors if a.valid]
    return valid[0] if valid else ""


def _first_prefix(subject: str) -> str:
    m = _LEADING_PREFIX.match(subject)
    return m.group(1).lower() if m else ""


def _forwarding_mailbox(message: Message, ctx: Context) -> str:
    """The school mailbox that forwarded: named by the forwarding headers, else the envelope."""
    for name in _MAILBOX_HEADERS:
        for value in message.header(name):
            internal = [a for a in _BARE_ADDRESS.findall(value) if ctx.is_internal(a)]
            if internal:
                return str(internal[0]).lower()
    env_from = ctx.envelope.mail_from.lower()
    return "" if _SRS.match(env_from) else env_from


@rule("FWD.auto-external", allowed=[])
def auto_external(message: Message, ctx: Context, params: Mapping[str, Any]) -> Finding | None:
    """Automatic forward or redirect of mail that reached a school mailbox, to outside."""
    if ctx.direction != "outbound":
        return None
    allowed = {str(a).lower() for a in params["allowed"]}
    external = [r for r in ctx.external_recipients if r.lower() not in allowed]
    if not external:
        return None
    signals: dict[str, bool] = {}  # signal -> strong, in the order found
    auto = " ".join(message.header("Auto-Submitted")).strip().lower()
    if auto.startswith("auto-forwarded"):
        signals["auto-submitted-auto-forwarded"] = True
    if any(k.lower().startswith("resent-") for k, _ in message.headers):
        signals["resent-headers"] = True
    for name, (signal, strong) in AUTO_HEADERS.items():
        values = message.header(name)
        if not values:
            continue
        if not strong and not any(ctx.is_internal(a) for v in values
                                  for a in _BARE_ADDRESS.findall(v)):
            continue  # delivered to someone else's mailbox, outside: says nothing about us
        signals[signal] = signals.get(signal, False) or strong
    env_from = ctx.envelope.mail_from
    if env_from and _SRS.match(env_from):
        signals["srs-envelope-sender"] = True
    author = _author(message)
    if env_from and author and env_from.lower() != author and ctx.is_internal(author):
        signals["envelope-sender-not-author"] = False
    if not any(signals.values()) and len(signals) < 2:
        return None
    mailbox = _forwarding_mailbox(message, ctx)
    if {mailbox, env_from.lower()} & allowed:
        return None
    names = list(signals)
    return Finding(reason="automatic forward to outside: " + ", ".join(names),
                   evidence={"signals": names, "original_author": author,
                             "author_internal": ctx.is_internal(author) if author else False,
                             "forwarding_mailbox": mailbox,
                             "external_recipients": external})


def _header(msg: EmailMessage, name: str) -> str:
    try:
        return str(msg.get(name, ""))
    except Exception:  # noqa: BLE001 - a header that does not parse names no author
        return ""


def _nested_authors(message: Message) -> list[str]:
    out: list[str] = []
    for nested in message.nested_messages:
        out += _addresses(_header(nested, "From"))
    return out


def _plain(text: str, content_type: str) -> str:
    if content_type == "text/html":
        # Line ends in HTML source are spaces; only the markup breaks lines.
        text = _HTML_TAG.sub(" ", _HTML_BREAK.sub("\n", _WHITESPACE.sub(" ", text)))
        text = html.unescape(text).replace("\xa0", " ")
    return text


def header_blocks(text: str) -> list[list[tuple[str, str]]]:
    """Quoted original header blocks in a text, as (field, value) lists.

    A block is a run of field lines (blank lines and ``>`` quoting ignored) with an author
    (From/Van) and a date (Sent/Verzonden/Date/Datum): what Outlook, Gmail, Thunderbird and
    Apple Mail write above a forwarded or quoted message."""
    blocks: list[list[tuple[str, str]]] = [[]]
    end = 0
    for m in _FIELD.finditer(text):
        if blocks[-1] and not _BETWEEN_FIELDS.fullmatch(text, end, m.start()):
            blocks.append([])
        blocks[-1].append((m.group(1).lower(), m.group(2)))
        end = m.end()
    return [b for b in blocks if {n for n, _ in b} & _AUTHOR_FIELDS
            and {n for n, _ in b} & _DATE_FIELDS]


def _author_addresses(value: str, ctx: Context) -> list[str]:
    """Addresses in a quoted From/Van line; a bare display name (Outlook writes only the name
    for senders in its own organisation) is looked up in the staff directory."""
    value = value.replace("[mailto:", " <").replace("]", ">")
    found = _addresses(value)
    if found:
        return found
    person = ctx.directory.find_name(value.strip(" *\"'"))
    return [person.address] if person is not None else []


_MARK_WORDS = tuple(m[:-1] for m in _DATE_MARKS)
_LONGEST_MARK = max(map(len, _MARK_WORDS))


def _has_date_mark(text: str) -> bool:
    """A date line's mark ("Verzonden:", "Date:", any case) somewhere in ``text``: looked
    for at each colon, so a letter without colons (most of them) costs one ``find`` instead
    of a lower-case copy and four searches of the whole text."""
    pos = text.find(":")
    while pos >= 0:
        if text[max(0, pos - _LONGEST_MARK):pos].lower().endswith(_MARK_WORDS):
            return True
        pos = text.find(":", pos + 1)
    return False


def _inline_authors(message: Message, ctx: Context, is_reply: bool) -> list[str]:
    """Authors named in forwarded header blocks in the body text.

    Outlook writes the same block above a quoted message in a reply as in a forward: in a
    reply (Re:/Antw:/AW: subject) quoted blocks are quotes, not forwards."""
    if is_reply:
        return []
    authors: list[str] = []
    for part in message.body_parts:
        if part.content_type not in ("text/plain", "text/html"):
            continue
        text = part.text[:ctx.limits.max_text_chars]
        if not _has_date_mark(text):
            continue
        for fields in header_blocks(_plain(text, part.content_type)):
            authors += [a for name, value in fields if name in _AUTHOR_FIELDS
                        for a in _author_addresses(value, ctx)]
    return authors


@rule("FWD.manual-external")
def manual_external(message: Message, ctx: Context,
                    params: Mapping[str, Any]) -> Finding | None:
    """A person forwards internal mail (a school author) to an outside recipient."""
    if ctx.direction != "outbound" or not ctx.external_recipients:
        return None
    prefix = _first_prefix(message.subject)
    signals: list[str] = []
    if prefix in _FORWARD_PREFIXES:
        signals.append("forward-subject-prefix")
    attached = [a for a in _nested_authors(message) if ctx.is_internal(a)]
    if attached:
        signals.append("attached-message")
    inline = [a for a in _inline_authors(message, ctx, prefix in _REPLY_PREFIXES)
              if ctx.is_internal(a)]
    if inline:
        signals.append("inline-forwarded-headers")
    originals = sorted(set(attached + inline))
    if not originals:
        return None
    return Finding(reason="internal mail forwarded to outside: " + ", ".join(signals),
                   evidence={"signals": signals, "original_authors": originals,
                             "external_recipients": list(ctx.external_recipients)})
