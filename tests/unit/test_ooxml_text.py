"""The text and rows read from Word, PowerPoint and Excel XML are what the detectors always
saw: the reader's patterns, rewritten for speed, are compared with the ones they replaced on
the fixture documents, on Word-like markup and on generated markup."""

from __future__ import annotations

import html
import io
import re
import zipfile

from hypothesis import given, settings
from hypothesis import strategies as st

from milter.inspect import Budget, Item, Limits, ooxml
from milter.inspect.ooxml import (
    _CELL_START,
    _ROW_START,
    _XL_CELL,
    _XL_IS,
    _XL_ROW_START,
    _XL_SI_START,
    _elements,
    _inline_text,
    _paragraphs,
    read_ooxml,
)
from tests.fixtures import files

# The patterns as they were before (one alternative per piece, each starting with "<").
_BEFORE = {
    "docx": re.compile(r"<w:t(?:\s[^>]*)?>([^<]*)</w:t>|<w:(tab|cr)/>|<w:(br)\b[^>]*/>"
                       r"|(</w:p>|<w:p/>)"),
    "pptx": re.compile(r"<a:t(?:\s[^>]*)?>([^<]*)</a:t>|<a:(tab)/>|<a:(br)\b[^>]*/>"
                       r"|(</a:p>|<a:p/>)"),
}


def paragraphs_before(xml: str, kind: str) -> list[str]:
    """``_paragraphs`` with the pattern as it was (the loop over its pieces is the same)."""
    now = ooxml._PIECES[kind]
    ooxml._PIECES[kind] = _BEFORE[kind]
    try:
        return _paragraphs(xml, kind)
    finally:
        ooxml._PIECES[kind] = now


def xml_parts(data: bytes) -> list[tuple[str, str]]:
    zf = zipfile.ZipFile(io.BytesIO(data))
    return [(n, zf.read(n).decode()) for n in zf.namelist() if n.endswith(".xml")]


def test_fixture_documents_read_the_same() -> None:
    para = "Verslag van de vergadering over het rooster en de activiteiten. " * 8
    docs = [files.docx([para] * 50),
            files.docx(["Leerling", "BSN 111222333 & co <x>"], label="Vertrouwelijk",
                       table=[["Naam", "Geboortedatum"], ["Jan de Vries", "01-02-2015"]]),
            files.docx_with_photos(["Schoolreis"], files.photo(40, 30), 2),
            files.pptx(["Dia één", "Dia twee"], images=1, photo=files.photo(40, 30))]
    seen = 0
    for data in docs:
        for name, xml in xml_parts(data):
            for kind in ("docx", "pptx"):
                assert _paragraphs(xml, kind) == paragraphs_before(xml, kind), name
                seen += bool(paragraphs_before(xml, kind))
    assert seen >= 4
    data = docs[1]
    item = Item("lijst.docx", "docx", len(data))
    read_ooxml(item, data, Budget(Limits()))
    xml = dict(xml_parts(data))["word/document.xml"]
    assert item.rows == [[html.unescape(" ".join(paragraphs_before(c, "docx")))
                          for c in re.findall(r"<w:tc[ >].*?</w:tc>", row, re.S)]
                         for row in re.findall(r"<w:tr[ >].*?</w:tr>", xml, re.S)]
    assert item.rows[1] == ["Jan de Vries", "01-02-2015"]


WORD_PIECES = [
    '<w:p w:rsidR="00A1">', "<w:p>", "</w:p>", "<w:p/>", "<w:pPr>", "</w:pPr>",
    '<w:tabs><w:tab w:val="left" w:pos="720"/></w:tabs>', "<w:r>", "</w:r>",
    "<w:rPr><w:b/></w:rPr>", "<w:t>Jan</w:t>", '<w:t xml:space="preserve">de </w:t>',
    "<w:t>123 &amp; 456</w:t>", "<w:t/>", "<w:tab/>", "<w:cr/>", "<w:br/>",
    '<w:br w:type="page"/>', "<w:brx/>", "<w:tbl>", "</w:tbl>", "<w:tr>", "</w:tr>",
    "<w:tc>", "</w:tc>", '<w:proofErr w:type="spellStart"/>', "<w:txbxContent>",
    "</w:txbxContent>", "<w:tt>x</w:tt>", "<w:t>open", "</w:t>", "< w:t>y</w:t>", "<",
    "<a:p>", "</a:p>", "<a:p/>", "<a:t>Dia</a:t>", "<a:tab/>", "<a:br/>", "<a:cr/>",
    "tekst", "\n", " ", '<w:tr w:rsidR="1">', "<w:trPr/>", "<w:tcPr/>", "<w:tc ", "</w:tc",
    ">", "<w:trx>",
]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(WORD_PIECES), max_size=60))
def test_generated_markup_reads_the_same(pieces: list[str]) -> None:
    xml = "".join(pieces)
    for kind in ("docx", "pptx"):
        assert _paragraphs(xml, kind) == paragraphs_before(xml, kind)
    rows = re.findall(r"<w:tr[ >].*?</w:tr>", xml, re.S)
    assert list(_elements(xml, _ROW_START, "</w:tr>")) == rows
    for row in rows:
        assert list(_elements(row, _CELL_START, "</w:tc>")) == re.findall(
            r"<w:tc[ >].*?</w:tc>", row, re.S)


