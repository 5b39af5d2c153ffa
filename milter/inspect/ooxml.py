"""Office Open XML (docx, xlsx, pptx): text, table rows and sensitivity labels.

Office writes Microsoft Information Protection labels as ``MSIP_Label_<guid>_Name`` custom
properties in ``docProps/custom.xml``; newer versions write ``docMetadata/LabelInfo.xml`` with
label ids only. Both are read; the policy says which names and ids count as confidential.
"""

from __future__ import annotations

import contextlib
import html
import io
import re
import zipfile
from collections.abc import Iterator

from defusedxml import ElementTree

from milter.inspect import Budget, Item

_ROW_START = re.compile(r"<w:tr[ >]")
_CELL_START = re.compile(r"<w:tc[ >]")
_XL_ROW_START = re.compile(r"<row[ >]")
_XL_SI_START = re.compile(r"<si>")
# A cell: ``<c ([^>]*?)(?:/>|>(.*?)</c>)`` (re.S) written possessive and tempered, which
# matches the same (attributes up to the first ">", without a "/" before it; the body up to
# the first "</c>") without trying the rest of the pattern at every character. A body that
# is one inline string, as most writers write it, is taken in one step.
_XL_CELL = re.compile(r"<c ([^>/]*+(?:/(?!>)[^>/]*+)*+)(?:/>|>((?:<is><t>[^<]*+</t></is>"
                      r"(?=</c>))?(?:[^<]++|<(?!/c>))*+)</c>)")
_XL_V = re.compile(r"<v>([^<]*)</v>")
_XL_IS = re.compile(r"<t(?:\s[^>]*)?>([^<]*)</t>")
_LABEL_ID = re.compile(r"""\bid=["']\{?([0-9a-fA-F-]{36})\}?["']""")
MAX_XML = 50 * 2**20  # one XML part larger than this is not a real document
# Pictures and recordings embedded in documents (word/media, ppt/media, xl/media, Pictures/):
# a newsletter's photos are media sent outside as much as a .jpg attachment is.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp",
                  ".heic", ".heif", ".avif", ".mp4", ".mov", ".avi", ".wmv", ".m4v", ".mpg",
                  ".mpeg", ".webm", ".mp3", ".m4a", ".wav")
_MEDIA_DIRS = ("word/media/", "ppt/media/", "xl/media/")


# The pieces of text in reading order, and where each paragraph ends. A run's tab is a bare
# <w:tab/>; tab stops in a paragraph's properties have attributes and are not text.
# The "<" every piece starts with stands before the alternatives, not in each: the regex
# engine then skips to the next "<" at once instead of trying every byte (3x on Word's XML).
_PIECES = {
    "docx": re.compile(r"<(?:w:t(?:\s[^>]*)?>([^<]*)</w:t>|w:(tab|cr)/>|w:(br)\b[^>]*/>"
                       r"|(/w:p>|w:p/>))"),
    "pptx": re.compile(r"<(?:a:t(?:\s[^>]*)?>([^<]*)</a:t>|a:(tab)/>|a:(br)\b[^>]*/>"
                       r"|(/a:p>|a:p/>))"),
}


def _paragraphs(xml: str, kind: str) -> list[str]:
    """One line per paragraph, its runs joined without spaces: Word splits a word or a number
    over several runs at will, and a line break between paragraphs (and table cells) keeps
    them from running together into new numbers. Tabs stay tabs: a list typed with tab
    stops is a table. One regex pass over the part."""
    lines: list[str] = []
    line: list[str] = []
    for text, sep, br, end in _PIECES[kind].findall(xml):
        if end:
            lines.append("".join(line))
            line = []
        elif sep == "tab":
            line.append("\t")
        elif sep or br:
            line.append("\n")
        else:
            line.append(text)
    if line:
        lines.append("".join(line))
    return lines


def _elements(xml: str, start: re.Pattern[str], end: str) -> Iterator[str]:
    """What ``re.findall(start.pattern + ".*?" + end, xml, re.S)`` finds, for a ``start``
    like ``<row[ >]`` and an ``end`` like ``</row>`` (neither can begin inside the other): in
    each piece before an ``end``, from its first ``start`` on. A split and a search an
    element, where the lazy regex tried ``end`` at every character (7 ms of a 2000-row
    sheet's 25)."""
    pieces = xml.split(end)
    for piece in pieces[:-1]:
        found = start.search(piece)
        if found:
            yield piece[found.start():] + end


def _inline_text(body: str, head: str = "<is><t>", tail: str = "</t></is>") -> str:
    """``"".join(_XL_IS.findall(body))``; for the usual ``<is><t>text</t></is>`` in a cell
    (``<t>text</t>`` in a shared string: ``head``, ``tail``) without the regex."""
    if len(body) >= len(head) + len(tail) and body.startswith(head) \
            and body.endswith(tail) and "<" not in body[len(head):len(body) - len(tail)]:
        return body[len(head):len(body) - len(tail)]
    return "".join(_XL_IS.findall(body))


