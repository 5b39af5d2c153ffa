"""The audit store interface and its hash chain.

Records are append-only and chained per gateway node: ``hash = H(chain, seq, prev_hash,
content_hash)``, ``content_hash = H(public_hash, personal_hash)``. The personal fields are
hashed apart, so retention can purge them (keeping ``personal_hash``) while the chain, the
public fields and every later record still verify.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Protocol

GENESIS = "0" * 64

# Events a transaction produces; ``intent`` is written before the final dot goes downstream.
# ``unknown``: the final dot went downstream and no answer came in time: the next hop may
# have delivered it, and the client's retry may be a duplicate (match them by message-id).
OUTCOMES = ("delivered", "rejected", "quarantined", "tempfailed", "unknown")


@dataclass(frozen=True)
class AuditEvent:
    """What a caller records. Evidence holds names, types, sizes, hashes and counts only."""

    event: str
    txid: str = ""
    message_id: str = ""
    client: str = ""
    direction: str = ""
    sender: str = ""
    recipients: tuple[str, ...] = ()
    auth_user: str = ""
    rules: tuple[dict[str, Any], ...] = ()
    action: str = ""
    reply: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)
    subject: str = ""
    actor: str = ""  # who did it, for human acts (release, delete, view)


@dataclass(frozen=True)
class AuditRecord(AuditEvent):
    id: int = 0
    chain: str = ""
    seq: int = 0
    ts: str = ""
    prev_hash: str = ""
    personal_hash: str = ""
    content_hash: str = ""
    hash: str = ""
    purged: int = 0

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["recipients"] = list(self.recipients)
        d["rules"] = list(self.rules)
        return d


CONTENT_FIELDS = tuple(f.name for f in fields(AuditEvent)) + ("ts",)
PUBLIC_FIELDS = ("event", "txid", "direction", "action", "ts")
PERSONAL_FIELDS = tuple(f for f in CONTENT_FIELDS if f not in PUBLIC_FIELDS)
EMPTY_PERSONAL: dict[str, Any] = {"message_id": "", "client": "", "sender": "",
                                  "recipients": (), "auth_user": "", "rules": (), "reply": "",
                                  "evidence": {}, "subject": "", "actor": ""}
assert set(EMPTY_PERSONAL) == set(PERSONAL_FIELDS)


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=list).encode("utf-8")


def _digest(values: dict[str, Any], names: tuple[str, ...]) -> str:
    payload = {k: list(values[k]) if isinstance(values[k], tuple) else values[k] for k in names}
    return hashlib.sha256(canonical(payload)).hexdigest()


def personal_hash(values: dict[str, Any]) -> str:
    return _digest(values, PERSONAL_FIELDS)


def content_hash(values: dict[str, Any], p_hash: str | None = None) -> str:
    """H(public fields, personal hash); pass ``p_hash`` for a purged record."""
    p = p_hash if p_hash is not None else personal_hash(values)
    return hashlib.sha256(f"{_digest(values, PUBLIC_FIELDS)}\n{p}".encode()).hexdigest()


def chain_hash(chain: str, seq: int, prev_hash: str, c_hash: str) -> str:
    return hashlib.sha256(f"{chain}\n{seq}\n{prev_hash}\n{c_hash}".encode()).hexdigest()


@dataclass(frozen=True)
class Filters:
    since: str = ""   # ISO date or datetime, inclusive
    until: str = ""   # exclusive
    rule: str = ""
    sender: str = ""
    person: str = ""  # sender, auth user or recipient
    event: str = ""
    txid: str = ""
    article: str = ""
    action: str = ""
    direction: str = ""
    limit: int = 0
    offset: int = 0


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    records: int
    chains: dict[str, int]
    problems: list[str]   # first broken record per chain, in words
    warnings: list[str] = field(default_factory=list)  # e.g. an intent without its outcome

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class AuditStore(Protocol):
    def append(self, event: AuditEvent) -> AuditRecord:
        """Append durably: on return the record survives a power cut."""

    def records(self, filters: Filters | None = None) -> Iterator[AuditRecord]: ...

    def get(self, record_id: int) -> AuditRecord | None: ...

    def verify(self) -> VerifyResult: ...

    def at(self, chain: str, seq: int) -> AuditRecord | None: ...

    def last(self, chain: str) -> AuditRecord | None: ...

    def purge(self, cutoff: str, held_people: set[str], held_records: set[int],
              actor: str) -> int: ...

    def close(self) -> None: ...


class AuditUnavailable(Exception):
    """The store cannot take a record now: the front must tempfail."""


def verify_rows(rows: Sequence[AuditRecord] | Iterator[AuditRecord]) -> VerifyResult:
    """Recompute every chain from rows ordered by (chain, seq); name the first broken record."""
    heads: dict[str, tuple[int, str]] = {}
    broken: dict[str, str] = {}
    counts: dict[str, int] = {}
    open_intents: dict[tuple[str, str], int] = {}
    unknown: list[AuditRecord] = []
    total = 0
    for r in rows:
        total += 1
        if r.event == "unknown":
            unknown.append(r)
        if r.event == "intent":
            open_intents[(r.chain, r.txid)] = r.id
        elif r.event in OUTCOMES:
            open_intents.pop((r.chain, r.txid), None)
        counts[r.chain] = counts.get(r.chain, 0) + 1
        if r.chain in broken:
            continue
        seq, prev = heads.get(r.chain, (0, GENESIS))
        where = f"chain {r.chain!r} record id={r.id} seq={r.seq}"
        values = {k: getattr(r, k) for k in CONTENT_FIELDS}
        personal_ok = (all(_empty(values[k]) for k in PERSONAL_FIELDS) if r.purged
                       else personal_hash(values) == r.personal_hash)
        if r.seq != seq + 1:
            broken[r.chain] = (f"{where}: sequence jumps from {seq} to {r.seq} "
                               f"(records removed or inserted)")
        elif r.prev_hash != prev:
            broken[r.chain] = f"{where}: prev_hash does not match the previous record"
        elif not personal_ok or content_hash(values, r.personal_hash) != r.content_hash:
            broken[r.chain] = f"{where}: content altered (content hash mismatch)"
        elif chain_hash(r.chain, r.seq, r.prev_hash, r.content_hash) != r.hash:
            broken[r.chain] = f"{where}: record hash mismatch"
        heads[r.chain] = (r.seq, r.hash)
    warnings = [f"record id={rid}: intent for ref={tx} has no outcome (a crash between the "
                f"next hop's answer and ours?)" for (_, tx), rid in sorted(open_intents.items(),
                                                                          key=lambda i: i[1])]
    warnings += [f"record id={r.id}: outcome of ref={r.txid} unknown: the next hop did not "
                 f"answer the final dot in time and may have delivered it; the client was "
                 f"told to retry, so a second copy (message-id {r.message_id or '?'}) may "
                 f"follow" for r in unknown]
    return VerifyResult(ok=not broken, records=total, chains=counts,
                        problems=[broken[c] for c in sorted(broken)], warnings=warnings)


def _empty(v: Any) -> bool:
    return v in ("", (), [], {}, None)


def seal(event: AuditEvent, chain: str, seq: int, prev: str, ts: str) -> AuditRecord:
    """The record for ``event`` at position ``seq`` of ``chain``, with its hashes."""
    base = {k: getattr(event, k) for k in AuditEvent.__dataclass_fields__}
    base["ts"] = ts
    p_hash = personal_hash(base)
    c_hash = content_hash(base, p_hash)
    return AuditRecord(**base, chain=chain, seq=seq, prev_hash=prev, personal_hash=p_hash,
                       content_hash=c_hash, hash=chain_hash(chain, seq, prev, c_hash))


def open_store(url: str, chain: str) -> AuditStore:
    """Open the store named by ``audit.url`` for gateway node ``chain``."""
    if url.startswith("sqlite:///"):
        from milter.audit.sqlite import SQLiteStore
        return SQLiteStore(url[len("sqlite:///"):], chain)
    if url.startswith(("postgresql://", "postgres://")):
        from milter.audit.postgres import PostgresStore
        return PostgresStore(url, chain)
    raise AuditUnavailable(f"unsupported audit url: {url.split(':', 1)[0]}")
