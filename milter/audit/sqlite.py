"""SQLite audit backend: WAL with ``synchronous=FULL`` (NORMAL loses commits on power loss).

The chain head is read inside ``BEGIN IMMEDIATE`` so several worker processes can append to
one file without forking the chain.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from milter.audit.store import (
    GENESIS,
    AuditEvent,
    AuditRecord,
    AuditUnavailable,
    Filters,
    VerifyResult,
    chain_hash,
    content_hash,
    verify_rows,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    chain TEXT NOT NULL,
    seq INTEGER NOT NULL,
    ts TEXT NOT NULL,
    event TEXT NOT NULL,
    txid TEXT NOT NULL DEFAULT '',
    message_id TEXT NOT NULL DEFAULT '',
    client TEXT NOT NULL DEFAULT '',
    direction TEXT NOT NULL DEFAULT '',
    sender TEXT NOT NULL DEFAULT '',
    recipients TEXT NOT NULL DEFAULT '[]',
    auth_user TEXT NOT NULL DEFAULT '',
    rules TEXT NOT NULL DEFAULT '[]',
    action TEXT NOT NULL DEFAULT '',
    reply TEXT NOT NULL DEFAULT '',
    evidence TEXT NOT NULL DEFAULT '{}',
    subject TEXT NOT NULL DEFAULT '',
    actor TEXT NOT NULL DEFAULT '',
    prev_hash TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    hash TEXT NOT NULL,
    UNIQUE (chain, seq)
);
CREATE INDEX IF NOT EXISTS records_ts ON records (ts);
CREATE INDEX IF NOT EXISTS records_txid ON records (txid);
CREATE INDEX IF NOT EXISTS records_sender ON records (sender);
CREATE TRIGGER IF NOT EXISTS records_no_update BEFORE UPDATE ON records
BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END;
CREATE TRIGGER IF NOT EXISTS records_no_delete BEFORE DELETE ON records
BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END;
"""

COLUMNS = ("id", "chain", "seq", "ts", "event", "txid", "message_id", "client", "direction",
           "sender", "recipients", "auth_user", "rules", "action", "reply", "evidence",
           "subject", "actor", "prev_hash", "content_hash", "hash")
JSON_COLUMNS = {"recipients", "rules", "evidence"}


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def row_to_record(row: sqlite3.Row | tuple[Any, ...]) -> AuditRecord:
    values = dict(zip(COLUMNS, row, strict=True))
    for k in JSON_COLUMNS:
        values[k] = json.loads(values[k])
    values["recipients"] = tuple(values["recipients"])
    values["rules"] = tuple(values["rules"])
    return AuditRecord(**values)


class SQLiteStore:
    def __init__(self, path: str | Path, chain: str) -> None:
        self.path = Path(path)
        self.chain = chain
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                       timeout=30.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise AuditUnavailable(f"cannot open audit store {self.path}: {exc}") from exc

    def append(self, event: AuditEvent) -> AuditRecord:
        return self.append_many([event])[0]

    def append_many(self, events: list[AuditEvent]) -> list[AuditRecord]:
        """Append several records in one transaction: one fsync for all (group commit)."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    head = self._db.execute(
                        "SELECT seq, hash FROM records WHERE chain=? ORDER BY seq DESC LIMIT 1",
                        (self.chain,)).fetchone()
                    seq, prev = (head[0], head[1]) if head else (0, GENESIS)
                    out = []
                    for ev in events:
                        seq += 1
                        rec = self._seal(ev, seq, prev)
                        values = asdict(rec)
                        del values["id"]
                        for k in JSON_COLUMNS:
                            values[k] = json.dumps(list(values[k]) if k != "evidence"
                                                   else values[k], ensure_ascii=False,
                                                   sort_keys=True, default=list)
                        cols = ", ".join(values)
                        cur = self._db.execute(
                            f"INSERT INTO records ({cols}) VALUES ({', '.join('?' * len(values))})",
                            tuple(values.values()))
                        out.append(AuditRecord(**{**asdict(rec), "id": cur.lastrowid or 0,
                                                  "recipients": rec.recipients,
                                                  "rules": rec.rules}))
                        prev = rec.hash
                    self._db.execute("COMMIT")
                    return out
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
            except (sqlite3.Error, OSError) as exc:
                raise AuditUnavailable(f"audit write failed: {exc}") from exc

    def _seal(self, ev: AuditEvent, seq: int, prev: str) -> AuditRecord:
        base = {k: getattr(ev, k) for k in AuditEvent.__dataclass_fields__}
        base["ts"] = now_iso()
        c_hash = content_hash(base)
        return AuditRecord(**base, chain=self.chain, seq=seq, prev_hash=prev,
                           content_hash=c_hash, hash=chain_hash(self.chain, seq, prev, c_hash))

    def records(self, filters: Filters | None = None) -> Iterator[AuditRecord]:
        filters = filters or Filters()
        where, args = [], []
        if filters.since:
            where.append("ts >= ?")
            args.append(filters.since)
        if filters.until:
            where.append("ts < ?")
            args.append(filters.until)
        if filters.rule:
            where.append("rules LIKE ?")
            args.append(f'%"id": "{filters.rule}"%')
        if filters.sender:
            where.append("lower(sender) = lower(?)")
            args.append(filters.sender)
        if filters.person:
            where.append("(lower(sender) = lower(?) OR lower(auth_user) = lower(?) "
                         "OR lower(recipients) LIKE lower(?))")
            args += [filters.person, filters.person, f'%"{filters.person}"%']
        if filters.event:
            where.append("event = ?")
            args.append(filters.event)
        if filters.txid:
            where.append("txid = ?")
            args.append(filters.txid)
        sql = f"SELECT {', '.join(COLUMNS)} FROM records"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id"
        if filters.limit:
            sql += f" LIMIT {int(filters.limit)}"
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return (row_to_record(r) for r in rows)

    def get(self, record_id: int) -> AuditRecord | None:
        with self._lock:
            row = self._db.execute(f"SELECT {', '.join(COLUMNS)} FROM records WHERE id=?",
                                   (record_id,)).fetchone()
        return row_to_record(row) if row else None

    def verify(self) -> VerifyResult:
        with self._lock:
            rows = self._db.execute(
                f"SELECT {', '.join(COLUMNS)} FROM records ORDER BY chain, seq").fetchall()
        return verify_rows(row_to_record(r) for r in rows)

    def close(self) -> None:
        with self._lock:
            self._db.close()
