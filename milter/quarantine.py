"""The quarantine: held messages, durable before the client hears 250.

Two stores with one interface (``Quarantine``), picked by ``open_quarantine``: with a
PostgreSQL ``audit.url`` the held messages live in that database, shared by every gateway
node (``milter.quarantine_pg``); otherwise in a local directory, one directory per message
(``<id>/message.eml`` and ``<id>/meta.json``), written to a temporary name, fsynced, then
renamed and the parent fsynced: a power cut leaves either the whole entry or none.

``release``, ``delete`` and ``purge`` are what the CLI, the web view and the retention call:
each is on record in the audit store, and nothing changes when the record cannot be written.
Each first *claims* the entry with one atomic step (a rename here, a conditional UPDATE in
PostgreSQL): of two admins clicking at once, on one node or two, exactly one gets it and the
other is told it is gone, so a held message is delivered at most once. After a release or a
delete by an admin the sender is told (a notice, itself on record); a purge by the retention
period is not announced again (the quarantine notice gave its date). The sender may release
an eligible message themselves by reply (``milter.selfrelease``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.parser import BytesHeaderParser
from email.policy import default as default_policy
from pathlib import Path
from typing import Any, Protocol

from milter.audit.store import AuditEvent, AuditUnavailable, open_store
from milter.config import Config
from milter.durable import fsync_dir, write_synced
from milter.nexthop import NextHopError, send_message

log = logging.getLogger("skot-milter")

ID_CHARS = set("0123456789abcdefghijklmnopqrstuvwxyz-")
# A claim older than this belongs to a release whose process died (a live one ends within the
# next-hop timeout): the entry may be claimed again.
STALE_CLAIM_SECONDS = 3600.0


class QuarantineError(Exception):
    pass


@dataclass(frozen=True)
class Entry:
    """A held message: its id, metadata and where its bytes are (a directory, or a loader
    that reads them from the database)."""

    id: str
    meta: dict[str, Any]
    path: Path | None = None
    load: Callable[[], bytes] | None = field(default=None, compare=False, repr=False)
    claim: str = ""  # set on a claimed entry: whose claim it is (the store checks it)

    @property
    def raw(self) -> bytes:
        if self.load is not None:
            return self.load()
        assert self.path is not None
        return (self.path / "message.eml").read_bytes()

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, **self.meta}


def new_id(txid: str) -> str:
    qid = f"{time.strftime('%Y%m%d')}-{(txid or uuid.uuid4().hex[:12]).lower()}"
    return "".join(c for c in qid if c in ID_CHARS)


def valid_id(qid: str) -> bool:
    return bool(qid) and set(qid) <= ID_CHARS and not qid.startswith("-")


class Quarantine(Protocol):
    """What the transaction, the CLI, the web view and the retention use of a store."""

    def put(self, txid: str, raw: bytes, envelope_json: dict[str, Any],
            verdict_json: dict[str, Any]) -> str:
        """Store durably; return the quarantine id. Raises QuarantineError on any fault."""

    def get(self, qid: str) -> Entry | None:
        """A held entry (not one being released), or None."""

    def entries(self) -> list[Entry]: ...

    def in_progress(self) -> list[Entry]:
        """The entries a live release or delete has claimed and not yet finished."""

    def older_than(self, seconds: float, now: float | None = None) -> list[Entry]: ...

    def claim(self, qid: str, actor: str) -> Entry | None:
        """Take the entry out of ``held`` in one atomic step; None when someone else has it
        (or it is gone). Exactly one of several concurrent claims succeeds."""

    def unclaim(self, entry: Entry) -> None:
        """Put a claimed entry back (its release failed; nothing was sent)."""

    def finish(self, entry: Entry) -> None:
        """Remove a claimed entry for good (released or deleted, and on record)."""

    def delete(self, qid: str) -> bool: ...

    def close(self) -> None: ...


class QuarantineStore:
    """The directory store (one node). Claims are renames (``<id>`` to ``.claim-<id>``):
    rename is atomic, so of two processes claiming one entry only one succeeds."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def put(self, txid: str, raw: bytes, envelope_json: dict[str, Any],
            verdict_json: dict[str, Any]) -> str:
        """Store durably; return the quarantine id. Raises QuarantineError on any I/O fault."""
        qid = new_id(txid)
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
        if not valid_id(qid):
            return None
        self._recover_stale(qid, self._claimed(qid))
        return self._read(qid, self.directory / qid)

    @staticmethod
    def _read(qid: str, path: Path) -> Entry | None:
        try:
            meta = json.loads((path / "meta.json").read_text())
        except (OSError, ValueError):
            return None
        return Entry(qid, meta, path)

    def _claimed(self, qid: str) -> Path:
        return self.directory / f".claim-{qid}"

    def claim(self, qid: str, actor: str) -> Entry | None:
        if not valid_id(qid):
            return None
        claimed = self._claimed(qid)
        self._recover_stale(qid, claimed)
        try:
            os.rename(self.directory / qid, claimed)  # atomic: one claimant wins
        except OSError:
            return None
        with contextlib.suppress(OSError):
            write_synced(claimed / "claim.json", json.dumps(
                {"actor": actor, "at": time.time(), "pid": os.getpid()}).encode())
            fsync_dir(self.directory)
        return self._read(qid, claimed)

    def _recover_stale(self, qid: str, claimed: Path) -> None:
        """A claim left by a process that died mid-release goes back to ``held``."""
        try:
            at = float(json.loads((claimed / "claim.json").read_text()).get("at", 0))
        except (OSError, ValueError):
            try:
                at = claimed.stat().st_mtime
            except OSError:
                return
        if time.time() - at < STALE_CLAIM_SECONDS:
            return
        with contextlib.suppress(OSError):
            (claimed / "claim.json").unlink(missing_ok=True)
            os.rename(claimed, self.directory / qid)
            log.warning("quarantine %s: a release claimed it and never finished; held again",
                        qid)

    def unclaim(self, entry: Entry) -> None:
        claimed = self._claimed(entry.id)
        with contextlib.suppress(OSError):
            (claimed / "claim.json").unlink(missing_ok=True)
        os.rename(claimed, self.directory / entry.id)
        fsync_dir(self.directory)

    def finish(self, entry: Entry) -> None:
        trash = self.directory / f".del-{entry.id}-{uuid.uuid4().hex[:6]}"
        os.rename(self._claimed(entry.id), trash)
        fsync_dir(self.directory)
        shutil.rmtree(trash, ignore_errors=True)

    def entries(self) -> list[Entry]:
        if not self.directory.is_dir():
            return []
        out = []
        for child in sorted(self.directory.iterdir()):
            if child.name.startswith(".claim-"):  # one whose release died is held again
                self._recover_stale(child.name[len(".claim-"):], child)
        for child in sorted(self.directory.iterdir()):
            if child.name.startswith("."):
                continue
            entry = self.get(child.name)
            if entry is not None:
                out.append(entry)
        return out

    def in_progress(self) -> list[Entry]:
        if not self.directory.is_dir():
            return []
        out = []
        for child in sorted(self.directory.glob(".claim-*")):
            self._recover_stale(child.name[len(".claim-"):], child)
            entry = self._read(child.name[len(".claim-"):], child)
            if entry is not None:
                out.append(entry)
        return out

    def delete(self, qid: str) -> bool:
        entry = self.claim(qid, "delete")
        if entry is None:
            return False
        self.finish(entry)
        return True

    def older_than(self, seconds: float, now: float | None = None) -> list[Entry]:
        cutoff = (now if now is not None else time.time()) - seconds
        return [e for e in self.entries() if float(e.meta.get("stored_at", 0)) < cutoff]

    def close(self) -> None:
        return None


