"""PostgreSQL audit backend for several gateway nodes sharing one store (psycopg 3 + pool).

One hash chain per node: each node appends under a row lock on its own ``chain_heads`` row
(``SELECT ... FOR UPDATE``), so nodes never contend and writers of one node never fork its
chain. The schema is created and migrated by the program (``skot-milter audit migrate``,
also at open). A commit returns only once PostgreSQL has made it durable.
"""

from __future__ import annotations

import contextlib
import functools
import json
import threading
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from milter.audit.sql import (
    COLUMNS,
    GENESIS,
    PURGE_SHAPE,
    SQLStore,
    encode,
    fetched,
    postgres_index_schema,
    records_table,
    seal_after,
)
from milter.audit.store import AuditEvent, AuditRecord, AuditUnavailable

_INSERTED = tuple(c for c in COLUMNS if c != "id")

MIGRATIONS = [
    # 1: the records, the chain heads, and the append-only guard
    records_table("BIGSERIAL PRIMARY KEY", "BIGINT") + f"""
    CREATE TABLE IF NOT EXISTS chain_heads (
        chain TEXT PRIMARY KEY, seq BIGINT NOT NULL, hash TEXT NOT NULL);
    CREATE OR REPLACE FUNCTION records_append_only() RETURNS trigger AS $$
    BEGIN
        IF TG_OP = 'UPDATE' AND {PURGE_SHAPE} THEN
            RETURN NEW;
        END IF;
        RAISE EXCEPTION 'audit records are append-only';
    END $$ LANGUAGE plpgsql;
    DROP TRIGGER IF EXISTS records_append_only ON records;
    CREATE TRIGGER records_append_only BEFORE UPDATE OR DELETE ON records
        FOR EACH ROW EXECUTE FUNCTION records_append_only();
    """,
    # 2: what several gateway nodes on one database share (issue 20): the quarantine (held
    # messages with their bytes; ``state`` is the claim that makes a release happen once),
    # the notice rate limits, and every node's signed checkpoints.
    """
    CREATE TABLE IF NOT EXISTS quarantine (
        id TEXT PRIMARY KEY,
        node TEXT NOT NULL,
        txid TEXT NOT NULL DEFAULT '',
        stored_at DOUBLE PRECISION NOT NULL,
        meta TEXT NOT NULL,
        message BYTEA NOT NULL,
        state TEXT NOT NULL DEFAULT 'held' CHECK (state IN ('held', 'releasing')),
        claimed_by TEXT NOT NULL DEFAULT '',
        claimed_at DOUBLE PRECISION NOT NULL DEFAULT 0);
    CREATE INDEX IF NOT EXISTS quarantine_stored_at ON quarantine (stored_at);
    CREATE TABLE IF NOT EXISTS notice_sent (
        address TEXT NOT NULL, ts DOUBLE PRECISION NOT NULL, node TEXT NOT NULL DEFAULT '');
    CREATE INDEX IF NOT EXISTS notice_sent_address ON notice_sent (address, ts);
    CREATE TABLE IF NOT EXISTS notice_held (
        address TEXT NOT NULL, ts DOUBLE PRECISION NOT NULL, item TEXT NOT NULL,
        addressee TEXT NOT NULL);
    CREATE INDEX IF NOT EXISTS notice_held_address ON notice_held (address, ts);
    CREATE TABLE IF NOT EXISTS checkpoints (
        chain TEXT NOT NULL,
        seq BIGINT NOT NULL,
        head TEXT NOT NULL,
        body TEXT NOT NULL,
        stored_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        PRIMARY KEY (chain, seq, head));
    """,
    # 3: the web view's search indexes (rules and people copied out of the JSON columns)
    postgres_index_schema(),
]


