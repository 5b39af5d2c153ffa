"""Retention that runs itself: personal data is kept only as long as the config says.

The running gateway purges, on a schedule (``[audit] purge_every_hours``), the personal fields
of audit records older than ``audit.retention_days`` (their hashes stay, so every chain still
verifies) except for people and records under a legal hold, and deletes held messages older
than ``quarantine.retention_days`` (each deletion on record). Signed checkpoints hold no
personal data (chain, sequence number, hash, time) and are kept. Logs go to stderr/journald,
whose retention is the system's (``journald.conf MaxRetentionSec``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from milter import quarantine as quarantine_mod
from milter.audit.store import AuditStore, AuditUnavailable, Filters
from milter.config import Config
from milter.directory import Directory
from milter.quarantine import open_quarantine

log = logging.getLogger("skot-milter")

HOLD_EVENTS = ("legal-hold", "legal-hold-release")


def legal_holds(store: AuditStore) -> tuple[set[str], set[int]]:
    """People (addresses) and record ids under a legal hold now: the last word counts."""
    people: set[str] = set()
    records: set[int] = set()
    for r in store.records(Filters()):
        if r.event not in HOLD_EVENTS:
            continue
        person = str(r.evidence.get("person", "")).lower()
        record = int(r.evidence.get("record", 0) or 0)
        add = r.event == "legal-hold"
        if person:
            (people.add if add else people.discard)(person)
        if record:
            (records.add if add else records.discard)(record)
    return people, records


def cutoff(days: int, now: datetime) -> str:
    return (now - timedelta(days=days)).isoformat().replace("+00:00", "Z")


def purge_audit(store: AuditStore, before: str, actor: str,
                directory: Directory | None = None) -> tuple[int, int, int]:
    """Purge personal fields of records before ``before`` (an ISO time) except those under a
    legal hold. A hold on a staff member covers the private addresses the directory links to
    them (mail from those is about them too). Returns (records purged, people held, records
    held)."""
    people, records = legal_holds(store)
    held = set(people)
    for address in people:
        person = directory.lookup(address) if directory is not None else None
        if person is not None:
            held.update(a.lower() for a in person.private_addresses + person.aliases)
    return store.purge(before, held, records, actor), len(people), len(records)


@dataclass
class RetentionResult:
    audit_purged: int = 0
    quarantine_deleted: int = 0
    errors: list[str] = field(default_factory=list)


def run_once(cfg: Config, store: AuditStore, now: datetime | None = None,
             directory: Directory | None = None) -> RetentionResult:
    """One round: the audit store (when ``retention_days`` > 0) and the quarantine."""
    now = now or datetime.now(UTC)
    result = RetentionResult()
    if cfg.audit.retention_days > 0:
        try:
            result.audit_purged, _, _ = purge_audit(
                store, cutoff(cfg.audit.retention_days, now), "retention", directory)
        except AuditUnavailable as exc:
            result.errors.append(f"audit purge: {exc}")
    held = open_quarantine(cfg)
    try:
        result.quarantine_deleted = quarantine_mod.purge(cfg, held, now=now.timestamp())
    except (quarantine_mod.ActionFailed, quarantine_mod.QuarantineError, OSError) as exc:
        result.errors.append(f"quarantine purge: {exc}")
    finally:
        held.close()
    return result


class RetentionSchedule:
    """Runs ``run_once`` every ``purge_every_hours`` in a thread of its own (the store's own
    connection; never on the event loop), the first time shortly after start."""

    def __init__(self, cfg: Config, store_factory: Callable[[], AuditStore],
                 clock: Callable[[], datetime] | None = None,
                 directory: Callable[[], Directory] | None = None) -> None:
        self.cfg = cfg
        self.store_factory = store_factory
        self.directory = directory
        self.clock = clock or (lambda: datetime.now(UTC))
        self.interval = cfg.audit.purge_every_hours * 3600.0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.last: RetentionResult | None = None

    def start(self, first_delay: float = 60.0) -> None:
        if self.interval <= 0:
            return
        self._thread = threading.Thread(target=self._loop, args=(first_delay,),
                                        name="retention", daemon=True)
        self._thread.start()

    def run_now(self) -> RetentionResult:
        """One round now (also what the schedule runs)."""
        with self._lock:
            store = self.store_factory()
            try:
                result = run_once(self.cfg, store, self.clock(),
                                  self.directory() if self.directory else None)
            finally:
                store.close()
        if result.audit_purged or result.quarantine_deleted:
            log.info("retention: personal fields of %d audit record(s) purged, %d held "
                     "message(s) deleted", result.audit_purged, result.quarantine_deleted)
        for err in result.errors:
            log.error("retention: %s", err)
        self.last = result
        return result

    def _loop(self, first_delay: float) -> None:
        delay = first_delay
        while not self._stop.wait(delay):
            started = time.monotonic()
            try:
                self.run_now()
            except Exception:  # noqa: BLE001 - the schedule must outlive one bad round
                log.exception("retention round failed")
            delay = max(1.0, self.interval - (time.monotonic() - started))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