def open_quarantine(cfg: Config) -> Quarantine:
    """The quarantine of this configuration: shared in PostgreSQL when ``audit.url`` is
    PostgreSQL (every node sees and releases every held message), else the directory."""
    url = cfg.audit_url
    if url.startswith(("postgresql://", "postgres://")):
        from milter.quarantine_pg import PostgresQuarantine

        return PostgresQuarantine(url, cfg.gateway.node)
    return QuarantineStore(cfg.quarantine_dir)


class ActionFailed(Exception):
    """A release or delete that did not happen; the reason is for the admin. Nothing changed."""


def record_action(cfg: Config, event: str, entry: Entry, actor: str, reply: str = "",
                  extra: dict[str, Any] | None = None) -> None:
    """The audit record of what an admin (or the retention, or the sender) did to a held
    message."""
    env = entry.meta.get("envelope", {})
    token = env.get("release_token_sha256")  # a later self-release link says "done already"
    extra = {**({"release_token_sha256": token} if token else {}), **(extra or {})}
    try:
        store = open_store(cfg.audit_url, cfg.gateway.node)
        try:
            store.append(AuditEvent(event=event, txid=str(entry.meta.get("txid", "")),
                                    sender=env.get("mail_from", ""),
                                    recipients=tuple(env.get("rcpt_tos", [])),
                                    direction=entry.meta.get("verdict", {}).get("direction", ""),
                                    action=event, reply=reply, actor=actor,
                                    evidence={"quarantine_id": entry.id, **extra}))
        finally:
            store.close()
    except AuditUnavailable as exc:
        raise ActionFailed(f"audit store unavailable, nothing changed: {exc}") from None


