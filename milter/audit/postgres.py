"""PostgreSQL audit backend for several gateway nodes sharing one store (psycopg 3 + pool).

One hash chain per node: each node appends under a row lock on its own ``chain_heads`` row
(``SELECT ... FOR UPDATE``), so nodes never contend and writers of one node never fork its
chain. The schema is created and migrated by the program (``skot-milter audit migrate``,
also at open). A commit returns only once PostgreSQL has made it durable.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from milter.audit.sql import GENESIS, PURGE_SHAPE, SQLStore, records_table
from milter.audit.store import AuditUnavailable

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
]


def migrate(conn: psycopg.Connection[Any]) -> int:
    """Apply pending migrations; return the schema version."""
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


def _durable(conn: psycopg.Connection[Any]) -> None:
    """A commit must survive a power cut before we answer 250, whatever the database's
    default says (``synchronous_commit = off`` acknowledges before the WAL is flushed)."""
    conn.execute("SET synchronous_commit = on")


class PostgresStore(SQLStore):
    placeholder = "%s"

    def __init__(self, url: str, chain: str, pool_size: int = 4) -> None:
        self.url = url
        self.chain = chain
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
        try:
            with self._pool.connection() as conn, conn.transaction():
                # The connection is bound here, per call: one store serves many threads (the
                # web view's request threads), and each transaction must keep its own.
                def execute(sql: str, args: Sequence[Any] = (), fetch: bool | str = True) -> Any:
                    cur = conn.execute(sql.replace("?", "%s"), tuple(args))
                    if fetch == "all":
                        return cur.fetchall()
                    if fetch == "row":
                        return cur.fetchone()
                    if fetch:
                        row = cur.fetchone()
                        return row[0] if row else None
                    return None

                return work(execute)
        except psycopg.Error as exc:
            raise AuditUnavailable(f"audit write failed: {exc}") from exc
        except Exception as exc:  # pool time-out and the like: the front must tempfail
            if isinstance(exc, AuditUnavailable):
                raise
            raise AuditUnavailable(f"audit write failed: {exc}") from exc

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

    def close(self) -> None:
        self._pool.close()
