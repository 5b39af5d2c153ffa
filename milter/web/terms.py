"""What an auditor types, understood; what the store holds, said in words.

Filters accept Dutch and English values (``weigeren`` and ``reject``) and Dutch dates
(``dd-mm-jjjj``) as well as ISO dates; times are Europe/Amsterdam local time on screen and UTC
in the store. Every value that is not understood becomes a message in the page's language,
never a silently empty result.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from milter.audit.store import AuditRecord

LOCAL = ZoneInfo("Europe/Amsterdam")

# stored value -> (Dutch, English, other accepted spellings)
ACTIONS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "accept": ("doorlaten", "accept", ("accepteren", "doorgelaten", "accepted", "toestaan")),
    "tag": ("markeren", "tag", ("gemarkeerd", "tagged", "label")),
    "quarantine": ("quarantaine", "quarantine", ("vasthouden", "vastgehouden",
                                                 "quarantined")),
    "reject": ("weigeren", "reject", ("geweigerd", "rejected", "afwijzen", "geblokkeerd")),
    "tempfail": ("uitstellen", "tempfail", ("uitgesteld", "tijdelijk", "deferred")),
}
DIRECTIONS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "outbound": ("uitgaand", "outbound", ("uit", "out", "verzonden")),
    "inbound": ("inkomend", "inbound", ("in", "binnenkomend", "ontvangen")),
}
OUTCOME_WORDS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "delivered": ("afgeleverd", "delivered", ("bezorgd",)),
    "rejected": ("geweigerd", "refused", ("rejected", "weigering")),
    "quarantined": ("vastgehouden", "held", ("quarantined", "in quarantaine")),
    "tempfailed": ("tijdelijk geweigerd", "deferred", ("tempfailed", "uitgesteld")),
}
EVENT_WORDS: dict[str, tuple[str, str]] = {
    "intent": ("voornemen tot afleveren", "about to deliver"),
    "delivered": ("afgeleverd", "delivered"),
    "rejected": ("geweigerd", "refused"),
    "quarantined": ("in quarantaine gezet", "held in quarantine"),
    "tempfailed": ("tijdelijk geweigerd", "deferred"),
    "quarantine-release": ("vrijgegeven", "released"),
    "quarantine-delete": ("verwijderd", "deleted"),
    "notice-sent": ("melding verstuurd", "notice sent"),
    "notice-failed": ("melding mislukt", "notice failed"),
    "notice-suppressed": ("melding ingehouden (maximum per uur)", "notice held back (hourly "
                          "limit)"),
    "viewed": ("bekeken", "viewed"),
    "exported": ("geëxporteerd", "exported"),
    "denied": ("geweigerde toegang", "access denied"),
    "login": ("aangemeld", "logged in"),
    "purge": ("bewaartermijn: persoonsgegevens verwijderd", "retention purge"),
}


def word(table: Mapping[str, tuple[Any, ...]], value: str, lang: str) -> str:
    entry = table.get(value)
    if entry is None:
        return value
    return str(entry[0] if lang == "nl" else entry[1])


def understand(table: Mapping[str, tuple[str, str, tuple[str, ...]]], text: str
               ) -> str | None:
    """The stored value for a Dutch or English word (or a clear prefix of one)."""
    t = " ".join(text.lower().split())
    if not t:
        return ""
    hits = set()
    for value, (nl, en, more) in table.items():
        spellings = (value, nl, en, *more)
        if t in spellings:
            return value
        if len(t) >= 3 and any(s.startswith(t) for s in spellings):
            hits.add(value)
    return hits.pop() if len(hits) == 1 else None


_NL_DATE = re.compile(r"^(\d{1,2})[-/.](\d{1,2})[-/.](\d{4})(?:[ T](\d{1,2})[:.](\d{2}))?$")
_ISO_DATE = re.compile(r"^(\d{4})-(\d{1,2})-(\d{1,2})(?:[ T](\d{1,2})[:.](\d{2}))?$")


def parse_local(text: str, end: bool = False) -> datetime | None:
    """A local date (``dd-mm-jjjj``, ``jjjj-mm-dd``, optionally ``HH:MM``) as UTC.

    ``end``: a bare date means the end of that day (a period "tot 3-2-2026" includes the 3rd)."""
    t = text.strip()
    m = _NL_DATE.match(t)
    if m:
        d, mo, y, hh, mm = m.groups()
    else:
        m = _ISO_DATE.match(t)
        if not m:
            return None
        y, mo, d, hh, mm = m.groups()
    try:
        day = date(int(y), int(mo), int(d))
        if hh is not None:
            local = datetime(day.year, day.month, day.day, int(hh), int(mm), tzinfo=LOCAL)
        else:
            start = day + timedelta(days=1) if end else day
            local = datetime(start.year, start.month, start.day, tzinfo=LOCAL)
    except ValueError:
        return None
    return local.astimezone(UTC)


def stored_ts(moment: datetime) -> str:
    """A UTC moment in the store's lexical time format (without zone, so it sorts before
    any record stamped in the same second)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")


def local_time(ts: str, seconds: bool = False) -> str:
    """A stored UTC stamp as Dutch-style local time: ``27-11-2026 16:28``."""
    try:
        moment = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    except ValueError:
        return ts
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(LOCAL).strftime("%d-%m-%Y %H:%M" + (":%S" if seconds else ""))


def local_day(ts: str) -> date:
    moment = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(LOCAL).date()


def day_start(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=LOCAL).astimezone(UTC)


