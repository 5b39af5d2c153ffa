"""The per-person report: every violation of one staff member, for a personnel file."""

from __future__ import annotations

from milter.audit.store import AuditRecord, AuditStore, Filters

REPORT_FIELDS = ("date", "rule", "article", "mode", "action", "outcome", "recipients",
                 "subject", "reference", "record", "afterwards")
VIOLATION_EVENTS = ("rejected", "quarantined", "delivered", "tempfailed")


def violations(store: AuditStore, person: str, since: str = "", until: str = ""
               ) -> list[dict[str, str]]:
    """One row per fired rule of each decision about ``person``: the personnel-file view.

    Only rules the person is answerable for: mail they sent (envelope sender or login), or a
    rule naming them as the staff member (mail from their private address). Mail that merely
    reached them (a spoofed message to them, say) is someone else's violation."""
    who = person.strip().lower()
    out = []
    records: list[AuditRecord] = list(store.records(Filters(person=person, since=since,
                                                            until=until)))
    for r in records:
        if r.event not in VIOLATION_EVENTS or not r.rules:
            continue
        author = who in (r.sender.lower(), r.auth_user.lower())
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
                        "recipients": ", ".join(r.recipients), "subject": r.subject,
                        "reference": r.txid, "record": str(r.id), "afterwards": ""})
    if any(row["outcome"] == "quarantined" for row in out):
        after = _afterwards(store)
        for row in out:
            row["afterwards"] = after.get(row["reference"], "")
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
