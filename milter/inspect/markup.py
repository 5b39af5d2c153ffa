"""HTML: the text a reader sees, with table cells kept apart, and the tables as rows.

Tags are not simply dropped: cells side by side would run together into new numbers
(``<td>312</td><td>298</td><td>105</td>`` is not ``312 298 105``), and a pupil list pasted
into a message body is a table, so its rows are kept for the people-table detector.
"""

from __future__ import annotations

from html.parser import HTMLParser

_BLOCKS = frozenset({"p", "div", "br", "tr", "li", "h1", "h2", "h3", "h4", "h5", "h6",
                     "table", "ul", "ol", "section", "article", "header", "footer", "hr",
                     "blockquote", "pre", "dt", "dd"})
_SKIP = frozenset({"script", "style", "head", "title"})
MAX_ROWS = 100_000


class _Reader(HTMLParser):
    def __init__(self, limit: int) -> None:
        super().__init__(convert_charrefs=True)
        self.limit = limit
        self.size = 0
        self.out: list[str] = []
        self.rows: list[list[str]] = []
        self.row: list[str] | None = None
        self.cell: list[str] | None = None
        self.skip = 0

    def _emit(self, s: str) -> None:
        if self.size < self.limit:
            self.out.append(s)
            self.size += len(s)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP:
            self.skip += 1
        elif tag == "tr":
            self._end_row()
            self.row = []
        elif tag in ("td", "th"):
            self._end_cell()
            self.cell = []
            self._emit("\t")
        elif tag in _BLOCKS:
            self._emit("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP:
            self.skip = max(0, self.skip - 1)
        elif tag in ("td", "th"):
            self._end_cell()
        elif tag == "tr":
            self._end_row()
            self._emit("\n")
        elif tag in _BLOCKS:
            self._emit("\n")

    def handle_data(self, data: str) -> None:
        if self.skip:
            return
        self._emit(data)
        if self.cell is not None:
            self.cell.append(data)

    def _end_cell(self) -> None:
        if self.cell is not None:
            if self.row is None:
                self.row = []
            self.row.append(" ".join("".join(self.cell).split()))
            self.cell = None

    def _end_row(self) -> None:
        self._end_cell()
        if self.row and len(self.rows) < MAX_ROWS:
            self.rows.append(self.row)
        self.row = None


CHUNK = 1 << 16


def read_html(markup: str, limit: int) -> tuple[str, list[list[str]]]:
    """(text, table rows) of an HTML document; text capped at ``limit`` characters, and so
    is the markup parsed (the parser costs about 0.3 s a megabyte: a huge HTML body is cut
    where a huge text would be)."""
    reader = _Reader(limit)
    for start in range(0, min(len(markup), limit), CHUNK):
        reader.feed(markup[start:start + CHUNK])
        if reader.size >= limit:
            break
    reader.close()
    reader._end_row()
    return "".join(reader.out)[:limit], reader.rows
