"""The search indexes of schema version 2 (SQLite): filled on append, emptied by a purge
(they repeat personal fields), and built for records an older store already holds."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from milter.audit import search
from milter.audit.sqlite import SQLiteStore
from milter.audit.store import AuditEvent, Filters

PRIVATE = {"id": "B1.private-address", "article": "B1", "action": "reject",
           "mode": "enforce", "evidence": {"staff_member": "Teacher@School.example"}}
A1 = {"id": "A1.confidential-attachment", "article": "A1", "action": "quarantine",
      "mode": "enforce"}


def fill(store: SQLiteStore) -> None:
    store.append(AuditEvent(event="rejected", txid="p1", sender="theo@home.example",
                            recipients=("pupil1@leerling.school.example",), rules=(PRIVATE,),
                            action="reject", direction="inbound"))
    store.append(AuditEvent(event="quarantined", txid="q1", sender="Sam@School.example",
                            recipients=("a@x.example", "b@y.example"), rules=(A1,),
                            action="quarantine", direction="outbound", subject="Lijst 7B"))
    store.append(AuditEvent(event="intent", txid="d1", sender="sam@school.example",
                            recipients=("c@x.example",), action="accept"))
    store.append(AuditEvent(event="delivered", txid="d1", sender="sam@school.example",
                            recipients=("c@x.example",), action="accept"))


def refs(store: SQLiteStore, **q: object) -> list[str]:
    return [r.txid for r in search.messages(store, search.MessageQuery(**q))]  # type: ignore[arg-type]


def test_searches_use_the_copied_rules_and_people(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "a.sqlite3", "n")
    fill(store)
    assert refs(store) == ["d1", "q1", "p1"]  # one row per message, newest first
    assert refs(store, addresses=("teacher@school.example",)) == ["p1"]  # named by the rule
    assert refs(store, addresses=("b@y.example",)) == ["q1"]
    assert refs(store, addresses=()) == []
    assert refs(store, rules=("A1.confidential-attachment",)) == ["q1"]
    assert refs(store, article="B1") == ["p1"]
    assert refs(store, subject="lijst 7") == ["q1"]
    assert refs(store, subject="%") == []  # a LIKE wildcard typed is a character
    assert refs(store, violations_of="sam@school.example") == ["q1"]
    assert search.count(store, search.MessageQuery(actions=("accept",))) == 1
    assert set(search.addresses_like(store, "@SCHOOL.ex")) == {
        "sam@school.example", "teacher@school.example"}
    # the old Filters use the same indexes
    assert [r.txid for r in store.records(Filters(person="TEACHER@school.example"))] == ["p1"]
    assert [r.txid for r in store.records(Filters(rule="B1.private-address"))] == ["p1"]


def test_purge_removes_the_copies(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "a.sqlite3", "n")
    fill(store)
    store.purge("2999-01-01", set(), set(), "retention")
    assert search.addresses_like(store, "@") == []
    assert refs(store, addresses=("teacher@school.example",)) == []
    assert store.select("SELECT count(*) FROM record_rules")[0][0] == 0
    assert store.verify().ok


def test_an_older_store_is_migrated_and_backfilled(tmp_path: Path) -> None:
    path = tmp_path / "a.sqlite3"
    store = SQLiteStore(path, "n")
    fill(store)
    store.close()
    con = sqlite3.connect(path)  # back to what version 1 left on disk
    con.executescript("DROP TRIGGER records_index; DROP TRIGGER records_unindex; "
                      "DROP TABLE record_rules; DROP TABLE record_people; "
                      "PRAGMA user_version = 0;")
    con.close()
    store = SQLiteStore(path, "n")
    assert store.version == 2
    assert refs(store, addresses=("teacher@school.example",)) == ["p1"]
    assert refs(store, rules=("A1.confidential-attachment",)) == ["q1"]
    store.append(AuditEvent(event="rejected", txid="p2", sender="theo@home.example",
                            rules=(PRIVATE,), action="reject"))
    assert refs(store, addresses=("theo@home.example",)) == ["p2", "p1"]
    assert store.verify().ok


def test_hour_counts_equal_the_records(tmp_path: Path) -> None:
    from unittest import mock

    store = SQLiteStore(tmp_path / "a.sqlite3", "n")
    fill(store)
    with mock.patch("milter.audit.sql.now_iso", return_value="2026-03-02T23:30:00.000000Z"):
        store.append(AuditEvent(event="rejected", txid="late"))
        store.append(AuditEvent(event="rejected", txid="late2"))
    counts = search.events_by_hour(store, "2026-03-02T23:00:00", "2026-03-03T00:00:00")
    assert counts == [("2026-03-02T23", "rejected", 2)]
    everything = search.events_by_hour(store, "2000-01-01T00", "2999-01-01T00")
    assert sum(n for _, _, n in everything) == len(list(store.records()))
    store.purge("2999-01-01", set(), set(), "retention")  # counts hold no personal data
    assert sum(n for _, _, n in search.events_by_hour(
        store, "2000-01-01T00", "2999-01-01T00")) == len(list(store.records()))


def test_subject_copies_follow_decisions_and_purges(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "a.sqlite3", "n")
    fill(store)
    store.append(AuditEvent(event="viewed", subject="Lijst 7B"))  # not a decision
    assert refs(store, subject="LIJST 7b") == ["q1"]
    store.purge("2999-01-01", set(), set(), "retention")
    assert refs(store, subject="lijst") == []
    assert store.select("SELECT count(*) FROM record_subjects")[0][0] == 0


def test_distinct_addresses_count_their_records_and_go_with_the_last(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "a.sqlite3", "n")
    fill(store)
    counts = dict(store.select("SELECT address, n FROM record_addresses"))
    assert counts["sam@school.example"] == 3 and counts["teacher@school.example"] == 1
    store.append(AuditEvent(event="purge-test", sender="new@x.example"))
    store.purge("2999-01-01", {"new@x.example"}, set(), "retention")  # held: kept
    assert search.addresses_like(store, "@") == ["new@x.example"]