_ROW_BEFORE = re.compile(r"<row[ >].*?</row>", re.S)
_CELL_BEFORE = re.compile(r"<c ([^>]*?)(?:/>|>(.*?)</c>)", re.S)


def sheet_rows_before(xml: str, strings: str = "") -> list[list[str]]:
    """The cells of a sheet, as the reader read them before."""
    shared = [html.unescape("".join(_XL_IS.findall(si)))
              for si in re.findall(r"<si>(.*?)</si>", strings, re.S)]
    rows = []
    for row in _ROW_BEFORE.findall(xml):
        cells = []
        for attrs, body in _CELL_BEFORE.findall(row):
            if 't="s"' in attrs:
                m = re.search(r"<v>([^<]*)</v>", body or "")
                ok = m and m.group(1).isdigit() and int(m.group(1)) < len(shared)
                cells.append(shared[int(m.group(1))] if m and ok else "")
            elif 't="inlineStr"' in attrs:
                cells.append(html.unescape("".join(_XL_IS.findall(body or ""))))
            else:
                m = re.search(r"<v>([^<]*)</v>", body or "")
                cells.append(m.group(1) if m else "")
        rows.append(cells)
    return rows


def test_fixture_sheets_read_the_same() -> None:
    rows = [*files.pupil_rows(30), ["a & b", "<x>", "", 3.5, "Jan\tde Vries"]]
    data = files.xlsx(rows)
    item = Item("lijst.xlsx", "xlsx", len(data))
    read_ooxml(item, data, Budget(Limits()))
    (name, sheet), = [(n, x) for n, x in xml_parts(data) if n.startswith("xl/worksheets/")]
    assert item.rows == sheet_rows_before(sheet)
    assert len(item.rows) == 32


def test_shared_strings_read_the_same() -> None:
    """Excel itself writes each text once, in xl/sharedStrings.xml, and cells point at it."""
    strings = ('<sst><si><t>Naam</t></si><si><t xml:space="preserve">Jan &amp; co </t></si>'
               "<si><r><t>Vr</t></r><r><t>ies</t></r></si><si><t/></si></sst>")
    sheet = ('<worksheet><sheetData><row r="1"><c r="A1" t="s"><v>0</v></c><c t="s"><v>1</v>'
             '</c><c t="s"><v>2</v></c><c t="s"><v>3</v></c><c t="s"><v>9</v></c><c r="F1">'
             "<v>42</v></c></row></sheetData></worksheet>")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("[Content_Types].xml", "<Types/>")
        zf.writestr("xl/sharedStrings.xml", strings)
        zf.writestr("xl/worksheets/sheet1.xml", sheet)
    item = Item("lijst.xlsx", "xlsx", 0)
    read_ooxml(item, buf.getvalue(), Budget(Limits()))
    assert item.rows == sheet_rows_before(sheet, strings)
    assert item.rows == [["Naam", "Jan & co ", "Vries", "", "", "42"]]


SHEET_PIECES = [
    "<row>", '<row r="1">', "</row>", "<rows>", "<row/>", "<c ", '<c r="A1"', ' t="inlineStr"',
    ' t="s"', ' a="x/y"', "/", ">", "/>", "</c>", "<is>", "</is>", "<t>", '<t xml:space="x">',
    "</t>", "<v>", "</v>", "12", "Jan", "&amp;", "<r>", "</r>", "<", "\n", " ", "<c>", "<col ",
    "<si>", "</si>", "<sst>", "<si/>", "<s",
]


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(SHEET_PIECES), max_size=60))
def test_generated_sheet_markup_reads_the_same(pieces: list[str]) -> None:
    xml = "".join(pieces)
    assert list(_elements(xml, _XL_ROW_START, "</row>")) == _ROW_BEFORE.findall(xml)
    for text in (xml, *_ROW_BEFORE.findall(xml)):
        assert _XL_CELL.findall(text) == _CELL_BEFORE.findall(text)
    for body in (xml, "<is><t>" + xml + "</t></is>"):
        assert _inline_text(body) == "".join(_XL_IS.findall(body))
    shared = [si[4:-5] for si in _elements(xml, _XL_SI_START, "</si>")]
    assert shared == re.findall(r"<si>(.*?)</si>", xml, re.S)
    for body in (*shared, xml, "<t>" + xml + "</t>"):
        assert _inline_text(body, "<t>", "</t>") == "".join(_XL_IS.findall(body))
