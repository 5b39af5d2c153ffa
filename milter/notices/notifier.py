"""Sending notices after the client has its answer: the per-address hourly limit (held-back
notices become one summary), retries, and the audit record of each sent or failed notice."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from milter.notices.render import (
    HeldItem,
    Notice,
    NoticeRequest,
    build_mail,
    build_notice,
    release_copy,
    render_summary,
)
from milter.notices.texts import Style
from milter.policy import Policy

log = logging.getLogger("skot-milter.notices")



class RateLimiter:
    """At most ``per_hour`` notices per address per ``window`` seconds, across processes
    (SQLite). What is held back is kept until a summary is sent for it."""

    def __init__(self, path: Path, per_hour: int, window: float = 3600.0) -> None:
        self.per_hour = per_hour
        self.window = window
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                                   timeout=10)
        self._db.execute("CREATE TABLE IF NOT EXISTS sent (address TEXT, ts REAL)")
        self._db.execute("CREATE TABLE IF NOT EXISTS held_items (address TEXT, ts REAL, "
                         "item TEXT, addressee TEXT)")
        self._lock = threading.Lock()

    def _tx(self) -> Any:
        return _Immediate(self._db, self._lock)

    def admit(self, address: str, now: float | None = None, item: HeldItem | None = None,
              addressee: Mapping[str, str] | None = None) -> tuple[bool, int]:
        """(send it?, notices held back since the last one sent). A refused one is kept
        (``item``, and whom and how to tell: ``addressee``) for the summary."""
        now = time.time() if now is None else now
        key = address.lower()
        with self._tx() as db:
            db.execute("DELETE FROM sent WHERE ts < ?", (now - self.window,))
            (count,) = db.execute("SELECT count(*) FROM sent WHERE address=?",
                                  (key,)).fetchone()
            if count >= self.per_hour:
                db.execute("INSERT INTO held_items VALUES (?, ?, ?, ?)",
                           (key, now, item.to_json() if item else "{}",
                            json.dumps(dict(addressee or {}))))
                return False, 0
            (held,) = db.execute("SELECT count(*) FROM held_items WHERE address=?",
                                 (key,)).fetchone()
            db.execute("DELETE FROM held_items WHERE address=?", (key,))
            db.execute("INSERT INTO sent VALUES (?, ?)", (key, now))
            return True, int(held)

    def next_due(self, now: float | None = None) -> float | None:
        """When the first summary falls due (its hour is over), or None: nothing held."""
        now = time.time() if now is None else now
        with self._lock:
            keys = [k for (k,) in self._db.execute("SELECT DISTINCT address FROM held_items")]
            due: float | None = None
            for key in keys:
                ts = [t for (t,) in self._db.execute(
                    "SELECT ts FROM sent WHERE address=? AND ts >= ? ORDER BY ts",
                    (key, now - self.window))]
                # free once enough of the sent ones are older than the window
                at = now if len(ts) < self.per_hour else ts[len(ts) - self.per_hour] + \
                    self.window
                due = at if due is None else min(due, at)
            return due

    def claim_due(self, now: float | None = None
                  ) -> list[tuple[str, dict[str, str], list[HeldItem]]]:
        """Summaries whose hour is over, taken out atomically (one process sends each):
        (address key, addressee, held items). Each counts as a notice sent."""
        now = time.time() if now is None else now
        out = []
        with self._tx() as db:
            db.execute("DELETE FROM sent WHERE ts < ?", (now - self.window,))
            keys = [k for (k,) in db.execute("SELECT DISTINCT address FROM held_items")]
            for key in keys:
                (count,) = db.execute("SELECT count(*) FROM sent WHERE address=?",
                                      (key,)).fetchone()
                if count >= self.per_hour:
                    continue
                rows = db.execute("SELECT item, addressee FROM held_items WHERE address=? "
                                  "ORDER BY ts", (key,)).fetchall()
                db.execute("DELETE FROM held_items WHERE address=?", (key,))
                db.execute("INSERT INTO sent VALUES (?, ?)", (key, now))
                items = [HeldItem.from_json(i) for i, _ in rows if i != "{}"]
                out.append((key, json.loads(rows[-1][1]), items))
        return out

    def close(self) -> None:
        self._db.close()


class _Immediate:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (or ``ROLLBACK``) under the limiter's lock."""

    def __init__(self, db: sqlite3.Connection, lock: threading.Lock) -> None:
        self.db, self.lock = db, lock

    def __enter__(self) -> sqlite3.Connection:
        self.lock.acquire()
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        try:
            self.db.execute("ROLLBACK" if exc_type else "COMMIT")
        finally:
            self.lock.release()


