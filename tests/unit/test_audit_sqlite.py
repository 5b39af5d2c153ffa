"""The SQLite audit store: append-only, hash-chained, verifiable; tampering is named."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from milter.audit.sqlite import SQLiteStore
from milter.audit.store import AuditEvent, Filters
from milter.cli import main
from tests.conftest import write_config


def fill(store: SQLiteStore, n: int = 5) -> None:
    for i in range(n):
        store.append(AuditEvent(event="rejected" if i % 2 else "delivered", txid=f"tx{i}",
                                sender=f"user{i % 2}@school.example", recipients=("a@b.example",),
                                rules=({"id": "B1.sender-domain", "article": "B1",
                                        "action": "reject", "mode": "enforce"},) if i % 2 else (),
                                action="reject" if i % 2 else "accept"))


def tamper(path: Path, sql: str) -> None:
    db = sqlite3.connect(path)
    db.execute("DROP TRIGGER IF EXISTS records_no_update")
    db.execute("DROP TRIGGER IF EXISTS records_no_delete")
    db.execute(sql)
    db.commit()
    db.close()


@pytest.fixture
def store(tmp_path: Path) -> SQLiteStore:
    s = SQLiteStore(tmp_path / "audit.sqlite3", "n1")
    fill(s)
    return s


def test_intact_chain_verifies(store: SQLiteStore) -> None:
    result = store.verify()
    assert result.ok and result.records == 5 and result.chains == {"n1": 5}


def test_wal_and_full_sync(store: SQLiteStore) -> None:
    assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_update_and_delete_refused_by_the_store(store: SQLiteStore) -> None:
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        store._db.execute("UPDATE records SET sender='x' WHERE id=1")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        store._db.execute("DELETE FROM records WHERE id=1")


@pytest.mark.parametrize("sql,seq,why", [
    ("UPDATE records SET sender='someone-else@school.example' WHERE seq=3", 3, "content"),
    ("UPDATE records SET action='accept' WHERE seq=2", 2, "content"),
    ("DELETE FROM records WHERE seq=2", 3, "sequence"),
    ("UPDATE records SET prev_hash='00' WHERE seq=4", 4, "prev_hash"),
])
def test_tampering_names_first_broken_record(store: SQLiteStore, tmp_path: Path, sql: str,
                                             seq: int, why: str) -> None:
    tamper(tmp_path / "audit.sqlite3", sql)
    result = store.verify()
    assert not result.ok
    assert f"seq={seq}" in result.problems[0] and why in result.problems[0]


def test_inserted_row_detected(store: SQLiteStore, tmp_path: Path) -> None:
    row = store._db.execute("SELECT * FROM records WHERE seq=2").fetchone()
    tamper(tmp_path / "audit.sqlite3", "UPDATE records SET seq = seq + 100 WHERE seq >= 3")
    tamper(tmp_path / "audit.sqlite3", "UPDATE records SET seq = seq - 99 WHERE seq >= 100")
    cols = [d[1] for d in store._db.execute("PRAGMA table_info(records)")]
    values = dict(zip(cols, row, strict=True))
    values.update(id=None, seq=3, txid="forged")
    db = sqlite3.connect(tmp_path / "audit.sqlite3")
    db.execute(f"INSERT INTO records ({','.join(cols)}) VALUES ({','.join('?' * len(cols))})",
               [values[c] for c in cols])
    db.commit()
    result = store.verify()
    assert not result.ok and "seq=3" in result.problems[0]


def test_filters(store: SQLiteStore) -> None:
    assert [r.txid for r in store.records(Filters(rule="B1.sender-domain"))] == ["tx1", "tx3"]
    assert len(list(store.records(Filters(sender="USER0@school.example")))) == 3
    assert len(list(store.records(Filters(person="a@b.example")))) == 5
    assert list(store.records(Filters(since="2999-01-01"))) == []
    assert len(list(store.records(Filters(until="2999-01-01", limit=2)))) == 2


def test_audit_cli_list_show_export_verify(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    cfg = str(write_config(tmp_path))
    fill(SQLiteStore(tmp_path / "audit.sqlite3", "test"))
    assert main(["audit", "checkpoint", "--config", cfg]) == 0  # as the gateway signs its head
    capsys.readouterr()
    assert main(["audit", "list", "--config", cfg, "--json", "--rule", "B1.sender-domain"]) == 0
    items = json.loads(capsys.readouterr().out)
    assert [i["txid"] for i in items] == ["tx1", "tx3"] and all("id" in i for i in items)
    assert main(["audit", "show", "--config", cfg, "tx3"]) == 0
    assert "B1.sender-domain" in capsys.readouterr().out
    assert main(["audit", "export", "--config", cfg, "--format", "csv", "--actor",
                 "auditor@school.example"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("id,chain,seq,ts,event")
    # 5 records, plus one for each time someone looked: list, show, and this export
    assert [line.split(",")[4] for line in lines[1:]] == ["delivered", "rejected"] * 2 + [
        "delivered", "viewed", "viewed", "exported"]
    assert "auditor@school.example" in lines[-1]
    assert main(["audit", "export", "--config", cfg, "--format", "jsonl", "--event",
                 "rejected"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 2
    assert main(["audit", "verify", "--config", cfg]) == 0
    assert "intact: 9 records" in capsys.readouterr().out
    tamper(tmp_path / "audit.sqlite3", "UPDATE records SET recipients='[]' WHERE seq=4")
    assert main(["audit", "verify", "--config", cfg]) == 1
    assert "seq=4" in capsys.readouterr().out


def test_verify_walks_the_store_in_pages(tmp_path: Path) -> None:
    """Tampering on a page boundary, across two chains, is still found and named."""
    for chain in ("a", "b"):
        fill(SQLiteStore(tmp_path / "audit.sqlite3", chain), 5)
    store = SQLiteStore(tmp_path / "audit.sqlite3", "a")
    store.page = 2
    assert [(r.chain, r.seq) for r in store.ordered()] == [
        (c, n) for c in ("a", "b") for n in range(1, 6)]
    assert store.verify().chains == {"a": 5, "b": 5}
    tamper(tmp_path / "audit.sqlite3", "DELETE FROM records WHERE chain = 'b' AND seq = 3")
    result = store.verify()
    assert not result.ok and result.problems == [
        "chain 'b' record id=9 seq=4: sequence jumps from 2 to 4 (records removed or inserted)"]


def test_a_store_opened_while_another_process_switches_it_to_wal_opens(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers of one gateway start together and open the same new SQLite file; when two
    switch it to WAL at once SQLite answers "database is locked" immediately, without its busy
    timeout (seen about once in 100 double starts: a worker died at start and
    test_operations found one worker instead of two). The store waits for it instead."""
    import milter.audit.sqlite as sqlite_mod

    real_connect = sqlite3.connect
    refusals = []

    class Racing:
        def __init__(self, db: sqlite3.Connection) -> None:
            self.db = db

        def execute(self, sql: str, *args: Any) -> Any:
            if sql.startswith("PRAGMA journal_mode") and len(refusals) < 3:
                refusals.append(sql)
                raise sqlite3.OperationalError("database is locked")
            return self.db.execute(sql, *args)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.db, name)

    monkeypatch.setattr(sqlite_mod.sqlite3, "connect",
                        lambda *a, **kw: Racing(real_connect(*a, **kw)))
    store = SQLiteStore(tmp_path / "audit.sqlite3", "test")
    assert len(refusals) == 3
    assert store._query("PRAGMA journal_mode")[0][0] == "wal"
