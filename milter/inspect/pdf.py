"""PDF: text, document metadata and embedded pictures with pypdf; a password means
uninspectable.

Text is extracted in pypdf's layout mode: a table drawn cell by cell comes out as lines with
the cells apart (two or more spaces), as on the page, so a pupil list in a PDF is still a table
and cells side by side are never read as one number.
"""

from __future__ import annotations

import io
import logging
from typing import Any

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
    seen: set[int] = set()
    for n, page in enumerate(reader.pages):
        if n >= MAX_PAGES or not budget.time_left():
            item.uninspectable = "PDF larger than the inspection budget"
            break
        try:
            text = page.extract_text(extraction_mode="layout") or ""
        except Exception:  # noqa: BLE001 - layout mode is pickier than plain extraction
            text = page.extract_text() or ""
        _images(page, item, seen)
        parts.append(text)
        total += len(text)
        if total > limit:
            break
    item.text = "\n".join(parts)[:limit]


def _images(page: Any, item: Item, seen: set[int]) -> None:
    """Sizes of the photos a page draws, each object once (a logo on every page is one
    picture). Photos in PDFs are JPEG (or JPEG 2000) streams, which pypdf hands out as they
    are stored, so the size is the photo's own and nothing is decoded; drawings and
    screenshots (Flate pixel data) are not counted as photos."""
    try:
        resources = page.get("/Resources")
        xobjects = resources.get_object().get("/XObject") if resources is not None else None
        if xobjects is None:
            return
        for ref in xobjects.get_object().values():
            key = getattr(ref, "idnum", None) or id(ref)
            if key in seen:
                continue
            seen.add(key)
            obj = ref.get_object()
            filters = obj.get("/Filter")
            names = [str(f) for f in filters] if isinstance(filters, list) else [str(filters)]
            if obj.get("/Subtype") == "/Image" and ("/DCTDecode" in names
                                                    or "/JPXDecode" in names):
                item.images.append(len(obj.get_data()))
    except Exception:  # noqa: BLE001 - a damaged resource dictionary: no pictures counted
        return