def migrate(conn: psycopg.Connection[Any]) -> int:
    """Apply pending migrations; return the schema version.

    A schema that is up to date is only read: gateway nodes may run as roles that cannot
    create or lock tables (``deploy/postgres/roles.sql``); the owner migrates."""
    row = conn.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()
    if row is not None and row[0]:
        current = conn.execute("SELECT max(version) FROM schema_version").fetchone()
        if current is not None and current[0] is not None and current[0] >= len(MIGRATIONS):
            return int(current[0])
    with conn.transaction():
        # Several gateway nodes may start at once: CREATE ... IF NOT EXISTS races in
        # PostgreSQL, so migrations run one node at a time.
        conn.execute("SELECT pg_advisory_xact_lock(7317001)")
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        conn.execute("LOCK TABLE schema_version IN EXCLUSIVE MODE")
        row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
        version = int(row[0]) if row and row[0] is not None else 0
        for n, sql in enumerate(MIGRATIONS[version:], start=version + 1):
            conn.execute(sql)
            conn.execute("INSERT INTO schema_version VALUES (%s)", (n,))
            version = n
    return version


@contextlib.contextmanager
def _unavailable() -> Iterator[None]:
    """Any failure to write (the server, the pool's time-out) is AuditUnavailable: the front
    tempfails."""
    try:
        yield
    except AuditUnavailable:
        raise
    except Exception as exc:
        raise AuditUnavailable(f"audit write failed: {exc}") from exc


def _executor(conn: psycopg.Connection[Any]) -> Any:
    """The ``execute(sql, args, fetch)`` the shared SQL code calls, on this connection."""

    def execute(sql: str, args: Sequence[Any] = (), fetch: bool | str = True) -> Any:
        return fetched(conn.execute(sql.replace("?", "%s"), tuple(args)), fetch)

    return execute


def _durable(conn: psycopg.Connection[Any]) -> None:
    """A commit must survive a power cut before we answer 250, whatever the database's
    default says (``synchronous_commit = off`` acknowledges before the WAL is flushed)."""
    conn.execute("SET synchronous_commit = on")


