"""The audit store interface and its hash chain.

Records are append-only and chained per gateway node: ``hash = H(chain, seq, prev_hash,
content_hash)`` and ``content_hash = H(every other field)``. Chaining over the content hash
(not the content) lets retention purge personal fields later while the chain still verifies.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Protocol

GENESIS = "0" * 64

# Events a transaction produces; ``intent`` is written before the final dot goes downstream.
OUTCOMES = ("delivered", "rejected", "quarantined", "tempfailed")


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
    content_hash: str = ""
    hash: str = ""

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["recipients"] = list(self.recipients)
        d["rules"] = list(self.rules)
        return d


CONTENT_FIELDS = tuple(f.name for f in fields(AuditEvent)) + ("ts",)


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=list).encode("utf-8")


def content_hash(values: dict[str, Any]) -> str:
    payload = {k: values[k] for k in CONTENT_FIELDS}
    payload["recipients"] = list(payload["recipients"])
    payload["rules"] = list(payload["rules"])
    return hashlib.sha256(canonical(payload)).hexdigest()


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
    limit: int = 0


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    records: int
    chains: dict[str, int]
    problems: list[str]   # first broken record per chain, in words

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class AuditStore(Protocol):
    def append(self, event: AuditEvent) -> AuditRecord:
        """Append durably: on return the record survives a power cut."""

    def records(self, filters: Filters | None = None) -> Iterator[AuditRecord]: ...

    def get(self, record_id: int) -> AuditRecord | None: ...

    def verify(self) -> VerifyResult: ...

    def close(self) -> None: ...


class AuditUnavailable(Exception):
    """The store cannot take a record now: the front must tempfail."""


def verify_rows(rows: Sequence[AuditRecord] | Iterator[AuditRecord]) -> VerifyResult:
    """Recompute every chain from rows ordered by (chain, seq); name the first broken record."""
    heads: dict[str, tuple[int, str]] = {}
    broken: dict[str, str] = {}
    counts: dict[str, int] = {}
    total = 0
    for r in rows:
        total += 1
        counts[r.chain] = counts.get(r.chain, 0) + 1
        if r.chain in broken:
            continue
        seq, prev = heads.get(r.chain, (0, GENESIS))
        where = f"chain {r.chain!r} record id={r.id} seq={r.seq}"
        values = {k: getattr(r, k) for k in CONTENT_FIELDS}
        if r.seq != seq + 1:
            broken[r.chain] = (f"{where}: sequence jumps from {seq} to {r.seq} "
                               f"(records removed or inserted)")
        elif r.prev_hash != prev:
            broken[r.chain] = f"{where}: prev_hash does not match the previous record"
        elif content_hash(values) != r.content_hash:
            broken[r.chain] = f"{where}: content altered (content hash mismatch)"
        elif chain_hash(r.chain, r.seq, r.prev_hash, r.content_hash) != r.hash:
            broken[r.chain] = f"{where}: record hash mismatch"
        heads[r.chain] = (r.seq, r.hash)
    return VerifyResult(ok=not broken, records=total, chains=counts,
                        problems=[broken[c] for c in sorted(broken)])


def open_store(url: str, chain: str) -> AuditStore:
    """Open the store named by ``audit.url`` for gateway node ``chain``."""
    if url.startswith("sqlite:///"):
        from milter.audit.sqlite import SQLiteStore
        return SQLiteStore(url[len("sqlite:///"):], chain)
    raise AuditUnavailable(f"unsupported audit url: {url.split(':', 1)[0]}")
