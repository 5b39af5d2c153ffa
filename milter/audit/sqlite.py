"""SQLite audit backend: WAL with ``synchronous=FULL`` (NORMAL loses commits on power loss).

The chain head is read inside ``BEGIN IMMEDIATE`` so several worker processes can append to
one file without forking the chain. Triggers refuse every UPDATE and DELETE except the shape
of a purge (personal fields emptied, every hash kept).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from milter.audit.sql import (
    GENESIS,
    PURGE_SHAPE,
    SQLStore,
    fetched,
    records_table,
    sqlite_index_schema,
)
from milter.audit.store import AuditUnavailable

SCHEMA = records_table("INTEGER PRIMARY KEY AUTOINCREMENT", "INTEGER") + f"""
CREATE TRIGGER IF NOT EXISTS records_no_update BEFORE UPDATE ON records
WHEN NOT ({PURGE_SHAPE})
BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END;
CREATE TRIGGER IF NOT EXISTS records_no_delete BEFORE DELETE ON records
BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END;
"""


VERSION = 2  # 1: records and guards; 2: the web view's search indexes


def _statements(script: str) -> list[str]:
    """``script`` split into statements (executescript would commit our transaction)."""
    out, buf = [], ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            out.append(buf.strip())
            buf = ""
    return [s for s in out if s]


class SQLiteStore(SQLStore):
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
            self.version = self._migrate()
        except (sqlite3.Error, OSError) as exc:
            raise AuditUnavailable(f"cannot open audit store {self.path}: {exc}") from exc

    def _migrate(self) -> int:
        """Bring an older file up to VERSION (``PRAGMA user_version``), in one transaction:
        several processes opening the same file at once migrate it once."""
        version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
        if version >= VERSION:
            return version
        self._db.execute("BEGIN IMMEDIATE")
        try:
            version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
            if version < 2:
                for statement in _statements(sqlite_index_schema()):
                    self._db.execute(statement)
            self._db.execute(f"PRAGMA user_version = {VERSION}")
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("ANALYZE")
        return VERSION

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
