"""Notice rate limits shared by every gateway node on one PostgreSQL database.

``notices.rate_per_hour`` is per person, not per node: with two relays a teacher would get
twice the notices if each node counted alone. With a PostgreSQL ``audit.url`` the notices
sent and the ones held back (summarised in the next one sent) are counted in that database,
per address under a transaction-scoped advisory lock, so two nodes admitting a notice for
the same address at once see each other's count.

When the database cannot be reached, a node counts in its local SQLite file as it does on
its own (``notices.RateLimiter``): notices keep flowing, at worst a few more than the limit
while the database is away.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from milter.config import Config
from milter.notices import HeldItem, RateLimiter

log = logging.getLogger("skot-milter.notices")



class PostgresRateLimiter(RateLimiter):
    """``RateLimiter`` with its counts in PostgreSQL; the local SQLite one is the fallback."""

    def __init__(self, url: str, per_hour: int, node: str, fallback: Path,
                 timeout: float = 3.0) -> None:
        from psycopg_pool import ConnectionPool

        super().__init__(fallback, per_hour)
        self.node = node
        self._migrated = False
        self._admits = 0
        self._pool = ConnectionPool(url, min_size=0, max_size=2, open=True, timeout=timeout,
                                    kwargs={"autocommit": True})

    def admit(self, address: str, now: float | None = None, item: HeldItem | None = None,
              addressee: Mapping[str, str] | None = None) -> tuple[bool, int]:
        """(send it?, notices held back since the last one sent), counted across nodes; a
        refused one is kept for the summary, whichever node sends it."""
        now = time.time() if now is None else now
        try:
            return self._admit(address.lower(), now, item, addressee)
        except Exception as exc:  # noqa: BLE001 - a notice must not wait for the database
            log.warning("notice limits: database unavailable, counting on this node: %s", exc)
            return super().admit(address, now, item, addressee)

    def _conn(self) -> Any:
        return self._pool.connection()

    def _migrate(self, conn: Any) -> None:
        if not self._migrated:
            from milter.audit.postgres import migrate

            migrate(conn)
            self._migrated = True

    def _admit(self, key: str, now: float, item: HeldItem | None,
               addressee: Mapping[str, str] | None) -> tuple[bool, int]:
        with self._conn() as conn:
            self._migrate(conn)
            with conn.transaction():
                # One address at a time across all nodes; other addresses do not wait.
                conn.execute("SELECT pg_advisory_xact_lock(7317002, hashtext(%s))", (key,))
                self._admits += 1
                if self._admits % 100 == 1:  # now and then, forget everyone's old sends
                    conn.execute("DELETE FROM notice_sent WHERE ts < %s", (now - self.window,))
                else:
                    conn.execute("DELETE FROM notice_sent WHERE address = %s AND ts < %s",
                                 (key, now - self.window))
                row: Any = conn.execute("SELECT count(*) FROM notice_sent WHERE address = %s",
                                        (key,)).fetchone()
                if int(row[0]) >= self.per_hour:
                    conn.execute("INSERT INTO notice_held (address, ts, item, addressee) "
                                 "VALUES (%s, %s, %s, %s)",
                                 (key, now, item.to_json() if item else "{}",
                                  json.dumps(dict(addressee or {}))))
                    return False, 0
                held: Any = conn.execute("WITH gone AS (DELETE FROM notice_held WHERE "
                                         "address = %s RETURNING 1) SELECT count(*) FROM gone",
                                         (key,)).fetchone()
                conn.execute("INSERT INTO notice_sent (address, ts, node) VALUES (%s, %s, %s)",
                             (key, now, self.node))
                return True, int(held[0])

    def next_due(self, now: float | None = None) -> float | None:
        now = time.time() if now is None else now
        try:
            with self._conn() as conn:
                self._migrate(conn)
                keys = [k for (k,) in conn.execute(
                    "SELECT DISTINCT address FROM notice_held").fetchall()]
                due: float | None = None
                for key in keys:
                    ts = [t for (t,) in conn.execute(
                        "SELECT ts FROM notice_sent WHERE address = %s AND ts >= %s ORDER BY ts",
                        (key, now - self.window)).fetchall()]
                    at = now if len(ts) < self.per_hour else \
                        ts[len(ts) - self.per_hour] + self.window
                    due = at if due is None else min(due, at)
                return due
        except Exception as exc:  # noqa: BLE001
            log.warning("notice limits: database unavailable: %s", exc)
            return super().next_due(now)

    def claim_due(self, now: float | None = None
                  ) -> list[tuple[str, dict[str, str], list[HeldItem]]]:
        """Summaries whose hour is over, each taken by one node (under the address lock)."""
        now = time.time() if now is None else now
        try:
            return self._claim_due(now) + super().claim_due(now)
        except Exception as exc:  # noqa: BLE001
            log.warning("notice limits: database unavailable: %s", exc)
            return super().claim_due(now)

    def _claim_due(self, now: float) -> list[tuple[str, dict[str, str], list[HeldItem]]]:
        out = []
        with self._conn() as conn:
            self._migrate(conn)
            keys = [k for (k,) in conn.execute(
                "SELECT DISTINCT address FROM notice_held").fetchall()]
            for key in keys:
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(7317002, hashtext(%s))", (key,))
                    conn.execute("DELETE FROM notice_sent WHERE address = %s AND ts < %s",
                                 (key, now - self.window))
                    row: Any = conn.execute("SELECT count(*) FROM notice_sent "
                                            "WHERE address = %s", (key,)).fetchone()
                    if int(row[0]) >= self.per_hour:
                        continue
                    rows = conn.execute("DELETE FROM notice_held WHERE address = %s "
                                        "RETURNING item, addressee, ts", (key,)).fetchall()
                    if not rows:
                        continue  # another node took them
                    conn.execute("INSERT INTO notice_sent (address, ts, node) "
                                 "VALUES (%s, %s, %s)", (key, now, self.node))
                    rows.sort(key=lambda r: r[2])
                    items = [HeldItem.from_json(i) for i, _, _ in rows if i != "{}"]
                    out.append((key, json.loads(rows[-1][1]), items))
        return out

    def close(self) -> None:
        self._pool.close()
        super().close()


def open_limiter(cfg: Config) -> RateLimiter:
    """The notice limiter of this configuration: shared in PostgreSQL when ``audit.url`` is
    PostgreSQL, else the node's own SQLite file in ``state_dir``."""
    local = cfg.state_dir / "notices.sqlite3"
    if cfg.audit_url.startswith(("postgresql://", "postgres://")):
        return PostgresRateLimiter(cfg.audit_url, cfg.notices.rate_per_hour, cfg.gateway.node,
                                   local)
    return RateLimiter(local, cfg.notices.rate_per_hour)
