"""The staff directory: who is staff, pupil or parent, their private addresses and supervisor.

Read from a CSV: the project's own format (written by hand or exported from the school's
administration), or the user exports admins download without code from Microsoft Entra ID
("Download users") and Google Workspace ("Download users"); the format is told by the header
row. Dutch Excel writes semicolons, so the delimiter is sniffed from the header row too. LDAP /
Active Directory is read by ``milter.directory_ldap``; both build the same ``Directory``.
"""

from __future__ import annotations

import csv
import io
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

ROLES = ("staff", "pupil", "parent", "other")
COLUMNS = ("address", "role", "name", "private_addresses", "supervisor")
# Optional columns a school may add: language (nl/en, for notices), groups (space-separated).
OPTIONAL_COLUMNS = ("language", "groups")


class DirectoryError(Exception):
    """A problem in the directory, by line and column. Raised for the first of a file's
    problems; ``problems`` holds all of them (``config check`` lists every one)."""

    def __init__(self, file: Path | str, line: int, column: str, message: str) -> None:
        self.file, self.line, self.column, self.message = str(file), line, column, message
        self.problems: list[DirectoryError] = [self]
        super().__init__(f"{file}: line {line}: {column}: {message}")


def _raise_all(problems: list[DirectoryError]) -> None:
    if problems:
        first = problems[0]
        first.problems = problems
        raise first


# Several addresses in one field: admins type spaces, commas or semicolons between them.
_SEPARATORS = re.compile(r"[\s,;]+")


def address_problem(address: str) -> str:
    """Why ``address`` is not an email address ("" when it is): syntax only, no DNS."""
    from email_validator import EmailNotValidError, validate_email

    try:
        validate_email(address, check_deliverability=False)
    except EmailNotValidError as exc:
        return str(exc)
    return ""


@dataclass(frozen=True)
class Person:
    address: str
    role: str
    name: str = ""
    private_addresses: tuple[str, ...] = ()
    supervisor: str = ""
    language: str = ""
    groups: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()     # other school addresses of the same mailbox (proxyAddresses)


@dataclass(frozen=True)
class Directory:
    people: Mapping[str, Person] = field(default_factory=dict)
    by_private: Mapping[str, Person] = field(default_factory=dict)

    def lookup(self, address: str) -> Person | None:
        return self.people.get(address.lower())

    def find_name(self, name: str) -> Person | None:
        """The one person with this display name (case and spacing ignored), or None."""
        return self._by_name.get(" ".join(name.lower().split())) if name.strip() else None

    @cached_property
    def _by_name(self) -> dict[str, Person | None]:
        index: dict[str, Person | None] = {}
        for p in self.people.values():
            key = " ".join(p.name.lower().split())
            if key:
                index[key] = None if key in index else p  # two people share it: ambiguous
        return index

    @cached_property
    def staff_names(self) -> dict[tuple[str, ...], Person | None]:
        """Staff names as normalised words (``name_words``), for look-alike senders. A name
        of one word is left out (a first name alone says nothing); a name two staff
        members share maps to None (still a staff name, no one person)."""
        index: dict[tuple[str, ...], Person | None] = {}
        for p in self.people.values():
            words = name_words(p.name)
            if p.role == "staff" and len(words) >= 2:
                index[words] = None if words in index else p
        return index

    @cached_property
    def staff_name_words(self) -> int:
        """The most words a staff name has (how far a display name is looked up)."""
        return max(map(len, self.staff_names), default=0)

    def owner_of_private(self, address: str) -> Person | None:
        """The staff member who declared ``address`` as one of their private addresses."""
        return self.by_private.get(address.lower())

    @classmethod
    def from_people(cls, people: Iterable[Person]) -> Directory:
        by_addr: dict[str, Person] = {}
        by_private: dict[str, Person] = {}
        for p in people:
            by_addr[p.address.lower()] = p
            for alias in p.aliases:
                by_addr.setdefault(alias.lower(), p)
            for priv in p.private_addresses:
                by_private[priv.lower()] = p
        return cls(by_addr, by_private)


    def role_counts(self) -> dict[str, int]:
        """How many people of each role (aliases counted once): what ``config check`` shows."""
        counts = dict.fromkeys(ROLES, 0)
        for p in {id(p): p for p in self.people.values()}.values():
            counts[p.role] = counts.get(p.role, 0) + 1
        return counts


