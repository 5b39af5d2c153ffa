"""Dates admins type on the command line (``audit list --since``): ISO, Dutch ``dd-mm-jjjj``,
relative (``7d``, ``24h``, ``2w``, ``yesterday``/``gisteren``, ``today``/``vandaag``).

Everything is UTC, as the audit store's timestamps are (``2026-11-27T15:45:00.000000Z``); the
result compares as text with them. Anything else is refused: a filter that silently matches
nothing reads as "no violations".
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta

FORMATS = ("YYYY-MM-DD, YYYY-MM-DDTHH:MM[:SS], DD-MM-YYYY (or DD/MM/YYYY, DD.MM.YYYY), "
           "7d, 24h, 2w, yesterday/gisteren, today/vandaag")
_WORDS = {"today": 0, "vandaag": 0, "yesterday": 1, "gisteren": 1, "eergisteren": 2}
_RELATIVE = re.compile(r"(\d+)\s*([dhwm]|min)")
_DUTCH = re.compile(r"(\d{1,2})[-/.](\d{1,2})[-/.](\d{4})")
_ISO_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[t ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(z|[+-]\d{2}:?\d{2})?")


def parse_when(text: str, now: datetime | None = None) -> str:
    """The UTC moment ``text`` means, as the store's text form; ValueError naming the
    accepted forms otherwise."""
    now = now or datetime.now(UTC)
    s = text.strip().lower()
    if s in _WORDS:
        return (now.date() - timedelta(days=_WORDS[s])).isoformat()
    m = _RELATIVE.fullmatch(s)
    if m:
        n, unit = int(m.group(1)), m.group(2)
        delta = {"d": timedelta(days=n), "h": timedelta(hours=n), "w": timedelta(weeks=n),
                 "m": timedelta(minutes=n), "min": timedelta(minutes=n)}[unit]
        return _stamp(now - delta)
    m = _DUTCH.fullmatch(s)
    try:
        if m:
            return date(int(m.group(3)), int(m.group(2)), int(m.group(1))).isoformat()
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", s):
            return date.fromisoformat(s).isoformat()
        if _ISO_TIME.fullmatch(s):
            moment = datetime.fromisoformat(s.upper().replace("Z", "+00:00"))
            return _stamp(moment if moment.tzinfo else moment.replace(tzinfo=UTC))
    except ValueError as exc:  # 31-02-2026 and friends
        raise ValueError(f"{text!r}: {exc}") from None
    raise ValueError(f"{text!r} is not a date; use {FORMATS}")


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
