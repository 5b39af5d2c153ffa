"""Release with a justification: the sender of a held message releases it themselves.

When the policy allows it (``[self_release]``: which rules, up to which confidence, never a
pupil list), the notice offers a per-message address ``vrijgeven+TOKEN@school``. A reply to it
releases the message, once, when it comes from the original sender (authenticated or from the
internal networks, envelope and ``From:`` both the sender's own address) and carries a reason;
everything else is refused and on record. With ``web.public_url`` set the notice also offers a
link (``/vrijgeven/TOKEN``) to the web view, where the sender signs in with a staff account
named after their own address (``milter.web``). The token is unguessable (not the txid, which
refusals show) and only its hash is kept with the held message; both ways count toward one
daily limit (``quarantine-release`` records whose actor is ``self:<sender>``).
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from milter.audit.store import AuditRecord, Filters
from milter.core.message import Message
from milter.core.verdict import FiredRule, Verdict
from milter.policy import CONFIDENCES, SelfRelease

_TOKEN = re.compile(r"[A-Za-z0-9_-]{20,64}")
_QUOTED = re.compile(r"^\s*(>|(op|on) .* (schreef|wrote)|-----)", re.IGNORECASE)


def new_token() -> str:
    return secrets.token_urlsafe(18)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("ascii")).hexdigest()


def address(policy: SelfRelease, domain: str, token: str) -> str:
    return f"{policy.local_part}+{token}@{domain}"


def valid_token(token: str) -> bool:
    return _TOKEN.fullmatch(token) is not None


def link(public_url: str, token: str) -> str:
    """The web view's release page for this token ("" when the site has no public URL)."""
    return f"{public_url.rstrip('/')}/vrijgeven/{token}" if public_url else ""


def actor(sender: str) -> str:
    """Who released it, in the audit: the same for the reply and the link (one limit)."""
    return f"self:{sender.lower()}"


class _Records(Protocol):
    def records(self, filters: Filters = ...) -> Any: ...


def released_today(store: _Records, sender: str, now: datetime | None = None) -> int:
    """How many held messages ``sender`` released themselves in the last 24 hours."""
    since = ((now or datetime.now(UTC)) - timedelta(days=1)).isoformat().replace("+00:00", "Z")
    who = actor(sender)
    rows: list[AuditRecord] = list(store.records(Filters(event="quarantine-release",
                                                         since=since)))
    return sum(1 for r in rows if r.actor.lower() == who)


def handled(store: _Records, token_sha256: str, days: int) -> str:
    """The held message of this token was released or deleted (in the last ``days``):
    ``quarantine-release`` or ``quarantine-delete``, else "". Only the token's hash is in
    the record, as with the held message."""
    since = (datetime.now(UTC) - timedelta(days=days)).isoformat().replace("+00:00", "Z")
    for event in ("quarantine-release", "quarantine-delete"):
        rows: list[AuditRecord] = list(store.records(Filters(event=event, since=since)))
        if any(r.evidence.get("release_token_sha256") == token_sha256 for r in rows):
            return event
    return ""


def verdict_of(meta: Mapping[str, Any]) -> Verdict:
    """The verdict kept with a held message (``Verdict.to_json``), as a Verdict again."""
    v = meta.get("verdict", {})
    return Verdict(str(v.get("action", "quarantine")), str(v.get("direction", "")),
                   str(v.get("smtp_reply", "")), tuple(
                       FiredRule(str(r.get("id", "")), str(r.get("article", "")),
                                 str(r.get("action", "")), str(r.get("mode", "")),
                                 str(r.get("reason", "")), dict(r.get("evidence") or {}))
                       for r in v.get("rules", []) if isinstance(r, dict)),
                   str(v.get("ref", "")))


def token_of(policy: SelfRelease, recipient: str, domains: Sequence[str]) -> str | None:
    """The token when ``recipient`` is a release address of ours, else None."""
    domain = recipient.rpartition("@")[2].lower()
    base, plus, token = recipient.rpartition("@")[0].partition("+")
    if not plus or base.lower() != policy.local_part or domain not in domains:
        return None
    return token if _TOKEN.fullmatch(token) else ""  # "": ours, but no valid token


def eligible(policy: SelfRelease, verdict: Verdict) -> bool:
    """May the sender release this held message themselves? Every enforced rule that holds
    it must allow it, with no finding above the confidence limit or of a forbidden kind."""
    if not policy.rules or policy.per_day <= 0 or verdict.action != "quarantine":
        return False
    limit = CONFIDENCES.index(policy.max_confidence)
    holding = [r for r in verdict.rules if r.mode == "enforce" and r.action == "quarantine"]
    if not holding or any(r.id not in policy.rules for r in holding):
        return False
    for r in holding:
        for item in (r.evidence or {}).get("items", []):
            for f in item.get("findings", []) if isinstance(item, dict) else []:
                if "action" in f:  # tag-only findings do not hold the message
                    continue
                if f.get("signal") in policy.never_signals:
                    return False
                if CONFIDENCES.index(str(f.get("confidence", "high"))) > limit:
                    return False
    return True


def reason_of(message: Message | None, limit: int = 500) -> str:
    """The sender's own words in the reply: its text up to the quoted original."""
    if message is None:
        return ""
    plain = [p for p in message.body_parts if p.content_type == "text/plain"]
    text = plain[0].text if plain else ""
    lines: list[str] = []
    for line in text.splitlines():
        if _QUOTED.match(line):
            break
        lines.append(line.strip())
    return " ".join(" ".join(lines).split())[:limit]
