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

import logging
import time
from pathlib import Path
from typing import Any

from milter.config import Config
from milter.notices import RateLimiter

log = logging.getLogger("skot-milter.notices")

WINDOW = 3600.0  # seconds: notices.rate_per_hour


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

    def admit(self, address: str, now: float | None = None) -> tuple[bool, int]:
        """(send it?, notices held back since the last one sent), counted across nodes."""
        now = time.time() if now is None else now
        try:
            return self._admit(address.lower(), now)
        except Exception as exc:  # noqa: BLE001 - a notice must not wait for the database
            log.warning("notice limits: database unavailable, counting on this node: %s", exc)
            return super().admit(address, now)

    def _admit(self, key: str, now: float) -> tuple[bool, int]:
        with self._pool.connection() as conn:
            if not self._migrated:
                from milter.audit.postgres import migrate

                migrate(conn)
                self._migrated = True
            with conn.transaction():
                # One address at a time across all nodes; other addresses do not wait.
                conn.execute("SELECT pg_advisory_xact_lock(7317002, hashtext(%s))", (key,))
                self._admits += 1
                if self._admits % 100 == 1:  # now and then, forget everyone's old sends
                    conn.execute("DELETE FROM notice_sent WHERE ts < %s", (now - WINDOW,))
                else:
                    conn.execute("DELETE FROM notice_sent WHERE address = %s AND ts < %s",
                                 (key, now - WINDOW))
                row: Any = conn.execute("SELECT count(*) FROM notice_sent WHERE address = %s",
                                        (key,)).fetchone()
                if int(row[0]) >= self.per_hour:
                    conn.execute("INSERT INTO notice_held (address, n) VALUES (%s, 1) "
                                 "ON CONFLICT (address) DO UPDATE SET n = notice_held.n + 1",
                                 (key,))
                    return False, 0
                held = conn.execute("DELETE FROM notice_held WHERE address = %s RETURNING n",
                                    (key,)).fetchone()
                conn.execute("INSERT INTO notice_sent (address, ts, node) VALUES (%s, %s, %s)",
                             (key, now, self.node))
                return True, int(held[0]) if held else 0

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
