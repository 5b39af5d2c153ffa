"""Article A7 (and B1): mail from outside that borrows a school identity in its display name.

Mail programs show the display name and hide the address, so ``"directeur@school.example"
<evil@attacker.example>`` or ``"Anouk Mulder (SKOT)" <anouk.mulder.skot@gmail.example>`` looks
like school mail to a parent or pupil. The same signal catches a staff member writing to
pupils or colleagues from a private address the directory does not list (declared ones are
``B1.private-address``). The rule tags: the warning the recipient sees is the policy's
``warning`` param (``milter.warning``).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from typing import Any

from milter.core.context import Context, domain_in, domain_of
from milter.core.message import Author, Message
from milter.directory import name_words
from milter.rules import Finding, rule
from milter.rules.sender import allowed_by

WARNINGS = ("banner", "subject", "none")
# An address inside a display name, after NFKC folding (a full-width "＠" is an "@").
_ADDRESS = re.compile(r"[^\s<>()\"',;:@\[\]]+@((?:[a-z0-9-]+\.)+[a-z0-9-]+)", re.IGNORECASE)


def school_addresses_in(display_name: str, school_domains: tuple[str, ...]) -> list[str]:
    """School domains named by an address inside a display name."""
    text = unicodedata.normalize("NFKC", display_name)
    return [m.group(1).lower() for m in _ADDRESS.finditer(text)
            if domain_in(m.group(1), school_domains)]


def staff_named(display_name: str, ctx: Context) -> list[str]:
    """Addresses of staff members whose whole name (two words or more) is in the display
    name, in any order of "First Last" / "Last, First", case and accents ignored. A parent
    who shares only a first name with a teacher does not match."""
    words = name_words(display_name)
    found: list[str] = []
    for name, person in ctx.directory.staff_names.items():
        n = len(name)
        if any(words[i:i + n] == name for i in range(len(words) - n + 1)):
            found.append(person.address if person is not None else " ".join(name))
    return found


def _known(author: Author, ctx: Context, trusted: list[str]) -> bool:
    """Senders this rule leaves alone: school addresses (``B1.spoofed-school-domain``
    judges those), anyone the directory lists (parents, declared private addresses) and
    the services the policy trusts."""
    spec = author.addr_spec
    return (ctx.is_internal(spec) or ctx.directory.lookup(spec) is not None
            or ctx.directory.owner_of_private(spec) is not None or allowed_by(spec, trusted))


@rule("B1.lookalike-sender", trusted_senders=[], warning="banner",
      subject_prefix="[Let op: externe afzender]",
      banner_text=("Let op: dit bericht komt van buiten de school, ook al lijkt de afzender "
                   "van school. Klik niet op links en geef geen gegevens zonder te "
                   "controleren. / Caution: this message comes from outside the school."),
      choices={"warning": WARNINGS})
def lookalike_sender(message: Message, ctx: Context, params: Mapping[str, Any]) -> Finding | None:
    """Inbound from outside with a school address or a staff member's name in the
    ``From:`` display name, to school recipients."""
    if ctx.direction != "inbound" or not ctx.internal_recipients:
        return None
    trusted = list(params.get("trusted_senders", []))
    signals: dict[str, None] = {}
    domains: dict[str, None] = {}
    from_domains: dict[str, None] = {}
    staff: dict[str, None] = {}
    if any(not a.valid for a in message.authors):
        # An unparseable From: (``directeur@school.example <evil@x>`` unquoted) shows
        # mail programs' own guess: a school address anywhere in it is the same signal.
        # Only with an outside address beside it: a broken school address alone is not one.
        for value in message.header("From"):
            found = [m.group(1).lower() for m in _ADDRESS.finditer(
                unicodedata.normalize("NFKC", value))]
            named = [d for d in found if domain_in(d, ctx.school_domains)]
            if named and len(named) < len(found):
                signals["invalid-from-school-address"] = None
                domains.update(dict.fromkeys(named))
    for author in message.authors:
        # Raw UTF-8 in a header (SMTPUTF8) leaves the parser's undecoded bytes and a defect:
        # mail programs still show the name, so it is read here as UTF-8.
        display = author.display_name.encode("utf-8", "surrogateescape").decode(
            "utf-8", "replace")
        if not display or author.addr_spec.count("@") != 1 or _known(author, ctx, trusted):
            continue
        named = school_addresses_in(display, ctx.school_domains)
        if named:
            signals["display-name-school-address"] = None
            domains.update(dict.fromkeys(named))
        people = staff_named(display, ctx)
        if people:
            signals["staff-name"] = None
            staff.update(dict.fromkeys(people))
        if named or people:
            from_domains[domain_of(author.addr_spec)] = None
    if not signals:
        return None
    roles = sorted({ctx.role(r) for r in ctx.internal_recipients})
    evidence: dict[str, Any] = {"signals": list(signals), "from_domains": list(from_domains),
                                "recipient_roles": roles}
    if domains:
        evidence["named_domains"] = list(domains)
    if staff:
        evidence["staff_member"] = list(staff)
    if staff and any(r in ("pupil", "staff") for r in roles):
        # A staff member (or someone posing as one) writing from an unlisted outside address
        # to pupils or colleagues: the unlisted private address of B1.
        evidence["unlisted_private_address"] = True
    return Finding(reason="outside sender with a school identity in the display name: "
                   + ", ".join(signals), evidence=evidence)