class AlreadyTaken(ActionFailed):
    """Someone else (another admin, another node, the retention) released or deleted it."""


def _claim(store: Quarantine, entry: Entry, actor: str) -> Entry:
    claimed = store.claim(entry.id, actor)
    if claimed is None:
        raise AlreadyTaken(f"quarantined message {entry.id} was already released or deleted "
                           "(or is being released right now); nothing done")
    return claimed


def release(cfg: Config, store: Quarantine, entry: Entry, actor: str, reason: str = "",
            notify: bool = True) -> str:
    """Relay the original bytes with the original envelope, record it, remove the entry.

    The entry is claimed first, so of two concurrent releases (two admins, two nodes) only
    one sends; a failed send puts it back. Returns the next hop's reply; raises ActionFailed
    (AlreadyTaken when someone else had it) when nothing was delivered."""
    return asyncio.run(release_async(cfg, store, entry, actor,
                                     {"reason": reason} if reason else None, notify))


async def release_async(cfg: Config, store: Quarantine, entry: Entry, actor: str,
                        extra: dict[str, Any] | None = None, notify: bool = True) -> str:
    """``release`` for a caller on an event loop (the sender's own release by reply)."""
    claimed = await asyncio.to_thread(_claim, store, entry, actor)
    env = claimed.meta.get("envelope", {})
    try:
        reply = await send_message(cfg.next_hop, cfg.gateway.hostname,
                                   cfg.gateway.next_hop_timeout, env.get("mail_from", ""),
                                   list(env.get("rcpt_tos", [])), claimed.raw)
    except NextHopError as exc:
        await asyncio.to_thread(store.unclaim, claimed)
        raise ActionFailed(f"next hop unavailable, nothing released: {exc}") from None
    except BaseException:
        await asyncio.to_thread(store.unclaim, claimed)
        raise
    if not reply.ok:
        await asyncio.to_thread(store.unclaim, claimed)
        raise ActionFailed(f"next hop refused the message: {reply.line}")
    subject = subject_of(claimed.raw)
    try:
        await asyncio.to_thread(record_action, cfg, "quarantine-release", claimed, actor,
                                reply.line, extra)
    except ActionFailed as exc:
        # Delivered: the entry must never be sent again, so it goes all the same.
        await asyncio.to_thread(store.finish, claimed)
        log.error("quarantine %s released by %s (%s) but not on record: %s", claimed.id,
                  actor, reply.line, exc)
        raise ActionFailed(f"released ({reply.line}), but the audit record failed: "
                           f"{exc}") from None
    await asyncio.to_thread(store.finish, claimed)
    if notify and not actor.startswith("self:"):  # the sender released it: no news for them
        await asyncio.to_thread(tell_sender, cfg, claimed, "released", subject)
    return reply.line


def find_by_token(store: Quarantine, token_sha256: str, in_progress: bool = False
                  ) -> Entry | None:
    """The held message a self-release token belongs to (only its hash is stored); with
    ``in_progress``, the one a release or delete is busy with instead."""
    for entry in store.in_progress() if in_progress else store.entries():
        if entry.meta.get("envelope", {}).get("release_token_sha256") == token_sha256:
            return entry
    return None


