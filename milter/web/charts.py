"""Bar charts as server-rendered SVG: no script, no external asset, CSP unchanged.

Every bar is a link to the records behind it and carries its number as text, so what the
chart says and what the store holds can be compared (the tests do).
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape

from markupsafe import Markup

PALETTE = ("#2b6cb0", "#c53030", "#b7791f", "#2f855a", "#6b46c1", "#4a5568")


@dataclass(frozen=True)
class Bar:
    label: str
    value: int
    href: str
    color: str = PALETTE[0]
    key: str = ""        # a stable id for tests and keyboard users


def hbars(chart_id: str, title: str, bars: list[Bar], width: int = 640) -> Markup:
    """Horizontal bars, one row per bar, label left, number right."""
    row, label_w, num_w = 24, 220, 70
    height = max(1, len(bars)) * row + 8
    top = max((b.value for b in bars), default=0) or 1
    span = width - label_w - num_w
    out = [f'<svg id="{escape(chart_id)}" class="chart" role="img" viewBox="0 0 {width} '
           f'{height}" width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg">'
           f"<title>{escape(title)}</title>"]
    for i, b in enumerate(bars):
        y = 4 + i * row
        w = max(1, round(span * b.value / top)) if b.value else 0
        out.append(
            f'<a href="{escape(b.href)}" data-key="{escape(b.key or b.label)}" '
            f'data-value="{b.value}"><title>{escape(b.label)}: {b.value}</title>'
            f'<text x="{label_w - 6}" y="{y + 16}" text-anchor="end" font-size="13">'
            f"{escape(_short(b.label, 32))}</text>"
            f'<rect x="{label_w}" y="{y + 3}" width="{w}" height="{row - 6}" '
            f'fill="{escape(b.color)}"></rect>'
            f'<text x="{label_w + w + 6}" y="{y + 16}" font-size="13">{b.value}</text></a>')
    out.append("</svg>")
    return Markup("".join(out))


def columns(chart_id: str, title: str, groups: list[tuple[str, list[Bar]]],
            width: int = 900, height: int = 220) -> Markup:
    """Stacked columns, one per group (a day, a month), segments linked to their records."""
    n = max(1, len(groups))
    col = (width - 40) / n
    top = max((sum(b.value for b in bars) for _, bars in groups), default=0) or 1
    plot = height - 40
    out = [f'<svg id="{escape(chart_id)}" class="chart" role="img" viewBox="0 0 {width} '
           f'{height}" width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg">'
           f"<title>{escape(title)}</title>"
           f'<text x="0" y="12" font-size="11">{top}</text>'
           f'<line x1="34" y1="8" x2="34" y2="{plot + 8}" stroke="#999"></line>']
    for i, (label, bars) in enumerate(groups):
        x = 40 + i * col
        y = plot + 8.0
        for b in bars:
            if not b.value:
                continue
            h = plot * b.value / top
            y -= h
            out.append(f'<a href="{escape(b.href)}" data-key="{escape(b.key)}" '
                       f'data-value="{b.value}"><title>{escape(label)} {escape(b.label)}: '
                       f'{b.value}</title><rect x="{x + 1:.1f}" y="{y:.1f}" '
                       f'width="{max(1.0, col - 2):.1f}" height="{h:.1f}" '
                       f'fill="{escape(b.color)}"></rect></a>')
        if n <= 16 or i % max(1, n // 10) == 0:
            out.append(f'<text x="{x + col / 2:.1f}" y="{height - 14}" font-size="10" '
                       f'text-anchor="middle">{escape(label)}</text>')
    out.append("</svg>")
    return Markup("".join(out))


def _short(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"
