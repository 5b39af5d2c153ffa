"""Detectors: counts and kinds of personal or confidential data, never the values.

The audit store must not become a list of BSNs, so every detector returns a number.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence

from milter.core.limits import check_deadline

_BSN = re.compile(r"(?<![\d.,-])(\d{9}|\d{4}[. ]\d{2}[. ]\d{3}|\d{3}[. -]\d{3}[. -]\d{3})"
                  r"(?![\d,]|\.\d)")
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
    if len(digits) != 9 or not digits.isdigit() or digits == "000000000":
        return False
    total = sum(int(d) * w for d, w in zip(digits[:8], range(9, 1, -1), strict=True))
    return (total - int(digits[8])) % 11 == 0


# Candidate runs start with a digit, so the regex engine skips ahead to digits instead of
# trying a look-behind at every position of a long document.
_DIGIT_RUN = re.compile(r"\d[\d. -]{7,11}\d")


def count_bsn(text: str) -> int:
    count, last_end = 0, -1
    for n, run in enumerate(_digit_runs(text)):
        if not n & 1023:
            check_deadline()  # the time budget is enforced here (OutOfTime)
        # re-check the exact BSN shapes, with their boundaries, around the candidate run
        lo = max(0, run.start() - 1)
        for m in _BSN.finditer(text, lo, min(len(text), run.end() + 2)):
            if m.start(1) >= last_end and bsn_valid(re.sub(r"\D", "", m.group(1))):
                count += 1
                last_end = m.end(1)
    return count


_DIGITS = "0123456789"
_TWO_DIGITS = re.compile(r"\d\d")
_MANY_DIGITS = 4096  # past this many, one regex pass is cheaper than a loop over digits


def _digit_runs(text: str) -> Iterator[re.Match[str]]:
    """What ``_DIGIT_RUN.finditer(text)`` finds, trying only where a digit is."""
    positions = _digit_positions(text)
    if positions is None:
        yield from _DIGIT_RUN.finditer(text)
        return
    after = 0
    for start in positions:
        if start >= after:
            run = _DIGIT_RUN.match(text, start)
            if run is not None:
                after = run.end()
                yield run


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
    expected = IBAN_LENGTHS.get(s[:2])
    if expected is not None and len(s) != expected:
        return False
    if not 15 <= len(s) <= 34:
        return False
    rearranged = s[4:] + s[:4]
    digits = "".join(str(int(c, 36)) for c in rearranged)
    return int(digits) % 97 == 1




_IBAN_CI = re.compile(_IBAN.pattern, re.IGNORECASE)


def _digit_pairs(text: str) -> Iterator[int]:
    """Where ``\\d\\d`` matches, left to right, without overlap."""
    positions = _digit_positions(text)
    if positions is None:
        yield from (m.start() for m in _TWO_DIGITS.finditer(text))
        return
    after = 0
    for pos in positions:
        if pos >= after and text[pos + 1:pos + 2].isdecimal():
            yield pos
            after = pos + 2


def count_iban(text: str) -> int:
    """IBANs start with two letters and two check digits: find the digit pairs (rare in
    prose), then look two letters back."""
    count, last_end = 0, -1
    for n, start in enumerate(_digit_pairs(text)):
        if not n & 1023:
            check_deadline()
        pos = start - 2
        if pos < last_end or pos < 0 or not text[pos:pos + 2].isalpha() \
                or (pos and text[pos - 1].isalnum()):
            continue
        m = _IBAN_CI.match(text, pos)
        if m and iban_valid(m.group(1)):
            count += 1
            last_end = m.end(1)
    return count


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
