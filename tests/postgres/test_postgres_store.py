"""The PostgreSQL audit store: same records and commands as SQLite, one chain per node."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import psycopg
import pytest

from milter.audit.postgres import PostgresStore
from milter.audit.store import AuditEvent, Filters, open_store
from milter.cli import main
from tests.conftest import ROOT, make_message, write_config


def fill(store: PostgresStore, n: int = 5, who: str = "someone@school.example") -> None:
    for i in range(n):
        store.append(AuditEvent(event="rejected", txid=f"tx{i}", sender=who,
                                recipients=("ouder@example.org",), action="reject",
                                rules=({"id": "B1.sender-domain", "article": "B1",
                                        "action": "reject", "mode": "enforce"},)))


def tamper(url: str, sql: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ALTER TABLE records DISABLE TRIGGER records_append_only")
        conn.execute(sql)  # the database owner can do anything; the chain tells
        conn.execute("ALTER TABLE records ENABLE TRIGGER records_append_only")


def test_append_list_verify(pg_url: str) -> None:
    store = open_store(pg_url, "node-a")
    assert isinstance(store, PostgresStore)
    fill(store)
    assert [r.txid for r in store.records(Filters(rule="B1.sender-domain"))] == [
        f"tx{i}" for i in range(5)]
    result = store.verify()
    assert result.ok and result.chains == {"node-a": 5}
    store.close()


def test_updates_and_deletes_refused(pg_url: str) -> None:
    store = PostgresStore(pg_url, "n")
    fill(store, 2)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
            conn.execute("UPDATE records SET sender = 'x' WHERE seq = 1")
        with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
            conn.execute("DELETE FROM records WHERE seq = 1")
    store.close()


@pytest.mark.parametrize("sql,needle", [
    ("UPDATE records SET recipients = '[]' WHERE seq = 3", "seq=3"),
    ("DELETE FROM records WHERE seq = 2", "seq=3"),
    ("DELETE FROM records WHERE seq = 5", "records removed at the end"),
    ("UPDATE records SET purged = 1, sender = '' WHERE seq = 4", "seq=4"),
])
def test_tampering_detected_and_named(pg_url: str, sql: str, needle: str) -> None:
    store = PostgresStore(pg_url, "n")
    fill(store)
    tamper(pg_url, sql)
    result = store.verify()
    assert not result.ok and needle in " ".join(result.problems)
    store.close()


def test_inserted_row_detected(pg_url: str) -> None:
    store = PostgresStore(pg_url, "n")
    fill(store)
    tamper(pg_url, "UPDATE records SET seq = seq + 100 WHERE seq >= 3")
    tamper(pg_url, "UPDATE records SET seq = seq - 99 WHERE seq >= 100")
    tamper(pg_url, "INSERT INTO records (chain, seq, ts, event, prev_hash, personal_hash, "
                   "content_hash, hash) SELECT chain, 3, ts, 'delivered', prev_hash, "
                   "personal_hash, content_hash, hash FROM records WHERE seq = 2")
    result = store.verify()
    assert not result.ok and "seq=3" in result.problems[0]
    store.close()


WRITER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {root!r})
    from milter.audit.postgres import PostgresStore
    from milter.audit.store import AuditEvent
    store = PostgresStore({url!r}, sys.argv[1])
    for i in range(int(sys.argv[2])):
        store.append(AuditEvent(event="delivered", txid=f"{{sys.argv[1]}}-{{i}}",
                                sender="someone@school.example"))
    store.close()
""")


