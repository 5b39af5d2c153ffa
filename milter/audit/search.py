"""Searches and counts for the web view, on the search indexes (``milter.audit.sql``; an
SQLite store brings them up to its last record before each ``select``).

A message (one transaction) is its outcome record (``delivered``, ``rejected``,
``quarantined``, ``tempfailed``): it carries the envelope, rules and evidence, so one row per
message needs no grouping. What happened later (release, delete, notices) is looked up by
reference for the rows shown only. Every query here is answered from an index on a store of
a million records (``bench/web_bench.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from milter.audit.sql import SELECT, decode
from milter.audit.store import OUTCOMES, AuditRecord

_OUTCOMES_SQL = ", ".join(f"'{o}'" for o in OUTCOMES)
AFTER_EVENTS = ("intent", "quarantine-release", "quarantine-delete", "notice-sent",
                "notice-failed")


class Searchable(Protocol):
    def select(self, sql: str, args: Sequence[Any] = ()) -> list[Sequence[Any]]: ...


@dataclass(frozen=True)
class MessageQuery:
    """What the auditor asked, already resolved to stored values (UTC times, rule ids,
    lower-case addresses). ``addresses=None``: no person asked; ``()``: nobody matched."""

    since: str = ""
    until: str = ""
    ref: str = ""
    addresses: tuple[str, ...] | None = None
    rules: tuple[str, ...] = ()
    article: str = ""
    actions: tuple[str, ...] = ()
    direction: str = ""
    outcome: str = ""
    subject: str = ""
    violations_of: str = ""   # messages of this sender on which a rule fired


def _where(q: MessageQuery) -> tuple[str, list[Any]]:
    clauses = [f"event IN ({_OUTCOMES_SQL})"]
    args: list[Any] = []
    if q.outcome:
        clauses.append("event = ?")
        args.append(q.outcome)
    if q.since:
        clauses.append("ts >= ?")
        args.append(q.since)
    if q.until:
        clauses.append("ts < ?")
        args.append(q.until)
    if q.ref:
        clauses.append("txid = ?")
        args.append(q.ref)
    if q.actions:
        clauses.append(f"action IN ({', '.join('?' * len(q.actions))})")
        args += q.actions
    if q.direction:
        clauses.append("direction = ?")
        args.append(q.direction)
    if q.subject:  # the narrow lower-cased copy, not the wide rows
        pattern = "%" + _like(q.subject.lower()) + "%"
        if _narrow(q):  # other conditions pick few rows: look up each one's subject
            clauses.append("EXISTS (SELECT 1 FROM record_subjects s WHERE s.record_id = "
                           "records.id AND s.subject LIKE ? ESCAPE '\\')")
        else:           # the subject is the filter: scan the copies once
            clauses.append("id IN (SELECT record_id FROM record_subjects WHERE subject "
                           "LIKE ? ESCAPE '\\')")
        args.append(pattern)
    span, span_args = "", []
    if q.since:
        span += " AND ts >= ?"
        span_args.append(q.since)
    if q.until:
        span += " AND ts < ?"
        span_args.append(q.until)
    if q.rules:
        clauses.append(f"id IN (SELECT record_id FROM record_rules WHERE rule IN "
                       f"({', '.join('?' * len(q.rules))}){span})")
        args += [*q.rules, *span_args]
    if q.article:
        clauses.append(f"id IN (SELECT record_id FROM record_rules WHERE article = ?{span})")
        args += [q.article, *span_args]
    if q.violations_of:
        clauses.append(f"id IN (SELECT record_id FROM record_rules WHERE sender = ?{span})")
        args += [q.violations_of.lower(), *span_args]
    if q.addresses is not None:
        if not q.addresses:
            clauses.append("0 = 1")
        else:
            clauses.append(f"id IN (SELECT record_id FROM record_people WHERE address IN "
                           f"({', '.join('?' * len(q.addresses))}))")
            args += q.addresses
    return " WHERE " + " AND ".join(clauses), args


def _narrow(q: MessageQuery) -> bool:
    """Whether conditions other than the subject leave few rows (a reference, people, or a
    period of at most two months)."""
    if q.ref or q.addresses is not None or q.violations_of:
        return True
    if q.since and q.until:
        try:
            span = datetime.fromisoformat(q.until[:19]) - datetime.fromisoformat(q.since[:19])
        except ValueError:
            return False
        return span <= timedelta(days=62)
    return False


def _like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def messages(store: Searchable, q: MessageQuery, *, before: int = 0, after: int = 0,
             limit: int = 50) -> list[AuditRecord]:
    """One page of messages, newest first: older than record ``before`` or newer than
    record ``after`` (keyset paging: page 20 000 costs what page 1 costs)."""
    sql, args = _where(q)
    if after:
        rows = store.select(f"{SELECT}{sql} AND id > ? ORDER BY id LIMIT {int(limit)}",
                            [*args, after])
        return [decode(r) for r in reversed(rows)]
    if before:
        sql += " AND id < ?"
        args.append(before)
    return [decode(r) for r in store.select(f"{SELECT}{sql} ORDER BY id DESC "
                                            f"LIMIT {int(limit)}", args)]


def count(store: Searchable, q: MessageQuery, newer_than: int = 0) -> int:
    sql, args = _where(q)
    if newer_than:
        sql += " AND id > ?"
        args.append(newer_than)
    rows = store.select(f"SELECT count(*) FROM records{sql}", args)
    return int(rows[0][0]) if rows else 0


def newer_exists(store: Searchable, q: MessageQuery, record_id: int) -> bool:
    sql, args = _where(q)
    return bool(store.select(f"SELECT 1 FROM records{sql} AND id > ? LIMIT 1",
                             [*args, record_id]))


def by_refs(store: Searchable, refs: Sequence[str]) -> dict[str, list[AuditRecord]]:
    """Every record of these transactions, oldest first, by reference."""
    out: dict[str, list[AuditRecord]] = {}
    refs = [r for r in dict.fromkeys(refs) if r]
    for start in range(0, len(refs), 200):
        chunk = refs[start:start + 200]
        for row in store.select(f"{SELECT} WHERE txid IN ({', '.join('?' * len(chunk))}) "
                                "ORDER BY id", chunk):
            rec = decode(row)
            out.setdefault(rec.txid, []).append(rec)
    return out


def addresses_like(store: Searchable, part: str, limit: int = 500) -> list[str]:
    """Stored addresses containing ``part`` (a scan of the distinct addresses only)."""
    rows = store.select("SELECT address FROM record_addresses WHERE address LIKE ? "
                        f"ESCAPE '\\' LIMIT {int(limit)}", ["%" + _like(part.lower()) + "%"])
    return [str(r[0]) for r in rows]


# -- counts for the dashboard ---------------------------------------------------------------

def events_by_hour(store: Searchable, since: str, until: str) -> list[tuple[str, str, int]]:
    """(UTC hour ``YYYY-MM-DDTHH``, event, count) of the whole hours from ``since`` up to
    ``until``: the caller folds hours into local days, which stays exact across
    daylight-saving changes (Amsterdam's midnight is always a whole UTC hour)."""
    rows = store.select("SELECT hour, event, n FROM record_hours WHERE hour >= ? AND hour < ?",
                        [since[:13], until[:13]])
    return [(str(h), str(e), int(n)) for h, e, n in rows]


def rules_between(store: Searchable, since: str, until: str) -> list[tuple[str, str, int]]:
    """(rule, article, messages) of decisions in the period."""
    rows = store.select("SELECT rule, article, count(*) FROM record_rules WHERE ts >= ? "
                        f"AND ts < ? AND event IN ({_OUTCOMES_SQL}) GROUP BY rule, article "
                        "ORDER BY 3 DESC, 1", [since, until])
    return [(str(r), str(a), int(n)) for r, a, n in rows]


def articles_between(store: Searchable, since: str, until: str) -> list[tuple[str, int]]:
    """(article, messages): a message two rules of one article fired on counts once."""
    rows = store.select("SELECT article, count(DISTINCT record_id) FROM record_rules "
                        f"WHERE ts >= ? AND ts < ? AND event IN ({_OUTCOMES_SQL}) "
                        "GROUP BY article ORDER BY 1", [since, until])
    return [(str(a), int(n)) for a, n in rows]


def top_senders(store: Searchable, since: str, until: str, limit: int = 10
                ) -> list[tuple[str, int]]:
    rows = store.select("SELECT sender, count(DISTINCT record_id) FROM record_rules "
                        f"WHERE ts >= ? AND ts < ? AND event IN ({_OUTCOMES_SQL}) "
                        "AND sender <> '' GROUP BY sender ORDER BY 2 DESC, 1 "
                        f"LIMIT {int(limit)}", [since, until])
    return [(str(s), int(n)) for s, n in rows]


def articles_by_outcome(store: Searchable, since: str, until: str
                        ) -> dict[str, dict[str, int]]:
    """article -> outcome event -> messages, for the monthly summary."""
    rows = store.select("SELECT article, event, count(DISTINCT record_id) FROM record_rules "
                        f"WHERE ts >= ? AND ts < ? AND event IN ({_OUTCOMES_SQL}) "
                        "GROUP BY article, event", [since, until])
    out: dict[str, dict[str, int]] = {}
    for article, event, n in rows:
        out.setdefault(str(article), {})[str(event)] = int(n)
    return out
