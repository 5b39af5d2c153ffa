"""The per-person report: every violation of one staff member, for a personnel file."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from milter.audit.store import (
    CONTENT_FIELDS,
    GENESIS,
    PERSONAL_FIELDS,
    AuditRecord,
    AuditStore,
    Filters,
    chain_hash,
    content_hash,
    personal_hash,
)

# (new columns between subject and reference: the old ones keep their places at both ends)
REPORT_FIELDS = ("date", "rule", "article", "mode", "action", "outcome", "recipients",
                 "subject", "state", "notified", "sender", "reference", "record",
                 "afterwards")
VIOLATION_EVENTS = ("rejected", "quarantined", "delivered", "tempfailed")


def violations(store: AuditStore, person: str, since: str = "", until: str = "",
               private: Iterable[str] = ()) -> list[dict[str, str]]:
    """One row per fired rule of each decision about ``person``: the personnel-file view.

    Only rules the person is answerable for: mail they sent (envelope sender or login, from
    their school address or one of the ``private`` addresses the directory links to them),
    or a rule naming them as the staff member. Mail that merely reached them (a spoofed
    message to them, say) is someone else's violation. ``state`` says what became of a held
    message (released, deleted), ``notified`` whether a notice went out."""
    who = person.strip().lower()
    own = {who, *(p.strip().lower() for p in private if p.strip())}
    records: list[AuditRecord] = []
    seen: set[int] = set()
    for address in sorted(own):
        for r in store.records(Filters(person=address, since=since, until=until)):
            if r.id not in seen:
                seen.add(r.id)
                records.append(r)
    records.sort(key=lambda r: r.id)
    later = _later(store, [r.txid for r in records if r.txid])
    out = []
    for r in records:
        if r.event not in VIOLATION_EVENTS or not r.rules:
            continue
        author = bool(own & {r.sender.lower(), r.auth_user.lower()})
        after = later.get(r.txid, [])
        state = r.event
        for a in after:
            if a.event == "quarantine-release":
                state = f"released by {a.actor} at {a.ts[:19].replace('T', ' ')}"
            elif a.event == "quarantine-delete":
                state = f"deleted by {a.actor} at {a.ts[:19].replace('T', ' ')}"
        sent = [a for a in after if a.event == "notice-sent"]
        notified = ", ".join(sorted({x for a in sent for x in a.recipients})) or "no"
        for rule in r.rules:
            evidence = rule.get("evidence")
            named = (isinstance(evidence, dict)
                     and str(evidence.get("staff_member", "")).lower() == who)
            if not (author or named):
                continue
            out.append({"date": r.ts[:19].replace("T", " "), "rule": str(rule.get("id", "")),
                        "article": str(rule.get("article", "")),
                        "mode": str(rule.get("mode", "")),
                        "action": str(rule.get("action", "")), "outcome": r.event,
                        "state": state, "notified": notified, "sender": r.sender,
                        "recipients": ", ".join(r.recipients), "subject": r.subject,
                        "reference": r.txid, "record": str(r.id), "afterwards": ""})
    if any(row["outcome"] == "quarantined" for row in out):
        then = _afterwards(store)
        for row in out:
            row["afterwards"] = then.get(row["reference"], "")
    return out


def _afterwards(store: AuditStore) -> dict[str, str]:
    """What happened to held messages later, by txid: released (by whom, with the reason a
    sender gave when releasing it themselves) or deleted."""
    out: dict[str, str] = {}
    for r in store.records(Filters(event="quarantine-release")):
        reason = str(r.evidence.get("reason", ""))
        who = ("zelf vrijgegeven / released by the sender" if r.actor.startswith("self:")
               else f"vrijgegeven door / released by {r.actor}")
        out[r.txid] = f"{r.ts[:16].replace('T', ' ')} {who}" + (f": {reason}" if reason
                                                                  else "")
    for r in store.records(Filters(event="quarantine-delete")):
        out.setdefault(r.txid, f"{r.ts[:16].replace('T', ' ')} verwijderd / deleted by "
                               f"{r.actor}")
    return out


def _later(store: AuditStore, refs: list[str]) -> dict[str, list[AuditRecord]]:
    """Release, delete and notice records of these transactions, by reference."""
    out: dict[str, list[AuditRecord]] = {}
    for ref in dict.fromkeys(refs):
        for a in store.records(Filters(txid=ref)):
            if a.event in ("quarantine-release", "quarantine-delete", "notice-sent"):
                out.setdefault(ref, []).append(a)
    return out


def check_records(store: AuditStore, ids: Iterable[int]) -> list[str]:
    """Problems with these records' place in their chain: each one's hashes recomputed and
    its links to the records before and after it checked.

    What a report page can afford on a store of millions (``verify`` walks every record):
    a record altered, removed or rewritten with fresh hashes breaks its own hash or a link.
    The full walk stays one click away (``/verify``, ``audit verify``)."""
    problems = []
    for rid in sorted(set(ids)):
        r = store.get(rid)
        if r is None:
            problems.append(f"record id={rid} is missing")
            continue
        where = f"chain {r.chain!r} record id={r.id} seq={r.seq}"
        values = {k: getattr(r, k) for k in CONTENT_FIELDS}
        personal_ok = (all(values[k] in ("", (), [], {}, None) for k in PERSONAL_FIELDS)
                       if r.purged else personal_hash(values) == r.personal_hash)
        before = store.at(r.chain, r.seq - 1) if r.seq > 1 else None
        after = store.at(r.chain, r.seq + 1)
        if not personal_ok or content_hash(values, r.personal_hash) != r.content_hash:
            problems.append(f"{where}: content altered (content hash mismatch)")
        elif chain_hash(r.chain, r.seq, r.prev_hash, r.content_hash) != r.hash:
            problems.append(f"{where}: record hash mismatch")
        elif r.prev_hash != (before.hash if before is not None else GENESIS) or (
                r.seq > 1 and before is None):
            problems.append(f"{where}: prev_hash does not match the previous record")
        elif after is not None and after.prev_hash != r.hash:
            problems.append(f"{where}: the next record does not link to it")
    return problems


__all__: list[Any] = ["REPORT_FIELDS", "check_records", "violations"]
