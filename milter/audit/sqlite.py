"""SQLite audit backend: WAL with ``synchronous=FULL`` (NORMAL loses commits on power loss).

The chain head is read inside ``BEGIN IMMEDIATE`` so several worker processes can append to
one file without forking the chain. Triggers refuse every UPDATE and DELETE except the shape
of a purge (personal fields emptied, every hash kept).

The web view's search indexes (``milter.audit.sql``) are not written by the append that makes a
record durable: an append is the record alone (a trigger copying it into five more tables cost
60% of it), and ``catch_up`` copies the records appended since the last one in a batch, up to
a watermark (``records_indexed``, schema version 3). Every read of the indexes catches up
first, and the gateway's audit process catches up when its pipe is idle.

WAL keeps its index in ``<db>-shm``, mapped into memory: a store whose files were made
unwritable underneath us (``chattr +i``, a read-only remount) would turn the next touch of
that mapping into SIGBUS, killing the process and every session with it. So each access
first asks the kernel whether the files may be written (``access(2)`` says no for immutable
files even to root): if not, ``AuditUnavailable`` (the client hears 451) until they may.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from milter.audit.sql import (
    GENESIS,
    PURGE_SHAPE,
    SQLStore,
    fetched,
    records_table,
    sqlite_catch_up,
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


log = logging.getLogger("skot-milter")

# 1: records and guards; 2: the web view's search indexes, filled by a trigger on insert;
# 3: filled in batches by ``catch_up`` up to the watermark in ``records_indexed``
VERSION = 3
CATCH_UP_BATCH = 2000  # records per catch-up transaction (~20 ms: an append waits no longer)
WATERMARK = """
CREATE TABLE IF NOT EXISTS records_indexed (
    one INTEGER PRIMARY KEY CHECK (one = 1), upto INTEGER NOT NULL);
"""


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
        self._reopen = False
        self._lag_logged = False
        self._catch_up_sql = sqlite_catch_up()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = self._connect()
            # A reader without write permission maps -shm read-only: no SIGBUS to fear,
            # and its reads must not be refused.
            self._guard_reads = os.access(self.path, os.W_OK)
            self.version = self._migrate()
        except (sqlite3.Error, OSError) as exc:
            raise AuditUnavailable(f"cannot open audit store {self.path}: {exc}") from exc

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                             timeout=30.0)
        _set_wal(db, time.monotonic() + 30.0)
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(SCHEMA)
        return db

    def _check_files(self) -> None:
        """Refuse to touch the database while one of its files is not writable (see the
        module docstring: SIGBUS). A few microseconds: three ``access`` calls."""
        for suffix in ("", "-wal", "-shm"):
            name = f"{self.path}{suffix}"
            if not os.access(name, os.W_OK) and os.path.exists(name):
                raise AuditUnavailable(f"audit store file {name} is not writable")

    def _migrate(self) -> int:
        """Bring an older file up to VERSION (``PRAGMA user_version``), in one transaction:
        several processes opening the same file at once migrate it once."""
        version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
        if version >= VERSION:
            return version
        self._db.execute("BEGIN IMMEDIATE")
        try:
            version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
            # version 2's trigger copied every record so far; before it, none was
            indexed = "(SELECT coalesce(max(id), 0) FROM records)" if version == 2 else "0"
            if version < 2:
                for statement in _statements(sqlite_index_schema()):
                    self._db.execute(statement)
            if version < 3:
                self._db.execute("DROP TRIGGER IF EXISTS records_index")
                for statement in _statements(WATERMARK):
                    self._db.execute(statement)
                self._db.execute(f"INSERT INTO records_indexed (one, upto) VALUES (1, {indexed})")
            self._db.execute(f"PRAGMA user_version = {VERSION}")
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("ANALYZE")
        return VERSION

    def catch_up(self, batches: int = 0) -> int:
        """Copy the records appended since the last catch-up into the search indexes (at
        most ``batches`` batches of ``CATCH_UP_BATCH``; 0: all); how many were copied.

        Each batch is one ``BEGIN IMMEDIATE`` transaction that reads the watermark inside
        it, so two processes catching up at once copy (and count) each record once, and an
        append waits at most one batch. Nothing to do costs one read of two indexes."""
        if not self._pending():
            return 0
        done = rounds = 0
        while True:
            n: int = self._write(self._catch_up_in)
            done, rounds = done + n, rounds + 1
            if n < CATCH_UP_BATCH or rounds == batches:
                return done

    def _pending(self) -> bool:
        row = self._query("SELECT (SELECT upto FROM records_indexed) < "
                          "(SELECT coalesce(max(id), 0) FROM records)")
        return bool(row[0][0])

    def _catch_up_in(self, execute: Any) -> int:
        """One batch, inside the caller's write transaction."""
        lo = int(execute("SELECT upto FROM records_indexed"))
        hi, n = execute(f"SELECT max(id), count(*) FROM (SELECT id FROM records WHERE id > ? "
                        f"ORDER BY id LIMIT {CATCH_UP_BATCH})", (lo,), fetch="row")
        if not n:
            return 0
        span = {"lo": lo, "hi": int(hi)}
        for statement in self._catch_up_sql:
            self._db.execute(statement, span)
        execute("UPDATE records_indexed SET upto = ?", (hi,), fetch=False)
        return int(n)

    def _indexes_current(self) -> None:
        """Catch up before a read of the indexes. A reader that may not write (no write
        permission, a read-only file system) skips it, and its results lag behind by the
        records appended since the gateway's last catch-up (at most ~500 records, or 50 ms
        of idle time, while the gateway runs)."""
        if not self._guard_reads:
            self._lagging("the store is not writable for this process")
            return
        try:
            self.catch_up()
        except AuditUnavailable as exc:
            self._lagging(str(exc))

    def _lagging(self, why: str) -> None:
        if not self._lag_logged:
            self._lag_logged = True
            log.debug("audit search indexes not brought up to date (%s): searches may miss "
                      "the newest records", why)

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[Sequence[Any]]:
        with self._lock:
            if self._guard_reads:
                self._check_files()
            return self._db.execute(sql, tuple(args)).fetchall()

    def _execute(self, sql: str, args: Sequence[Any] = (), fetch: bool | str = True) -> Any:
        return fetched(self._db.execute(sql, tuple(args)), fetch)

    def _write(self, work: Any) -> Any:
        with self._lock:
            self._check_files()
            try:
                if self._reopen:
                    # Opened (or turned) read-only while the files were: SQLite keeps a
                    # connection read-only for good, so a new one once they are writable.
                    self._db.close()
                    self._db = self._connect()
                    self._reopen = False
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    result = work(self._execute)
                    self._db.execute("COMMIT")
                    return result
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
            except (sqlite3.Error, OSError) as exc:
                if isinstance(exc, sqlite3.Error) and "readonly" in str(exc):
                    self._reopen = True
                raise AuditUnavailable(f"audit write failed: {exc}") from exc

    def _head(self, execute: Any) -> tuple[int, str]:
        row = self._db.execute("SELECT seq, hash FROM records WHERE chain=? ORDER BY seq DESC "
                               "LIMIT 1", (self.chain,)).fetchone()
        return (int(row[0]), str(row[1])) if row else (0, GENESIS)

    def close(self) -> None:
        with self._lock:
            self._db.close()
