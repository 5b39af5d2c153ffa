"""The load generator: an asyncio SMTP client (aiosmtplib) with N sessions for T seconds."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field

import aiosmtplib


@dataclass
class Result:
    sent: int = 0
    ok: int = 0
    refused: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds else 0.0

    def pct(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        xs = sorted(self.latencies)
        return xs[min(len(xs) - 1, int(p / 100 * len(xs)))] * 1000


Message = tuple[str, bytes]  # (envelope sender, bytes)


async def _session(port: int, mix: list[Message], per_conn: int, deadline: float,
                   result: Result, rng: random.Random) -> None:
    while time.monotonic() < deadline:
        try:
            client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=60)
            await client.connect()
            for _ in range(per_conn):
                if time.monotonic() >= deadline:
                    break
                sender, raw = rng.choice(mix)
                start = time.perf_counter()
                try:
                    await client.sendmail(sender, ["ouder@example.org"], raw)
                    result.ok += 1
                except aiosmtplib.SMTPResponseException as exc:
                    if exc.code >= 500:
                        result.refused += 1
                    else:
                        result.errors += 1
                result.latencies.append(time.perf_counter() - start)
                result.sent += 1
            await client.quit()
        except (aiosmtplib.SMTPException, OSError):
            result.errors += 1
            await asyncio.sleep(0.05)


async def run(port: int, mix: list[Message], sessions: int, per_conn: int,
              seconds: float, seed: int = 1) -> Result:
    result = Result()
    start = time.monotonic()
    deadline = start + seconds
    await asyncio.gather(*(_session(port, mix, per_conn, deadline, result,
                                    random.Random(seed + i)) for i in range(sessions)))
    result.seconds = time.monotonic() - start
    return result
