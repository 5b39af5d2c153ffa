"""SQLite audit backend: WAL with ``synchronous=FULL`` (NORMAL loses commits on power loss).

The chain head is read inside ``BEGIN IMMEDIATE`` so several worker processes can append to
one file without forking the chain. Triggers refuse every UPDATE and DELETE except the shape
of a purge (personal fields emptied, every hash kept).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from milter.audit.sql import GENESIS, PURGE_SHAPE, SQLStore, fetched, records_table
from milter.audit.store import AuditUnavailable

SCHEMA = records_table("INTEGER PRIMARY KEY AUTOINCREMENT", "INTEGER") + f"""
CREATE TRIGGER IF NOT EXISTS records_no_update BEFORE UPDATE ON records
WHEN NOT ({PURGE_SHAPE})
BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END;
CREATE TRIGGER IF NOT EXISTS records_no_delete BEFORE DELETE ON records
BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END;
"""


def _set_wal(db: sqlite3.Connection, deadline: float) -> None:
    """``PRAGMA journal_mode=WAL``, retried: when two processes (the workers of one gateway,
    started together) switch a new file at once, SQLite answers "database is locked" at once,
    without waiting for the busy timeout, and a worker died at start."""
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


class SQLiteStore(SQLStore):
    def __init__(self, path: str | Path, chain: str) -> None:
        self.path = Path(path)
        self.chain = chain
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                       timeout=30.0)
            _set_wal(self._db, time.monotonic() + 30.0)
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise AuditUnavailable(f"cannot open audit store {self.path}: {exc}") from exc

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[Sequence[Any]]:
        with self._lock:
            return self._db.execute(sql, tuple(args)).fetchall()

    def _execute(self, sql: str, args: Sequence[Any] = (), fetch: bool | str = True) -> Any:
        return fetched(self._db.execute(sql, tuple(args)), fetch)

    def _write(self, work: Any) -> Any:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    result = work(self._execute)
                    self._db.execute("COMMIT")
                    return result
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
            except (sqlite3.Error, OSError) as exc:
                raise AuditUnavailable(f"audit write failed: {exc}") from exc

    def _head(self, execute: Any) -> tuple[int, str]:
        row = self._db.execute("SELECT seq, hash FROM records WHERE chain=? ORDER BY seq DESC "
                               "LIMIT 1", (self.chain,)).fetchone()
        return (int(row[0]), str(row[1])) if row else (0, GENESIS)

    def close(self) -> None:
        with self._lock:
            self._db.close()
