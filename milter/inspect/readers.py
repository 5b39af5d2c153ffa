"""Readers: real file type from the bytes, then text, tables, labels or a reason we cannot tell.

Libraries do the parsing (zipfile, defusedxml, pypdf, olefile); this module only bounds them
and turns their output into ``Item``s.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import re
import zipfile
from collections.abc import Callable, Iterator

from milter.core.message import Part
from milter.inspect import Budget, Item

BASE64_DEFECTS = {"InvalidBase64PaddingDefect", "InvalidBase64CharactersDefect",
                  "InvalidBase64LengthDefect"}

_WS = re.compile(r"[ \t\r\f\v]+")


def sniff(data: bytes, name: str = "") -> str:
    """The real type of ``data`` from its first bytes (names and Content-Types can lie)."""
    kind, zf = _sniff(data, name)
    if zf is not None:
        zf.close()
    return kind


def _sniff(data: bytes, name: str) -> tuple[str, zipfile.ZipFile | None]:
    """``sniff``, and for a ZIP that opened, the open archive: the reader goes on with it
    instead of reading the central directory a second time."""
    head = data[:64]
    if head.startswith(b"%PDF"):
        return "pdf", None
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return _zip_kind(data)
    return _plain_kind(data, head, name), None


def _plain_kind(data: bytes, head: bytes, name: str) -> str:
    if head.startswith(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"):
        return "ole"
    if head.startswith(b"7z\xbc\xaf\x27\x1c"):
        return "7z"
    if head.startswith(b"Rar!\x1a\x07"):
        return "rar"
    if head.startswith((b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM",
                        b"II*\x00", b"MM\x00*")):
        return "image"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image"
    if head[:4] == b"RIFF" and head[8:12] in (b"WAVE",):
        return "audio"
    if head[:4] == b"RIFF" and head[8:12] in (b"AVI ",):
        return "video"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"heic", b"heix", b"mif1", b"avif", b"heis"):
            return "image"
        if brand in (b"M4A ", b"M4B "):
            return "audio"
        return "video"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "video"
    if head.startswith((b"ID3", b"OggS", b"fLaC")) or head[:2] in (b"\xff\xfb", b"\xff\xf3"):
        return "audio"
    if _looks_text(data):
        lower = data[:2048].lower()
        if b"<html" in lower or b"<!doctype html" in lower or name.lower().endswith(".html"):
            return "html"
        if name.lower().endswith(".csv"):
            return "csv"
        return "text"
    return "binary"


def _looks_text(data: bytes) -> bool:
    sample = data[:4096]
    if not sample:
        return True
    if b"\x00" in sample:
        return False
    try:
        sample.decode("utf-8")
        return True
    except UnicodeDecodeError as exc:
        if exc.start > len(sample) - 4:  # a multi-byte character cut at the sample's end
            return True
    bad = sum(1 for b in sample if b < 9 or 13 < b < 32)
    return bad / len(sample) < 0.02


def _zip_kind(data: bytes) -> tuple[str, zipfile.ZipFile | None]:
    """The kind of a ZIP-based file, and the archive open (None when it did not open or
    could not be read: the ZIP reader then opens it itself and says why)."""
    zf = None
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        names = set(zf.namelist())
        if "mimetype" in names and "content.xml" in names:
            mimetype = zf.read("mimetype")[:100]
            for suffix, odf_kind in ((b".spreadsheet", "ods"), (b".text", "odt"),
                                     (b".presentation", "odp")):
                if mimetype.startswith(b"application/vnd.oasis.opendocument") \
                        and mimetype.endswith(suffix):
                    return odf_kind, zf
    except (zipfile.BadZipFile, ValueError, OSError, KeyError, RuntimeError):
        if zf is not None:
            zf.close()
        return "zip", None
    if "[Content_Types].xml" in names:
        if any(n.startswith("word/") for n in names):
            return "docx", zf
        if any(n.startswith("xl/") for n in names):
            return "xlsx", zf
        if any(n.startswith("ppt/") for n in names):
            return "pptx", zf
    return "zip", zf


def decode_text(data: bytes, charset: str | None = None) -> str:
    if charset:
        try:
            return data.decode(charset, errors="replace")
        except LookupError:
            pass
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")  # what Dutch Windows writes


SMIME_TYPES = frozenset({"application/pkcs7-mime", "application/x-pkcs7-mime"})
PGP_ARMOR = b"-----BEGIN PGP MESSAGE-----"


def encrypted_mail(content_type: str, name: str, data: bytes) -> str:
    """"smime" or "openpgp" for an encrypted message part (S/MIME enveloped or opaque-signed
    data, RFC 8551; PGP/MIME or inline PGP, RFC 3156), else ""."""
    if content_type in SMIME_TYPES or name.lower().endswith((".p7m", ".p7z")):
        return "smime"
    if content_type == "application/pgp-encrypted" or PGP_ARMOR in data:
        return "openpgp"
    return ""


def read_part(part: Part, budget: Budget) -> list[Item]:
    data = part.payload
    name = part.filename or ("(body)" if not part.is_attachment else "(unnamed)")
    items: list[Item] = []
    item = read_bytes(name, data, budget, depth=0, items=items,
                      charset=part.text_charset(),
                      html_part=part.content_type == "text/html",
                      digest=lambda: part.sha256)  # the part's, as the audit summary shows
    item.is_body = not part.is_attachment
    encrypted = encrypted_mail(part.content_type, name, data)
    if encrypted:  # whole-message encryption: nothing inside can be read (HOSTILE-INPUTS 25)
        item.kind, item.uninspectable = encrypted, f"{encrypted}-encrypted message"
    if BASE64_DEFECTS & set(part.defects) and item.kind not in ("text", "html", "csv"):
        item.uninspectable = item.uninspectable or "broken base64 transfer encoding"
    return [item, *items]


def read_bytes(name: str, data: bytes, budget: Budget, depth: int, items: list[Item],
               charset: str | None = None, html_part: bool = False,
               digest: Callable[[], str] | None = None) -> Item:
    """Read one object; members of archives are appended to ``items``. ``digest``: gives
    the SHA-256 of ``data`` when asked (a part's, which keeps its payload anyway); without
    it the digest is made now, so that no member's bytes stay held."""
    kind, zf = _sniff(data, name)
    try:
        return _read(name, data, kind, zf, budget, depth, items, charset, html_part, digest)
    finally:
        if zf is not None:
            zf.close()


def _read(name: str, data: bytes, kind: str, zf: zipfile.ZipFile | None, budget: Budget,
          depth: int, items: list[Item], charset: str | None, html_part: bool,
          digest: Callable[[], str] | None) -> Item:
    if kind == "text" and html_part:
        kind = "html"  # an HTML body without an <html> tag is still read as HTML
    if digest is None:
        digest = functools.partial(str, hashlib.sha256(data).hexdigest())
    item = Item(name=name, kind=kind, size=len(data), depth=depth, digest=digest)
    limit = budget.limits.max_text_chars
    if not budget.time_left():
        item.uninspectable = "inspection time budget exhausted"
        return item
    try:
        if kind in ("text", "csv"):
            item.text = decode_text(data, charset)[:limit]
            if kind == "csv" or _csv_like(item.text):
                item.rows = _csv_rows(item.text)
        elif kind == "html":
            from milter.inspect.markup import read_html
            item.text, item.rows = read_html(decode_text(data, charset), limit)
        elif kind in ("docx", "xlsx", "pptx"):
            from milter.inspect.ooxml import read_ooxml
            read_ooxml(item, data, budget, zf)
        elif kind in ("ods", "odt", "odp"):
            from milter.inspect.odf import read_odf
            read_odf(item, data, budget, zf)
        elif kind == "pdf":
            from milter.inspect.pdf import read_pdf
            read_pdf(item, data, budget)
        elif kind == "ole":
            from milter.inspect.ole import read_ole
            read_ole(item, data)
        elif kind == "zip":
            from milter.inspect.archive import read_zip
            read_zip(item, data, budget, depth, items, zf)
        elif kind in ("7z", "rar"):
            item.uninspectable = f"{kind} archives cannot be inspected here"
    except Exception as exc:  # noqa: BLE001 - a reader bug or a hostile file: cannot tell
        item.uninspectable = f"{kind} could not be read ({type(exc).__name__})"
    return item


def _csv_like(text: str) -> bool:
    lines = _first_lines(text, 5)
    return len(lines) >= 2 and all(line.count(";") >= 2 or line.count(",") >= 2
                                   for line in lines)


def _first_lines(text: str, n: int) -> list[str]:
    """``text.splitlines()[:n]`` without splitting all of a long text: a head of it that
    holds more than ``n`` lines has the same first ``n`` (each of those ends before the
    next line starts)."""
    size = 4096
    while size < len(text):
        lines = text[:size].splitlines()
        if len(lines) > n:
            return lines[:n]
        size *= 8
    return text.splitlines()[:n]


def _csv_rows(text: str, max_rows: int = 20000) -> list[list[str]]:
    first = text.split("\n", 1)[0]
    delimiter = ";" if first.count(";") > first.count(",") else ","
    rows: list[list[str]] = []
    for row in csv.reader(io.StringIO(text), delimiter=delimiter):
        rows.append(row)
        if len(rows) >= max_rows:
            break
    return rows


def iter_text(items: list[Item]) -> Iterator[str]:
    for i in items:
        if i.text:
            yield i.text
