"""Bounds on inspecting one message: the defaults of the ``[inspection]`` config keys.

The config schema reads its defaults from here, so each limit is defined once.
"""

from __future__ import annotations

import math
import time
from contextvars import ContextVar, Token
from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    max_depth: int = 3                      # archives inside archives
    max_members: int = 1000                 # per archive
    max_expanded_bytes: int = 200 * 2**20   # per message, all archives together
    max_ratio: int = 200                    # expanded / compressed, per archive member
    max_text_chars: int = 2_000_000         # text kept per item for the detectors
    time_budget: float = 15.0               # seconds per message


# -- the time budget, enforced -------------------------------------------------------------
# Inspection runs off the event loop (``milter.transaction``); the thread that runs it sets a
# deadline here, and the long loops (readers, detectors) call ``check_deadline``: past it they
# raise ``OutOfTime`` and the message becomes ``A1.uninspectable`` instead of a stall.

_DEADLINE: ContextVar[float] = ContextVar("inspection_deadline", default=math.inf)


class OutOfTime(Exception):
    """Inspection ran past its time budget (``[inspection] time_budget``)."""


def set_deadline(seconds: float) -> Token[float]:
    """Start the budget for this thread's (context's) inspection; reset with the token."""
    return _DEADLINE.set(time.monotonic() + seconds)


def reset_deadline(token: Token[float]) -> None:
    _DEADLINE.reset(token)


def deadline() -> float:
    """The monotonic time inspection must end by (infinite when none was set)."""
    return _DEADLINE.get()


def check_deadline() -> None:
    """Raise ``OutOfTime`` once the deadline has passed (cheap: call it every few thousand
    steps of a long loop)."""
    if time.monotonic() > _DEADLINE.get():
        raise OutOfTime("inspection time budget exhausted")
