"""Attachment inspection: what is inside each attachment, or why we cannot tell.

Every reader is bounded (bytes, depth, members, time). Anything that hits a bound, is
encrypted, or fails to parse becomes an ``Item`` with ``uninspectable`` set: policy treats
"cannot tell" as its own verdict, never as clean.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from milter.core.limits import Limits as Limits  # re-exported: readers and callers use it here
from milter.core.limits import deadline
from milter.core.message import Message


@dataclass
class Item:
    """One inspected object: an attachment, the body, or a member of an archive."""

    name: str
    kind: str                     # real type from the bytes: pdf, docx, zip, image, ...
    size: int
    text: str = ""
    rows: list[list[str]] = field(default_factory=list)   # table rows (csv, xlsx, docx, html)
    labels: list[str] = field(default_factory=list)       # sensitivity label names and ids
    uninspectable: str = ""       # the reason, when we cannot tell what is inside
    defects: list[str] = field(default_factory=list)      # what made it uninspectable
    images: list[int] = field(default_factory=list)       # sizes of pictures embedded in it
    is_body: bool = False
    depth: int = 0
    # The digest, made when evidence asks for it: most items never show in evidence, and
    # hashing every message's body cost as much as reading it.
    digest: Callable[[], str] = field(default=str, repr=False, compare=False)

    @property
    def sha256(self) -> str:
        return self.digest()

    @property
    def media(self) -> str:
        return self.kind if self.kind in ("image", "video", "audio") else ""


class Budget:
    """The per-message time and byte budget shared by every reader."""

    def __init__(self, limits: Limits, clock: float | None = None) -> None:
        self.limits = limits
        self.deadline = min((clock if clock is not None else time.monotonic())
                            + limits.time_budget, deadline())
        self.expanded = 0

    def time_left(self) -> bool:
        return time.monotonic() < self.deadline

    def take(self, n: int) -> bool:
        """Account ``n`` expanded bytes; False once the message is over its byte budget."""
        self.expanded += n
        return self.expanded <= self.limits.max_expanded_bytes


@dataclass(frozen=True)
class Report:
    items: tuple[Item, ...]

    @property
    def attachments(self) -> tuple[Item, ...]:
        return tuple(i for i in self.items if not i.is_body)


def inspect_message(message: Message, limits: Limits) -> Report:
    """Inspect every part once; cached on the message so every rule shares the result."""
    key = ("inspection", limits)
    cached = message.cache.get(key)
    if isinstance(cached, Report):
        return cached
    from milter.inspect.readers import read_part

    budget = Budget(limits)
    items: list[Item] = []
    ambiguous = sorted({d for d in message.defects if d.split(":")[0] in AMBIGUOUS_DEFECTS})
    for part in message.parts:
        items.extend(read_part(part, budget))
    if ambiguous:
        items.append(Item(name="(message structure)", kind="mime", size=len(message.raw),
                          uninspectable="ambiguous MIME structure: " + ", ".join(ambiguous),
                          defects=ambiguous))
    report = Report(tuple(items))
    message.cache[key] = report
    return report


# Defects where mail programs may read a different structure than Python's parser did.
AMBIGUOUS_DEFECTS = frozenset({
    "DuplicateContentType", "StartBoundaryNotFoundDefect",
    "MultipartInvariantViolationDefect", "NoBoundaryInMultipartDefect",
    # a parameter given twice, or two spellings of it that disagree: clients pick different
    # ones (``DuplicateMimeParameter:boundary``); a header given twice, likewise
    "DuplicateMimeParameter", "ConflictingMimeParameter", "DuplicateMimeHeader",
})
