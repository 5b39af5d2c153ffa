"""Release with a justification: the sender of a held message releases it themselves.

When the policy allows it (``[self_release]``: which rules, up to which confidence, never a
pupil list), the notice offers a per-message address ``vrijgeven+TOKEN@school``. A reply to it
releases the message, once, when it comes from the original sender (authenticated or from the
internal networks, envelope and ``From:`` both the sender's own address) and carries a reason;
everything else is refused and on record. The token is unguessable (not the txid, which
refusals show) and only its hash is kept with the held message.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Sequence

from milter.core.message import Message
from milter.core.verdict import Verdict
from milter.policy import CONFIDENCES, SelfRelease

_TOKEN = re.compile(r"[A-Za-z0-9_-]{20,64}")
_QUOTED = re.compile(r"^\s*(>|(op|on) .* (schreef|wrote)|-----)", re.IGNORECASE)


def new_token() -> str:
    return secrets.token_urlsafe(18)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("ascii")).hexdigest()


def address(policy: SelfRelease, domain: str, token: str) -> str:
    return f"{policy.local_part}+{token}@{domain}"


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
    if not policy.rules or verdict.action != "quarantine":
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
