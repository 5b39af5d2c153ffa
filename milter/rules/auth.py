"""Article B1/A7: mail from outside that pretends to come from the school.

The authentication results (SPF, DKIM, DMARC) are computed by the front before the rules run
(``milter.dnsauth``) and handed over in ``ctx.extras["auth"]``; this rule only judges them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from milter.core.context import Context, domain_in
from milter.core.message import Message
from milter.core.results import AuthResults
from milter.rules import Finding, rule


@rule("B1.spoofed-school-domain")
def spoofed_school_domain(message: Message, ctx: Context,
                          params: Mapping[str, Any]) -> Finding | None:
    """Inbound with a school domain in From: must pass DMARC alignment (SPF or DKIM)."""
    if ctx.direction != "inbound":
        return None
    auth = ctx.extras.get("auth")
    if not isinstance(auth, AuthResults):
        return None
    school = [m for m in auth.dmarc if domain_in(m.from_domain, ctx.school_domains)]
    if not school:
        return None
    evidence = {"from_domains": [m.from_domain for m in school], "spf": auth.spf,
                "dkim": [{"d": d.domain, "s": d.selector, "result": d.result,
                          **({"l": d.body_length} if d.body_length is not None else {})}
                         for d in auth.dkim],
                "dmarc": [m.result for m in school]}
    # Strictest result over every school author (a From: with several addresses): one that
    # certainly fails is refused; one that could not be checked (DNS) is retried, never passed.
    unaligned = [m for m in school if not m.aligned_by]
    if any(m.result != "temperror" for m in unaligned):
        return Finding(reason="school domain in From: without DMARC-aligned SPF or DKIM",
                       evidence=evidence)
    if unaligned:
        return Finding(reason="DNS temporary failure while authenticating a school From:",
                       evidence=evidence, transient=True)
    return None
