"""deploy/postgres/roles.sql on a real PostgreSQL: a node appends to its own chain and never
changes a record; the web view releases but holds nothing; the reader only reads."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import psycopg
import pytest

from milter.audit.postgres import PostgresStore
from milter.audit.store import AuditEvent, AuditUnavailable
from milter.notice_limits import PostgresRateLimiter
from milter.quarantine import QuarantineError
from milter.quarantine_pg import PostgresQuarantine
from tests.conftest import ROOT

ROLES = ("node1", "node2", "web", "reader")


def test_roles_sql_gives_each_role_what_it_needs_and_no_more(pg_url: str,
                                                             tmp_path: Path) -> None:
    PostgresStore(pg_url, "owner").close()  # `skot-milter audit migrate` as the owner
    tag = f"t{uuid.uuid4().hex[:8]}"
    sql = re.sub(r"\bskot_(node1|node2|web|reader)\b", rf"skot_{tag}_\1",
                 (ROOT / "deploy/postgres/roles.sql").read_text())
    base, db = pg_url.rsplit("/", 1)
    host = base.split("@", 1)[1]

    def url(role: str) -> str:
        return f"postgresql://skot_{tag}_{role}@{host}/{db}"

    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(sql)  # type: ignore[arg-type]  # a whole script, as psql -f runs it
    try:
        node1 = PostgresStore(url("node1"), "node1")
        assert node1.append(AuditEvent(event="viewed", txid="n1")).seq == 1
        node1.close()
        with pytest.raises(AuditUnavailable):  # not into another node's chain
            other = PostgresStore(url("node1"), "node2")
            try:
                other.append(AuditEvent(event="viewed", txid="forged"))
            finally:
                other.close()
        with psycopg.connect(url("node1"), autocommit=True) as conn:
            for statement in ("UPDATE records SET sender = 'x'", "DELETE FROM records",
                              "UPDATE chain_heads SET seq = 0 WHERE chain = 'node2'"):
                if "chain_heads" in statement:  # row-level security: no row to change
                    assert conn.execute(statement).rowcount == 0
                    continue
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(statement)
        held = PostgresQuarantine(url("node1"), "node1")
        qid = held.put("tx1", b"Subject: x\r\n\r\nhallo\r\n", {"rcpt_tos": ["o@example.org"]},
                       {"rules": []})
        held.close()
        limiter = PostgresRateLimiter(url("node1"), 1, "node1", tmp_path / "n.sqlite3")
        assert [limiter.admit("a@school.example", 5.0)[0] for _ in range(2)] == [True, False]
        limiter.close()
        with psycopg.connect(pg_url) as conn:  # counted in the database, not the fallback
            assert conn.execute("SELECT count(*) FROM notice_sent").fetchone() == (1,)

        web = PostgresQuarantine(url("web"), "web")
        with pytest.raises(QuarantineError):
            web.put("tx2", b"x", {}, {})
        entry = web.claim(qid, "web:bert")
        assert entry is not None and entry.raw.endswith(b"hallo\r\n")
        web.finish(entry)
        assert web.entries() == []
        web.close()
        web_audit = PostgresStore(url("web"), "web")
        web_audit.append(AuditEvent(event="viewed", actor="web:bert"))
        web_audit.close()

        reader = PostgresStore(url("reader"), "reader")
        result = reader.verify()
        assert result.ok and result.chains == {"node1": 1, "web": 1}
        with pytest.raises(AuditUnavailable):
            reader.append(AuditEvent(event="viewed"))
        reader.close()
    finally:
        names = ", ".join(f"skot_{tag}_{r}" for r in ROLES)
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(f"DROP OWNED BY {names}")  # type: ignore[arg-type]
        admin = base + "/postgres"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')  # type: ignore[arg-type]
            conn.execute(f"DROP ROLE IF EXISTS {names}")  # type: ignore[arg-type]
