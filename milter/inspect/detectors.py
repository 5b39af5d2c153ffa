"""Detectors: counts and kinds of personal or confidential data, never the values.

The audit store must not become a list of BSNs, so every detector returns a number.
"""

from __future__ import annotations

import bisect
import functools
import os
import re
from collections.abc import Iterable, Iterator, Sequence

from milter.core.limits import check_deadline

_IBAN = re.compile(r"\b([A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?)\b")
_DATE = re.compile(r"\b(\d{1,2}[-/.]\d{1,2}[-/.](?:19|20)\d{2}|(?:19|20)\d{2}-\d{2}-\d{2})\b")
_POSTCODE = re.compile(r"\b\d{4} ?[A-Z]{2}\b")
_PUPIL_NO = re.compile(r"^\d{4,8}$")
_NAME = re.compile(r"^[A-Z][a-zà-ÿ'’-]+(?: (?:van|de|der|den|ter|te|het|'t|[A-Z][a-zà-ÿ'’-]+))*$")

IBAN_LENGTHS = {"NL": 18, "BE": 16, "DE": 22, "FR": 27, "GB": 22, "ES": 24, "IT": 27, "LU": 20,
                "AT": 20, "CH": 21, "PL": 28, "PT": 25, "IE": 22, "DK": 18, "SE": 24, "NO": 15,
                "FI": 18}


def bsn_valid(digits: str) -> bool:
    """The 11-test: 9*d1 + 8*d2 + ... + 2*d8 - d9 is a multiple of 11 (and not all zeros)."""
    if len(digits) != 9 or not digits.isascii() or not digits.isdigit():
        return False
    return _eleven(int(digits))


