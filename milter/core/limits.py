"""Bounds on inspecting one message: the defaults of the ``[inspection]`` config keys.

The config schema reads its defaults from here, so each limit is defined once.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    max_depth: int = 3                      # archives inside archives
    max_members: int = 1000                 # per archive
    max_expanded_bytes: int = 200 * 2**20   # per message, all archives together
    max_ratio: int = 200                    # expanded / compressed, per archive member
    max_text_chars: int = 2_000_000         # text kept per item for the detectors
    time_budget: float = 15.0               # seconds per message
