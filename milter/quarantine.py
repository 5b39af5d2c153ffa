"""The quarantine: held messages, durable before the client hears 250.

One directory per message (``<id>/message.eml`` and ``<id>/meta.json``), written to a
temporary name, fsynced, then renamed and the parent fsynced: a power cut leaves either the
whole entry or none. Entries are never modified in place. ``release``, ``delete`` and
``purge`` are what the CLI and the web view call: each is on record in the audit store, and
nothing changes when the record cannot be written.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from milter.audit.store import AuditEvent, AuditUnavailable, open_store
from milter.config import Config
from milter.durable import fsync_dir, write_synced
from milter.nexthop import NextHopError, send_message

ID_CHARS = set("0123456789abcdefghijklmnopqrstuvwxyz-")


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
        tmp: Path | None = None
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
            # A full disk must not also fill up with half-written entries (issue 13 item 7):
            # the client hears 451 and retries; nothing of this attempt stays behind.
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            raise QuarantineError(f"cannot store quarantined message: {exc}") from exc
        return final.name

    def sweep(self, older_than: float = 3600.0) -> int:
        """Remove half-written entries a crash (or a power cut) left behind: ``.tmp-*``
        older than ``older_than`` seconds (younger ones may be another worker's, in
        progress). Called at start; returns how many were removed."""
        if not self.directory.is_dir():
            return 0
        removed = 0
        cutoff = time.time() - older_than
        for child in self.directory.glob(".tmp-*"):
            try:
                if child.stat().st_mtime < cutoff:
                    shutil.rmtree(child, ignore_errors=True)
                    removed += 1
            except OSError:
                continue
        return removed

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


def record_action(cfg: Config, event: str, entry: Entry, actor: str, reply: str = "") -> None:
    """The audit record of what an admin (or the retention) did to a held message."""
    env = entry.meta.get("envelope", {})
    try:
        store = open_store(cfg.audit_url, cfg.gateway.node)
        try:
            store.append(AuditEvent(event=event, txid=str(entry.meta.get("txid", "")),
                                    sender=env.get("mail_from", ""),
                                    recipients=tuple(env.get("rcpt_tos", [])),
                                    direction=entry.meta.get("verdict", {}).get("direction", ""),
                                    action=event, reply=reply, actor=actor,
                                    evidence={"quarantine_id": entry.id}))
        finally:
            store.close()
    except AuditUnavailable as exc:
        raise ActionFailed(f"audit store unavailable, nothing changed: {exc}") from None


def release(cfg: Config, store: QuarantineStore, entry: Entry, actor: str) -> str:
    """Relay the original bytes with the original envelope, record it, remove the entry.
    Returns the next hop's reply; raises ActionFailed when it does not accept the message."""
    env = entry.meta.get("envelope", {})
    try:
        reply = asyncio.run(send_message(cfg.next_hop, cfg.gateway.hostname,
                                         cfg.gateway.next_hop_timeout,
                                         env.get("mail_from", ""), list(env.get("rcpt_tos", [])),
                                         entry.raw))
    except NextHopError as exc:
        raise ActionFailed(f"next hop unavailable, nothing released: {exc}") from None
    if not reply.ok:
        raise ActionFailed(f"next hop refused the message: {reply.line}")
    record_action(cfg, "quarantine-release", entry, actor, reply=reply.line)
    store.delete(entry.id)
    return reply.line


def delete(cfg: Config, store: QuarantineStore, entry: Entry, actor: str,
           reason: str = "") -> None:
    """Record, then remove the held message."""
    record_action(cfg, "quarantine-delete", entry, actor, reply=reason)
    store.delete(entry.id)


def purge(cfg: Config, store: QuarantineStore) -> int:
    """Delete held messages past ``quarantine.retention_days``, each on record."""
    days = cfg.quarantine.retention_days
    old = store.older_than(days * 86400)
    for entry in old:
        delete(cfg, store, entry, "retention", f"retention period of {days} days passed")
    return len(old)
