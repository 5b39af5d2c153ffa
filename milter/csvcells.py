"""CSV cells that a spreadsheet will not run: auditors open exports in Excel.

A cell starting with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is read as a
formula (``=HYPERLINK(...)`` in a subject line would run in the auditor's Excel); such a cell
gets a leading apostrophe, the OWASP advice for CSV injection. Everything else is as it was.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def cell(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def row(values: Iterable[Any]) -> list[Any]:
    return [cell(v) for v in values]


def record(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: cell(v) for k, v in values.items()}