@dataclass
class Notifier:
    """Builds notices for a finished transaction and sends them in the background."""

    policy: Policy
    style: Style
    hostname: str
    next_hop: str
    timeout: float
    limiter: RateLimiter
    directory: Any
    audit: Any = None              # AuditWriter
    retries: int = 3
    retry_delay: float = 5.0
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _flusher: asyncio.Task[None] | None = None
    _dirty: bool = False

    def _person(self, address: str) -> tuple[str, str, str]:
        """(language, name, supervisor's address) of a school address."""
        person = self.directory.lookup(address)
        lang = person.language if person is not None and person.language else \
            self.style.language
        name = person.name if person is not None and person.name else address.partition("@")[0]
        return lang, name, person.supervisor if person is not None else ""

    def _name(self, address: str) -> str:
        return self._person(address)[1] if address else ""

    def addressee(self, req: NoticeRequest) -> tuple[str, str]:
        """(address, kind): the owner of a forwarding mailbox for an automatic forward, the
        staff member at work for mail from their private address, else the sender."""
        box = req.forwarded_by()
        if box and self.style.internal(box):
            return box, "forward"
        for fired in req.verdict.rules:
            owner = fired.evidence.get("staff_member") if fired.evidence else None
            if isinstance(owner, str) and owner:
                return owner.lower(), "sender"
        return req.mail_from.lower(), "sender"

    def plan(self, req: NoticeRequest) -> list[Notice]:
        """Who gets which notice. Only school addresses: never backscatter to outsiders.
        Notices over the rate limit come back with ``suppressed`` set."""
        if not req.rules:
            return []
        to, kind = self.addressee(req)
        if not self.style.internal(to):
            return []
        lang, name, supervisor = self._person(to)
        item = HeldItem(req.txid, req.received.timestamp(), req.subject, req.verdict.action,
                        tuple(rp.id for rp in req.rules), internal=bool(req.rcpt_tos) and all(
                            self.style.internal(r) for r in req.rcpt_tos))
        notices: list[Notice] = []
        send, held = self.limiter.admit(to, item=item, addressee={
            "to": to, "lang": lang, "name": name, "supervisor": supervisor, "kind": kind})
        if send:
            notices.append(self._notice(req, to, kind, lang, name, held,
                                        supervisor=self._name(supervisor)))
        else:
            notices.append(Notice(to, kind, lang, b"", req.txid,
                                  tuple(rp.id for rp in req.rules), suppressed=True))
        if supervisor and any(rp.notice_supervisor for rp in req.rules):
            slang, sname, _ = self._person(supervisor)
            key = f"supervisor:{supervisor}"
            sup_send, sup_held = self.limiter.admit(key, item=item, addressee={
                "to": supervisor, "lang": slang, "name": sname, "kind": "supervisor"})
            if sup_send:
                notices.append(self._notice(req, supervisor, "supervisor", slang, sname,
                                            sup_held, sender_name=name))
            else:
                notices.append(Notice(supervisor, "supervisor", slang, b"", req.txid,
                                      tuple(rp.id for rp in req.rules), suppressed=True))
        return notices

    def _notice(self, req: NoticeRequest, to: str, kind: str, lang: str, name: str,
                held: int, *, sender_name: str = "", supervisor: str = "") -> Notice:
        return build_notice(self.style, self.hostname, req, to, kind, lang, name, held,
                            sender_name=sender_name, supervisor=supervisor)

    def summaries(self, now: float | None = None) -> list[Notice]:
        """The summaries whose hour is over (claimed: no other process sends them)."""
        out = []
        for _, who, items in self.limiter.claim_due(now):
            if not items or not who.get("to"):
                continue
            rules = tuple(dict.fromkeys(r for i in items for r in i.titles))
            held = tuple(i.txid for i in items)
            try:
                supervisor = who.get("supervisor", "")
                subject, text, body_html = render_summary(
                    items, self.style, self.policy, lang=who.get("lang") or self.style.language,
                    name=who.get("name", ""), supervisor=self._name(supervisor),
                    as_supervisor=who.get("kind") == "supervisor")
                raw = build_mail(postmaster=self.style.postmaster, to=who["to"],
                                 subject=subject, text=text, body_html=body_html, txid="",
                                 in_reply_to="", hostname=self.hostname, rule_ids=rules)
            except Exception as exc:  # noqa: BLE001 - claimed: it must still leave a trace
                log.exception("a notice summary could not be built")
                out.append(Notice(who["to"], "summary", who.get("lang", ""), b"", "", rules,
                                  held=held, error=f"summary could not be built: "
                                                   f"{type(exc).__name__}: {exc}"))
                continue
            out.append(Notice(who["to"], "summary", who.get("lang", ""), raw, "", rules,
                              held=held))
        return out

    def start(self) -> None:
        """Send the summaries left over from before a restart when they fall due."""
        self._ensure_flusher()

    def _ensure_flusher(self) -> None:
        self._dirty = True
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush_loop())

    async def _flush_loop(self) -> None:
        """Wait for the next summary to fall due and send it; ends when nothing is held
        (started again by the next notice held back)."""
        while True:
            self._dirty = False
            due = await asyncio.to_thread(self.limiter.next_due)
            if due is None:
                if self._dirty:
                    continue
                return
            await asyncio.sleep(min(max(0.0, due - time.time()), 60.0))
            try:
                batch = await asyncio.to_thread(self.summaries)
            except Exception:  # noqa: BLE001 - a summary must never take the gateway down
                log.exception("notice summaries could not be built")
                await asyncio.sleep(60.0)
                continue
            for notice in batch:
                if notice.error:
                    await self._audit("notice-failed", "", (notice.to,), notice.error,
                                      {"kind": "summary", "rules": list(notice.rule_ids),
                                       "held": list(notice.held)})
                else:
                    await self.send(notice)

    def schedule_release_copy(self, meta: Mapping[str, Any], sender: str, reason: str,
                              subject: str = "") -> None:
        """The sender released a held message themselves: their supervisor gets the notice
        of it with the reason (whatever the rule's notice_supervisor says)."""
        task = asyncio.get_running_loop().create_task(self._release_copy(meta, sender, reason,
                                                                        subject))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def release_copy(self, meta: Mapping[str, Any], sender: str, reason: str,
                     subject: str) -> Notice | None:
        return release_copy(self.policy, self.style, self.directory, self.hostname, meta,
                            sender, reason, subject)

    async def _release_copy(self, meta: Mapping[str, Any], sender: str, reason: str,
                            subject: str) -> None:
        try:
            notice = self.release_copy(meta, sender, reason, subject)
            if notice is not None:
                await self.send(notice)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - a notice must never take the gateway down
            log.exception("tx=%s release copy to the supervisor failed", meta.get("txid", ""))

    def schedule(self, req: NoticeRequest) -> None:
        """Plan and send in the background: never delays or changes the client's answer."""
        task = asyncio.get_running_loop().create_task(self._run(req))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run(self, req: NoticeRequest) -> None:
        try:
            notices = await asyncio.to_thread(self.plan, req)
        except Exception as exc:  # noqa: BLE001 - a notice must never take the gateway down
            log.exception("tx=%s notice planning failed", req.txid)
            await self._audit("notice-failed", req.txid, (req.mail_from,),
                              f"notice could not be built: {type(exc).__name__}: {exc}",
                              {"kind": "sender", "rules": [rp.id for rp in req.rules]})
            return
        for i, notice in enumerate(notices):
            if notice.suppressed:
                await self._audit("notice-suppressed", notice.txid, (notice.to,),
                                  f"more than {self.limiter.per_hour} notices in an hour; "
                                  "a summary follows when the hour is over",
                                  {"kind": notice.kind, "lang": notice.lang,
                                   "rules": list(notice.rule_ids), "reason": "rate limit"})
                self._ensure_flusher()
                continue
            try:
                await self.send(notice)
            except asyncio.CancelledError:  # the ones not yet tried are failed too
                for rest in notices[i + 1:]:
                    if rest.suppressed:
                        continue
                    await self._audit("notice-failed", rest.txid, (rest.to,),
                                      "gateway stopped before the notice could be sent",
                                      {"kind": rest.kind, "lang": rest.lang,
                                       "rules": list(rest.rule_ids)})
                raise

    async def send(self, notice: Notice) -> bool:
        from milter.nexthop import NextHopError, send_message

        error = ""
        cancelled = False
        try:
            for attempt in range(1, self.retries + 1):
                try:
                    # From the postmaster, so a notice that cannot be delivered reaches IT.
                    reply = await send_message(self.next_hop, self.hostname, self.timeout,
                                               self.style.postmaster, [notice.to],
                                               notice.rendered)
                    if reply.ok:
                        error = ""
                        break
                    error = reply.line
                    if reply.code >= 500:
                        break
                except NextHopError as exc:
                    error = str(exc)
                if attempt < self.retries:
                    await asyncio.sleep(self.retry_delay * attempt)
        except asyncio.CancelledError:  # shutdown: say so in the audit trail, then stop
            error, cancelled = "gateway stopped before the notice could be sent", True
        event = "notice-failed" if error else "notice-sent"
        if error:
            log.warning("tx=%s notice to %s failed: %s", notice.txid, notice.to, error)
        evidence: dict[str, Any] = {"kind": notice.kind, "lang": notice.lang,
                                    "rules": list(notice.rule_ids)}
        if notice.held:
            evidence["held"] = list(notice.held)
        await self._audit(event, notice.txid, (notice.to,), error, evidence)
        if cancelled:
            raise asyncio.CancelledError
        return not error

    async def _audit(self, event: str, txid: str, to: tuple[str, ...], error: str,
                     evidence: dict[str, Any]) -> None:
        from milter.audit.store import AuditEvent, AuditUnavailable

        if self.audit is None:
            return
        try:
            await self.audit.append(AuditEvent(
                event=event, txid=txid, recipients=to, sender=self.style.postmaster,
                action=event, reply=error, evidence=evidence))
        except AuditUnavailable as exc:
            log.error("tx=%s notice audit failed: %s", txid, exc)

    async def drain(self, timeout: float = 10.0) -> None:
        """Let queued notices finish; those still retrying after ``timeout`` are cancelled
        and audited as ``notice-failed`` (a stop must not hang on an unreachable next hop).
        Summaries not yet due stay in the limiter's database for the next start."""
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)
        if not self.tasks:
            return
        _, pending = await asyncio.wait(set(self.tasks), timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
