"""PDF: text and document metadata with pypdf; a password means uninspectable."""

from __future__ import annotations

import io
import logging

from pypdf import PdfReader

from milter.inspect import Budget, Item

logging.getLogger("pypdf").setLevel(logging.ERROR)  # malformed PDFs are normal input here
MAX_PAGES = 500


def read_pdf(item: Item, data: bytes, budget: Budget) -> None:
    reader = PdfReader(io.BytesIO(data), strict=False)
    if reader.is_encrypted:
        # An empty user password (owner-password-only PDFs) still opens: inspect those.
        try:
            opened = bool(reader.decrypt(""))
        except Exception:  # noqa: BLE001
            opened = False
        if not opened:
            item.uninspectable = "password-protected PDF"
            return
    meta: dict[str, object] = dict(reader.metadata or {})
    parts = [str(v) for v in meta.values()]
    labels = [str(v) for k, v in meta.items() if "MSIP_Label" in str(k) and str(k).endswith(
        "_Name")]
    item.labels = labels
    limit = budget.limits.max_text_chars
    total = 0
    for n, page in enumerate(reader.pages):
        if n >= MAX_PAGES or not budget.time_left():
            item.uninspectable = "PDF larger than the inspection budget"
            break
        text = page.extract_text() or ""
        parts.append(text)
        total += len(text)
        if total > limit:
            break
    item.text = "\n".join(parts)[:limit]