EMPTY = Directory()

# Letters from other scripts that look like Latin ones (Unicode's confusables, the ones
# seen in display-name spoofing); NFKD does not fold them.
_CONFUSABLES = str.maketrans("аеорсухіјѕԁԛԝвкмнтӏαεορτυνχικΑΒΕΗΙΚΜΝΟΡΤΧΥΖАВЕКМНОРСТХ",
                             "aeopcyxijsdqwbkmhtlaeoptuvxikABEHIKMNOPTXYZABEKMHOPCTX")
_WORD = re.compile(r"[^\W_]+")
_JOINED = re.compile(r"(?<=\w)[-\u2010\u2011](?=\w)")
_ASIDE = re.compile(r"\([^)]*\)|\[[^\]]*\]")


def name_words(name: str) -> tuple[str, ...]:
    """A person's name as comparable words: case, accents, look-alike letters and
    punctuation ignored, a hyphenated name one word ("Gert-Jan"), and the directory order
    "Mulder, Anouk" turned into "anouk mulder" (also "Vries, Jan de" and "de Vries, Jan"
    into "jan de vries")."""
    text = unicodedata.normalize("NFKD", name.translate(_CONFUSABLES))
    text = "".join(c for c in text if not unicodedata.combining(c)).casefold()
    text = _JOINED.sub("", text)  # "Gert-Jan" is one name, not "Jan"
    aside = " ".join(_ASIDE.findall(text))  # "(SKOT)", "[extern]": kept, after the name
    text = _ASIDE.sub(" ", text)
    last, comma, first = text.partition(",")
    if comma and _WORD.search(first) and _WORD.search(last):
        text = f"{first} {last}"
    return tuple(_WORD.findall(f"{text} {aside}"))


@dataclass(frozen=True)
class RoleMap:
    """How the school's own names become roles and groups (``[directory] roles``/``groups``).

    In an Entra ID export the values are matched against ``department``; in a Google Workspace
    export against ``Org Unit Path`` (a path and everything below it); LDAP matches group and
    OU DNs (``milter.directory_ldap``). ``private`` names the column/attribute holding private
    addresses ("" = the export's default)."""

    roles: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    groups: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    private: str = ""


# Entra ID's "Download users" CSV (Microsoft's documented property names; newer downloads name
# objectId "id" and add more columns, which are ignored) and Google Workspace's "Download users"
# CSV (headers such as "Email Address [Required]": the bracketed part is dropped before matching).
ENTRA_PRIVATE = "alternateemailaddress"
GOOGLE_PRIVATE = "home secondary email"
_PUPIL_AGE_GROUPS = ("minor", "notadult")


def _header_key(h: str) -> str:
    """``"Email Address [Required]"`` -> ``"email address"``; ``"userPrincipalName"`` ->
    ``"userprincipalname"``."""
    return " ".join(h.split("[", 1)[0].lower().split())


def export_format(header: Iterable[str]) -> str:
    """``"entra"``, ``"google"`` or ``"skot"`` (this project's own columns), from the header."""
    keys = {_header_key(h) for h in header}
    if "userprincipalname" in keys:
        return "entra"
    if "email address" in keys and ("org unit path" in keys or "first name" in keys):
        return "google"
    return "skot"


def _split_addresses(value: str) -> tuple[str, ...]:
    parts = _SEPARATORS.split(value)
    return tuple(dict.fromkeys(a.lower().removeprefix("smtp:") for a in parts if "@" in a))


