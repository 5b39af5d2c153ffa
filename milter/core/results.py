"""Sender authentication results (SPF, DKIM, DMARC) as the pure core sees them.

``milter.dnsauth`` computes them with DNS; rules read them from the context; the gateway
writes them into an ``Authentication-Results:`` header (RFC 8601). Plain data, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class DKIMResult:
    result: str          # pass / fail / temperror / permerror
    domain: str
    selector: str
    body_length: int | None  # the l= tag, when the signature covers only part of the body
    covers_body: bool    # False when l= leaves unsigned text after the signed part


@dataclass(frozen=True)
class DMARCResult:
    result: str           # pass / fail / none / temperror / permerror
    from_domain: str
    policy: str           # none / quarantine / reject ('' without a record)
    aligned_by: str       # "spf", "dkim" or "": the identifier that aligned with From:


@dataclass(frozen=True)
class AuthResults:
    spf: str
    dkim: tuple[DKIMResult, ...]
    dmarc: tuple[DMARCResult, ...]
    mail_from: str = ""
    helo: str = ""
    extras: dict[str, Any] = field(default_factory=dict)

    def header_value(self, authserv_id: str) -> str:
        """The value of our ``Authentication-Results:`` header (RFC 8601)."""
        parts = [authserv_id]
        env = self.mail_from or f"postmaster@{self.helo}"
        parts.append(f"spf={self.spf} smtp.mailfrom={env}")
        if not self.dkim:
            parts.append("dkim=none")
        for d in self.dkim:
            note = f" (l={d.body_length}, unsigned text appended)" if not d.covers_body else ""
            parts.append(f"dkim={d.result}{note} header.d={d.domain or 'unknown'} "
                         f"header.s={d.selector or 'unknown'}")
        for m in self.dmarc:
            policy = f" (p={m.policy})" if m.policy else ""
            parts.append(f"dmarc={m.result}{policy} header.from={m.from_domain}")
        return "; ".join(parts)