# The 11-test by three table look-ups on the number's three-digit groups: a fifth of the cost
# of a loop over the digits, which counts on a digit-heavy CSV of a million numbers.
_T0 = [(9 * (n // 100) + 8 * (n // 10 % 10) + 7 * (n % 10)) % 11 for n in range(1000)]
_T1 = [(6 * (n // 100) + 5 * (n // 10 % 10) + 4 * (n % 10)) % 11 for n in range(1000)]
_T2 = [(3 * (n // 100) + 2 * (n // 10 % 10) - (n % 10)) % 11 for n in range(1000)]


def _eleven(n: int) -> bool:
    return n != 0 and (_T0[n // 1_000_000] + _T1[n // 1000 % 1000] + _T2[n % 1000]) % 11 == 0


# A BSN as people write it: nine digits, or 1234.56.789 / 123 456 789 / 123-456-789 with one
# separator used throughout. Never part of a longer number or word: no letter or digit next
# to it, no digit joined by a dot or dash (a decimal, a phone number, a longer reference).
# Commas, semicolons, brackets, quotes, tabs and line ends are all boundaries (CSV, prose).
# The separated shapes must also stand apart from other separated digit groups, so that cells
# or amounts side by side (312 298 105 400) are never read as one number, and a dotted one
# with a decimal comma is an amount (123.456.789,00).
_BSN_CAND = re.compile(
    r"(?<![^\W_])(?<!\d[.\-])"
    r"(?:(\d{9})"
    r"|(?<!\d[ \u00a0])(\d{4}([. \u00a0])\d{2}\3\d{3}|\d{3}([. \u00a0-])\d{3}\4\d{3})"
    r"(?![ \u00a0]\d)(?!(?<=\.\d{3}),\d))"
    r"(?![^\W_])(?![.\-]\d)")
_SEPARATORS = str.maketrans("", "", ". \u00a0-")


def bsn_candidates(text: str) -> Iterator[tuple[int, str, bool]]:
    """(position, nine digits, written with separators) for every number shaped like a BSN,
    valid or not; the 11-test is the caller's."""
    for m in _bsn_matches(text):
        plain = m.group(1)
        if plain is not None:
            yield m.start(), plain, False
        else:
            yield m.start(), m.group(2).translate(_SEPARATORS), True


def count_bsn(text: str) -> int:
    """Occurrences of valid BSNs (every occurrence, not distinct numbers)."""
    return sum(1 for _, digits, _ in bsn_candidates(text) if bsn_valid(digits))


def _bsn_matches(text: str, positions: list[int] | None = None) -> Iterator[re.Match[str]]:
    """What ``_BSN_CAND.finditer(text)`` finds, trying only where a run of digits starts
    (a candidate never follows a digit)."""
    if positions is None:
        positions = _digit_positions(text)
    if positions is None:
        yield from _BSN_CAND.finditer(text)
        return
    after = 0
    for n, start in enumerate(positions):
        if not n & 1023:
            check_deadline()
        if start >= after and (not start or not text[start - 1].isdigit()):
            m = _BSN_CAND.match(text, start)
            if m is not None:
                after = m.end()
                yield m


_DIGITS = "0123456789"
_MANY_DIGITS = 4096  # past this many, one regex pass is cheaper than a loop over digits


def _digit_positions(text: str) -> list[int] | None:
    """Every position of a digit, in order: where a pattern that starts with ``\\d`` can
    match. The regex engine looks at every character (about 15 ns each, a millisecond for
    a 60 KB document); for ASCII text ten C-speed finds do it in microseconds, and prose
    has few digits or none. None for text with many digits or non-ASCII digits possible:
    there one regex pass is the cheaper way."""
    if not text.isascii():
        return None
    positions: list[int] = []
    for d in _DIGITS:
        pos = text.find(d)
        while pos >= 0:
            if len(positions) >= _MANY_DIGITS:
                return None
            positions.append(pos)
            pos = text.find(d, pos + 1)
    positions.sort()
    return positions


def iban_valid(candidate: str) -> bool:
    s = candidate.replace(" ", "").upper()
    if not (s.isascii() and s.isalnum() and s[:2].isalpha() and s[2:4].isdigit()):
        return False
    expected = IBAN_LENGTHS.get(s[:2])
    if expected is not None and len(s) != expected:
        return False
    if not 15 <= len(s) <= 34:
        return False
    rearranged = s[4:] + s[:4]
    digits = "".join(str(int(c, 36)) for c in rearranged)
    return int(digits) % 97 == 1




_IBAN_CI = re.compile(_IBAN.pattern, re.IGNORECASE)


# Where an IBAN can start: two letters and two check digits. Prose has few digits: there
# the digit positions (C-speed finds) lead to the candidates; digit-heavy text has few
# letters: there one regex pass for letters-then-digits does.
_IBAN_START = re.compile(r"[A-Za-z]{2}\d\d")


def _iban_starts(text: str) -> Iterator[int]:
    positions = _digit_positions(text)
    if positions is None:
        yield from (m.start() for m in _IBAN_START.finditer(text))
        return
    prev = -2
    for p in positions:
        if p == prev + 1 and p >= 3 and text[p - 3:p - 1].isalpha() \
                and text[p - 3:p - 1].isascii():
            yield p - 3
        prev = p


# A line break inside an IBAN: a mail hard-wrapped at 72 characters, a narrow PDF column,
# a quoted reply ("> " after the break).
_WRAP = re.compile(r"[ \t]*\r?\n[ \t>]*")
_MAX_WRAPS = 2


def _wrapped_iban(text: str, pos: int) -> tuple[str, int] | None:
    """The IBAN starting at ``pos`` that a line break (or two) cuts in pieces, with where it
    ends; None unless one is there. Exactly as many characters as the country's IBAN has,
    groups separated by one space or a break, and nothing alphanumeric right after: joined
    lines only make an IBAN where the country's length and the check digits agree, so the
    next line's reference or amount does not become part of one."""
    want = IBAN_LENGTHS.get(text[pos:pos + 2].upper())
    if want is None:
        return None
    chars: list[str] = []
    i, n, wraps = pos, len(text), 0
    while len(chars) < want and i < n:
        c = text[i]
        if c.isascii() and c.isalnum():
            chars.append(c)
            i += 1
        elif c == " " and i + 1 < n and text[i + 1].isascii() and text[i + 1].isalnum():
            i += 1
        elif wraps < _MAX_WRAPS and (m := _WRAP.match(text, i)) is not None:
            wraps, i = wraps + 1, m.end()
        else:
            break
    if not wraps or len(chars) != want or (i < n and text[i].isalnum()):
        return None
    candidate = "".join(chars)
    return (candidate, i) if iban_valid(candidate) else None


def _iban_matches(text: str) -> Iterator[str]:
    """Each valid IBAN in ``text`` as written (spaces kept), in order."""
    last_end = -1
    for n, pos in enumerate(_iban_starts(text)):
        if not n & 1023:
            check_deadline()
        if pos < last_end or (pos and text[pos - 1].isalnum()):
            continue
        m = _IBAN_CI.match(text, pos)
        if m and iban_valid(m.group(1)):
            last_end = m.end(1)
            yield m.group(1)
        elif "\n" in text[pos:pos + 48]:
            wrapped = _wrapped_iban(text, pos)
            if wrapped is not None:
                last_end = wrapped[1]
                yield wrapped[0]


def count_iban(text: str) -> int:
    """Occurrences of valid IBANs (every occurrence, not distinct accounts)."""
    return sum(1 for _ in _iban_matches(text))


def _occurs(haystack: str, needle: str, whole_word: bool) -> bool:
    """``needle`` at a word start (and, if ``whole_word``, a word end) in ``haystack``.

    str.find is a C-speed substring search; the boundary checks run only on its hits, which
    is many times faster than a regex look-behind tried at every position of a document."""
    pos = haystack.find(needle)
    while pos >= 0:
        before = haystack[pos - 1] if pos else " "
        after = haystack[pos + len(needle):pos + len(needle) + 1] or " "
        if not before.isalpha() and (not whole_word or not after.isalpha()):
            return True
        pos = haystack.find(needle, pos + 1)
    return False


def markings(texts: Iterable[str], words: Sequence[str],
             case_sensitive: Sequence[str]) -> list[str]:
    """Which configured confidentiality markings occur in any of ``texts``.

    Words match at a word start (Dutch inflects: vertrouwelijke), case-insensitively; the
    case-sensitive ones (acronyms such as OPP) must stand alone."""
    joined = "\n".join(texts)
    lower = joined.lower()
    found = {w for w in words if (_occurs(joined, w, True) if w in case_sensitive
                                  else _occurs(lower, w.lower(), False))}
    return sorted(found)


def pupil_rows(rows: Sequence[Sequence[str]]) -> int:
    """Rows that look like a person record: a name plus a birth date, pupil number or
    postcode. Many such rows make a pupil list."""
    count = 0
    for n, row in enumerate(rows):
        if not n & 1023:
            check_deadline()
        cells = [c.strip() for c in row if c and c.strip()]
        if len(cells) < 2:
            continue
        has_name = any(_NAME.match(c) for c in cells)
        has_id = any(_DATE.search(c) or _POSTCODE.search(c) or _PUPIL_NO.match(c)
                     for c in cells)
        if has_name and has_id:
            count += 1
    return count


# -- context: how sure a finding is ---------------------------------------------------------

NONE, LOW, MEDIUM, HIGH = 0, 1, 2, 3
CONFIDENCE = ("none", "low", "medium", "high")

DEFAULT_BSN_KEYWORDS = ["bsn", "burgerservicenummer", "burger service nummer",
                        "burgerservice nummer", "sofinummer", "sofi-nummer", "sofi nummer",
                        "sofinr", "persoonsgebonden nummer", "citizen service number"]
# Words that say a number is a reference of some other kind, just before it on its line.
_OTHER_NUMBER = re.compile(
    r"bestel|order|factuur|klant|kenmerk|referentie|\bref\b|kvk|btw|artikel|tracking|track"
    r"|polis|\btel\b|telefoon|mobiel|rekening|iban|zaaknummer|transactie|pakket|zending"
    r"|vestiging|lidnummer|relatie|debiteur|crediteur|\bean\b|isbn|boeking|reservering"
    r"|ticket|barcode|serie|licentie|contract|postbus"
    # a phone number: the country code before it, or a word for calling
    r"|\+31|\b0031|\bbel\b|\bbellen\b|whatsapp"
    # any other "...nummer" / "...nr" names the number: aanmeldnummer, volgnummer, dossiernr
    r"|\w*(?:nummer|nr)\b")
_NEAR = 40  # characters before a number where a reference word counts
_LETTER = re.compile(r"[^\W\d_]")


def keyword_positions(lower: str, keywords: Iterable[str]) -> list[int]:
    """Where any keyword stands as a word of its own in ``lower`` (already lower-cased)."""
    out: list[int] = []
    for k in keywords:
        k = k.lower()
        pos = lower.find(k)
        while pos >= 0:
            end = pos + len(k)
            if (not pos or not lower[pos - 1].isalnum()) and (
                    end >= len(lower) or not lower[end].isalpha()):
                out.append(pos)
            pos = lower.find(k, pos + 1)
    out.sort()
    return out


def _near(positions: list[int], pos: int, window: int) -> int | None:
    """Distance from ``pos`` to the nearest of ``positions`` within ``window``, or None."""
    i = bisect.bisect_left(positions, pos)
    best: int | None = None
    for j in (i - 1, i):
        if 0 <= j < len(positions) and abs(positions[j] - pos) <= window:
            d = abs(positions[j] - pos)
            best = d if best is None or d < best else best
    return best


def bsn_in_text(text: str, keywords: Sequence[str], window: int,
                found: dict[str, int] | None = None) -> dict[str, int]:
    """Valid BSNs in running text, each with the best confidence its context gives:
    high with a BSN keyword within ``window`` characters, none right after a word for another
    kind of number (order, invoice, KvK, ...), low for a bare number; a list of bare numbers
    that nearly all pass the 11-test (chance: 1 in 11) is medium.

    The result maps numbers to confidence and stays inside the detectors: callers count."""
    found = {} if found is None else found
    valid: list[tuple[int, str]] = []
    shaped = 0
    positions = _digit_positions(text)
    matches = _BSN_CAND.finditer(text) if positions is None else _bsn_matches(text, positions)
    t0, t1, t2 = _T0, _T1, _T2
    for m in matches:  # inlined: this loop meets every number of a long digit-heavy text
        shaped += 1
        if not shaped & 1023:
            check_deadline()  # the time budget is enforced here (OutOfTime, issue 13)
        digits = m.group(1)
        if digits is None:
            digits = m.group(2).translate(_SEPARATORS)
        n = int(digits)
        if n and (t0[n // 1_000_000] + t1[n // 1000 % 1000] + t2[n % 1000]) % 11 == 0 \
                and digits.isascii():
            valid.append((m.start(), digits))
    if not valid:
        return found
    lower = text.lower()
    keys = keyword_positions(lower, keywords)
    bare: set[str] = set()
    for pos, digits in valid:
        line_start = lower.rfind("\n", max(0, pos - _NEAR), pos) + 1
        start = max(line_start, pos - _NEAR)
        # words need letters: a CSV of numbers skips the word search
        other = (_other_number(lower, start, pos, keys) if _LETTER.search(lower, start, pos)
                 else None)
        key = _near(keys, pos, window)
        if other is not None and (key is None or pos - other < key):
            continue
        level = HIGH if key is not None else LOW
        if level == LOW and _person_line(text, pos):
            level = MEDIUM  # a record: a name, a birth date and the number on one line
        if level == LOW:
            bare.add(digits)
        if found.get(digits, NONE) < level:
            found[digits] = level
    if len(bare) >= 3 and len(bare) >= 0.8 * shaped:
        for digits in bare:
            found[digits] = max(found[digits], MEDIUM)
    return found


_PERSON_NAME = re.compile(r"\b[A-Z][a-zà-ÿ'’-]+ (?:(?:van|de|der|den|ter|te|el) )*"
                          r"[A-Z][a-zà-ÿ'’-]+")


def _person_line(text: str, pos: int) -> bool:
    """The line of ``pos`` also holds a full name and a date with a year (a person record:
    "Sem Bakker, 12-03-2015, 123.456.782")."""
    start = text.rfind("\n", 0, pos) + 1
    end = text.find("\n", pos)
    line = text[start:end if end >= 0 else len(text)]
    return len(line) <= 200 and bool(_DATE.search(line)) and bool(_PERSON_NAME.search(line))


_CELL_BSN = re.compile(r"\d{9}|\d{4}([. \u00a0])\d{2}\1\d{3}|\d{3}([. \u00a0-])\d{3}\2\d{3}")
_EXCEL_NUMBER = re.compile(r"\d+(?:\.0+)?|\d(?:\.\d+)?[eE]\+?\d+")


def _other_number(lower: str, start: int, end: int, keys: list[int]) -> int | None:
    """Where the last word naming another kind of number stands in ``lower[start:end]``; a
    BSN keyword itself ("burgerservicenummer", "BSN-nummer") is not one."""
    last = None
    for m in _OTHER_NUMBER.finditer(lower, start, end):
        if m.start() > 0 and lower[m.start() - 1].isalnum():
            # the tail of a word that began before the window ("...servicenummer" of a
            # "burgerservicenummer" 46 characters back): that word is too far to count
            continue
        i = bisect.bisect_left(keys, m.start() - 5)
        if i < len(keys) and keys[i] <= m.end():
            continue
        last = m.start()
    return last


def _cell_number(cell: str, restore: bool) -> str | None:
    """The nine digits a table cell holds as its whole value, or None. With ``restore`` (the
    column says BSN) a number Excel stored without its leading zeros, or as 123456789.0 or
    1.23456789E8, is read back as nine digits."""
    value = cell.strip().strip("'\"")
    if not value or len(value) > 16:
        return None
    if restore and _EXCEL_NUMBER.fullmatch(value):
        try:
            value = str(int(float(value))) if not value.isdigit() else value
        except (ValueError, OverflowError):
            return None
        return value.zfill(9) if 5 <= len(value) <= 9 else None
    m = _CELL_BSN.fullmatch(value)
    return m.group(0).translate(_SEPARATORS) if m is not None else None


def bsn_in_rows(rows: Sequence[Sequence[str]], keywords: Sequence[str],
                found: dict[str, int] | None = None) -> dict[str, int]:
    """Valid BSNs in table cells, each cell read on its own (cells are never joined into a
    new number): high in a column whose header names a BSN, or in a column of at least five
    numbers of which 80% pass the 11-test (a column of them, header or not)."""
    found = {} if found is None else found
    keys = [k.lower() for k in keywords]
    header_at, bsn_cols = -1, set()
    for r, row in enumerate(rows[:5]):
        cols = {c for c, cell in enumerate(row)
                if cell and len(cell) < 60 and keyword_positions(cell.lower(), keys)}
        if cols:
            header_at, bsn_cols = r, cols
            break
    width = max((len(r) for r in rows), default=0)
    for c in range(min(width, 200)):
        restore = c in bsn_cols
        numbers: list[str] = []
        for row in rows[header_at + 1:]:
            if c < len(row) and row[c]:
                n = _cell_number(row[c], restore)
                if n is not None:
                    numbers.append(n)
        good = [n for n in numbers if n.isascii() and _eleven(int(n))]
        if restore or (len(numbers) >= 5 and len(good) >= 0.8 * len(numbers)):
            for n in good:
                found[n] = HIGH
    return found


def iban_numbers(text: str) -> set[str]:
    """Distinct valid IBANs in ``text``, normalised (upper case, no spaces)."""
    return {m.replace(" ", "").upper() for m in _iban_matches(text)}


def normalise_iban(value: str) -> str:
    return re.sub(r"\s", "", value).upper()


# -- markings in context ---------------------------------------------------------------------

# A marking word that is negated (niet vertrouwelijk, geen vertrouwelijke, non-confidential).
_NEGATED = re.compile(r"(?:\bniet|\bgeen|\bnon|\bnot|\bno|\bun)[\s-]*$")
# Sentences of stock e-mail disclaimers and privacy statements: they mention confidentiality
# in every message and mark nothing.
_DISCLAIMER = re.compile(
    r"uitsluitend bestemd|alleen bestemd|bestemd voor de geadresseerde|geadresseerde"
    r"|alleen bedoeld voor|intended (?:solely |only )?for|intended recipient|addressee"
    r"|may contain|kan vertrouwelijke|kunnen vertrouwelijke|kan informatie bevatten"
    r"|disclaimer|niet de beoogde|onbevoegd|openbaarmaking|not the intended"
    r"|vertrouwelijk (?:mee )?om|vertrouwelijk behandel|vertrouwelijk omgaan"
    r"|vertrouwelijk met uw|privacyverklaring|privacy statement|confidentiality notice"
    r"|exclusive use")
_BLANK_LINE = re.compile(r"\n[ \t\r]*\n")
_PARAGRAPH = 400  # characters either side of a marking searched for its paragraph


def marking_levels(text: str, words: Sequence[str], case_sensitive: Sequence[str],
                   where: str, health: Sequence[str] = ()) -> dict[str, int]:
    """Each configured marking found in ``text`` with its confidence.

    ``where`` is body, subject, name or attachment. A marking that is negated or stands in
    a stock disclaimer does not count. A word set apart as a marking (a line of its own, a
    heading, upper case, ``Vertrouwelijk:``), in a subject or in a file name is high; in the
    prose of an attachment medium; in the prose of a message body low, and medium when two
    different markings occur and one of them stands in a sentence that names someone (a care
    file and a diagnosis; an invitation to "het OPP-gesprek" about "het handelingsplan"
    names no one). ``health`` words (allergie, medicatie, ADHD) count only in the prose of a
    body or attachment, and only two or more of them (or with a marking) in one sentence
    that names someone: a note about a pupil's health, medium."""
    search = _word_search(tuple(words), tuple(case_sensitive), tuple(health))
    lower, starts = search.starts(text)
    if lower is None or not starts:
        return {}  # no word there (an ordinary letter), or none can be: no lower case made
    out: dict[str, int] = {}
    prose: list[tuple[str, int]] = []   # body markings in prose, with where they stand
    for w in words:
        exact = w in case_sensitive
        needle = w if exact else w.lower()
        for pos in starts.get((needle, exact), ()):
            level = _marking_level(text, lower, pos, pos + len(needle), where)
            if level > out.get(w, NONE):
                out[w] = level
            if level in (LOW, MEDIUM) and where in ("body", "attachment"):
                prose.append((w, pos))
    if where in ("body", "attachment") and (prose or health):
        _care_notes(text, lower, out, prose, health, where, starts)
    return {w: lvl for w, lvl in out.items() if lvl > NONE}


# Non-ASCII characters whose lower case holds an ASCII character (the Turkish dotted I lowers
# to "i" and a combining dot, the Kelvin sign to "k"); test_text_search checks the list. In a
# text with one of these, folding its ASCII letters is not what str.lower does.
LOWER_TO_ASCII = ("\u0130", "\u212a")
_NOT_CAPITALS = bytes(b for b in range(256) if not (65 <= b <= 90 or 48 <= b <= 57))
_ASCII_RUN = re.compile(r"[\x00-\x7f]+")
_SHARED = 5  # words that begin or end alike in this many characters are searched for as one


class _WordSearch:
    """Where a policy's marking and health words start a word of a text, found with fewer
    passes over it than there are words.

    Words that begin or end alike ("allergie"/"allergisch", the four "...dossier") are
    searched for by the part they share, each hit of it checked for each word. A
    case-sensitive word (OPP, ADHD: short, the slowest to search for) is searched for only
    if its capitals are, one after another, among the text's capitals and digits (a few per
    cent of the text, kept by one bytes.translate: half the cost of those searches). In a
    text with letters beyond ASCII (é, ë, ’), where ``text.lower()`` is slow (some 300 us for
    50 KB, ten times an ASCII one), a shared part is looked for first in the text's bytes
    with their ASCII letters lower-cased (bytes.lower), by its longest ASCII piece, and the
    lower case is made only when one is there. What is kept of a word that occurs occurs in
    what is kept of the text (a byte-wise translation keeps everything between), so these
    checks only ever skip a search that would have found nothing."""

    def __init__(self, folded: Sequence[str], exact: Sequence[str]) -> None:
        groups = _shared_parts([(w, [(w, 0)]) for w in folded])
        self._groups = [(key, max((r.encode() for r in _ASCII_RUN.findall(key)), key=len,
                                  default=b""), members) for key, members in groups]
        self._exact = [(w, _encode(w).translate(None, _NOT_CAPITALS)) for w in exact]

    def starts(self, text: str) -> tuple[str | None, dict[tuple[str, bool], list[int]]]:
        """``text.lower()`` (None if no word can be in the text) and, for each word that
        occurs, where it starts a word: no letter before it and, if case-sensitive, none
        after; keyed by the word as searched for (the case-insensitive ones lower-cased, found
        in the lower case) and whether it is case-sensitive."""
        found: dict[tuple[str, bool], list[int]] = {}
        raw = None
        if self._exact:
            raw = _one_byte(text)
            capitals = raw.translate(None, _NOT_CAPITALS)
            for w, kept in self._exact:
                if kept in capitals:
                    _add_starts(found, text, w, [(w, 0)], True)
        groups = self._groups
        if not text.isascii() and not any(c in text for c in LOWER_TO_ASCII):
            folded = (raw if raw is not None else _one_byte(text)).lower()
            for i, (_, piece, _) in enumerate(groups):
                if piece in folded:
                    # the lower case is needed now: this part and the rest are searched for
                    # there (searching for them here first would only double the work)
                    groups = groups[i:]
                    break
            else:
                if not found:
                    return None, found
                groups = []
        lower = text.lower()
        for key, _, members in groups:  # _add_starts, inlined: a call per word counts in
            pos = lower.find(key)       # the short texts (subjects, file names)
            while pos >= 0:
                for w, at in members:
                    start = pos - at
                    if start >= 0 and lower.startswith(w, start) \
                            and not (start and lower[start - 1].isalpha()):
                        found.setdefault((w, False), []).append(start)
                pos = lower.find(key, pos + 1)
        return lower, found


def _add_starts(found: dict[tuple[str, bool], list[int]], hay: str, key: str,
                members: list[tuple[str, int]], exact: bool) -> None:
    """Every hit of ``key`` in ``hay``, for each word that holds it ``at`` characters in,
    where that word is there and starts a word."""
    pos = hay.find(key)
    while pos >= 0:
        for w, at in members:
            start = pos - at
            if start >= 0 and hay.startswith(w, start) \
                    and not (start and hay[start - 1].isalpha()) \
                    and not (exact and hay[start + len(w):start + len(w) + 1].isalpha()):
                found.setdefault((w, exact), []).append(start)
        pos = hay.find(key, pos + 1)


def _shared_parts(groups: list[tuple[str, list[tuple[str, int]]]]
                  ) -> list[tuple[str, list[tuple[str, int]]]]:
    """Join words whose search keys begin or end alike in ``_SHARED`` characters or more,
    searched for by the shared part (each word with where in it that part stands)."""
    i = 0
    while i < len(groups):
        for j in range(i + 1, len(groups)):
            (a, ma), (b, mb) = groups[i], groups[j]
            head = len(os.path.commonprefix([a, b]))
            tail = len(os.path.commonprefix([a[::-1], b[::-1]]))
            if max(head, tail) >= _SHARED:
                if head >= tail:
                    key, ma = a[:head], ma
                else:
                    key = a[len(a) - tail:]
                    ma = [(w, at + len(a) - tail) for w, at in ma]
                    mb = [(w, at + len(b) - tail) for w, at in mb]
                groups[i] = (key, ma + mb)
                del groups[j]
                break
        else:
            i += 1
    return groups


def _encode(text: str) -> bytes:
    """UTF-8 one character at a time, lone surrogates too (a text decoded with
    surrogateescape has them)."""
    return text.encode("utf-8", "surrogatepass")


def _one_byte(text: str) -> bytes:
    """The text as bytes, each character on its own: Latin-1 where it fits (a copy, with
    the positions of the text), else UTF-8."""
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        return _encode(text)


@functools.lru_cache(maxsize=16)
def _word_search(words: tuple[str, ...], case_sensitive: tuple[str, ...],
                 health: tuple[str, ...]) -> _WordSearch:
    """The search of a policy's markings and health words (made once per word list)."""
    folded = {w.lower() for w in words if w not in case_sensitive}
    folded |= {h.lower() for h in health if not h.isupper()}
    exact = {w for w in words if w in case_sensitive} | {h for h in health if h.isupper()}
    return _WordSearch(sorted(folded), sorted(exact))


HEALTH = "gezondheid"  # what a health note is reported as
_SENTENCE_END = re.compile(r"[.!?\n]")
# Titles of staff and families: the name after them is not a pupil's ("Juf Anna")
# and roles: a speaker or a colleague named by what they do ("orthopedagoog Karin Brouwer")
_TITLES = frozenset({"juf", "meester", "mevrouw", "meneer", "dhr", "mw", "mr", "dr",
                     "familie", "fam", "collega", "orthopedagoog", "psycholoog", "spreker",
                     "dokter", "arts", "logopedist", "begeleider", "directeur", "leerkracht",
                     "schoolarts", "jeugdverpleegkundige", "gastspreker"})
_TUSSEN = frozenset({"van", "de", "der", "den", "ter", "te", "el", "al"})
# what a note about someone's health says: they have, take or were diagnosed with it
_HAS = re.compile(r"\b(?:heeft|hebben|had|gebruikt|gebruiken|krijgt|kreeg|slikt|lijdt"
                  r"|gesteld|vastgesteld|has|takes)\b")


def _sentence(text: str, pos: int) -> tuple[int, int]:
    start = max(max(text.rfind(c, max(0, pos - 300), pos) for c in ".!?\n") + 1, pos - 300, 0)
    m = _SENTENCE_END.search(text, pos, pos + 300)
    return start, m.start() if m else min(len(text), pos + 300)


def _names_person(sentence: str, terms: set[str]) -> bool:
    """A capitalised word that is not the sentence's first word (or a first word followed
    by a second capitalised one: "Sem Bakker heeft"), not a term, not a title or the name
    after a title."""
    words = _WORD_RE.findall(sentence)
    after_title = False
    for i, w in enumerate(words):
        title = w.lower().rstrip(".") in _TITLES
        capital = len(w) > 1 and w[0].isupper() and w[1:].islower()
        if after_title and (capital or w in _TUSSEN):
            continue  # the titled person's own name, all of it
        name = capital and w.lower() not in terms and not title
        if name and (i > 0 or (len(words) > 1 and words[1][:1].isupper())):
            return True
        after_title = title
    return False


_WORD_RE = re.compile(r"[^\W\d_][\w'’-]*")


def _care_notes(text: str, lower: str, out: dict[str, int], prose: list[tuple[str, int]],
                health: Sequence[str], where: str,
                starts: dict[tuple[str, bool], list[int]]) -> None:
    hits = list(prose)
    for h in health:
        exact = h.isupper()
        for pos in starts.get((h if exact else h.lower(), exact), ()):
            if not _NEGATED.search(lower, max(0, pos - 12), pos):
                hits.append((h, pos))
    if not hits:
        return
    terms = {w.lower() for w, _ in hits}
    by_sentence: dict[tuple[int, int], set[str]] = {}
    for w, pos in hits:
        by_sentence.setdefault(_sentence(text, pos), set()).add(w)
    marks = {w for w, _ in prose}
    several = where == "body" and len(out) >= 2
    # whether a sentence names someone is asked only where the answer counts: a marking
    # among several, or two words of which one is a health word (a single "allergie" in a
    # letter to all parents is read no further)
    named = {span: ws for span, ws in by_sentence.items()
             if ((several and ws & marks) or (len(ws) >= 2 and ws - marks))
             and _names_person(text[span[0]:span[1]], terms)}
    if several and any(ws & marks for ws in named.values()):
        for w in marks:
            out[w] = max(out[w], MEDIUM)
    for (start, end), ws in named.items():
        if len(ws) >= 2 and ws - marks and _HAS.search(lower, start, end):
            for w in ws & marks:
                out[w] = max(out[w], MEDIUM)
            # the finding names the kind, never the condition (the audit keeps it)
            out[HEALTH] = MEDIUM


def _marking_level(text: str, lower: str, pos: int, end: int, where: str) -> int:
    if _NEGATED.search(lower, max(0, pos - 12), pos):
        return NONE
    # a disclaimer is a paragraph of its own: its heading ("VERTROUWELIJK",
    # "CONFIDENTIALITY NOTICE:") and its sentences belong together
    p_start = max((m.end() for m in _BLANK_LINE.finditer(lower, max(0, pos - _PARAGRAPH),
                                                         pos)),
                  default=max(0, pos - _PARAGRAPH))
    p_end = _BLANK_LINE.search(lower, end, end + _PARAGRAPH)
    if _DISCLAIMER.search(lower, p_start, p_end.start() if p_end else end + _PARAGRAPH):
        return NONE
    if where in ("subject", "name"):
        return HIGH
    line_start = text.rfind("\n", 0, pos) + 1
    line_end = text.find("\n", end)
    line = text[line_start:line_end if line_end >= 0 else len(text)].strip()
    word = text[pos:end]
    set_apart = (len(line.split()) <= 4 or (word.isupper() and len(word) > 3)
                 or text[end:end + 2].lstrip().startswith(":"))
    if set_apart:
        return HIGH
    return MEDIUM if where == "attachment" else LOW
