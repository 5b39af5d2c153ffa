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
    """School addresses inside a display name."""
    text = unicodedata.normalize("NFKC", display_name)
    return [m.group(0).lower() for m in _ADDRESS.finditer(text)
            if domain_in(m.group(1), school_domains)]


# Where a mailing list that rewrites From: (DMARC mitigation: "'Anouk Mulder' via Ouders"
# <ouders@lists.example>) keeps the original author.
_ORIGINAL_AUTHOR = ("Reply-To", "X-Original-From", "X-Original-Sender")


def list_resend_authors(message: Message, author: Author) -> set[str]:
    """The original authors a mailing list names when it posts a message as itself: a
    ``List-Id:``, a ``Sender:`` in the list's own domain, and the author in Reply-To or
    X-Original-From/-Sender. A staff member's post coming back through such a list names
    them; so could a forger, but then replies go to the real staff member."""
    if not message.header("List-Id"):
        return set()
    list_domain = domain_of(author.addr_spec)
    if not any(a.address_ok and domain_of(a.addr_spec) == list_domain
               for a in message.addresses("Sender")):
        return set()
    return {a.addr_spec.lower() for name in _ORIGINAL_AUTHOR for a in message.addresses(name)
            if a.address_ok}


# Forms of address before a name ("Juf Anouk Mulder", "Dhr. J. de Vries").
TITLES = frozenset({"juf", "juffrouw", "meester", "meneer", "mevrouw", "mevr", "mw", "mr",
                    "dhr", "heer", "dr", "drs", "ir", "ing", "prof", "mrs", "ms", "miss"})
# What separates a name from the rest of a display name: "SKOT | Anouk Mulder",
# "Directie: Anouk Mulder", "Basisschool X - Anouk Mulder".
_SEGMENT = re.compile(r"\s[-\u2013\u2014]\s|[|/:;\u2022]")


def _name_starts(display_name: str) -> list[tuple[str, ...]]:
    """The word sequences of a display name where a person's name may begin: the whole
    name and each segment, forms of address dropped."""
    out = []
    for segment in [display_name, *_SEGMENT.split(display_name)]:
        words = name_words(segment)
        while words and (words[0] in TITLES or words[:2] == ("de", "heer")):
            words = words[1:]
        out.append(words)
    return out


def staff_named(display_name: str, ctx: Context) -> list[str]:
    """Addresses of staff members whose whole name (two words or more) begins the display
    name or one of its segments, as "First Last" or "Last, First", case, accents and forms
    of address ignored; words may follow ("(SKOT)", "via Ouderraad"). A parent who shares
    only a first name or a surname with a teacher does not match, nor "Gert-Jan de Jong" or
    "Marie Anne de Vries" a teacher "Jan de Jong" or "Anne de Vries"."""
    names = ctx.directory.staff_names
    longest = ctx.directory.staff_name_words
    found: dict[str, None] = {}
    for words in _name_starts(display_name):
        for n in range(2, min(len(words), longest) + 1):  # look-ups, not a scan of staff
            if words[:n] in names:
                person = names[words[:n]]
                found[person.address if person is not None else " ".join(words[:n])] = None
    return list(found)


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
            named = [d for d in found if domain_in(d, ctx.school_domains)]  # domains
            if named and len(named) < len(found):
                signals["invalid-from-school-address"] = None
                domains.update(dict.fromkeys(named))
    for author in message.authors:
        # Raw UTF-8 in a header (SMTPUTF8) leaves the parser's undecoded bytes and a defect:
        # mail programs still show the name, so it is read here as UTF-8.
        display = author.display_name.encode("utf-8", "surrogateescape").decode(
            "utf-8", "replace")
        if not display or not author.address_ok or _known(author, ctx, trusted):
            continue
        original = list_resend_authors(message, author)
        named = [a for a in school_addresses_in(display, ctx.school_domains)
                 if a not in original]
        if named:
            signals["display-name-school-address"] = None
            domains.update(dict.fromkeys(domain_of(a) for a in named))
        people = [p for p in staff_named(display, ctx) if p not in original]
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
