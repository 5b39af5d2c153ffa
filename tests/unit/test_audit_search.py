"""The search indexes (SQLite): filled in batches after the appends (schema version 3) and
always current for a reader, emptied by a purge (they repeat personal fields), and built for
records an older store already holds."""

from __future__ import annotations

import logging
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

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
    con.executescript("DROP TRIGGER records_unindex; DROP TABLE record_rules; "
                      "DROP TABLE record_people; DROP TABLE record_addresses; "
                      "DROP TABLE record_subjects; DROP TABLE record_hours; "
                      "DROP TABLE records_indexed; PRAGMA user_version = 0;")
    con.close()
    store = SQLiteStore(path, "n")
    assert store.version == 3
    assert refs(store, addresses=("teacher@school.example",)) == ["p1"]
    assert refs(store, rules=("A1.confidential-attachment",)) == ["q1"]
    store.append(AuditEvent(event="rejected", txid="p2", sender="theo@home.example",
                            rules=(PRIVATE,), action="reject"))
    assert refs(store, addresses=("theo@home.example",)) == ["p2", "p1"]
    assert store.verify().ok


def index_rows(path: Path) -> dict[str, int]:
    """Rows of each search index, read past the store (which would catch up first)."""
    con = sqlite3.connect(path)
    try:
        return {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in (
            "record_rules", "record_people", "record_addresses", "record_subjects",
            "record_hours")}
    finally:
        con.close()


def true_counts(path: Path) -> tuple[dict[str, int], int, int]:
    """What the indexes must say, from the records themselves: each address's records,
    all records by hour, and (record, address) rows."""
    con = sqlite3.connect(path)
    try:
        people = con.execute(
            "SELECT id, lower(sender) FROM records WHERE sender <> '' AND purged = 0 UNION "
            "SELECT r.id, lower(x.value) FROM records r, json_each(r.recipients) x "
            "WHERE r.purged = 0").fetchall()
        total = con.execute("SELECT count(*) FROM records").fetchone()[0]
    finally:
        con.close()
    per: dict[str, int] = {}
    for _, address in people:
        per[address] = per.get(address, 0) + 1
    return per, total, len(people)


def test_an_append_writes_no_index_rows_and_the_next_read_finds_it(tmp_path: Path) -> None:
    path = tmp_path / "a.sqlite3"
    store = SQLiteStore(path, "n")
    fill(store)
    assert set(index_rows(path).values()) == {0}  # the append is the record alone
    # a read right after the append finds it by person, rule and article
    assert [r.txid for r in store.records(Filters(person="theo@HOME.example"))] == ["p1"]
    assert index_rows(path)["record_people"] > 0
    store.append(AuditEvent(event="quarantined", txid="q2", sender="kim@school.example",
                            rules=(A1,), action="quarantine", subject="Cijfers"))
    assert [r.txid for r in store.records(Filters(rule="A1.confidential-attachment"))] == [
        "q1", "q2"]
    store.append(AuditEvent(event="rejected", txid="p3", sender="kim@school.example",
                            rules=(PRIVATE,), action="reject"))
    assert [r.txid for r in store.records(Filters(article="B1"))] == ["p1", "p3"]
    store.append(AuditEvent(event="rejected", txid="p4", sender="lou@school.example",
                            rules=(PRIVATE,), action="reject", subject="Rapport"))
    assert refs(store, subject="rapport") == ["p4"]
    assert search.addresses_like(store, "lou@") == ["lou@school.example"]
    assert store.catch_up() == 0  # the reads left nothing to do
    per, total, _ = true_counts(path)
    assert dict(store.select("SELECT address, n FROM record_addresses")) == {
        **per, "teacher@school.example": 3}  # named by the three B1 rules
    assert sum(n for *_, n in search.events_by_hour(store, "2000-01-01", "2999-01-01")) == total


CATCH_UP = """
import sys
from milter.audit import sqlite
sqlite.CATCH_UP_BATCH = 150  # many small transactions, for the two to interleave
store = sqlite.SQLiteStore(sys.argv[1], "n")
sys.stdin.readline()  # both started: go
print(store.catch_up())
"""


