"""The per-person report: every violation of one staff member, for a personnel file."""

from __future__ import annotations

from milter.audit.store import AuditRecord, AuditStore, Filters

REPORT_FIELDS = ("date", "rule", "article", "mode", "action", "outcome", "recipients",
                 "subject", "reference", "record")
VIOLATION_EVENTS = ("rejected", "quarantined", "delivered", "tempfailed")


def violations(store: AuditStore, person: str, since: str = "", until: str = ""
               ) -> list[dict[str, str]]:
    """One row per fired rule of each decision about ``person``: the personnel-file view."""
    out = []
    records: list[AuditRecord] = list(store.records(Filters(person=person, since=since,
                                                            until=until)))
    for r in records:
        if r.event not in VIOLATION_EVENTS or not r.rules:
            continue
        for rule in r.rules:
            out.append({"date": r.ts[:19].replace("T", " "), "rule": str(rule.get("id", "")),
                        "article": str(rule.get("article", "")),
                        "mode": str(rule.get("mode", "")),
                        "action": str(rule.get("action", "")), "outcome": r.event,
                        "recipients": ", ".join(r.recipients), "subject": r.subject,
                        "reference": r.txid, "record": str(r.id)})
    return out
