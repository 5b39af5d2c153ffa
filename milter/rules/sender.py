"""Article B1: staff email work mail only from their school-issued address."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from milter.core.context import Context, domain_in, domain_of
from milter.core.message import Message
from milter.core.verdict import STRENGTH
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


# Headers that say where replies, bounces and receipts go, grouped by the policy param that
# sets their action: routing any of them to a private mailbox defeats B1 as surely as From:.
HEADER_GROUPS: dict[str, tuple[str, ...]] = {
    "sender": ("Sender",),
    "reply-to": ("Reply-To", "Mail-Reply-To"),
    "return-path": ("Return-Path", "Errors-To", "Return-Receipt-To",
                    "Disposition-Notification-To"),
}
_HEADER_ACTIONS = ("accept", "tag", "quarantine", "reject")


def allowed_by(address: str, allowed: list[str]) -> bool:
    """``allowed`` holds addresses and ``@domain`` entries (a domain and its subdomains)."""
    address = address.lower()
    for entry in allowed:
        entry = str(entry).lower()
        if entry.startswith("@") and domain_in(domain_of(address), [entry[1:]]):
            return True
        if address == entry:
            return True
    return False


def school_list_post(message: Message, ctx: Context) -> bool:
    """A post of the school's own mailing list server (from the internal networks, not
    logged in): a ``List-Id:`` and a ``Sender:`` in a school domain."""
    return bool(message.header("List-Id")) and any(
        a.address_ok and ctx.is_internal(a.addr_spec) for a in message.addresses("Sender"))


@rule("B1.sender-headers", allowed=[], sender_action="reject", reply_to_action="reject",
      return_path_action="tag",
      choices={f"{g.replace('-', '_')}_action": _HEADER_ACTIONS for g in HEADER_GROUPS})
def sender_headers(message: Message, ctx: Context, params: Mapping[str, Any]) -> Finding | None:
    """Outbound: ``Sender:``, ``Reply-To:`` and the bounce/receipt headers judged as
    ``From:`` is. Authenticated: the user's own address or an ``allowed`` one (shared
    boxes, the administration office); from the internal networks: a school address or an
    allowed one. A staff member's declared private address is its own problem
    (``reply-to-private``); each header group's action is a policy param."""
    if ctx.direction != "outbound":
        return None
    allowed = list(params.get("allowed", []))
    own = auth_identity_address(ctx.envelope.auth_user, ctx) if ctx.envelope.auth_user else ""
    school_list = not own and school_list_post(message, ctx)
    # The From: author's own school address may be repeated (Reply-To: the shared box the
    # message is from): whether From: itself is allowed is B1.auth-identity's question.
    authors = {a.addr_spec.lower() for a in message.authors
               if a.valid and ctx.is_internal(a.addr_spec)}
    problems: dict[str, None] = {}
    domains: dict[str, set[str]] = {}
    owners: dict[str, None] = {}
    action = "accept"
    for group, names in HEADER_GROUPS.items():
        group_action = str(params.get(f"{group.replace('-', '_')}_action", "reject"))
        if group_action == "accept":
            continue
        for name in names:
            for a in message.addresses(name):
                spec = a.addr_spec.lower()
                owner = ctx.directory.owner_of_private(spec) if a.address_ok else None
                if not a.address_ok:
                    problem = "invalid"
                elif owner is not None:
                    problem = "private"
                    owners[owner.address] = None
                elif allowed_by(spec, allowed) or spec == own or spec in authors:
                    continue
                elif not ctx.is_internal(spec):
                    if school_list and group == "reply-to":
                        continue  # the list points replies at the poster, often a parent
                    problem = "external"
                elif own:
                    problem = "not-own"
                else:
                    continue  # a school address, from the internal networks
                problems[f"{group}-{problem}"] = None
                domains.setdefault(name.lower(), set()).add(
                    domain_of(spec) if a.address_ok else "")
                if STRENGTH[group_action] > STRENGTH[action]:
                    action = group_action
    if not problems:
        return None
    evidence: dict[str, Any] = {"problems": list(problems),
                                "headers": {k: sorted(v) for k, v in domains.items()}}
    if own:
        evidence["auth_user"] = own
    if owners:
        evidence["staff_member"] = sorted(owners)
    return Finding(reason="; ".join(problems), evidence=evidence, max_action=action)
