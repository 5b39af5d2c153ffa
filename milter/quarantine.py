"""The quarantine: held messages, durable before the client hears 250.

One directory per message (``<id>/message.eml`` and ``<id>/meta.json``), written to a
temporary name, fsynced, then renamed and the parent fsynced: a power cut leaves either the
whole entry or none. Entries are never modified in place. ``release``, ``delete`` and
``purge`` are what the CLI and the web view call: each is on record in the audit store, and
nothing changes when the record cannot be written. After a release or a delete by an admin
the sender is told (a notice, itself on record); a purge by the retention period is not
announced again (the quarantine notice gave its date).
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from email.parser import BytesHeaderParser
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

from milter.audit.store import AuditEvent, AuditUnavailable, open_store
from milter.config import Config
from milter.durable import fsync_dir, write_synced
from milter.nexthop import NextHopError, send_message

ID_CHARS = set("0123456789abcdefghijklmnopqrstuvwxyz-")
log = logging.getLogger("skot-milter.quarantine")


class QuarantineError(Exception):
    pass


@dataclass(frozen=True)
class Entry:
    id: str
    meta: dict[str, Any]
    path: Path

    @property
    def raw(self) -> bytes:
        return (self.path / "message.eml").read_bytes()

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, **self.meta}


class QuarantineStore:
    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def put(self, txid: str, raw: bytes, envelope_json: dict[str, Any],
            verdict_json: dict[str, Any]) -> str:
        """Store durably; return the quarantine id. Raises QuarantineError on any I/O fault."""
        qid = f"{time.strftime('%Y%m%d')}-{(txid or uuid.uuid4().hex[:12]).lower()}"
        qid = "".join(c for c in qid if c in ID_CHARS)
        meta = {"txid": txid, "stored_at": time.time(), "size": len(raw),
                "envelope": envelope_json, "verdict": verdict_json}
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            tmp = self.directory / f".tmp-{qid}-{uuid.uuid4().hex[:6]}"
            tmp.mkdir()
            write_synced(tmp / "message.eml", raw)
            write_synced(tmp / "meta.json", json.dumps(meta, sort_keys=True).encode())
            fsync_dir(tmp)
            final = self.directory / qid
            if final.exists():
                final = self.directory / f"{qid}-{uuid.uuid4().hex[:6]}"
            tmp.rename(final)
            fsync_dir(self.directory)
        except OSError as exc:
            raise QuarantineError(f"cannot store quarantined message: {exc}") from exc
        return final.name

    def get(self, qid: str) -> Entry | None:
        if not qid or not set(qid) <= ID_CHARS:
            return None
        path = self.directory / qid
        try:
            meta = json.loads((path / "meta.json").read_text())
        except (OSError, ValueError):
            return None
        return Entry(qid, meta, path)

    def entries(self) -> list[Entry]:
        if not self.directory.is_dir():
            return []
        out = []
        for child in sorted(self.directory.iterdir()):
            if child.name.startswith("."):
                continue
            entry = self.get(child.name)
            if entry is not None:
                out.append(entry)
        return out

    def delete(self, qid: str) -> bool:
        entry = self.get(qid)
        if entry is None:
            return False
        trash = self.directory / f".del-{qid}-{uuid.uuid4().hex[:6]}"
        entry.path.rename(trash)
        fsync_dir(self.directory)
        shutil.rmtree(trash, ignore_errors=True)
        return True

    def older_than(self, seconds: float, now: float | None = None) -> list[Entry]:
        cutoff = (now if now is not None else time.time()) - seconds
        return [e for e in self.entries() if float(e.meta.get("stored_at", 0)) < cutoff]


class ActionFailed(Exception):
    """A release or delete that did not happen; the reason is for the admin. Nothing changed."""


def record_action(cfg: Config, event: str, entry: Entry, actor: str, reply: str = "",
                  extra: dict[str, Any] | None = None) -> None:
    """The audit record of what an admin (or the retention, or the sender) did to a held
    message."""
    env = entry.meta.get("envelope", {})
    try:
        store = open_store(cfg.audit_url, cfg.gateway.node)
        try:
            store.append(AuditEvent(event=event, txid=str(entry.meta.get("txid", "")),
                                    sender=env.get("mail_from", ""),
                                    recipients=tuple(env.get("rcpt_tos", [])),
                                    direction=entry.meta.get("verdict", {}).get("direction", ""),
                                    action=event, reply=reply, actor=actor,
                                    evidence={"quarantine_id": entry.id, **(extra or {})}))
        finally:
            store.close()
    except AuditUnavailable as exc:
        raise ActionFailed(f"audit store unavailable, nothing changed: {exc}") from None


def release(cfg: Config, store: QuarantineStore, entry: Entry, actor: str) -> str:
    """Relay the original bytes with the original envelope, record it, remove the entry.
    Returns the next hop's reply; raises ActionFailed when it does not accept the message."""
    return asyncio.run(release_async(cfg, store, entry, actor))