def _mapped(value: str, table: Mapping[str, tuple[str, ...]], path: bool) -> list[str]:
    """The names in ``table`` whose values match ``value`` (exact, or a path and below it)."""
    v = value.strip().lower().rstrip("/") if path else value.strip().lower()
    out = []
    for name, wanted in table.items():
        for w in wanted:
            w = w.strip().lower().rstrip("/") if path else w.strip().lower()
            if v == w or (path and (v.startswith(w + "/") or w == "")):
                out.append(name)
                break
    return out


def _parse_export(rows: list[tuple[int, dict[str, str]]], kind: str, source: Path | str,
                  mapping: RoleMap) -> Directory:
    people = []
    problems: list[DirectoryError] = []
    for n, row in rows:
        def col(name: str, row: dict[str, str] = row) -> str:
            return (row.get(name) or "").strip()

        if kind == "entra":
            if col("accountenabled").lower() in ("false", "no", "0") or \
                    col("usertype").lower() == "guest":
                continue  # a leaver's disabled account or a guest: not school staff
            address = (col("mail") or col("userprincipalname")).lower()
            name = col("displayname") or " ".join(filter(None, (col("givenname"),
                                                                col("surname"))))
            unit, is_path, supervisor = col("department"), False, ""
            private_col = mapping.private.lower() or ENTRA_PRIVATE
            default_role = "pupil" if col("agegroup").lower() in _PUPIL_AGE_GROUPS else "staff"
        else:
            if col("status").lower() == "suspended":
                continue
            address = col("email address").lower()
            name = " ".join(filter(None, (col("first name"), col("last name"))))
            unit, is_path, supervisor = col("org unit path"), True, col("manager email").lower()
            private_col = _header_key(mapping.private) if mapping.private else GOOGLE_PRIVATE
            default_role = "staff"
        why = address_problem(address) if address else "empty"
        if why:
            problems.append(DirectoryError(source, n, "address",
                                           f"not an email address: {address!r} ({why})"))
            continue
        roles = _mapped(unit, mapping.roles, is_path)
        if mapping.roles and not roles and default_role != "pupil":
            continue  # the admin named the units of each role; this one is in none of them
        role = next((r for r in ROLES if r in roles), default_role)
        privates = _split_addresses(col(private_col)) if role == "staff" else ()
        people.append(Person(address=address, role=role, name=name,
                             private_addresses=tuple(a for a in privates if a != address),
                             supervisor=supervisor if "@" in supervisor else "",
                             groups=tuple(_mapped(unit, mapping.groups, is_path))))
    _raise_all(problems)
    return Directory.from_people(people)


