"""What every front shares: the current runtime, the audit writer, the quarantine, ids.

Fronts (SMTP proxy, milter) turn protocol events into calls here; this module owns the order
of durable writes (audit before answers) so both fronts keep the same guarantees.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from milter import metrics, warning
from milter.audit import checkpoint
from milter.audit.checkpoint import SigningKey
from milter.audit.sql import now_iso
from milter.audit.store import (
    OUTCOMES,
    AuditEvent,
    AuditRecord,
    AuditStore,
    AuditUnavailable,
    Filters,
)
from milter.core.context import Envelope
from milter.core.verdict import ascii_line
from milter.dkimsign import Signer
from milter.notices import Notifier, request_for
from milter.quarantine import QuarantineError, QuarantineStore
from milter.runtime import Authenticator, Evaluation, Runtime
from milter.spool import DEFAULT_MESSAGE_MEMORY, MemoryBudget

log = logging.getLogger("skot-milter")

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"


def new_txid() -> str:
    """A short, sortable transaction id: it appears in logs, the audit and reply texts."""
    t = int(time.time() * 1000)
    stamp = "".join(_ALPHABET[(t >> s) & 31] for s in range(45, -5, -5))
    r = secrets.randbits(30)  # one system call, not six
    return stamp + "".join(_ALPHABET[(r >> s) & 31] for s in range(25, -5, -5))


class AsyncAudit:
    """Audit appends off the event loop, one writer thread, records batched per fsync.

    Appends queued while a commit is in progress go out together in the next commit (group
    commit); each caller still returns only once its own record is durable.

    The outcome of a transaction whose intent was recorded here (delivered, rejected, ...)
    states what the next hop already did. When the store refuses it, the caller hears
    AuditUnavailable as always, and the SMTP front still answers the next hop's 250 (a 4xx
    then would only cause a duplicate, HOSTILE-INPUTS 35); but the record is kept and written
    as soon as the store takes writes again, so every 250 ends up with its outcome on record.
    Only a crash before then leaves the intent alone, which ``audit verify`` warns about.
    """

    MAX_OWED = 100_000      # outcomes kept for a later write; beyond, the oldest are given up
    MAX_OPEN = 100_000      # intents remembered while their outcome is awaited
    RETRY = (0.5, 30.0)     # first and longest pause before writing owed outcomes again

    def __init__(self, store: AuditStore, checkpointer: Checkpointer | None = None) -> None:
        self.store = store
        self.checkpointer = checkpointer
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit")
        self._pending: list[tuple[AuditEvent, asyncio.Future[AuditRecord]]] = []
        self._running = False
        self._open: dict[str, None] = {}   # txids whose intent is durable, in append order
        self._owed: list[AuditEvent] = []  # outcomes the store refused, to be written later
        self._retry: asyncio.TimerHandle | None = None
        self._pause = self.RETRY[0]        # grows while the store keeps refusing them
        self._settle_at = 0.0              # monotonic time of the next attempt at them

    async def append(self, event: AuditEvent) -> AuditRecord:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[AuditRecord] = loop.create_future()
        self._pending.append((event, fut))
        self._start(loop)
        return await fut

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
                        records = await loop.run_in_executor(self._executor, self._write,
                                                             events)
                    except Exception as exc:  # noqa: BLE001 - every waiter must hear of it
                        err = exc if isinstance(exc, AuditUnavailable) \
                            else AuditUnavailable(str(exc))
                        self._owe([e for e in events if self._is_owed(e)])
                        for _, fut in batch:
                            if not fut.done():
                                fut.set_exception(err)
                    else:
                        metrics.AUDIT_WRITE_SECONDS.observe(time.perf_counter() - started)
                        for (_, fut), rec in zip(batch, records, strict=True):
                            if not fut.done():
                                fut.set_result(rec)
                        written += records
                for rec in written:
                    self._track(rec)
                if self.checkpointer is not None and written:
                    await loop.run_in_executor(self._executor, self.checkpointer.seen,
                                               written[-1], len(written))
        finally:
            self._running = False
            self._schedule_retry(loop)

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
        self._executor.shutdown(wait=True)
        self.store.close()


class Checkpointer:
    """Signs and exports the chain head every N records or minutes (``[audit] checkpoint_*``)."""

    def __init__(self, key: SigningKey, directory: Path, every: int, minutes: float) -> None:
        self.key, self.directory, self.every, self.seconds = key, directory, every, minutes * 60
        self.count = 0
        self.last = time.monotonic()

    def seen(self, record: AuditRecord, n: int) -> None:
        self.count += n
        if self.count >= self.every or time.monotonic() - self.last >= self.seconds:
            try:
                checkpoint.write(checkpoint.sign(self.key, record.chain, record.seq,
                                                 record.hash), self.directory)
            except OSError as exc:  # the records are durable; the next checkpoint covers them
                log.error("cannot write audit checkpoint: %s", exc)
                return
            self.count, self.last = 0, time.monotonic()


@dataclass
class Gateway:
    runtime: Runtime
    audit: AsyncAudit
    quarantine: QuarantineStore
    notifier: Notifier | None = None
    authenticator: Authenticator | None = None
    signer: Signer | None = None
    # Spooled (large) messages in processing, both fronts together, this process.
    memory: MemoryBudget = field(default_factory=lambda: MemoryBudget(DEFAULT_MESSAGE_MEMORY))

    async def evaluate(self, envelope: Envelope, content: bytes,
                       runtime: Runtime | None = None) -> Evaluation:
        """Evaluate; inbound mail is authenticated first, off the loop (DNS look-ups).

        ``runtime`` is the one the transaction started with: a reload never switches the
        policy halfway through a message."""
        runtime = runtime or self.runtime
        started = time.perf_counter()
        try:
            return await self._evaluate(envelope, content, runtime)
        finally:
            metrics.EVALUATION_SECONDS.observe(time.perf_counter() - started)

    async def _evaluate(self, envelope: Envelope, content: bytes,
                        runtime: Runtime) -> Evaluation:
        if self.authenticator is not None and runtime.context(envelope).direction == "inbound":
            return await asyncio.to_thread(runtime.evaluate, envelope, content, None,
                                           self.authenticator)
        return runtime.evaluate(envelope, content)

    def outgoing(self, evaluation: Evaluation) -> tuple[bytes, bytes]:
        """The next hop's message as (head, body): our headers and any DKIM signature, then
        the message as received. Two pieces, so a 10 MB message is never copied to prepend
        a few header lines."""
        head = policy_headers(evaluation, self.runtime.config.get("gateway", "hostname"))
        message = evaluation.message
        raw = self.delivered(evaluation)
        if self.signer is not None and message is not None and \
                evaluation.verdict.direction == "outbound":
            authors = [a.addr_spec for a in message.authors if a.valid]
            if len(authors) == 1:
                head = self.signer.signature(head + raw, authors[0]) + head
        return head, raw

    def delivered(self, evaluation: Evaluation, banner: bool = True) -> bytes:
        """The message as received, or with the warning a tagging rule asks for (a subject
        prefix or banner, ``milter.warning``): the same bytes whichever front relays it."""
        return warning.delivered(evaluation.raw, evaluation.message, evaluation.verdict,
                                 self.runtime.policy, banner)

    def notify(self, evaluation: Evaluation, txid: str, sender: str,
               recipients: Sequence[str]) -> None:
        """Queue notices for a decision that was carried out (after the client's answer)."""
        if self.notifier is None or evaluation.verdict.action == "tempfail":
            return
        req = request_for(txid, evaluation.verdict, self.runtime.policy, evaluation.message,
                          sender, recipients, evaluation.summary)
        if req is not None:
            self.notifier.schedule(req)

    def event(self, evaluation: Evaluation | None, event: str, *, txid: str, client: str,
              sender: str, recipients: Sequence[str], auth_user: str = "", reply: str = "",
              extra: dict[str, Any] | None = None) -> AuditEvent:
        """An audit event for a transaction: who, which rules, what was done, evidence."""
        evidence: dict[str, Any] = {}
        rules: tuple[dict[str, Any], ...] = ()
        action, direction, message_id, subject = "", "", "", ""
        if evaluation is not None:
            verdict = evaluation.verdict
            action, direction = verdict.action, verdict.direction
            rules = tuple({"id": r.id, "article": r.article, "action": r.action,
                           "mode": r.mode, "reason": r.reason, "evidence": r.evidence}
                          for r in verdict.rules)
            evidence = {k: v for k, v in evaluation.summary.items()
                        if k not in ("message_id", "subject")}
            message_id = str(evaluation.summary.get("message_id", ""))
            subject = str(evaluation.summary.get("subject", ""))
        if extra:
            evidence.update(extra)
        return AuditEvent(event=event, txid=txid, message_id=message_id, client=client,
                          direction=direction, sender=sender, recipients=tuple(recipients),
                          auth_user=auth_user, rules=rules, action=action, reply=reply,
                          evidence=evidence, subject=subject)

    async def hold(self, evaluation: Evaluation, txid: str, envelope_json: dict[str, Any]) -> str:
        """Quarantine durably (raises QuarantineError: the client must get 451)."""
        qid = await asyncio.to_thread(self.quarantine.put, txid, evaluation.raw, envelope_json,
                                      evaluation.verdict.to_json())
        metrics.QUARANTINE_MESSAGES.inc()
        return qid


def policy_headers(evaluation: Evaluation, authserv_id: str = "") -> bytes:
    """``Authentication-Results:`` and ``X-SKOT-Policy:`` lines; no CR, LF or NUL in values."""
    lines = []
    if evaluation.auth is not None and authserv_id:
        value = ascii_line(evaluation.auth.header_value(authserv_id))
        lines.append(f"Authentication-Results: {value}\r\n".encode("ascii"))
    for r in evaluation.verdict.rules:
        if r.mode != "enforce" or r.action != "tag":
            continue
        value = ascii_line(f"{r.id}; article={r.article}; action={r.action}; "
                           f"ref={evaluation.verdict.ref}")
        lines.append(f"X-SKOT-Policy: {value}\r\n".encode("ascii"))
    return b"".join(lines)


__all__ = ["AsyncAudit", "Gateway", "QuarantineError", "new_txid", "policy_headers"]
