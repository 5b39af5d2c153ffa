"""What the SQL backends share: columns, JSON encoding, filters, purge and verification.

SQL is written with ``?`` placeholders; a backend that uses another style converts them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import fields, replace
from datetime import UTC, datetime
from typing import Any

from milter.audit.store import (
    EMPTY_PERSONAL,
    GENESIS,
    OUTCOMES,
    AuditEvent,
    AuditRecord,
    Filters,
    VerifyResult,
    seal,
    verify_rows,
)

COLUMNS = ("id", "chain", "seq", "ts", "event", "txid", "message_id", "client", "direction",
           "sender", "recipients", "auth_user", "rules", "action", "reply", "evidence",
           "subject", "actor", "prev_hash", "personal_hash", "content_hash", "hash", "purged")
JSON_COLUMNS = {"recipients", "rules", "evidence"}
SELECT = f"SELECT {', '.join(COLUMNS)} FROM records"


def records_table(id_column: str, integer: str) -> str:
    """The records table and its indexes, in the SQL both backends share."""
    return f"""
CREATE TABLE IF NOT EXISTS records (
    id {id_column},
    chain TEXT NOT NULL,
    seq {integer} NOT NULL,
    ts TEXT NOT NULL,
    event TEXT NOT NULL,
    txid TEXT NOT NULL DEFAULT '',
    message_id TEXT NOT NULL DEFAULT '',
    client TEXT NOT NULL DEFAULT '',
    direction TEXT NOT NULL DEFAULT '',
    sender TEXT NOT NULL DEFAULT '',
    recipients TEXT NOT NULL DEFAULT '[]',
    auth_user TEXT NOT NULL DEFAULT '',
    rules TEXT NOT NULL DEFAULT '[]',
    action TEXT NOT NULL DEFAULT '',
    reply TEXT NOT NULL DEFAULT '',
    evidence TEXT NOT NULL DEFAULT '{{}}',
    subject TEXT NOT NULL DEFAULT '',
    actor TEXT NOT NULL DEFAULT '',
    prev_hash TEXT NOT NULL,
    personal_hash TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    hash TEXT NOT NULL,
    purged INTEGER NOT NULL DEFAULT 0,
    UNIQUE (chain, seq)
);
CREATE INDEX IF NOT EXISTS records_ts ON records (ts);
CREATE INDEX IF NOT EXISTS records_txid ON records (txid);
CREATE INDEX IF NOT EXISTS records_sender ON records (sender);
"""


DECISIONS = "(" + ", ".join(f"'{o}'" for o in OUTCOMES) + ")"  # the events that end a message


# Search indexes for the web view (schema version 2). Rules and people live in JSON columns
# that no index reaches, so each record's rules and the addresses it concerns are copied into
# narrow tables: record_rules, record_people, the distinct addresses with how many records
# name each (a search by part of an address scans only those), and the decisions' subjects
# lower-cased (free text without reading the wide rows). A purge deletes the copies with the
# personal fields they repeat. record_hours counts records per UTC hour and event (no
# personal data; the dashboard reads a year of it without walking a million rows). All are
# derived data outside the hash chain, never trusted over the records. PostgreSQL copies each
# record by a trigger on insert; SQLite (schema version 3) copies them in batches after the
# appends (``sqlite_catch_up``), off the commit that makes a record durable.
INDEX_TABLES = """
CREATE TABLE IF NOT EXISTS record_rules (
    record_id {integer} NOT NULL, ts TEXT NOT NULL, event TEXT NOT NULL,
    sender TEXT NOT NULL, rule TEXT NOT NULL, article TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS record_rules_rule ON record_rules (rule, ts, event, record_id);
CREATE INDEX IF NOT EXISTS record_rules_article ON record_rules (article, ts, event, record_id);
CREATE INDEX IF NOT EXISTS record_rules_ts ON record_rules (ts, event, rule, article, sender,
    record_id);
CREATE INDEX IF NOT EXISTS record_rules_record ON record_rules (record_id);
CREATE TABLE IF NOT EXISTS record_people (record_id {integer} NOT NULL, address TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS record_people_address ON record_people (address, record_id);
CREATE INDEX IF NOT EXISTS record_people_record ON record_people (record_id);
CREATE TABLE IF NOT EXISTS record_addresses (address TEXT PRIMARY KEY, n {integer} NOT NULL);
CREATE TABLE IF NOT EXISTS record_subjects (
    record_id {integer} PRIMARY KEY, subject TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS record_hours (
    hour TEXT NOT NULL, event TEXT NOT NULL, n {integer} NOT NULL, PRIMARY KEY (hour, event));
CREATE INDEX IF NOT EXISTS records_event_id ON records (event, id);
CREATE INDEX IF NOT EXISTS records_facets ON records (event, action, direction, ts);
CREATE INDEX IF NOT EXISTS records_ts_event ON records (ts, event);
"""


# A purged record's copies go with its personal fields (both backends' purge triggers).
UNINDEX = """DELETE FROM record_rules WHERE record_id = NEW.id;
    UPDATE record_addresses SET n = n - 1
        WHERE address IN (SELECT address FROM record_people WHERE record_id = NEW.id);
    DELETE FROM record_addresses WHERE n <= 0
        AND address IN (SELECT address FROM record_people WHERE record_id = NEW.id);
    DELETE FROM record_people WHERE record_id = NEW.id;
    DELETE FROM record_subjects WHERE record_id = NEW.id;
"""


def _rules_rows(row: str, each: str, get: str) -> str:
    """SELECT of one record's (id, ts, event, sender, rule, article) rows."""
    return (f"SELECT {row}.id, {row}.ts, {row}.event, lower({row}.sender), "
            f"coalesce({get.format(v='j', k='id')}, ''), "
            f"coalesce({get.format(v='j', k='article')}, '') FROM {each.format(c='rules')} j")


_SQLITE_EACH = "json_each({{row}}.{c})"
_SQLITE_GET = "json_extract({v}.value, '$.{k}')"


def sqlite_index_schema() -> str:
    """The version-2 tables and the purge's trigger; the records are copied by
    ``sqlite_catch_up`` (a watermark of schema version 3 says how far)."""
    return INDEX_TABLES.format(integer="INTEGER") + f"""
CREATE TRIGGER IF NOT EXISTS records_unindex AFTER UPDATE OF purged ON records
WHEN NEW.purged = 1 BEGIN
{UNINDEX}END;
"""


def sqlite_catch_up() -> list[str]:
    """Statements copying the records with ``:lo < id <= :hi`` into the search indexes,
    as version 2's trigger on insert did one by one: rules, people and subjects of records
    not purged (a record purged before it was copied leaves nothing personal behind), the
    hour counts of all, each distinct address's count raised by its records in the range."""
    rules = _rules_rows("r", _SQLITE_EACH.replace("{{row}}", "r"), _SQLITE_GET).replace(
        "FROM json_each", "FROM records r, json_each")
    span = "r.id > :lo AND r.id <= :hi"
    return [
        f"INSERT INTO record_rules (record_id, ts, event, sender, rule, article) {rules} "
        f"WHERE {span} AND r.purged = 0",
        f"""INSERT INTO record_people (record_id, address)
    SELECT id, a FROM (
        SELECT r.id, lower(r.sender) AS a FROM records r WHERE {span} AND r.purged = 0
        UNION SELECT r.id, lower(r.auth_user) FROM records r WHERE {span} AND r.purged = 0
        UNION SELECT r.id, lower(x.value) FROM records r, json_each(r.recipients) x
            WHERE {span} AND r.purged = 0
        UNION SELECT r.id, lower(json_extract(j.value, '$.evidence.staff_member'))
            FROM records r, json_each(r.rules) j WHERE {span} AND r.purged = 0)
    WHERE a IS NOT NULL AND a <> ''""",
        """INSERT INTO record_addresses (address, n)
    SELECT address, count(*) FROM record_people WHERE record_id > :lo AND record_id <= :hi
    GROUP BY address
    ON CONFLICT (address) DO UPDATE SET n = n + excluded.n""",
        f"""INSERT INTO record_hours (hour, event, n)
    SELECT substr(r.ts, 1, 13), r.event, count(*) FROM records r WHERE {span}
    GROUP BY substr(r.ts, 1, 13), r.event
    ON CONFLICT (hour, event) DO UPDATE SET n = n + excluded.n""",
        f"""INSERT INTO record_subjects (record_id, subject)
    SELECT r.id, lower(r.subject) FROM records r WHERE {span} AND r.subject <> ''
        AND r.purged = 0 AND r.event IN {DECISIONS}""",
    ]


def postgres_index_schema() -> str:
    """The version-2 migration for PostgreSQL: tables, trigger function, backfill."""
    each = "jsonb_array_elements(CASE WHEN jsonb_typeof({{row}}.{c}::jsonb) = 'array' " \
           "THEN {{row}}.{c}::jsonb ELSE '[]'::jsonb END)"
    text_each = each.replace("jsonb_array_elements(", "jsonb_array_elements_text(")
    get = "({v}.value ->> '{k}')"

    def people(row: str) -> str:
        e = each.replace("{{row}}", row)
        t = text_each.replace("{{row}}", row)
        return (f"SELECT DISTINCT {row}.id, a FROM (SELECT lower({row}.sender) AS a "
                f"UNION SELECT lower({row}.auth_user) "
                f"UNION SELECT lower(x.value) FROM {t.format(c='recipients')} x "
                f"UNION SELECT lower(j.value -> 'evidence' ->> 'staff_member') "
                f"FROM {e.format(c='rules')} j) AS p WHERE a IS NOT NULL AND a <> ''")

    new_rules = _rules_rows("NEW", each.replace("{{row}}", "NEW"), get)
    old_rules = _rules_rows("r", each.replace("{{row}}", "r"), get)
    return INDEX_TABLES.format(integer="BIGINT") + f"""
CREATE OR REPLACE FUNCTION records_index() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO record_rules (record_id, ts, event, sender, rule, article) {new_rules};
        INSERT INTO record_people (record_id, address) {people("NEW")};
        INSERT INTO record_addresses (address, n)
            SELECT address, 1 FROM record_people WHERE record_id = NEW.id
            ON CONFLICT (address) DO UPDATE SET n = record_addresses.n + 1;
        INSERT INTO record_hours (hour, event, n) VALUES (substr(NEW.ts, 1, 13), NEW.event, 1)
            ON CONFLICT (hour, event) DO UPDATE SET n = record_hours.n + 1;
        IF NEW.subject <> '' AND NEW.event IN {DECISIONS} THEN
            INSERT INTO record_subjects (record_id, subject) VALUES (NEW.id, lower(NEW.subject));
        END IF;
    ELSIF NEW.purged = 1 AND OLD.purged = 0 THEN
{UNINDEX}    END IF;
    RETURN NULL;
END $$ LANGUAGE plpgsql
-- as its owner: a node role with INSERT on records only (deploy/postgres/roles.sql) needs no
-- rights on these derived tables
SECURITY DEFINER SET search_path = public;
DROP TRIGGER IF EXISTS records_index ON records;
CREATE TRIGGER records_index AFTER INSERT OR UPDATE ON records
    FOR EACH ROW EXECUTE FUNCTION records_index();
DELETE FROM record_rules;
DELETE FROM record_people;
DELETE FROM record_hours;
DELETE FROM record_subjects;
INSERT INTO record_subjects (record_id, subject) SELECT id, lower(subject) FROM records
    WHERE subject <> '' AND purged = 0 AND event IN {DECISIONS};
INSERT INTO record_hours (hour, event, n)
    SELECT substr(ts, 1, 13), event, count(*) FROM records GROUP BY substr(ts, 1, 13), event;
INSERT INTO record_rules (record_id, ts, event, sender, rule, article)
    {old_rules.replace("FROM jsonb_array_elements", "FROM records r, jsonb_array_elements")}
    WHERE r.purged = 0;
INSERT INTO record_people (record_id, address)
    SELECT r.id, p.a FROM records r, LATERAL ({people("r").replace("SELECT DISTINCT r.id, a",
                                                                    "SELECT a")}) p
    WHERE r.purged = 0;
DELETE FROM record_addresses;
INSERT INTO record_addresses (address, n)
    SELECT address, count(*) FROM record_people GROUP BY address;
ANALYZE records;
"""


# The only change the append-only guards let through: a purge (personal fields emptied, every
# hash and public field kept). Both backends' triggers use this same condition.
PURGE_SHAPE = """OLD.purged = 0 AND NEW.purged = 1 AND NEW.id = OLD.id AND NEW.chain = OLD.chain
    AND NEW.seq = OLD.seq AND NEW.ts = OLD.ts AND NEW.event = OLD.event
    AND NEW.txid = OLD.txid AND NEW.direction = OLD.direction AND NEW.action = OLD.action
    AND NEW.prev_hash = OLD.prev_hash AND NEW.personal_hash = OLD.personal_hash
    AND NEW.content_hash = OLD.content_hash AND NEW.hash = OLD.hash
    AND NEW.sender = '' AND NEW.recipients = '[]' AND NEW.client = ''
    AND NEW.auth_user = '' AND NEW.subject = '' AND NEW.evidence = '{}'
    AND NEW.rules = '[]' AND NEW.message_id = '' AND NEW.reply = '' AND NEW.actor = ''"""


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


_FIELDS = tuple(f.name for f in fields(AuditRecord))


def shallow(rec: AuditRecord) -> dict[str, Any]:
    """The record's fields (``asdict`` deep-copies every rule and evidence dict first)."""
    return {name: getattr(rec, name) for name in _FIELDS}


def fetched(cur: Any, fetch: bool | str) -> Any:
    """What the shared SQL code asked of a statement: "all" rows, one "row", its first value
    (True), or nothing (False)."""
    if fetch == "all":
        return cur.fetchall()
    if fetch == "row":
        return cur.fetchone()
    if fetch:
        row = cur.fetchone()
        return row[0] if row else None
    return None


def seal_after(head: tuple[int, str], chain: str,
               events: list[AuditEvent]) -> list[AuditRecord]:
    """``events`` sealed as the next records of ``chain`` after ``head`` (seq, hash)."""
    seq, prev = head
    records = []
    for ev in events:
        seq += 1
        records.append(seal(ev, chain, seq, prev, now_iso()))
        prev = records[-1].hash
    return records


def encode(rec: AuditRecord) -> dict[str, Any]:
    values = shallow(rec)
    del values["id"]
    for k in JSON_COLUMNS:
        v = values[k]
        values[k] = json.dumps(list(v) if isinstance(v, list | tuple) else v,
                               ensure_ascii=False, sort_keys=True, default=list)
    return values


def decode(row: Sequence[Any]) -> AuditRecord:
    values = dict(zip(COLUMNS, row, strict=True))
    for k in JSON_COLUMNS:
        values[k] = json.loads(values[k])
    values["recipients"] = tuple(values["recipients"])
    values["rules"] = tuple(values["rules"])
    return AuditRecord(**values)


def where(filters: Filters) -> tuple[str, list[Any]]:
    clauses, args = [], []
    if filters.since:
        clauses.append("ts >= ?")
        args.append(filters.since)
    if filters.until:
        clauses.append("ts < ?")
        args.append(filters.until)
    if filters.rule:  # the search indexes of schema version 2, not a scan of JSON text
        clauses.append("id IN (SELECT record_id FROM record_rules WHERE rule = ?)")
        args.append(filters.rule)
    if filters.sender:
        clauses.append("lower(sender) = lower(?)")
        args.append(filters.sender)
    if filters.person:
        clauses.append("id IN (SELECT record_id FROM record_people WHERE address = ?)")
        args.append(filters.person.strip().lower())
    if filters.event:
        clauses.append("event = ?")
        args.append(filters.event)
    if filters.txid:
        clauses.append("txid = ?")
        args.append(filters.txid)
    if filters.article:
        clauses.append("id IN (SELECT record_id FROM record_rules WHERE article = ?)")
        args.append(filters.article)
    if filters.action:
        clauses.append("action = ?")
        args.append(filters.action)
    if filters.direction:
        clauses.append("direction = ?")
        args.append(filters.direction)
    sql = (" WHERE " + " AND ".join(clauses)) if clauses else ""
    sql += " ORDER BY id"
    if filters.limit:
        sql += f" LIMIT {int(filters.limit)}"
        if filters.offset:
            sql += f" OFFSET {int(filters.offset)}"
    return sql, args


class SQLStore:
    """The logic of an append-only, hash-chained store over a DB-API connection."""

    chain: str
    placeholder = "?"
    page = 5000  # records per read when walking the whole store

    # -- what a backend provides -----------------------------------------------------------
    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[Sequence[Any]]:
        raise NotImplementedError

    def _write(self, work: Any) -> Any:
        """Run ``work(execute)`` in one durable transaction holding the chain head lock.

        ``execute(sql, args, fetch)`` returns the first column of the first row
        (``fetch=True``), that whole row (``"row"``), every row (``"all"``) or None."""
        raise NotImplementedError

    def _head(self, execute: Any) -> tuple[int, str]:
        raise NotImplementedError

    def _set_head(self, execute: Any, seq: int, head: str) -> None:
        return None

    def _indexes_current(self) -> None:
        """Before a read of the search indexes: bring them up to the last record (SQLite
        copies records into them after the appends; PostgreSQL's trigger already has)."""
        return None

    # -- the store ---------------------------------------------------------------------------
    def _sql(self, sql: str) -> str:
        return sql if self.placeholder == "?" else sql.replace("?", self.placeholder)

    def append(self, event: AuditEvent) -> AuditRecord:
        return self.append_many([event])[0]

    def append_many(self, events: list[AuditEvent]) -> list[AuditRecord]:
        """Append several records in one transaction: one commit (fsync) for all."""
        result: list[AuditRecord] = self._write(lambda execute: self._append_in(execute, events))
        return result

    def _append_in(self, execute: Any, events: list[AuditEvent]) -> list[AuditRecord]:
        """Seal and insert ``events`` inside the caller's transaction (chain head locked)."""
        out = []
        for rec in seal_after(self._head(execute), self.chain, events):
            values = encode(rec)
            cols = ", ".join(values)
            marks = ", ".join([self.placeholder] * len(values))
            new_id = execute(f"INSERT INTO records ({cols}) VALUES ({marks}) RETURNING id",
                             tuple(values.values()))
            out.append(replace(rec, id=int(new_id)))
        self._set_head(execute, out[-1].seq, out[-1].hash)
        return out

    def records(self, filters: Filters | None = None) -> Iterator[AuditRecord]:
        filters = filters or Filters()
        if filters.rule or filters.person or filters.article:
            self._indexes_current()
        sql, args = where(filters)
        return (decode(r) for r in self._query(self._sql(SELECT + sql), args))

    def select(self, sql: str, args: Sequence[Any] = ()) -> list[Sequence[Any]]:
        """A read-only query written with ``?`` placeholders (the web view's searches and
        counts, which read the search indexes)."""
        self._indexes_current()
        return self._query(self._sql(sql), args)

    def get(self, record_id: int) -> AuditRecord | None:
        rows = self._query(self._sql(SELECT + " WHERE id = ?"), (record_id,))
        return decode(rows[0]) if rows else None

    def at(self, chain: str, seq: int) -> AuditRecord | None:
        rows = self._query(self._sql(SELECT + " WHERE chain = ? AND seq = ?"), (chain, seq))
        return decode(rows[0]) if rows else None

    def last(self, chain: str) -> AuditRecord | None:
        rows = self._query(self._sql(SELECT + " WHERE chain = ? ORDER BY seq DESC LIMIT 1"),
                           (chain,))
        return decode(rows[0]) if rows else None

    def ordered(self) -> Iterator[AuditRecord]:
        """Every record by (chain, seq), a page at a time: verifying millions of records
        must not hold them all in memory. The row comparison walks the (chain, seq) index."""
        chain, seq, page = "", -1, self.page
        while True:
            rows = self._query(self._sql(
                SELECT + " WHERE (chain, seq) > (?, ?) ORDER BY chain, seq "
                f"LIMIT {int(page)}"), (chain, seq))
            for row in rows:
                rec = decode(row)
                yield rec
                chain, seq = rec.chain, rec.seq
            if len(rows) < page:
                return

    def verify(self) -> VerifyResult:
        result = verify_rows(self.ordered())
        # A purged record must be covered by a purge record (purge is the only sanctioned
        # change); the heads table, where a backend keeps one, must match the last record.
        problems = list(result.problems)
        problems += self._check_purges()
        problems += self._check_heads(result.chains)
        return VerifyResult(ok=not problems, records=result.records, chains=result.chains,
                            problems=problems, warnings=result.warnings)

    def _check_heads(self, counts: dict[str, int]) -> list[str]:
        return []

    def _check_purges(self) -> list[str]:
        cutoffs = [json.loads(r[0]).get("cutoff", "") for r in self._query(
            "SELECT evidence FROM records WHERE event = 'purge'")]
        latest = max(cutoffs, default="")
        bad = self._query(self._sql("SELECT id, chain, seq, ts FROM records WHERE purged = 1 "
                                    "AND ts >= ? ORDER BY id LIMIT 1"), (latest,))
        return [f"chain {b[1]!r} record id={b[0]} seq={b[2]}: personal fields removed without "
                f"a purge covering it" for b in bad]

    def purge(self, cutoff: str, held_people: set[str], held_records: set[int],
              actor: str) -> int:
        """Remove personal fields of records older than ``cutoff`` (hashes stay); audited.

        The emptied rows and the purge record commit together: a purge that fails halfway
        leaves nothing purged, never rows emptied without the record that sanctions it."""
        empty = encode_personal()
        sets = ", ".join(f"{k} = {self.placeholder}" for k in empty)
        select = self._sql(SELECT + " WHERE ts < ? AND purged = 0 AND event NOT IN "
                           "('purge', 'legal-hold', 'legal-hold-release')")

        def work(execute: Any) -> int:
            victims = []
            for row in execute(select, (cutoff,), fetch="all"):
                rec = decode(row)
                people = {rec.sender.lower(), rec.auth_user.lower(),
                          *(r.lower() for r in rec.recipients)}
                if rec.id in held_records or people & held_people:
                    continue
                victims.append(rec.id)
            for rid in victims:
                execute(f"UPDATE records SET {sets}, purged = 1 WHERE id = {self.placeholder}",
                        (*empty.values(), rid), fetch=False)
            self._append_in(execute, [AuditEvent(
                event="purge", action="purge", actor=actor,
                evidence={"cutoff": cutoff, "records": len(victims),
                          "held_people": len(held_people), "held_records": len(held_records)})])
            return len(victims)

        count: int = self._write(work)
        return count


def encode_personal() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in EMPTY_PERSONAL.items():
        out[k] = json.dumps(list(v) if isinstance(v, tuple) else v) if k in JSON_COLUMNS else v
    return out


__all__ = ["GENESIS", "SQLStore", "decode", "encode", "now_iso"]