def test_two_processes_catching_up_at_once_count_each_record_once(tmp_path: Path) -> None:
    path = tmp_path / "a.sqlite3"
    store = SQLiteStore(path, "n")
    events = [AuditEvent(event="delivered", txid=f"t{i}", sender=f"s{i % 7}@school.example",
                         recipients=(f"r{i % 11}@x.example", "all@x.example"), rules=(A1,),
                         subject=f"Bericht {i}", action="accept") for i in range(1500)]
    store.append_many(events)
    procs = [subprocess.Popen([sys.executable, "-c", CATCH_UP, str(path)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    for p in procs:  # both are open (and waiting on stdin) before either begins
        assert p.stdin is not None
        p.stdin.write("\n")
        p.stdin.flush()
    done = [int(p.communicate(timeout=120)[0]) for p in procs]
    assert sum(done) == 1500  # each record copied by one of the two
    per, total, people = true_counts(path)
    assert dict(store.select("SELECT address, n FROM record_addresses")) == per
    assert per["all@x.example"] == 1500
    assert index_rows(path)["record_people"] == people
    assert index_rows(path)["record_rules"] == index_rows(path)["record_subjects"] == 1500
    assert sum(n for *_, n in search.events_by_hour(store, "2000-01-01", "2999-01-01")) == total


def test_a_version_2_store_keeps_its_indexes_and_copies_only_new_records(
        tmp_path: Path) -> None:
    path = tmp_path / "a.sqlite3"
    store = SQLiteStore(path, "n")
    fill(store)
    store.catch_up()
    store.close()
    before = dict(sqlite3.connect(path).execute("SELECT address, n FROM record_addresses"))
    # what version 2 left on disk: everything indexed, no watermark, and the trigger that
    # copied each record on insert (here its hour count, the statement of version 2)
    con = sqlite3.connect(path)
    con.executescript("""
        DROP TABLE records_indexed;
        CREATE TRIGGER records_index AFTER INSERT ON records BEGIN
            INSERT INTO record_hours (hour, event, n) VALUES (substr(NEW.ts, 1, 13), NEW.event, 1)
                ON CONFLICT (hour, event) DO UPDATE SET n = n + 1;
        END;
        PRAGMA user_version = 2;""")
    con.close()
    store = SQLiteStore(path, "n")
    assert store.version == 3
    assert store.catch_up() == 0  # the old records were indexed already
    assert dict(store.select("SELECT address, n FROM record_addresses")) == before
    store.append(AuditEvent(event="rejected", txid="p2", sender="theo@home.example",
                            rules=(PRIVATE,), action="reject"))
    con = sqlite3.connect(path)  # the trigger is gone: nothing copied yet
    assert con.execute("SELECT sum(n) FROM record_hours").fetchone()[0] == 4
    con.close()
    assert refs(store, addresses=("theo@home.example",)) == ["p2", "p1"]
    counts = dict(store.select("SELECT address, n FROM record_addresses"))
    assert counts["theo@home.example"] == before["theo@home.example"] + 1
    assert counts["sam@school.example"] == before["sam@school.example"]
    assert sum(n for *_, n in search.events_by_hour(store, "2000-01-01", "2999-01-01")) == 5
    assert store.verify().ok


def test_a_purge_before_the_catch_up_leaves_nothing_personal_in_the_indexes(
        tmp_path: Path) -> None:
    path = tmp_path / "a.sqlite3"
    store = SQLiteStore(path, "n")
    fill(store)
    store.catch_up()  # these four indexed, the next one not
    store.append(AuditEvent(event="rejected", txid="p9", sender="new@home.example",
                            recipients=("kid@x.example",), rules=(PRIVATE,), action="reject",
                            subject="Foto's"))
    store.purge("2999-01-01", set(), set(), "retention")
    assert store.catch_up() == 2  # p9 and the purge record
    con = sqlite3.connect(path)
    for table in ("record_rules", "record_people", "record_addresses", "record_subjects"):
        assert con.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == 0, table
    con.close()
    hours = search.events_by_hour(store, "2000-01-01", "2999-01-01")
    assert sum(n for *_, n in hours) == 6  # counts hold no personal data, and count all
    assert store.verify().ok


def test_the_gateway_audit_process_indexes_when_idle(tmp_path: Path) -> None:
    from milter.audit.isolated import IsolatedSQLiteStore

    path = tmp_path / "a.sqlite3"
    store = IsolatedSQLiteStore(path, "n")
    try:
        store.append_many([AuditEvent(event="delivered", txid=f"t{i}",
                                      sender="sam@school.example", action="accept")
                           for i in range(3)])
        deadline = time.monotonic() + 30  # the child's idle pause is 50 ms; a loaded machine
        while index_rows(path)["record_people"] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert dict(sqlite3.connect(path).execute(
            "SELECT address, n FROM record_addresses")) == {"sam@school.example": 3}
    finally:
        store.close()


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


def test_a_reader_that_may_not_write_answers_from_the_indexes_as_they_are(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "a.sqlite3"
    store = SQLiteStore(path, "n")
    fill(store)
    store.catch_up()
    store.append(AuditEvent(event="rejected", txid="p2", sender="theo@home.example",
                            rules=(PRIVATE,), action="reject"))
    store._guard_reads = False  # what a process without write permission on the files has
    with caplog.at_level(logging.DEBUG, logger="skot-milter"):
        assert refs(store, addresses=("theo@home.example",)) == ["p1"]  # p2 not indexed yet
        assert refs(store, article="B1") == ["p1"]
    assert [r.message for r in caplog.records].count(
        "audit search indexes not brought up to date (the store is not writable for this "
        "process): searches may miss the newest records") == 1  # once, not per search
    assert index_rows(path)["record_rules"] == 2  # nothing was written
