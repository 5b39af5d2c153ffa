"""The quarantine in PostgreSQL: one store for every gateway node on the same database.

With a PostgreSQL ``audit.url`` a held message (its bytes and its metadata) is a row of the
``quarantine`` table, committed with ``synchronous_commit = on`` before the client hears 250,
just as the directory store fsyncs. Any node's CLI or web view lists, releases and deletes
any node's held messages. A release or delete first claims the row with one conditional
UPDATE (``state = 'held'`` to ``'releasing'``, ``RETURNING``): PostgreSQL lets exactly one of
several concurrent claims match, so a message is delivered once however many admins click.

When the database cannot be reached, ``put`` raises QuarantineError: the front answers 451
and the client retries, so nothing is lost; the node catches up by itself once the pool
reconnects.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from milter.audit.postgres import migrate
from milter.quarantine import (
    STALE_CLAIM_SECONDS,
    Entry,
    QuarantineError,
    new_id,
    valid_id,
)

log = logging.getLogger("skot-milter")

_COLUMNS = "id, node, meta"
# Held, or claimed by a release whose process died (STALE_CLAIM_SECONDS): listed, releasable.
_HELD = "(state = 'held' OR (state = 'releasing' AND claimed_at < %s))"


def _durable(conn: psycopg.Connection[Any]) -> None:
    """A held message must survive a power cut before we answer 250 (see audit.postgres)."""
    conn.execute("SET synchronous_commit = on")


class PostgresQuarantine:
    """The shared quarantine (``milter.quarantine.Quarantine``) of every node."""

    def __init__(self, url: str, node: str, pool_size: int = 2, timeout: float = 10.0) -> None:
        self.url = url
        self.node = node
        self._migrated = False
        self._lock = threading.Lock()
        # The pool opens in the background: a node starts (and answers 451 for messages to
        # hold) while the database is away, as its audit writer does.
        self._pool = ConnectionPool(url, min_size=1, max_size=pool_size, open=True,
                                    timeout=timeout, kwargs={"autocommit": True},
                                    configure=_durable)

    # -- plumbing ------------------------------------------------------------------------------
    def _run(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """One statement, committed on its own; any database fault is QuarantineError."""
        try:
            with self._pool.connection() as conn:
                if not self._migrated:
                    with self._lock:
                        if not self._migrated:
                            migrate(conn)
                            self._migrated = True
                cur = conn.execute(sql, tuple(args))
                return list(cur.fetchall()) if cur.description else []
        except QuarantineError:
            raise
        except Exception as exc:  # psycopg errors and the pool's time-out alike
            raise QuarantineError(f"quarantine database unavailable: {exc}") from exc

    def _entry(self, row: Sequence[Any], claim: str = "") -> Entry:
        qid, node, meta = str(row[0]), str(row[1]), json.loads(row[2])
        meta.setdefault("node", node)
        return Entry(qid, meta, None, load=lambda: self._raw(qid), claim=claim)

    @staticmethod
    def _stale() -> float:
        return time.time() - STALE_CLAIM_SECONDS

    def _raw(self, qid: str) -> bytes:
        rows = self._run("SELECT message FROM quarantine WHERE id = %s", (qid,))
        if not rows:
            raise QuarantineError(f"quarantined message {qid} is gone")
        return bytes(rows[0][0])

    # -- the store -----------------------------------------------------------------------------
    def put(self, txid: str, raw: bytes, envelope_json: dict[str, Any],
            verdict_json: dict[str, Any]) -> str:
        stored_at = time.time()
        meta = {"txid": txid, "stored_at": stored_at, "size": len(raw),
                "envelope": envelope_json, "verdict": verdict_json, "node": self.node}
        qid = new_id(txid)
        for _ in range(5):
            rows = self._run(
                "INSERT INTO quarantine (id, node, txid, stored_at, meta, message) "
                "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING RETURNING id",
                (qid, self.node, txid, stored_at, json.dumps(meta, sort_keys=True), raw))
            if rows:
                return qid
            qid = f"{new_id(txid)}-{uuid.uuid4().hex[:6]}"
        raise QuarantineError("cannot find a free quarantine id")

    def get(self, qid: str) -> Entry | None:
        if not valid_id(qid):
            return None
        try:
            rows = self._run(f"SELECT {_COLUMNS} FROM quarantine WHERE id = %s AND {_HELD}",
                             (qid, self._stale()))
        except QuarantineError:
            return None
        return self._entry(rows[0]) if rows else None

    def entries(self) -> list[Entry]:
        return [self._entry(r) for r in self._run(
            f"SELECT {_COLUMNS} FROM quarantine WHERE {_HELD} ORDER BY id", (self._stale(),))]

    def in_progress(self) -> list[Entry]:
        return [self._entry(r) for r in self._run(
            f"SELECT {_COLUMNS} FROM quarantine WHERE state = 'releasing' AND NOT {_HELD} "
            "ORDER BY id", (self._stale(),))]

    def older_than(self, seconds: float, now: float | None = None) -> list[Entry]:
        cutoff = (now if now is not None else time.time()) - seconds
        return [self._entry(r) for r in self._run(
            f"SELECT {_COLUMNS} FROM quarantine WHERE {_HELD} AND stored_at < %s "
            "ORDER BY id", (self._stale(), cutoff))]

    def claim(self, qid: str, actor: str) -> Entry | None:
        # One statement: under concurrent claims PostgreSQL re-checks the WHERE clause of the
        # row it waited for, so only the first sees state = 'held'. A claim older than
        # STALE_CLAIM_SECONDS was left by a process that died mid-release.
        if not valid_id(qid):
            return None
        token = f"{actor} #{uuid.uuid4().hex[:12]}"  # unclaim/finish touch only this claim
        rows = self._run(
            f"UPDATE quarantine SET state = 'releasing', claimed_by = %s, claimed_at = %s "
            f"WHERE id = %s AND {_HELD} RETURNING {_COLUMNS}",
            (token, time.time(), qid, self._stale()))
        return self._entry(rows[0], token) if rows else None

    def unclaim(self, entry: Entry) -> None:
        self._run("UPDATE quarantine SET state = 'held', claimed_by = '', claimed_at = 0 "
                  "WHERE id = %s AND state = 'releasing' AND claimed_by = %s",
                  (entry.id, entry.claim))

    def finish(self, entry: Entry) -> None:
        gone = self._run("DELETE FROM quarantine WHERE id = %s AND state = 'releasing' "
                         "AND claimed_by = %s RETURNING id", (entry.id, entry.claim))
        if not gone:
            log.warning("quarantine %s: finished after its claim went stale and was taken "
                        "over", entry.id)

    def delete(self, qid: str) -> bool:
        entry = self.claim(qid, "delete")
        if entry is None:
            return False
        self.finish(entry)
        return True

    def close(self) -> None:
        self._pool.close()
