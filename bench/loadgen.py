"""The load generator: an asyncio SMTP client (aiosmtplib) with N sessions for T seconds, and
``in_flight``: N messages held in flight at once (for the memory measurement)."""

from __future__ import annotations

import asyncio
import contextlib
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


async def in_flight(port: int, sender: str, raw: bytes, n: int, timeout: float = 300
                    ) -> tuple[Result, int]:
    """Send ``n`` copies of ``raw`` over ``n`` connections so that all are in flight at once:
    each session sends its whole body and then holds the final dot until every session has
    (or ``timeout`` passed); then all end DATA together and wait for the answer.

    Returns the result and how many sessions had sent their whole body when the dots went:
    that many messages were inside the server at the same moment.
    """
    result, ready, go = Result(), [0], asyncio.Event()
    went: list[int] = []
    lines = raw.split(b"\r\n")
    body = b"\r\n".join(b"." + ln if ln.startswith(b".") else ln for ln in lines)
    if not body.endswith(b"\r\n"):
        body += b"\r\n"

    async def expect(reader: asyncio.StreamReader, code: str) -> str:
        while True:
            line = (await reader.readline()).decode(errors="replace")
            if not line:
                raise ConnectionError("closed")
            if line[3:4] != "-":
                if not line.startswith(code):
                    raise aiosmtplib.SMTPResponseException(int(line[:3] or 0), line)
                return line

    async def one() -> None:
        start = time.perf_counter()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            await expect(reader, "220")
            for cmd, code in ((b"EHLO loadgen\r\n", "250"), (f"MAIL FROM:<{sender}>\r\n"
                              .encode(), "250"), (b"RCPT TO:<ouder@example.org>\r\n", "250"),
                              (b"DATA\r\n", "354")):
                writer.write(cmd)
                await expect(reader, code)
            writer.write(body)
            await writer.drain()
            ready[0] += 1
            if ready[0] == n:
                go.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(go.wait(), timeout)
            if not went:
                went.append(ready[0])
            start = time.perf_counter()
            writer.write(b".\r\n")
            await expect(reader, "250")
            result.ok += 1
            writer.write(b"QUIT\r\n")
            writer.close()
        except aiosmtplib.SMTPResponseException as exc:
            if exc.code >= 500:
                result.refused += 1
            else:
                result.errors += 1
        except (OSError, ConnectionError):
            result.errors += 1
        result.sent += 1
        result.latencies.append(time.perf_counter() - start)

    begin = time.monotonic()
    await asyncio.gather(*(one() for _ in range(n)))
    result.seconds = time.monotonic() - begin
    return result, went[0] if went else 0
