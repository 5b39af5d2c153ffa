"""The verdict: what the gateway decided, in the shape ``check --json`` prints and audit keeps."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any

ACTIONS = ("accept", "tag", "quarantine", "reject", "tempfail")
RULE_ACTIONS = ("accept", "tag", "quarantine", "reject")
STRENGTH = {"accept": 0, "tag": 1, "quarantine": 2, "reject": 3, "tempfail": 4}
MODES = ("enforce", "monitor")
MAX_REPLY = 510  # RFC 5321 reply line limit is 512 octets including CRLF

_UNSAFE = re.compile(r"[^\x20-\x7e]")


def ascii_line(text: str) -> str:
    """One plain-ASCII line: accents folded (é -> e), controls and CR/LF removed."""
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return " ".join(_UNSAFE.sub(" ", folded).split())


def reply_line(code: str, text: str) -> str:
    """``code`` + text as one SMTP reply line within the line limit."""
    line = f"{code} {ascii_line(text)}"
    return line if len(line) <= MAX_REPLY else line[: MAX_REPLY - 3] + "..."


@dataclass(frozen=True)
class FiredRule:
    id: str
    article: str
    action: str
    mode: str
    reason: str
    evidence: dict[str, Any] = field(default_factory=dict)
    notice: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "article": self.article, "action": self.action,
                "mode": self.mode, "reason": self.reason, "evidence": self.evidence}


@dataclass(frozen=True)
class Verdict:
    action: str
    direction: str
    smtp_reply: str
    rules: tuple[FiredRule, ...] = ()
    ref: str = ""

    @property
    def enforced(self) -> tuple[FiredRule, ...]:
        return tuple(r for r in self.rules if r.mode == "enforce")

    def to_json(self) -> dict[str, Any]:
        return {"action": self.action, "direction": self.direction,
                "smtp_reply": self.smtp_reply, "ref": self.ref,
                "rules": [r.to_json() for r in self.rules]}


def tempfail(direction: str, text: str, ref: str = "", code: str = "451 4.3.0") -> Verdict:
    """The verdict for an internal fault: the client must retry."""
    return Verdict("tempfail", direction, reply_line(code, f"{text} ref={ref}" if ref else text),
                   (), ref)


def unparseable(direction: str, why: str, ref: str = "") -> Verdict:
    """A message no retry will fix gets a permanent answer (HOSTILE-INPUTS 17)."""
    text = (f"Bericht onleesbaar / message cannot be parsed: {why}"
            + (f" ref={ref}" if ref else ""))
    return Verdict("reject", direction, reply_line("554 5.6.0", text), (), ref)


def size_words(n: int) -> str:
    """A byte count as people say it: "25 MB", "512 KB"."""
    if n >= 2**20:
        return f"{n / 2**20:.0f} MB"
    return f"{max(1, round(n / 1024))} KB"


def too_big(limit: int) -> str:
    """The refusal of a message over the size limit, with the limit, Dutch first."""
    size = size_words(limit)
    return (f"552 5.3.4 Bericht te groot: maximaal {size} ({limit} bytes) / "
            f"Message too big: limit {size} ({limit} bytes)")


LINE_TOO_LONG = ("500 5.5.2 Regel te lang: maximaal 1000 tekens per regel / "
                 "Line too long: limit 1000 octets per line")


@dataclass(frozen=True)
class Finding:
    """A rule fired. ``reason`` is a short English detail for logs and the audit record;
    ``evidence`` holds names, counts and hashes, never message content. ``max_action`` lets a
    rule cap the policy action (content to internal recipients is tagged at most)."""

    reason: str
    evidence: dict[str, Any] = field(default_factory=dict)
    max_action: str | None = None
    # The rule could not decide because of a transient fault (a DNS time-out): the client
    # must retry (451), never a pass and never a permanent refusal.
    transient: bool = False