class PostgresStore(SQLStore):
    placeholder = "%s"

    def __init__(self, url: str, chain: str, pool_size: int = 4) -> None:
        self.url = url
        self.chain = chain
        self._append_lock = threading.Lock()
        self._known_head: tuple[int, str] | None = None  # as of our last write
        try:
            self._pool = ConnectionPool(url, min_size=1, max_size=pool_size, open=True,
                                        timeout=10, kwargs={"autocommit": True},
                                        configure=_durable)
            with self._pool.connection() as conn:
                self.version = migrate(conn)
        except (psycopg.Error, Exception) as exc:
            raise AuditUnavailable(f"cannot open audit store: {exc}") from exc

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[Sequence[Any]]:
        try:
            with self._pool.connection() as conn:
                return list(conn.execute(sql, tuple(args)).fetchall())
        except psycopg.Error as exc:
            raise AuditUnavailable(f"audit read failed: {exc}") from exc

    def _write(self, work: Any) -> Any:
        # The connection is bound here, per call: one store serves many threads (the web
        # view's request threads), and each transaction must keep its own.
        with _unavailable(), self._pool.connection() as conn, conn.transaction():
            return work(_executor(conn))

    def append_many(self, events: list[AuditEvent]) -> list[AuditRecord]:
        """Append in one statement, one round trip, committed on its own (autocommit).

        The records are sealed against the head this store last wrote or read; the
        statement moves the head only if it is still that one (compare and set) and
        inserts only if the head moved. When another writer of the chain (another worker
        process of this node) got there first, nothing is written: read the head, seal
        again. A locked BEGIN/SELECT/INSERT/UPDATE/COMMIT took six waits for the server
        per record and made this store half as fast as SQLite for one client."""
        if not events:
            return []
        with self._append_lock:
            try:
                with _unavailable(), self._pool.connection() as conn:
                    for _ in range(50):
                        # (autocommit: the head's row lock ends with its statement)
                        head = self._known_head or self._head(_executor(conn))
                        records = seal_after(head, self.chain, events)
                        rows = conn.execute(self._insert_sql(len(records)), self._params(
                            records, head)).fetchall()
                        if rows:
                            self._known_head = (records[-1].seq, records[-1].hash)
                            ids = {int(seq): int(i) for i, seq in rows}
                            return [replace(r, id=ids[r.seq]) for r in records]
                        self._known_head = None  # another writer moved it: read it again
            except AuditUnavailable:
                self._known_head = None
                raise
        raise AuditUnavailable("audit write failed: the chain head kept moving")

    @functools.cache  # noqa: B019 - one entry per batch size, for the store's lifetime
    def _insert_sql(self, n: int) -> str:
        cols = ", ".join(_INSERTED)
        row = "(" + ", ".join(["%s"] * len(_INSERTED)) + ")"
        return (f"WITH head AS (UPDATE chain_heads SET seq = %s, hash = %s "
                f"WHERE chain = %s AND seq = %s AND hash = %s RETURNING 1), "
                f"new AS (INSERT INTO records ({cols}) SELECT * FROM (VALUES "
                f"{', '.join([row] * n)}) AS v WHERE EXISTS (SELECT 1 FROM head) "
                f"RETURNING id, seq) SELECT id, seq FROM new")

    def _params(self, records: list[AuditRecord], head: tuple[int, str]) -> tuple[Any, ...]:
        last = records[-1]
        values = [encoded[c] for r in records for encoded in (encode(r),) for c in _INSERTED]
        return (last.seq, last.hash, self.chain, head[0], head[1], *values)

    def _head(self, execute: Any) -> tuple[int, str]:
        execute("INSERT INTO chain_heads (chain, seq, hash) VALUES (?, 0, ?) "
                "ON CONFLICT (chain) DO NOTHING", (self.chain, GENESIS), fetch=False)
        row = execute("SELECT seq, hash FROM chain_heads WHERE chain = ? FOR UPDATE",
                      (self.chain,), fetch="row")
        assert row is not None
        return int(row[0]), str(row[1])

    def _set_head(self, execute: Any, seq: int, head: str) -> None:
        execute("UPDATE chain_heads SET seq = ?, hash = ? WHERE chain = ?",
                (seq, head, self.chain), fetch=False)

    def _check_heads(self, counts: dict[str, int]) -> list[str]:
        """The last record of each chain must be the recorded head: catches a removed tail."""
        problems = []
        for chain, seq, head in self._query("SELECT chain, seq, hash FROM chain_heads"):
            last = self._query("SELECT seq, hash FROM records WHERE chain = %s ORDER BY seq "
                               "DESC LIMIT 1", (chain,))
            if int(seq) == 0 and not last:
                continue
            if not last or int(last[0][0]) != int(seq) or last[0][1] != head:
                problems.append(f"chain {chain!r}: head says seq={seq} but the last record is "
                                f"seq={last[0][0] if last else 0} (records removed at the end)")
        return problems

    def save_checkpoint(self, cp: dict[str, Any]) -> None:
        """Keep a signed checkpoint in the database too, where every node's verification
        finds it (the exported file stays the copy a database owner cannot touch)."""
        with _unavailable(), self._pool.connection() as conn:
            conn.execute("INSERT INTO checkpoints (chain, seq, head, body) VALUES "
                         "(%s, %s, %s, %s) ON CONFLICT DO NOTHING",
                         (cp["chain"], cp["seq"], cp["head"], json.dumps(cp, sort_keys=True)))

    def checkpoints(self) -> list[Any]:
        """Every node's checkpoints kept here, as parsed JSON (shape not yet checked)."""
        out: list[Any] = []
        for (body,) in self._query("SELECT body FROM checkpoints ORDER BY chain, seq"):
            try:
                out.append(json.loads(body))
            except ValueError:
                out.append(body)  # reported as malformed by the verifier
        return out

    def close(self) -> None:
        self._pool.close()
