"""Guessing passwords is slow and expensive for the guesser, not for the server.

``LoginThrottle``: after ``limit`` failed logins within ``window`` seconds, per user name and
per client address, further attempts are refused (429, saying when to try again) without
checking the password. ``HashGate``: argon2 takes 64 MiB per check, so only a few run at once;
the rest wait briefly, then get 503 instead of growing the process without bound.
"""

from __future__ import annotations

import threading
import time
from collections import deque


class LoginThrottle:
    def __init__(self, limit: int = 5, window: float = 900.0) -> None:
        self.limit, self.window = limit, window
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def wait(self, keys: tuple[str, ...], now: float | None = None) -> float:
        """Seconds until any of ``keys`` may try again (0: now)."""
        now = time.time() if now is None else now
        longest = 0.0
        with self._lock:
            for key in keys:
                times = self._failures.get(key)
                if not times:
                    continue
                while times and times[0] <= now - self.window:
                    times.popleft()
                if len(times) >= self.limit:
                    longest = max(longest, times[0] + self.window - now)
                if not times:
                    del self._failures[key]
        return longest

    def failed(self, keys: tuple[str, ...], now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self._lock:
            if len(self._failures) > 100_000:  # bounded: the oldest entries go first
                for key in list(self._failures)[:10_000]:
                    del self._failures[key]
            for key in keys:
                self._failures.setdefault(key, deque(maxlen=self.limit * 4)).append(now)

    def succeeded(self, key: str) -> None:
        with self._lock:
            self._failures.pop(key, None)


class HashGate:
    def __init__(self, at_once: int = 2, wait: float = 10.0) -> None:
        self._sem = threading.BoundedSemaphore(at_once)
        self.wait = wait

    def acquire(self) -> bool:
        """True when this request may hash now (within ``wait`` seconds); False: too many
        at once, answer 503."""
        return self._sem.acquire(timeout=self.wait)

    def release(self) -> None:
        self._sem.release()
