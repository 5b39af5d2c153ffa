"""People tables: rows that each describe a person (a name plus something personal).

A class list with parents' phone numbers, a CSV export of pupils with birth dates, a PDF of
addresses: the shape is the same wherever it is (a spreadsheet, a Word table, an HTML table in
the body, tab-separated text, a PDF). The signal is how many person rows a table has and which
kinds of personal columns it shows; never a value.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from milter.inspect.detectors import (
    DEFAULT_BSN_KEYWORDS,
    HIGH,
    MEDIUM,
    NONE,
    bsn_valid,
    iban_valid,
    keyword_positions,
)

MAX_ROWS = 5000      # rows judged per table: the count is "at least" past this
MAX_LINES = 20000    # lines of running text searched for tables

# Header words per column kind; the first kind whose word a header cell holds wins, so the
# specific kinds come before "name" (a "leerlingnummer" column is not a name column).
HEADER_WORDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("bsn", tuple(DEFAULT_BSN_KEYWORDS)),
    ("pupil_number", ("leerlingnummer", "leerlingnr", "llnr", "ll.nr", "stamnummer",
                      "leerling-id", "leerlingid", "student id", "studentnummer")),
    ("birth_date", ("geboortedatum", "geb.datum", "geb. datum", "geboren", "verjaardag",
                    "date of birth", "birth date", "birthday", "dob", "geb")),
    ("phone", ("telefoon", "telefoonnummer", "tel.", "tel", "mobiel", "gsm", "phone",
               "noodnummer")),
    ("email", ("e-mail", "email", "e-mailadres", "mail")),
    ("address", ("adres", "straat", "woonplaats", "postcode", "huisnummer", "address")),
    ("iban", ("iban", "rekeningnummer", "bankrekening")),
    ("health", ("diagnose", "allergie", "medicatie", "medisch", "zorgbehoefte", "dieet")),
    # marks and test results: a column counts only where its cells hold marks (see _MARK)
    ("results", ("cijfer", "cijfers", "rapportcijfer", "toets", "toetsscore", "cito",
                 "eindtoets", "gemiddeld", "gemiddelde", "resultaat", "schooladvies", "advies",
                 "avi", "dle", "rekenen", "taal", "spelling", "begrijpend lezen",
                 "technisch lezen")),
    ("name", ("naam", "voornaam", "achternaam", "roepnaam", "leerling", "name", "ouder",
              "verzorger", "kind")),
)
PERSONAL = {k for k, _ in HEADER_WORDS} - {"name"}

_NAME = re.compile(r"[A-Z][a-zà-ÿ'’-]+"
                   r"(?: (?:van|de|der|den|ter|te|het|'t|el|al|[A-Z][a-zà-ÿ'’-]+))*"
                   r" (?:(?:van|de|der|den|ter|te|el|al) )*[A-Z][a-zà-ÿ'’-]+")
# under a name header a cell may start with the surname's prefix ("de Vries, Emma")
_FIRST = re.compile(r"(?:(?:van|de|der|den|ter|te|het|'t|el|al) )*[A-Z][a-zà-ÿ'’-]+")
_DATE = re.compile(r"(\d{1,2})[-/.](\d{1,2})[-/.]((?:19|20)\d{2})|((?:19|20)\d{2})-\d{2}-\d{2}")
_PHONE = re.compile(r"(?:\+31|0031|0)[\s-]?(?:\(0\)[\s-]?)?[1-9](?:[\s-]?\d){7,8}")
_EMAIL = re.compile(r"[^@\s<>]+@([A-Za-z0-9.-]+\.[A-Za-z]{2,})")
_POSTCODE = re.compile(r"\b[1-9]\d{3} ?[A-Z]{2}\b")
_STREET = re.compile(r"[A-Za-z]+(?:straat|laan|weg|plein|gracht|kade|dijk|pad|hof|singel|steeg"
                     r"|dreef|park|plantsoen|veld|markt|erf|baan)\s+\d+", re.IGNORECASE)
_CELL_SPLIT = re.compile(r"\t| {2,}")
# A list typed as plain text: "Sem Bakker, 12-03-2015", "Sem Bakker - 06-12345678",
# "Sem Bakker (12-03-2015)", "Sem Bakker 12-03-2015": commas, semicolons, bars, a spaced
# dash, brackets, and the step from a word to a number all part cells.
_LOOSE_SPLIT = re.compile(r"\s*[,;|()]\s*|\s+[-–]\s+|(?<=[^\W\d_])\s+(?=[+\d])")
# Only a short line with a digit or an address in it can be a typed record (every personal
# value but a name has one); longer lines are prose and never split
_RECORD_LINE = 160
_RECORD_VALUE = re.compile(r"[\d@]")
# A birth date under a header: a date with its year, or the day number Excel stores
_BIRTH_VALUE = re.compile(r".*\b(?:19|20)\d{2}\b.*|[1-9]\d{3,4}(?:\.0+)?")
# A mark: 1-10 with decimals, a test score, a level (A-E, I-V, M4/E5, O/V/G), an advice
_MARK = re.compile(r"(?:10|[1-9])(?:[.,]\d{1,2})?|[1-9]\d{2}|[A-E][+-]?|I{1,3}|IV|V|[ME][3-8]"
                   r"|[OVG]|ZG|RV|vmbo(?:[- ]?[a-z]{1,3})?|havo|vwo|pro|onv|vold|goed",
                   re.IGNORECASE)


@dataclass(frozen=True)
class PeopleTable:
    rows: int                    # rows with a name and at least one personal column
    kinds: tuple[str, ...]       # which kinds of personal columns those rows show
    confidence: int              # HIGH: the header names the columns; MEDIUM: values alone


NO_TABLE = PeopleTable(0, (), NONE)


def header_kind(cell: str) -> str:
    """The kind of column a header cell names, or ''."""
    text = cell.strip().lower()
    if not text or len(text) > 40:
        return ""
    for kind, words in HEADER_WORDS:
        if keyword_positions(text, words):
            return kind
    return ""


# A word in an organisation's name: a list of clubs with their phone numbers is not a list
# of people ("Voetbalclub Zeist", "Bibliotheek Houten").
_ORGANISATION = re.compile(r"(?:club|school|vereniging|bibliotheek|stichting|zwembad|centrum"
                           r"|praktijk|boerderij|gemeente|scouting|opvang|theater|museum"
                           r"|kliniek|apotheek|bakkerij|kerk|bv|ggd)\b", re.IGNORECASE)


def _is_name(cell: str, header: bool) -> bool:
    value = cell.strip()
    if _ORGANISATION.search(value):
        return False
    if header:
        return bool(_FIRST.match(value))
    return bool(_NAME.fullmatch(value))


def _external_email(cell: str, school_domains: Sequence[str]) -> bool:
    """An address outside the school in the cell (searched, not matched whole: a PDF's
    cells can touch, ``ouder@gmail.com09-11-2014``)."""
    for m in _EMAIL.finditer(cell):
        domain = m.group(1).lower()
        if not any(domain == d or domain.endswith("." + d) for d in school_domains):
            return True
    return False


def _value_kind(cell: str, school_domains: Sequence[str]) -> str:
    """The personal kind a cell's value shows by itself (no header), or ''. Dates are judged
    per column (a column of birth dates spans many years; a planning does not)."""
    value = cell.strip()
    if not value or len(value) > 120:
        return ""
    if _PHONE.fullmatch(value):
        return "phone"
    if "@" in value:
        return "email" if _external_email(value, school_domains) else ""
    if _POSTCODE.search(value) or _STREET.search(value):
        return "address"
    digits = value.replace(" ", "").replace(".", "")
    if len(digits) == 9 and digits.isdigit() and bsn_valid(digits):
        return "bsn"
    if len(value) >= 15 and value[:2].isalpha() and iban_valid(value):
        return "iban"
    return ""


def people_table(rows: Sequence[Sequence[str]], school_domains: Sequence[str] = ()
                 ) -> PeopleTable:
    """Count the person rows of one table: a name plus at least one personal value."""
    header_at = -1
    kinds_by_col: dict[int, str] = {}
    # the header is the row of the first five that names the most columns (a title line
    # above it, "Cijfers groep 8", can name one)
    for r, row in enumerate(rows[:5]):
        named = {c: k for c, cell in enumerate(row) if cell and (k := header_kind(cell))}
        if (len(named) >= 2 or any(k in PERSONAL for k in named.values())) \
                and len(named) > len(kinds_by_col):
            header_at, kinds_by_col = r, named
    body = rows[header_at + 1:header_at + 1 + MAX_ROWS]
    width = min(max((len(r) for r in body), default=0), 200)
    # date columns that span several years hold birth dates
    birth_cols = {c for c, k in kinds_by_col.items() if k == "birth_date"}
    for c in range(width):
        if c in kinds_by_col:
            continue
        years = set()
        for row in body:
            if c < len(row) and (m := _DATE.search(row[c])):
                years.add(m.group(3) or m.group(4))
        if len(years) >= 3:
            birth_cols.add(c)
    count = 0
    seen: set[str] = set()
    name_cols = {c for c, k in kinds_by_col.items() if k == "name"}
    for row in body:
        has_name = False
        kinds: set[str] = set()
        for c, cell in enumerate(row[:width]):
            if not cell or not cell.strip():
                continue
            kind = kinds_by_col.get(c, "")
            if kind == "name":
                has_name = has_name or _is_name(cell, True)
            elif kind == "email":
                if _external_email(cell, school_domains):
                    kinds.add("email")
            elif kind == "birth_date":
                # "3 maart" is a birthday on a staff calendar; a birth date has a year
                if _BIRTH_VALUE.fullmatch(cell.strip()):
                    kinds.add(kind)
            elif kind == "results":
                if _MARK.fullmatch(cell.strip()):
                    kinds.add(kind)
            elif kind:
                kinds.add(kind)
            elif c in birth_cols and _DATE.search(cell):
                kinds.add("birth_date")
            else:
                if not name_cols and _is_name(cell, False):
                    has_name = True
                vk = _value_kind(cell, school_domains)
                if vk:
                    kinds.add(vk)
        if has_name and kinds:
            count += 1
            seen |= kinds
    if not count:
        return NO_TABLE
    header_backed = bool(name_cols) or any(k in PERSONAL for k in kinds_by_col.values())
    return PeopleTable(count, tuple(sorted(seen)), HIGH if header_backed else MEDIUM)


def _may_hold_record(text: str) -> bool:
    """``_RECORD_VALUE.search(text)``, fast: on ASCII text eleven C-speed finds instead of a
    character-class scan (some 270 us on 50 KB of prose)."""
    if text.isascii():
        return "@" in text or any(d in text for d in "0123456789")
    return _RECORD_VALUE.search(text) is not None


# Where str.splitlines breaks a line besides "\n" (\r, \v, \f, \x1c-\x1e; \x85, \u2028 and
# \u2029 only in non-ASCII text)
_OTHER_BREAKS = "\r\v\f\x1c\x1d\x1e"
_NON_ASCII_BREAKS = "\x85\u2028\u2029"


def _lines(text: str) -> list[str]:
    """``text.splitlines()``: where "\n" is the only line break in the text (a document's
    text), ``split`` finds them with memchr instead of testing every character for eleven
    kinds of break (some 40 us for 50 KB)."""
    if any(c in text for c in _OTHER_BREAKS) or (
            not text.isascii() and any(c in text for c in _NON_ASCII_BREAKS)):
        return text.splitlines()
    lines = text.split("\n")
    if not lines[-1]:
        lines.pop()  # splitlines has no empty line after a final break (nor for "")
    return lines


def text_tables(text: str) -> list[list[list[str]]]:
    """Tables in running text: runs of lines whose cells are separated by tabs or by two or
    more spaces (pasted spreadsheet rows, PDF text laid out as on the page)."""
    tabs, spaces = "\t" in text, "  " in text
    if not tabs and not spaces and not _may_hold_record(text):
        # no line has two cells, and none is a typed record (those need a digit or an @):
        # prose, known in C-speed searches instead of a line loop
        return []
    tables: list[list[list[str]]] = []
    block: list[list[str]] = []
    blank = 0
    for n, line in enumerate(_lines(text)):
        if n >= MAX_LINES:
            break
        stripped = line.strip()
        if not stripped:
            blank += 1
            if blank > 1 and block:
                tables.append(block) if len(block) >= 2 else None
                block = []
            continue
        # (a line has a tab or two spaces only if the text has: not searched for again)
        if (tabs and "\t" in stripped) or (spaces and "  " in stripped):
            cells = [c.strip() for c in _CELL_SPLIT.split(stripped)]
        elif len(stripped) <= _RECORD_LINE and _RECORD_VALUE.search(stripped):
            cells = [c for c in _LOOSE_SPLIT.split(stripped) if c]
            if any(len(c.split()) > 4 for c in cells):
                cells = [stripped]  # a sentence ("Karin, 06-..., regelt de luizencontrole")
        else:
            cells = [stripped]
        if len(cells) >= 2:
            block.append(cells)
            blank = 0
        else:
            if len(block) >= 2:
                tables.append(block)
            block, blank = [], 0
    if len(block) >= 2:
        tables.append(block)
    return tables


def best_people_table(tables: Sequence[Sequence[Sequence[str]]],
                      school_domains: Sequence[str] = ()) -> PeopleTable:
    best = NO_TABLE
    for t in tables:
        found = people_table(t, school_domains)
        if (found.rows, found.confidence) > (best.rows, best.confidence):
            best = found
    return best