def delete(cfg: Config, store: Quarantine, entry: Entry, actor: str,
           reason: str = "", notify: bool = True) -> None:
    """Claim, record, then remove the held message (put back when the record fails); the
    sender is told (unless ``notify`` is off)."""
    claimed = _claim(store, entry, actor)
    try:
        record_action(cfg, "quarantine-delete", claimed, actor, reply=reason,
                      extra={"reason": reason} if reason else None)
    except BaseException:
        store.unclaim(claimed)
        raise
    subject = subject_of(claimed.raw) if notify else ""
    store.finish(claimed)
    if notify:
        tell_sender(cfg, claimed, "deleted", subject)


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
    except Exception as exc:  # noqa: BLE001 - a template or I/O fault: on record, not raised
        log.exception("tx=%s %s notice could not be built", txid, outcome)
        return _send_recorded(cfg, sender, b"", txid, {"kind": outcome,
                                                       "quarantine_id": entry.id},
                              f"notice could not be built: {type(exc).__name__}: {exc}")
    return _send_recorded(cfg, sender, raw, txid, {"kind": outcome, "quarantine_id": entry.id})


def tell_supervisor(cfg: Config, policy: Any, directory: Any, entry: Entry, sender: str,
                    reason: str, subject: str) -> bool:
    """The sender released ``entry`` themselves (through the web view): their supervisor
    gets the notice with the reason, as after a release by reply. On record; never raises."""
    from milter.notices import Style, release_copy

    txid = str(entry.meta.get("txid", ""))
    try:
        notice = release_copy(policy, Style.from_config(cfg), directory, cfg.gateway.hostname,
                              entry.meta, sender, reason, subject)
    except Exception as exc:  # noqa: BLE001 - the release is done either way
        log.exception("tx=%s supervisor's copy could not be built", txid)
        return _send_recorded(cfg, "", b"", txid, {"kind": "supervisor",
                                                       "quarantine_id": entry.id},
                              f"notice could not be built: {type(exc).__name__}: {exc}")
    if notice is None or not cfg.notices.enabled:
        return False
    return _send_recorded(cfg, notice.to, notice.rendered, txid, {
        "kind": "supervisor", "lang": notice.lang, "rules": list(notice.rule_ids),
        "quarantine_id": entry.id})


def _send_recorded(cfg: Config, to: str, raw: bytes, txid: str, evidence: dict[str, Any],
                   error: str = "") -> bool:
    """Send one notice from the postmaster (unless ``error`` says it could not be built)
    and put ``notice-sent`` or ``notice-failed`` on record."""
    if not error:
        try:
            reply = asyncio.run(send_message(cfg.next_hop, cfg.gateway.hostname,
                                             cfg.gateway.next_hop_timeout,
                                             cfg.school.postmaster, [to], raw))
            error = "" if reply.ok else reply.line
        except NextHopError as exc:
            error = str(exc)
    try:
        store = open_store(cfg.audit_url, cfg.gateway.node)
        try:
            store.append(AuditEvent(event="notice-failed" if error else "notice-sent",
                                    txid=txid, recipients=(to,) if to else (),
                                    sender=cfg.school.postmaster,
                                    action="notice-failed" if error else "notice-sent",
                                    reply=error, evidence=evidence))
        finally:
            store.close()
    except AuditUnavailable as exc:
        log.error("tx=%s %s notice not on record: %s", txid, evidence.get("kind"), exc)
    return not error

def purge(cfg: Config, store: Quarantine, now: float | None = None) -> int:
    """Delete held messages past ``quarantine.retention_days``, each on record. Several
    nodes may purge one shared quarantine at once: each entry is deleted (and recorded) by
    one of them."""
    days = cfg.quarantine.retention_days
    done = 0
    for entry in store.older_than(days * 86400, now):
        try:
            delete(cfg, store, entry, "retention", f"retention period of {days} days passed",
                   notify=False)
        except AlreadyTaken:
            continue
        done += 1
    return done