def parse_csv(text: str, source: Path | str = "<directory>",
              mapping: RoleMap | None = None) -> Directory:
    """The directory in ``text``; raises ``DirectoryError`` naming the first problem, with
    every problem (by line) in its ``problems``. Lines starting with ``#`` are comments."""
    # Comment lines become blank ones, so the csv reader skips them and line numbers stay.
    lines = ["" if ln.lstrip().startswith("#") else ln for ln in text.splitlines()]
    header_line = next((ln for ln in lines if ln.strip()), "")
    if not header_line:
        raise DirectoryError(source, 1, "header", "empty file; expected a header row: "
                             + ", ".join(COLUMNS))
    delimiter = ";" if header_line.count(";") > header_line.count(",") else ","
    stream = io.StringIO("\n".join(lines))
    head = csv.reader(stream, delimiter=delimiter)
    fieldnames: list[str] = []
    for fieldnames in head:  # the first row that is not blank (or a comment)
        if fieldnames:
            break
    header_no = head.line_num
    # The rest of the stream; line numbers count on from the header's.
    reader = csv.DictReader(stream, fieldnames=fieldnames, delimiter=delimiter)
    kind = export_format(fieldnames)
    if kind != "skot":
        reader.fieldnames = [_header_key(h) for h in fieldnames]
        rows = [(header_no + reader.line_num, {k: v for k, v in r.items()
                                   if isinstance(k, str) and isinstance(v, str)})
                for r in reader]
        return _parse_export(rows, kind, source, mapping or RoleMap())
    header = [h.strip().lower() for h in fieldnames]
    missing = [c for c in ("address", "role") if c not in header]
    if missing:
        raise DirectoryError(source, header_no, "header", "missing column(s) "
                             + ", ".join(missing) + "; expected: " + ", ".join(COLUMNS)
                             + f" (separated by {delimiter!r})")
    unknown = [h for h in header if h not in COLUMNS + OPTIONAL_COLUMNS]
    if unknown:
        raise DirectoryError(source, header_no, "header", "unknown column(s) "
                             + ", ".join(unknown) + "; allowed: "
                             + ", ".join(COLUMNS + OPTIONAL_COLUMNS))
    reader.fieldnames = header
    people: list[Person] = []
    problems: list[DirectoryError] = []
    first_line: dict[str, int] = {}
    supervisors: list[tuple[int, str]] = []
    for row in reader:
        n = header_no + reader.line_num

        def col(name: str, row: dict[str | None, Any] = row) -> str:
            v = row.get(name)
            return v.strip() if isinstance(v, str) else ""

        def bad(column: str, message: str, n: int = n) -> None:
            problems.append(DirectoryError(source, n, column, message))

        if row.get(None):  # more fields than columns: a separator inside a field
            bad("row", f"{len(header) + len(row[None])} fields, the header has {len(header)}; "
                f"put a field holding {delimiter!r} in double quotes, or separate several "
                "addresses by spaces")
            continue
        address = col("address").lower()
        why = address_problem(address) if address else "empty"
        if why:
            bad("address", f"not an email address: {address!r} ({why})")
        elif address in first_line:
            bad("address", f"{address} is already on line {first_line[address]}; "
                "one line per person")
        else:
            first_line[address] = n
        role = col("role").lower()
        if role not in ROLES:
            bad("role", f"{role!r}; allowed: " + ", ".join(ROLES))
        privates = tuple(a.lower() for a in _SEPARATORS.split(col("private_addresses")) if a)
        for a in privates:
            why = address_problem(a)
            if why:
                bad("private_addresses", f"not an email address: {a!r} ({why}); separate "
                    "several by spaces, commas or semicolons")
        supervisor = col("supervisor").lower()
        if supervisor:
            why = address_problem(supervisor)
            if why:
                bad("supervisor", f"not an email address: {supervisor!r} ({why})")
            elif supervisor == address:
                bad("supervisor", "a person cannot be their own supervisor")
            else:
                supervisors.append((n, supervisor))
        lang = col("language").lower()
        if lang and lang not in ("nl", "en"):
            bad("language", f"{lang!r}; allowed: nl, en")
        people.append(Person(address=address, role=role, name=col("name"),
                             private_addresses=privates, supervisor=supervisor,
                             language=lang, groups=tuple(col("groups").split())))
    roles = {p.address: p.role for p in people}
    for n, supervisor in supervisors:
        if roles.get(supervisor, "staff") != "staff":
            problems.append(DirectoryError(source, n, "supervisor",
                                           f"{supervisor} is a {roles[supervisor]} on line "
                                           f"{first_line[supervisor]}, not staff"))
    _raise_all(sorted(problems, key=lambda p: p.line))
    return Directory.from_people(people)


def load(path: Path | None, mapping: RoleMap | None = None) -> Directory:
    if path is None:
        return EMPTY
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DirectoryError(path, 0, "file", "not found") from None
    except UnicodeDecodeError:
        raise DirectoryError(path, 0, "file", "not UTF-8; save the CSV as UTF-8") from None
    return parse_csv(text, path, mapping)
