"""Group commit: records of evaluations still running share one commit, and nothing waits
when nothing is expected (a single session keeps its latency)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from milter.audit.sqlite import SQLiteStore
from milter.audit.store import AuditEvent, AuditRecord
from milter.audit.writer import AuditWriter

BASE = AuditEvent(event="delivered", txid="", message_id="", client="127.0.0.1",
                  direction="outbound", sender="someone@school.example",
                  recipients=("o@example.org",), auth_user="", rules=(), action="accept",
                  reply="", evidence={}, subject="")


class CountingStore(SQLiteStore):
    """A real store that remembers how many records each commit carried."""

    commits: list[int]

    def append_many(self, events: list[AuditEvent]) -> list[AuditRecord]:
        self.commits.append(len(events))
        return super().append_many(events)


def _event(txid: str) -> AuditEvent:
    return AuditEvent(**{**BASE.__dict__, "txid": txid})


def test_records_of_evaluations_in_progress_share_a_commit(tmp_path: Path) -> None:
    store = CountingStore(tmp_path / "audit.sqlite3", "test")
    store.commits = []
    writer = AuditWriter(store)
    writer.LINGER = 5.0  # ends when the expected records are in, not by the clock

    async def session(txid: str, work: float) -> AuditRecord:
        with writer.expecting():  # its policy evaluation
            await asyncio.sleep(work)
        return await writer.append(_event(txid))

    async def main() -> list[AuditRecord]:
        b = asyncio.create_task(session("b", 0.01))
        c = asyncio.create_task(session("c", 0.05))
        await asyncio.sleep(0)  # both evaluations in progress
        started = time.monotonic()
        a = await writer.append(_event("a"))  # due now: waits for the records of b and c
        assert time.monotonic() - started < 2.0  # not for LINGER: they came
        return [a, await b, await c]

    records = asyncio.run(main())
    writer.close()
    assert [r.txid for r in records] == ["a", "b", "c"]
    assert store.commits == [3]
    check = SQLiteStore(tmp_path / "audit.sqlite3", "test")
    assert check.verify().ok
    check.close()


def test_nothing_expected_commits_at_once(tmp_path: Path) -> None:
    store = CountingStore(tmp_path / "audit.sqlite3", "test")
    store.commits = []
    writer = AuditWriter(store)
    writer.LINGER = 30.0  # were it to wait for nothing, the test would take 30 s

    async def main() -> float:
        started = time.monotonic()
        await writer.append(_event("x"))
        return time.monotonic() - started

    assert asyncio.run(main()) < 10.0
    writer.close()
    assert store.commits == [1]