def test_two_gateway_processes_write_concurrently(pg_url: str, tmp_path: Path) -> None:
    script = tmp_path / "writer.py"
    script.write_text(WRITER.format(root=str(ROOT), url=pg_url))
    # two nodes, plus a second writer on node-1: nodes never contend, one node never forks
    procs = [subprocess.Popen([sys.executable, str(script), node, "60"])
             for node in ("node-1", "node-2", "node-1")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    store = PostgresStore(pg_url, "auditor")
    result = store.verify()
    assert result.ok, result.problems
    assert result.chains == {"node-1": 120, "node-2": 60}
    store.close()


def test_purge_keeps_chain_verifying(pg_url: str) -> None:
    store = PostgresStore(pg_url, "n")
    fill(store, 3, who="old@school.example")
    fill(store, 2, who="held@school.example")
    purged = store.purge("2999-01-01", held_people={"held@school.example"}, held_records=set(),
                         actor="retention")
    assert purged == 3
    rows = list(store.records())
    assert [r.sender for r in rows[:5]] == ["", "", "", "held@school.example",
                                            "held@school.example"]
    assert rows[0].purged == 1 and rows[0].hash and rows[-1].event == "purge"
    result = store.verify()
    assert result.ok, result.problems
    store.close()


def test_gateway_audits_to_postgres(pg_url: str, tmp_path: Path, capsys: Any) -> None:
    from tests.e2e.conftest import GatewayThread

    cfg = write_config(tmp_path)
    cfg.write_text(cfg.read_text().replace('url = "sqlite:///audit.sqlite3"', f'url = "{pg_url}"'))
    gw = GatewayThread(cfg)
    try:
        with gw.client() as c:
            c.sendmail("someone@school.example", ["ouder@example.org"], make_message())
    finally:
        gw.stop()
    assert main(["audit", "verify", "--config", str(cfg)]) == 0
    assert "intact: 2 records (chains test: 2)" in capsys.readouterr().out
    assert main(["audit", "migrate", "--config", str(cfg)]) == 0


def test_threads_sharing_one_store_never_fork_the_chain(pg_url: str) -> None:
    """The web view appends from many request threads through one store (and one pool)."""
    import threading

    store = PostgresStore(pg_url, "n", pool_size=4)
    errors: list[BaseException] = []

    def writer(k: int) -> None:
        try:
            for i in range(15):
                store.append(AuditEvent(event="viewed", txid=f"w{k}-{i}", actor=f"web:{k}"))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    result = store.verify()
    assert result.ok, result.problems
    assert result.chains == {"n": 120}
    store.close()


def test_commits_are_durable_even_when_the_database_default_is_not(pg_url: str) -> None:
    name = pg_url.rsplit("/", 1)[1]
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{name}" SET synchronous_commit = off')
    store = PostgresStore(pg_url, "n")
    fill(store, 1)
    with store._pool.connection() as conn:
        row = conn.execute("SHOW synchronous_commit").fetchone()
    assert row is not None and row[0] == "on"
    store.close()


def test_failed_purge_leaves_nothing_half_done(pg_url: str, monkeypatch: Any) -> None:
    from milter.audit import sql

    store = PostgresStore(pg_url, "n")
    fill(store, 3)

    def broken_seal(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("disk full while sealing the purge record")

    monkeypatch.setattr(sql, "seal", broken_seal)
    with pytest.raises(Exception, match="disk full"):
        store.purge("2999-01-01", held_people=set(), held_records=set(), actor="retention")
    monkeypatch.undo()
    assert [r.purged for r in store.records()] == [0, 0, 0]
    assert store.verify().ok
    store.close()


def test_a_writer_whose_head_is_stale_seals_again(pg_url: str) -> None:
    """Two writers of one chain (two worker processes of a node): each appends in one
    statement against the head it knows; the one that is behind writes nothing, reads the
    head, and appends after the other."""
    a, b = PostgresStore(pg_url, "node"), PostgresStore(pg_url, "node")
    first = a.append(AuditEvent(event="viewed", txid="a1"))
    second = b.append(AuditEvent(event="viewed", txid="b1"))
    third = a.append(AuditEvent(event="viewed", txid="a2"))   # a still knows seq 1 as head
    assert (first.seq, second.seq, third.seq) == (1, 2, 3)
    assert third.prev_hash == second.hash
    result = a.verify()
    assert result.ok, result.problems
    assert [r.txid for r in a.records()] == ["a1", "b1", "a2"]
    a.close()
    b.close()


def test_search_indexes_migrate_fill_and_purge(pg_url: str, monkeypatch: Any) -> None:
    from milter.audit import postgres, search

    monkeypatch.setattr(postgres, "MIGRATIONS", postgres.MIGRATIONS[:1])
    old = PostgresStore(pg_url, "n1")  # a store of schema version 1, with records
    private = {"id": "B1.private-address", "article": "B1", "action": "reject",
               "mode": "enforce", "evidence": {"staff_member": "teacher@school.example"}}
    old.append(AuditEvent(event="rejected", txid="p1", sender="theo@home.example",
                          recipients=("x@school.example",), rules=(private,),
                          action="reject"))
    old.close()
    monkeypatch.undo()
    store = PostgresStore(pg_url, "n1")
    assert store.version == len(postgres.MIGRATIONS)  # 3: the search indexes (after 2)
    store.append(AuditEvent(event="quarantined", txid="q1", sender="Sam@school.example",
                            recipients=("a@x.example",), action="quarantine",
                            rules=({"id": "A1.confidential-attachment", "article": "A1"},)))

    def refs(**q: Any) -> list[str]:
        return [r.txid for r in search.messages(store, search.MessageQuery(**q))]

    assert refs(addresses=("teacher@school.example",)) == ["p1"]  # backfilled
    assert refs(addresses=("sam@school.example",)) == ["q1"]      # by the trigger
    assert refs(article="A1") == ["q1"] and refs() == ["q1", "p1"]
    assert search.addresses_like(store, "HOME") == ["theo@home.example"]
    store.purge("2999-01-01", set(), set(), "retention")
    assert search.addresses_like(store, "@") == [] and refs(article="A1") == []
    assert store.verify().ok
    store.close()