async def release_async(cfg: Config, store: QuarantineStore, entry: Entry, actor: str,
                        extra: dict[str, Any] | None = None) -> str:
    """``release`` for a caller on an event loop (the sender's own release by reply)."""
    env = entry.meta.get("envelope", {})
    try:
        reply = await send_message(cfg.next_hop, cfg.gateway.hostname,
                                   cfg.gateway.next_hop_timeout, env.get("mail_from", ""),
                                   list(env.get("rcpt_tos", [])), entry.raw)
    except NextHopError as exc:
        raise ActionFailed(f"next hop unavailable, nothing released: {exc}") from None
    if not reply.ok:
        raise ActionFailed(f"next hop refused the message: {reply.line}")
    await asyncio.to_thread(record_action, cfg, "quarantine-release", entry, actor, reply.line,
                            extra)
    subject = subject_of(entry.raw)
    await asyncio.to_thread(store.delete, entry.id)
    if not actor.startswith("self:"):  # the sender released it: no news to tell them
        await asyncio.to_thread(tell_sender, cfg, entry, "released", subject)
    return reply.line


def find_by_token(store: QuarantineStore, token_sha256: str) -> Entry | None:
    """The held message a self-release token belongs to (only its hash is stored)."""
    for entry in store.entries():
        if entry.meta.get("envelope", {}).get("release_token_sha256") == token_sha256:
            return entry
    return None


def delete(cfg: Config, store: QuarantineStore, entry: Entry, actor: str,
           reason: str = "", notify: bool = True) -> None:
    """Record, then remove the held message; the sender is told (unless ``notify`` is off)."""
    record_action(cfg, "quarantine-delete", entry, actor, reply=reason)
    subject = subject_of(entry.raw) if notify else ""
    store.delete(entry.id)
    if notify:
        tell_sender(cfg, entry, "deleted", subject)


def subject_of(raw: bytes) -> str:
    try:
        return str(BytesHeaderParser(policy=default_policy).parsebytes(raw).get("Subject", ""))
    except Exception:  # noqa: BLE001 - a damaged header: the notice says "(no subject)"
        return ""


def tell_sender(cfg: Config, entry: Entry, outcome: str, subject: str) -> bool:
    """Tell the sender that an admin released or deleted their held message (``outcome``:
    "released" or "deleted"). Only to a school address; on record as ``notice-sent`` or
    ``notice-failed``. Never raises: the admin's action is done either way."""
    from milter.notices import Style, build_mail, render_outcome

    env = entry.meta.get("envelope", {})
    sender = str(env.get("mail_from", "")).lower()
    style = Style.from_config(cfg)
    if not cfg.notices.enabled or not sender or not style.internal(sender):
        return False
    txid = str(entry.meta.get("txid", ""))
    error = ""
    try:
        lang, name = cfg.school.language, sender.partition("@")[0]
        try:
            from milter.directory_source import DirectorySource

            person = DirectorySource(cfg).initial().lookup(sender)
        except Exception:  # noqa: BLE001 - without the directory: the defaults
            person = None
        if person is not None:
            lang, name = person.language or lang, person.name or name
        subject, text, body_html = render_outcome(
            outcome, style, lang=lang, name=name, subject=subject,
            recipients=list(env.get("rcpt_tos", [])),
            received=datetime.fromtimestamp(float(entry.meta.get("stored_at", 0)), UTC),
            ref=txid)
        raw = build_mail(postmaster=style.postmaster, to=sender, subject=subject, text=text,
                         body_html=body_html, txid=txid, in_reply_to="",
                         hostname=cfg.gateway.hostname)
        reply = asyncio.run(send_message(cfg.next_hop, cfg.gateway.hostname,
                                         cfg.gateway.next_hop_timeout, style.postmaster,
                                         [sender], raw))
        error = "" if reply.ok else reply.line
    except NextHopError as exc:
        error = str(exc)
    except Exception as exc:  # noqa: BLE001 - a template or I/O fault: on record, not raised
        log.exception("tx=%s %s notice could not be built", txid, outcome)
        error = f"notice could not be built: {type(exc).__name__}: {exc}"
    try:
        store = open_store(cfg.audit_url, cfg.gateway.node)
        try:
            store.append(AuditEvent(event="notice-failed" if error else "notice-sent",
                                    txid=txid, recipients=(sender,),
                                    sender=cfg.school.postmaster,
                                    action="notice-failed" if error else "notice-sent",
                                    reply=error, evidence={"kind": outcome,
                                                           "quarantine_id": entry.id}))
        finally:
            store.close()
    except AuditUnavailable as exc:
        log.error("tx=%s %s notice not on record: %s", txid, outcome, exc)
    return not error


def purge(cfg: Config, store: QuarantineStore, now: float | None = None) -> int:
    """Delete held messages past ``quarantine.retention_days``, each on record."""
    days = cfg.quarantine.retention_days
    old = store.older_than(days * 86400, now)
    for entry in old:
        delete(cfg, store, entry, "retention", f"retention period of {days} days passed",
               notify=False)
    return len(old)
