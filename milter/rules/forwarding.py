"""School mail forwarded to outside mailboxes: automatically (A1/B1) or by hand (A1).

Each rule combines several signals and names the ones that matched; a single weak signal
(an envelope sender that differs from the author) never fires on its own.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from email.message import EmailMessage
from email.utils import getaddresses
from typing import Any

from milter.core.context import Context
from milter.core.message import Message
from milter.rules import Finding, rule

# Headers that mail systems add when they forward or redirect automatically.
AUTO_HEADERS = {
    "x-ms-exchange-inbox-rules-loop": "exchange-inbox-rule",
    "x-ms-exchange-organization-autoforwarded": "exchange-autoforwarded",
    "x-ms-exchange-forwardingloop": "exchange-forwarding-loop",
    "x-forwarded-to": "gmail-forwarded",
    "x-forwarded-for": "gmail-forwarded",
    "x-sieve-redirected-from": "sieve-redirect",
    "x-original-to": "postfix-original-to",
}
_SRS = re.compile(r"^srs[01][=+-]", re.I)
_PREFIX = re.compile(r"^\s*(?:(?:fwd?|fw|doorst|tr|wg|rv|vs|i|enc|rif|wtr|antw)\s*:\s*)+",
                     re.I)
_FWD_PREFIX = re.compile(r"^\s*(?:fwd?|fw|doorst|tr|wg|rv|vs|enc|rif|wtr)\s*:", re.I)
# Outlook (nl/en) and Gmail forwarded-header blocks; the author line is captured.
_INLINE = [
    re.compile(r"^-{5,}\s*(?:Forwarded message|Doorgestuurd bericht|Message transféré|"
               r"Weitergeleitete Nachricht)\s*-{5,}\s*$(?P<rest>.*)", re.I | re.M | re.S),
    re.compile(r"^\s*(?:Van|From)\s*:\s*(?P<author>.+?)\s*$\s*^\s*(?:Verzonden|Sent|Date|"
               r"Datum)\s*:", re.I | re.M),
    re.compile(r"^-{3,}\s*(?:Original Message|Oorspronkelijk bericht)\s*-{3,}\s*$", re.I | re.M),
]
_AUTHOR_LINE = re.compile(r"^\s*(?:Van|From)\s*:\s*(?P<author>.+?)\s*$", re.I | re.M)


def _addresses(value: str) -> list[str]:
    return [a.lower() for _, a in getaddresses([value]) if "@" in a]


def _author(message: Message) -> str:
    valid = [a.addr_spec.lower() for a in message.authors if a.valid]
    return valid[0] if valid else ""


@rule("FWD.auto-external", allowed=[])
def auto_external(message: Message, ctx: Context, params: Mapping[str, Any]) -> Finding | None:
    """Automatic forward or redirect of mail that reached a school mailbox, to outside."""
    if ctx.direction != "outbound":
        return None
    allowed = {str(a).lower() for a in params["allowed"]}
    external = [r for r in ctx.external_recipients if r.lower() not in allowed]
    if not external:
        return None
    strong: list[str] = []
    weak: list[str] = []
    auto = " ".join(message.header("Auto-Submitted")).strip().lower()
    if auto.startswith("auto-forwarded"):
        strong.append("auto-submitted-auto-forwarded")
    if any(k.lower().startswith("resent-") for k, _ in message.headers):
        strong.append("resent-headers")
    seen = {k.lower() for k, _ in message.headers}
    for header, signal in AUTO_HEADERS.items():
        if header in seen and signal not in strong:
            (weak if header == "x-original-to" else strong).append(signal)
    env_from = ctx.envelope.mail_from
    if env_from and _SRS.match(env_from):
        strong.append("srs-envelope-sender")
    author = _author(message)
    if env_from and author and env_from.lower() != author:
        weak.append("envelope-sender-not-author")
    mailbox = env_from.lower()
    if mailbox in allowed:
        return None
    if not strong and len(weak) < 2:
        return None
    return Finding(reason="automatic forward to outside: " + ", ".join(strong + weak),
                   evidence={"signals": strong + weak, "original_author": author,
                             "author_internal": ctx.is_internal(author) if author else False,
                             "forwarding_mailbox": mailbox,
                             "external_recipients": external})


def _nested_authors(message: Message) -> list[str]:
    out: list[str] = []
    for nested in message.nested_messages:
        out += _addresses(_header(nested, "From"))
    return out


def _header(msg: EmailMessage, name: str) -> str:
    try:
        return str(msg.get(name, ""))
    except Exception:  # noqa: BLE001
        return ""


def _inline_authors(message: Message) -> tuple[list[str], bool]:
    """Authors named in quoted forwarded-header blocks in the body, and whether a block exists."""
    found_block = False
    authors: list[str] = []
    for part in message.body_parts:
        if not part.content_type.startswith("text/"):
            continue
        text = part.text
        if part.content_type == "text/html":
            text = re.sub(r"<br\s*/?>|</p>|</div>", "\n", text, flags=re.I)
            text = re.sub(r"<[^>]+>", " ", text).replace("&lt;", "<").replace("&gt;", ">")
        for pattern in _INLINE:
            if pattern.search(text):
                found_block = True
        if found_block:
            for m in _AUTHOR_LINE.finditer(text):
                authors += _addresses(m.group("author").replace("[mailto:", " <").replace(
                    "]", ">"))
    return authors, found_block


@rule("FWD.manual-external")
def manual_external(message: Message, ctx: Context,
                    params: Mapping[str, Any]) -> Finding | None:
    """A person forwards internal mail (a school author) to an outside recipient."""
    if ctx.direction != "outbound" or not ctx.external_recipients:
        return None
    signals: list[str] = []
    if _FWD_PREFIX.match(message.subject):
        signals.append("forward-subject-prefix")
    attached = _nested_authors(message)
    if attached:
        signals.append("attached-message")
    inline, block = _inline_authors(message)
    if block:
        signals.append("inline-forwarded-headers")
    originals = [a for a in attached + inline if ctx.is_internal(a)]
    if not originals or not (block or attached):
        return None
    return Finding(reason="internal mail forwarded to outside: " + ", ".join(signals),
                   evidence={"signals": signals, "original_authors": sorted(set(originals)),
                             "external_recipients": list(ctx.external_recipients),
                             "subject_prefix": bool(_PREFIX.match(message.subject))})