@dataclass
class Finding:
    """One fired rule of a message, in words."""

    rule: str
    article: str
    mode: str
    action: str
    reason: str
    details: list[str] = field(default_factory=list)


_SIGNALS_NL = {"bsn": "{n} BSN('s)", "iban": "{n} IBAN('s)",
               "pupil_rows": "{n} rijen met naam en geboortedatum"}
_SIGNALS_EN = {"bsn": "{n} citizen service number(s)", "iban": "{n} IBAN(s)",
               "pupil_rows": "{n} rows with name and date of birth"}


def signal_words(item: Mapping[str, Any], lang: str) -> list[str]:
    """What a detector counted in one attachment, in words: "25 rijen met naam en
    geboortedatum"."""
    signals = _SIGNALS_NL if lang == "nl" else _SIGNALS_EN
    return [signals[k].format(n=item[k]) for k in signals if item.get(k)]


def age_words(days: float, lang: str) -> str:
    if days < 1:
        hours = int(days * 24)
        return f"{hours} uur" if lang == "nl" else f"{hours} h"
    return f"{days:.0f} dagen" if lang == "nl" else f"{days:.0f} days"


def findings(rec: AuditRecord, lang: str) -> list[Finding]:
    """The rules of a record with their evidence said in words: "bijlage x.xlsx: 25 rijen met
    naam en geboortedatum"."""
    out = []
    attachment = "bijlage" if lang == "nl" else "attachment"
    for r in rec.rules:
        ev = r.get("evidence") if isinstance(r.get("evidence"), dict) else {}
        assert isinstance(ev, dict)
        details = []
        for item in ev.get("items", []) if isinstance(ev.get("items"), list) else []:
            if not isinstance(item, dict):
                continue
            parts = signal_words(item, lang)
            for k, label in (("markings", "markering" if lang == "nl" else "marking"),
                             ("labels", "label"), ("reason", "")):
                v = item.get(k)
                if v:
                    parts.append(f"{label} {_join(v)}".strip())
            name = item.get("name") or item.get("type") or ""
            details.append(f"{attachment} {name}: " + (", ".join(parts) or str(
                item.get("type", ""))))
        for k, v in ev.items():
            if k in ("items",) or v in ("", [], {}, None, 0):
                continue
            details.append(f"{k}: {_join(v)}")
        out.append(Finding(str(r.get("id", "")), str(r.get("article", "")),
                           str(r.get("mode", "")), str(r.get("action", "")),
                           str(r.get("reason", "")), details))
    return out


def _join(v: object) -> str:
    if isinstance(v, list | tuple):
        return ", ".join(str(x) for x in v)
    if isinstance(v, dict):
        return ", ".join(f"{k}={x}" for k, x in v.items())
    return str(v)


@dataclass(frozen=True)
class State:
    """A message's final state in words, and the records that made it so."""

    key: str          # delivered / tagged / rejected / held / released / deleted / deferred
    words: str
    after: tuple[AuditRecord, ...]


def actor_words(actor: str, lang: str) -> str:
    """Who did it: an admin's name, or the sender themselves (``self:<address>``)."""
    if actor.startswith("self:"):
        who = actor.removeprefix("self:")
        return f"de afzender zelf ({who})" if lang == "nl" else f"the sender ({who})"
    return actor.removeprefix("web:").removeprefix("cli:")


def final_state(outcome: AuditRecord, related: Sequence[AuditRecord], lang: str) -> State:
    after = tuple(r for r in related if r.id != outcome.id and r.event != "intent")
    nl = lang == "nl"
    for r in reversed(after):
        if r.event in ("quarantine-release", "quarantine-delete"):
            who = actor_words(r.actor, lang) or "?"
            when = local_time(r.ts)
            if r.event == "quarantine-release":
                return State("released", (f"vrijgegeven door {who} op {when}" if nl else
                                          f"released by {who} on {when}"), after)
            return State("deleted", (f"verwijderd door {who} op {when}" if nl else
                                     f"deleted by {who} on {when}"), after)
    if outcome.event == "delivered":
        if outcome.action == "tag":
            return State("tagged", "afgeleverd, gemarkeerd" if nl else "delivered, tagged",
                         after)
        return State("delivered", "afgeleverd" if nl else "delivered", after)
    if outcome.event == "rejected":
        return State("rejected", "geweigerd" if nl else "refused", after)
    if outcome.event == "quarantined":
        return State("held", "vastgehouden in quarantaine" if nl else "held in quarantine",
                     after)
    return State("deferred", word(OUTCOME_WORDS, outcome.event, lang), after)


def notified(after: Iterable[AuditRecord]) -> list[AuditRecord]:
    return [r for r in after if r.event in ("notice-sent", "notice-failed",
                                            "notice-suppressed")]


def report_state(state: str, lang: str) -> str:
    """A report row's state ("rejected", "released by web:bert at 2026-11-27 15:04:00")
    in words and local time."""
    if state in OUTCOME_WORDS:
        return word(OUTCOME_WORDS, state, lang)
    for prefix, nl, en in (("released by ", "vrijgegeven door", "released by"),
                           ("deleted by ", "verwijderd door", "deleted by")):
        if state.startswith(prefix):
            who, _, when = state.removeprefix(prefix).rpartition(" at ")
            who = actor_words(who, lang)
            return (f"{nl} {who} op {local_time(when)}" if lang == "nl"
                    else f"{en} {who} on {local_time(when)}")
    return state
