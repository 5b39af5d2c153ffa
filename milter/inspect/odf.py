"""OpenDocument (ods, odt, odp: LibreOffice, Google Docs exports): text, table rows, pictures.

``content.xml`` holds everything: paragraphs as ``text:p``/``text:h``, table rows as
``table:table-row`` of ``table:table-cell``. Repeated empty cells and rows (LibreOffice writes
a million of them to the sheet's end) are not expanded.
"""

from __future__ import annotations

import contextlib
import html
import io
import re
import zipfile

from milter.inspect import Budget, Item
from milter.inspect.ooxml import IMAGE_SUFFIXES, MAX_XML

_ROW = re.compile(r"<table:table-row\b[^>]*?(?:/>|>(.*?)</table:table-row>)", re.S)
_CELL = re.compile(r"<table:(?:covered-)?table-cell\b([^>]*?)(?:/>|>(.*?)</table:(?:covered-)?"
                   r"table-cell>)", re.S)
_PARA = re.compile(r"<text:[ph]\b[^>]*?(?:/>|>(.*?)</text:[ph]>)", re.S)
_TAG = re.compile(r"<[^>]+>")
_REPEAT = re.compile(r'table:number-columns-repeated="(\d+)"')
MAX_ROWS = 100_000


def _text(xml: str) -> str:
    return html.unescape(_TAG.sub("", xml.replace("<text:s/>", " ").replace("<text:tab/>", "\t")))


def read_odf(item: Item, data: bytes, budget: Budget,
             opened: zipfile.ZipFile | None = None) -> None:
    """``opened``: the archive as the type sniffer opened it (the caller's to close)."""
    with contextlib.nullcontext(opened) if opened is not None \
            else zipfile.ZipFile(io.BytesIO(data)) as zf:
        if "META-INF/manifest.xml" in zf.namelist() and b"encryption-data" in zf.read(
                "META-INF/manifest.xml")[:MAX_XML]:
            item.uninspectable = "password-protected OpenDocument file"
            return
        info = zf.getinfo("content.xml")
        if info.file_size > MAX_XML or not budget.take(info.file_size):
            raise OverflowError("content.xml too large")
        xml = zf.read("content.xml").decode("utf-8", errors="replace")
        item.images = [i.file_size for i in zf.infolist()
                       if i.filename.startswith("Pictures/")
                       and i.filename.lower().endswith(IMAGE_SUFFIXES)]
    limit = budget.limits.max_text_chars
    lines: list[str] = []
    for m in _ROW.finditer(xml):
        cells: list[str] = []
        for attrs, body in _CELL.findall(m.group(1) or ""):
            value = " ".join(_text(p) for p in _PARA.findall(body or ""))
            repeat = _REPEAT.search(attrs)
            # repeated cells are copies: keep one unless the value is empty
            n = min(int(repeat.group(1)), 50) if repeat and value else 1
            cells.extend([value] * n)
        while cells and not cells[-1]:
            cells.pop()
        if cells:
            item.rows.append(cells)
            lines.append("\t".join(cells))
        if len(item.rows) >= MAX_ROWS:
            break
    if item.kind != "ods":  # text documents and slides: paragraphs, one a line
        lines = [_text(p) for p in _PARA.findall(xml)]
    item.text = "\n".join(lines)[:limit]
