"""The audit writer of a running gateway: appends off the event loop, batched per commit.

Both fronts write through it; it also keeps outcome records the store refused, to write them
once it takes writes again, and tells the checkpointer what was written.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields, replace
from typing import Any

from milter import metrics
from milter.audit.checkpoint import Checkpointer
from milter.audit.sql import now_iso
from milter.audit.store import (
    OUTCOMES,
    AuditEvent,
    AuditRecord,
    AuditStore,
    AuditUnavailable,
    Filters,
)

log = logging.getLogger("skot-milter")


class AuditWriter:
    """Audit appends off the event loop, one writer thread, records batched per fsync.

    Appends queued while a commit is in progress go out together in the next commit (group
    commit); each caller still returns only once its own record is durable.

    The outcome of a transaction whose intent was recorded here (delivered, rejected, ...)
    states what the next hop already did. When the store refuses it, the caller hears
    AuditUnavailable as always, and the SMTP front still answers the next hop's 250 (a 4xx
    then would only cause a duplicate, HOSTILE-INPUTS 35); but the record is kept and written
    as soon as the store takes writes again, so every 250 ends up with its outcome on record.
    Only a crash before then leaves the intent alone, which ``audit verify`` warns about.

    A commit (an fsync, and a round trip to the store's process) costs more than the records
    in it, and under load the next records are seconds of CPU away, not of waiting: a
    transaction whose policy evaluation is running announces its coming record
    (``expecting``), and a commit due meanwhile waits for those records, at most ``LINGER``
    seconds, so that one commit serves them all. With nothing expected (a single session)
    it commits at once: no added latency there.
    """

    LINGER = 0.002          # seconds a commit waits for records of evaluations in progress
    MAX_BATCH = 200         # a batch this large commits without waiting for more
    MAX_OWED = 100_000      # outcomes kept for a later write; beyond, the oldest are given up
    MAX_OPEN = 100_000      # intents remembered while their outcome is awaited
    RETRY = (0.5, 30.0)     # first and longest pause before writing owed outcomes again

    def __init__(self, store: AuditStore, checkpointer: Checkpointer | None = None,
                 chain: str = "") -> None:
        self.store = store
        self.checkpointer = checkpointer
        self.chain = chain  # this gateway's chain: its head is signed at close
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit")
        self._pending: list[tuple[AuditEvent, asyncio.Future[AuditRecord]]] = []
        self._running = False
        self._open: dict[str, None] = {}   # txids whose intent is durable, in append order
        self._owed: list[AuditEvent] = []  # outcomes the store refused, to be written later
        self._retry: asyncio.TimerHandle | None = None
        self._pause = self.RETRY[0]        # grows while the store keeps refusing them
        self._settle_at = 0.0              # monotonic time of the next attempt at them
        self._unsigned = 0                 # committed from the loop, not yet told (checkpoint)
        self._expected = 0                 # evaluations in progress whose record will follow
        self._wake: asyncio.Future[None] | None = None  # a lingering commit waits on it

    async def append(self, event: AuditEvent) -> AuditRecord:
        event = recordable(event)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[AuditRecord] = loop.create_future()
        self._pending.append((event, fut))
        self._start(loop)
        self._poke()
        return await fut

    @contextlib.contextmanager
    def expecting(self) -> Iterator[None]:
        """Around work on the event loop's side that ends in an append (a transaction's
        policy evaluation): a commit due meanwhile may wait for its record (``LINGER``)."""
        self._expected += 1
        try:
            yield
        finally:
            self._expected -= 1
            self._poke()

    def _poke(self) -> None:
        """Wake a lingering commit once nothing more is expected or its batch is full."""
        wake = self._wake
        if wake is not None and (self._expected <= 0 or len(self._pending) >= self.MAX_BATCH):
            _wake_up(wake)

    async def _linger(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wait (at most LINGER) for the records of evaluations in progress."""
        if self._expected <= 0 or len(self._pending) >= self.MAX_BATCH:
            return
        wake = self._wake = loop.create_future()
        timer = loop.call_later(self.LINGER, _wake_up, wake)
        try:
            await wake
        finally:
            timer.cancel()
            self._wake = None

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self._running:
            self._running = True
            loop.create_task(self._drain())

    def _settle_due(self) -> bool:
        return bool(self._owed) and time.monotonic() >= self._settle_at

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending or self._settle_due():
                if self._pending:
                    await self._linger(loop)
                batch, self._pending = self._pending, []
                events = [e for e, _ in batch]
                started = time.perf_counter()
                written: list[AuditRecord] = []
                if self._settle_due():
                    # Owed outcomes go first and in their own transaction: whatever becomes
                    # of them, the new records are not held back.
                    owed, self._owed = self._owed, []
                    still, written = await loop.run_in_executor(self._executor, self._settle,
                                                                owed)
                    self._owed = still + self._owed
                    if still:
                        self._settle_at = time.monotonic() + self._pause
                        self._pause = min(self._pause * 2, self.RETRY[1])
                    else:
                        self._pause = self.RETRY[0]
                if events:
                    try:
                        results = await self._write_batch(loop, events)
                    except Exception as exc:  # noqa: BLE001 - every waiter must hear of it
                        results = [exc for _ in events]
                    else:
                        metrics.AUDIT_WRITE_SECONDS.observe(time.perf_counter() - started)
                    for (event, fut), res in zip(batch, results, strict=True):
                        if isinstance(res, BaseException):
                            if self._is_owed(event):
                                self._owe([event])
                            if not fut.done():
                                fut.set_exception(res if isinstance(res, AuditUnavailable)
                                                  else AuditUnavailable(str(res)))
                        else:
                            if not fut.done():
                                fut.set_result(res)
                            written.append(res)
                for rec in written:
                    self._track(rec)
        finally:
            self._running = False
            self._schedule_retry(loop)

    async def _write_batch(self, loop: asyncio.AbstractEventLoop, events: list[AuditEvent]
                           ) -> list[AuditRecord | Exception]:
        """One commit. A store in a child process (``IsolatedSQLiteStore``) is written from
        the loop itself when its pipe is free (no thread hand-over); otherwise, and to find
        the one record at fault in a batch that fails, the writer thread does it."""
        soon = getattr(self.store, "append_many_soon", None)
        answer = soon(events) if soon is not None else None
        if answer is None:
            return await loop.run_in_executor(self._executor, self._write_each, events)
        try:
            records: list[AuditRecord] = await answer
        except AuditUnavailable:
            raise
        except Exception:  # noqa: BLE001 - a record the store refused: one by one, there
            if len(events) == 1:
                raise
            return await loop.run_in_executor(self._executor, self._write_each, events)
        self._count_unsigned(records)
        return list(records)

    def _count_unsigned(self, records: list[AuditRecord]) -> None:
        """Records committed from the loop: the checkpointer hears of them on the writer
        thread once a checkpoint is due (``Checkpointer.due``), not after every commit."""
        if self.checkpointer is None or not records:
            return
        self._unsigned += len(records)
        if self.checkpointer.due(self._unsigned):
            n, self._unsigned = self._unsigned, 0
            self._executor.submit(self._signed, records[-1], n)

    def _signed(self, record: AuditRecord, n: int) -> None:
        assert self.checkpointer is not None
        try:
            self.checkpointer.seen(record, n)
        except Exception:  # noqa: BLE001 - the records are written; the signing failed
            log.exception("audit checkpoint after seq=%s failed", record.seq)

    def _checkpoint(self, written: list[AuditRecord]) -> None:
        """Tell the checkpointer of records just committed, on the writer thread in the same
        job as the commit (no hand-over of its own: a thread wake-up per commit saved). A
        failure is logged; the records are durable all the same."""
        if self.checkpointer is not None and written:
            self._signed(written[-1], len(written))

    def _write_each(self, events: list[AuditEvent]) -> list[AuditRecord | Exception]:
        """The batch in one commit; when it fails for a reason other than the store (a
        record it cannot take), each record alone, so that one bad record fails only its
        own transaction and never its neighbours' (issue 13 item 6a)."""
        try:
            records = list(self._write(events))
        except AuditUnavailable:
            raise
        except Exception:  # noqa: BLE001 - find the one record at fault
            if len(events) == 1:
                raise
        else:
            self._checkpoint(records)
            return list(records)
        out: list[AuditRecord | Exception] = []
        for event in events:
            try:
                out.extend(self._write([event]))
            except Exception as exc:  # noqa: BLE001 - this record's waiter hears it
                log.error("tx=%s audit record refused: %s", event.txid, exc)
                out.append(exc)
        self._checkpoint([r for r in out if isinstance(r, AuditRecord)])
        return out

    def _write(self, events: list[AuditEvent]) -> list[AuditRecord]:
        many = getattr(self.store, "append_many", None)
        if many is not None:
            records: list[AuditRecord] = many(events)
            return records
        return [self.store.append(e) for e in events]

    def _settle(self, owed: list[AuditEvent]) -> tuple[list[AuditEvent], list[AuditRecord]]:
        """Write owed outcomes (writer thread): what is still owed, and what was written.

        A commit whose connection broke may have happened after all: an outcome already on
        record for its transaction is not written twice."""
        if not owed:
            return [], []
        try:
            todo = [e for e in owed if not any(
                r.event == e.event for r in self.store.records(Filters(txid=e.txid)))]
            written = self._write(todo) if todo else []
        except Exception as exc:  # noqa: BLE001 - kept for the next attempt
            log.warning("audit store still refuses %d outcome record(s): %s", len(owed), exc)
            return owed, []
        log.warning("audit: %d outcome record(s) written late, %d were on record already",
                    len(written), len(owed) - len(written))
        self._checkpoint(written)
        return [], written

    def _is_owed(self, event: AuditEvent) -> bool:
        return event.event in OUTCOMES and event.txid in self._open

    def _owe(self, events: list[AuditEvent]) -> None:
        if not events:
            return
        for e in events:
            self._open.pop(e.txid, None)
            log.error("tx=%s %s record refused by the audit store; kept to write later",
                      e.txid, e.event)
            self._owed.append(replace(e, evidence={**e.evidence, "deferred_since": now_iso()}))
        if len(self._owed) > self.MAX_OWED:
            lost, self._owed = self._owed[:-self.MAX_OWED], self._owed[-self.MAX_OWED:]
            log.error("audit: gave up %d outcome record(s); their intents stay without an "
                      "outcome", len(lost))
        # The store just refused: the next attempt at them waits a pause.
        self._settle_at = max(self._settle_at, time.monotonic() + self._pause)

    def _track(self, record: AuditRecord) -> None:
        if record.event == "intent":
            self._open[record.txid] = None
            if len(self._open) > self.MAX_OPEN:
                del self._open[next(iter(self._open))]
        elif record.event in OUTCOMES:
            self._open.pop(record.txid, None)

    def _schedule_retry(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._owed and self._retry is None and not loop.is_closed():
            delay = max(0.0, self._settle_at - time.monotonic())
            self._retry = loop.call_later(delay, self._retry_now, loop)

    def _retry_now(self, loop: asyncio.AbstractEventLoop) -> None:
        self._retry = None
        if self._owed:
            self._start(loop)

    def close(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self._owed:  # a last chance for outcomes still owed (after any write in flight)
            owed, self._owed = self._owed, []
            self._owed, _ = self._executor.submit(self._settle, owed).result()
        if self._owed:
            log.error("audit: %d outcome record(s) never written; verify will name their "
                      "intents", len(self._owed))
        if self.checkpointer is not None and self.chain:
            try:  # a clean stop signs the head: what follows it, or goes from it, shows
                self._executor.submit(self.checkpointer.stop,
                                      self.store.last(self.chain)).result()
            except Exception as exc:  # noqa: BLE001 - the store may be gone; said in the log
                log.error("no checkpoint at shutdown: %s", exc)
        self._executor.shutdown(wait=True)
        self.store.close()


def _wake_up(wake: asyncio.Future[None]) -> None:
    if not wake.done():
        wake.set_result(None)


def _text(value: str) -> str:
    """A string any store can take: undecodable bytes kept by ``surrogateescape`` (a milter
    or SMTP argument) are written as ``\\xff`` escapes, other lone surrogates as ``\\udxxx``."""
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        pass
    try:
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return value.encode("utf-8", "backslashreplace").decode("utf-8")


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, dict):
        return {_text(str(k)): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_clean(v) for v in value)
    return value


def recordable(event: AuditEvent) -> AuditEvent:
    """``event`` with every text field encodable (escaped where it was not): a record with
    bytes that are not UTF-8 is written safely instead of failing its batch."""
    changes = {f.name: _clean(getattr(event, f.name)) for f in fields(event)
               if isinstance(getattr(event, f.name), str | dict | list | tuple)}
    changed = {k: v for k, v in changes.items() if v != getattr(event, k)}
    return replace(event, **changed) if changed else event
