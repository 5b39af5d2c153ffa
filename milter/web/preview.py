"""A held message as an admin may see it: a few headers and its text, rendered inert.

Never its HTML, images or attachments' content: an HTML-only message is reduced to its text
(tags dropped, no URL fetched), and the template escapes every character of it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from html.parser import HTMLParser
from typing import Any

from milter.quarantine import Entry

PREVIEW_CHARS = 20000
HEADERS = ("From", "To", "Cc", "Date", "Subject")


@dataclass(frozen=True)
class Attachment:
    name: str
    type: str
    size: int
    findings: tuple[str, ...]


@dataclass(frozen=True)
class Held:
    """One quarantine entry, summarised for the list and the preview."""

    id: str
    ref: str
    stored_at: float
    sender: str
    recipients: tuple[str, ...]
    subject: str
    rules: tuple[str, ...]
    attachments: tuple[Attachment, ...]
    size: int
    age_days: float
    expires_in_days: float

    @property
    def stored_iso(self) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.stored_at))


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.skip = 0

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag in ("script", "style", "head"):
            self.skip += 1
        elif tag in ("br", "p", "div", "tr", "li", "h1", "h2", "h3"):
            self.out.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style", "head") and self.skip:
            self.skip -= 1

    def handle_data(self, data: str) -> None:
        if not self.skip:
            self.out.append(data)


def html_to_text(markup: str) -> str:
    p = _Text()
    p.feed(markup)
    p.close()
    return "".join(p.out)


def _parse(raw: bytes) -> EmailMessage:
    msg = BytesParser(policy=policy.default).parsebytes(raw)
    assert isinstance(msg, EmailMessage)
    return msg


def _findings(entry: Entry, lang: str) -> dict[str, list[str]]:
    """Attachment name -> what the rules found in it, in words (counts and labels, never
    values)."""
    from milter.web.terms import signal_words

    out: dict[str, list[str]] = {}
    for rule in entry.meta.get("verdict", {}).get("rules", []):
        ev = rule.get("evidence") if isinstance(rule.get("evidence"), dict) else {}
        for item in ev.get("items", []) if isinstance(ev.get("items"), list) else []:
            if not isinstance(item, dict):
                continue
            bits = signal_words(item, lang)
            for k in ("markings", "labels", "reason"):
                if item.get(k):
                    v = item[k]
                    bits.append(f"{k}: {', '.join(v) if isinstance(v, list) else v}")
            out.setdefault(str(item.get("name", "")), []).append(
                f"{rule.get('id', '')}: {'; '.join(bits) or item.get('type', '')}")
    return out


def summarise(entry: Entry, retention_days: int, now: float | None = None,
              lang: str = "nl") -> Held:
    now = time.time() if now is None else now
    env = entry.meta.get("envelope", {})
    stored = float(entry.meta.get("stored_at", 0))
    found = _findings(entry, lang)
    subject, attachments = "", []
    try:
        msg = _parse(entry.raw)
        subject = str(msg.get("Subject", ""))
        for part in msg.iter_attachments():
            name = part.get_filename() or ""
            payload = part.get_payload(decode=True)
            attachments.append(Attachment(name, part.get_content_type(),
                                          len(payload) if isinstance(payload, bytes) else 0,
                                          tuple(found.pop(name, []))))
    except Exception:  # noqa: BLE001 - a broken message still lists with what meta.json says
        pass
    for name, f in found.items():  # findings in parts the stdlib does not call attachments
        attachments.append(Attachment(name, "", 0, tuple(f)))
    age = max(0.0, (now - stored) / 86400)
    return Held(entry.id, str(entry.meta.get("txid", "")), stored,
                str(env.get("mail_from", "")), tuple(env.get("rcpt_tos", [])), subject,
                tuple(str(r.get("id", "")) for r in entry.meta.get("verdict", {}).get(
                    "rules", [])), tuple(attachments), int(entry.meta.get("size", 0)),
                age, retention_days - age)


def preview(entry: Entry) -> tuple[list[tuple[str, str]], str]:
    """(headers, text) of the message: the first text/plain body, else its HTML as text."""
    try:
        msg = _parse(entry.raw)
    except Exception:  # noqa: BLE001
        return [], ""
    headers = [(h, str(msg.get(h, ""))) for h in HEADERS if msg.get(h) is not None]
    text = ""
    try:
        body = msg.get_body(preferencelist=("plain", "html"))
        if body is not None:
            content = body.get_content()
            if isinstance(content, str):
                text = (content if body.get_content_subtype() == "plain"
                        else html_to_text(content))
    except Exception:  # noqa: BLE001 - undecodable body: headers only
        text = ""
    if len(text) > PREVIEW_CHARS:
        text = text[:PREVIEW_CHARS] + "\n[…]"
    return headers, text