def _read(zf: zipfile.ZipFile, name: str, budget: Budget) -> str:
    info = zf.getinfo(name)
    if info.file_size > MAX_XML or not budget.take(info.file_size):
        raise OverflowError(f"{name} too large")
    return zf.read(name).decode("utf-8", errors="replace")


def read_ooxml(item: Item, data: bytes, budget: Budget,
               opened: zipfile.ZipFile | None = None) -> None:
    """``opened``: the archive of ``data`` as the type sniffer opened it (the caller's to
    close), so the central directory is read once per attachment."""
    with contextlib.nullcontext(opened) if opened is not None \
            else zipfile.ZipFile(io.BytesIO(data)) as zf:
        names = set(zf.namelist())
        if any(i.flag_bits & 0x1 for i in zf.infolist()):
            item.uninspectable = "encrypted Office document"
            return
        item.labels = _labels(zf, names, budget)
        item.images = [i.file_size for i in zf.infolist()
                       if i.filename.startswith(_MEDIA_DIRS)
                       and i.filename.lower().endswith(IMAGE_SUFFIXES)]
        limit = budget.limits.max_text_chars
        texts: list[str] = []
        if item.kind == "docx":
            for n in sorted(n for n in names if re.match(r"word/(document|header\d*|footer\d*)"
                                                          r"\.xml$", n)):
                xml = _read(zf, n, budget)
                texts.extend(_paragraphs(xml, "docx"))
                for row in _elements(xml, _ROW_START, "</w:tr>"):
                    item.rows.append([html.unescape(" ".join(_paragraphs(c, "docx")))
                                      for c in _elements(row, _CELL_START, "</w:tc>")])
        elif item.kind == "pptx":
            for n in sorted(n for n in names if re.match(r"ppt/slides/slide\d+\.xml$", n)):
                texts.extend(_paragraphs(_read(zf, n, budget), "pptx"))
        elif item.kind == "xlsx":
            shared: list[str] = []
            if "xl/sharedStrings.xml" in names:
                for si in _elements(_read(zf, "xl/sharedStrings.xml", budget),
                                    _XL_SI_START, "</si>"):  # <si>(.*?)</si>, re.S
                    shared.append(html.unescape(_inline_text(si[4:-5], "<t>", "</t>")))
            for n in sorted(n for n in names if re.match(r"xl/worksheets/sheet\d+\.xml$", n)):
                for row in _elements(_read(zf, n, budget), _XL_ROW_START, "</row>"):
                    cells = []
                    for attrs, body in _XL_CELL.findall(row):
                        value = ""
                        if 't="s"' in attrs:
                            m = _XL_V.search(body or "")
                            if m and m.group(1).isdigit() and int(m.group(1)) < len(shared):
                                value = shared[int(m.group(1))]
                        elif 't="inlineStr"' in attrs:
                            value = html.unescape(_inline_text(body))
                        else:
                            m = _XL_V.search(body or "")
                            value = m.group(1) if m else ""
                        cells.append(value)
                    item.rows.append(cells)
                    if len(item.rows) > 100000:
                        break
            # cells apart (a tab) and rows apart (a line): never joined into new numbers
            texts = ["\t".join(r) for r in item.rows]
        item.text = html.unescape("\n".join(texts))[:limit]
        # document properties (title, subject, keywords) carry markings too
        if "docProps/core.xml" in names:
            core = _read(zf, "docProps/core.xml", budget)
            item.text += "\n" + html.unescape(re.sub(r"<[^>]+>", "\n", core))[:10000]


def _labels(zf: zipfile.ZipFile, names: set[str], budget: Budget) -> list[str]:
    labels: list[str] = []
    if "docProps/custom.xml" in names:
        root = ElementTree.fromstring(_read(zf, "docProps/custom.xml", budget))
        enabled: dict[str, bool] = {}
        found: dict[str, str] = {}
        for prop in root:
            pname = prop.get("name", "")
            m = re.match(r"MSIP_Label_([0-9a-fA-F-]{36})_(\w+)$", pname)
            if not m:
                continue
            value = "".join(prop.itertext()).strip()
            if m.group(2) == "Name":
                found[m.group(1).lower()] = value
            elif m.group(2) == "Enabled":
                enabled[m.group(1).lower()] = value.lower() == "true"
        for guid, name in found.items():
            if enabled.get(guid, True):
                labels += [name, guid]
    if "docMetadata/LabelInfo.xml" in names:
        labels += [g.lower() for g in _LABEL_ID.findall(_read(zf, "docMetadata/LabelInfo.xml",
                                                              budget))]
    return labels
