"""Article B1: staff email work mail only from their school-issued address."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from milter.core.context import Context, domain_in, domain_of
from milter.core.message import Message
from milter.rules import Finding, rule


@rule("B1.sender-domain")
def sender_domain(message: Message, ctx: Context, params: Mapping[str, Any]) -> Finding | None:
    """Outbound: envelope sender and the one ``From:`` author must be in a school domain."""
    if ctx.direction != "outbound":
        return None
    problems: list[str] = []
    env_from = ctx.envelope.mail_from
    # A null sender (<>) is a bounce or notice from an MTA; only its From: is judged.
    if env_from and not ctx.is_internal(env_from):
        problems.append("envelope-sender-external")
    if message.from_field_count == 0:
        problems.append("no-from")
    elif message.from_field_count > 1:
        problems.append("several-from-fields")
    if len(message.authors) > 1:
        problems.append("several-from-addresses")
    for author in message.authors:
        if not author.valid:
            problems.append("invalid-from")
        elif not domain_in(author.domain, ctx.school_domains):
            problems.append("from-external")
    if not problems:
        return None
    return Finding(reason="; ".join(dict.fromkeys(problems)),
                   evidence={"problems": list(dict.fromkeys(problems)),
                             "envelope_sender_domain": domain_of(env_from),
                             "from_domains": sorted({a.domain for a in message.authors if a.valid}),
                             "from_fields": message.from_field_count})


def auth_identity_address(auth_user: str, ctx: Context) -> str:
    """The school address an SMTP AUTH login stands for (a bare login gets the first domain)."""
    user = auth_user.strip().lower()
    return user if "@" in user else f"{user}@{ctx.school_domains[0]}"


@rule("B1.auth-identity", shared_addresses=[])
def auth_identity(message: Message, ctx: Context, params: Mapping[str, Any]) -> Finding | None:
    """Authenticated senders may use only their own address (and configured shared boxes)."""
    if not ctx.envelope.auth_user:
        return None
    own = auth_identity_address(ctx.envelope.auth_user, ctx)
    allowed = {own} | {str(a).lower() for a in params.get("shared_addresses", [])}
    used = []
    if ctx.envelope.mail_from:
        used.append(("envelope", ctx.envelope.mail_from.lower()))
    used.extend(("from", a.addr_spec.lower()) for a in message.authors if a.valid)
    mismatched = [kind for kind, addr in used if addr not in allowed]
    if not mismatched:
        return None
    return Finding(reason="sender is not the authenticated user: " + ", ".join(mismatched),
                   evidence={"auth_user": own, "mismatched": mismatched})


@rule("B1.private-address", pupils_only=False)
def private_address(message: Message, ctx: Context, params: Mapping[str, Any]) -> Finding | None:
    """Inbound from a staff member's declared private address to an internal recipient."""
    if ctx.direction != "inbound":
        return None
    candidates = [ctx.envelope.mail_from] + [a.addr_spec for a in message.authors if a.valid]
    owner = next((p for c in candidates if c and (p := ctx.directory.owner_of_private(c))), None)
    if owner is None:
        return None
    recipients = ctx.internal_recipients
    if params.get("pupils_only"):
        recipients = tuple(r for r in recipients if ctx.role(r) == "pupil")
    if not recipients:
        return None
    return Finding(reason="mail from a staff member's private address to school recipients",
                   evidence={"staff_member": owner.address,
                             "recipient_roles": sorted({ctx.role(r) for r in recipients})})
