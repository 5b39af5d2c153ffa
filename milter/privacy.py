"""Privacy by design for the people being watched: the facts a DPIA (AVG art. 35) and a works
council request (WOR art. 27) need, and an access request export (AVG art. 15).

Everything here is generated from the running configuration, the policy and the stores, never
hand-written per school: switch a rule to monitor or change a retention and the report says so.
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from milter.audit.store import PERSONAL_FIELDS, AuditRecord, AuditStore, Filters
from milter.config import Config
from milter.policy import Policy
from milter.quarantine import Quarantine
from milter.retention import HOLD_EVENTS

# What each rule's evidence holds: kinds of data, never the data. A rule not listed here gets
# the general line (every rule keeps to it: ``milter.rules.Finding``).
EVIDENCE = {
    "B1.sender-domain": ("de afzenderadressen (envelop en From:)",
                         "the sender addresses (envelope and From:)"),
    "B1.auth-identity": ("het aangemelde account en de gebruikte afzender",
                         "the authenticated account and the sender used"),
    "B1.private-address": ("welk privéadres, van welke medewerker",
                           "which private address, of which staff member"),
    "B1.spoofed-school-domain": ("de uitslag van SPF, DKIM en DMARC",
                                 "the SPF, DKIM and DMARC results"),
    "B1.sender-headers": ("welke kopregel (Sender, Reply-To, ...) en welk adres",
                          "which header (Sender, Reply-To, ...) and which address"),
    "B1.lookalike-sender": ("de weergavenaam en het adres van de afzender",
                            "the sender's display name and address"),
    "A1.confidential-attachment": (
        "bestandsnaam, soort, grootte en SHA-256 van de bijlage; welke signalen (label, "
        "markering, BSN, IBAN, leerlingenlijst) en hoe vaak; nooit de gevonden waarden",
        "attachment name, type, size and SHA-256; which signals (label, marking, BSN, IBAN, "
        "pupil list) and how many; never the values found"),
    "A1.uninspectable": ("bestandsnaam, soort en waarom niet te lezen (versleuteld, te groot)",
                         "attachment name, type and why it cannot be read (encrypted, too big)"),
    "A5.media-external": ("aantal en soort foto's/video's, bestandsnamen",
                          "number and kind of photos/videos, file names"),
    "FWD.auto-external": ("welke doorstuurkenmerken, de oorspronkelijke auteur, de externe "
                          "ontvangers", "which forwarding marks, the original author, the "
                          "outside recipients"),
    "FWD.manual-external": ("de oorspronkelijke auteur en de externe ontvangers",
                            "the original author and the outside recipients"),
}
ACTIONS = {"nl": {"reject": "weigeren", "quarantine": "vasthouden (quarantaine)",
                  "tag": "markeren", "accept": "doorlaten"},
           "en": {"reject": "reject", "quarantine": "hold (quarantine)", "tag": "tag",
                  "accept": "accept"}}
GENERAL = ("namen, aantallen en hashes van wat gevonden is, nooit de inhoud",
           "names, counts and hashes of what was found, never the content")

T = {
    "nl": {"title": "Privacyverklaring van de mailgateway (feitelijke bijlage bij DPIA en "
                    "instemmingsaanvraag OR)",
           "generated": "Gemaakt uit de draaiende configuratie", "rules": "Regels",
           "rule": "Regel", "article": "Artikel(en) protocol", "mode": "Stand",
           "action": "Actie", "notice": "Melding aan medewerker", "records": "Wat wordt vastgelegd",
           "enforce": "handhaven", "monitor": "alleen registreren", "yes": "ja", "no": "nee",
           "where": "Waar de gegevens staan", "retention": "Hoe lang",
           "who": "Wie wat kan zien", "parties": "Wie buiten de gateway gegevens krijgt",
           "fields": "Velden van elke registratie", "subjects_kept": "Onderwerpregels "
           "worden bewaard", "subjects_not": "Onderwerpregels worden niet bewaard",
           "no_bodies": "Berichtinhoud wordt nooit in de registraties bewaard, alleen in "
                        "quarantaine.",
           "days": "dagen", "forever": "voor altijd (retentie staat uit)"},
    "en": {"title": "Privacy statement of the mail gateway (factual annex to the DPIA and "
                    "the works council request)",
           "generated": "Generated from the running configuration", "rules": "Rules",
           "rule": "Rule", "article": "Protocol article(s)", "mode": "Mode",
           "action": "Action", "notice": "Notice to staff member", "records": "What is recorded",
           "enforce": "enforce", "monitor": "record only", "yes": "yes", "no": "no",
           "where": "Where the data is", "retention": "How long",
           "who": "Who can see what", "parties": "Who outside the gateway receives data",
           "fields": "Fields of every record", "subjects_kept": "Subject lines are kept",
           "subjects_not": "Subject lines are not kept",
           "no_bodies": "Message bodies are never kept in the records, only in quarantine.",
           "days": "days", "forever": "forever (retention is off)"},
}


@dataclass
class Section:
    title: str
    lines: list[str] = field(default_factory=list)
    table: list[list[str]] = field(default_factory=list)  # first row: header


def _where_audit(url: str) -> str:
    if url.startswith("sqlite:///"):
        return "SQLite " + url[len("sqlite:///"):]
    parts = urlsplit(url)
    return f"PostgreSQL {parts.hostname or 'localhost'}{parts.path}"  # never the password


def report(config: Config, policy: Policy, web_users: dict[str, tuple[str, str]],
           lang: str = "nl") -> list[Section]:
    """The report as sections; ``render_md`` / ``render_html`` print it."""
    t = T[lang]
    i = 0 if lang == "nl" else 1
    rules = Section(t["rules"], table=[[t["rule"], t["article"], t["mode"], t["action"],
                                        t["notice"], t["records"]]])
    for rp in policy.rules.values():
        rules.table.append([rp.id, ", ".join(rp.articles or (rp.article,)), t[rp.mode],
                            ACTIONS[lang].get(rp.action, rp.action),
                            t["yes"] if rp.notice else t["no"],
                            EVIDENCE.get(rp.id, GENERAL)[i]])
    fields_ = Section(t["fields"], lines=[
        ", ".join(PERSONAL_FIELDS),
        t["subjects_kept"] if policy.keep_subjects else t["subjects_not"], t["no_bodies"]])
    days = t["days"]
    audit_keep = (f"{config.audit.retention_days} {days}" if config.audit.retention_days
                  else t["forever"])
    nl = lang == "nl"
    shared = config.audit_url.startswith(("postgresql://", "postgres://"))  # issue 20
    where = Section(t["where"], lines=[
        ("Registraties: " if nl else "Records: ") + _where_audit(config.audit_url),
        ("Quarantaine (volledige berichten): " if nl else "Quarantine (whole messages): ")
        + (_where_audit(config.audit_url) if shared else str(config.quarantine_dir)),
        ("Meldingslimiet (adres en tijdstip, 1 uur): " if nl else
         "Notice rate limit (address and time, 1 hour): ")
        + (_where_audit(config.audit_url) if shared
           else str(config.state_dir / "notices.sqlite3")),
        ("Logboek: standaardfout/journald (transactienummer, afzenderadres, regels)" if nl else
         "Logs: stderr/journald (transaction id, sender address, rules)"),
        ("Ondertekende controlepunten (geen persoonsgegevens): " if nl else
         "Signed checkpoints (no personal data): ")
        + str(config.optional_path(config.audit.checkpoint_dir) or "-"),
    ])
    if config.directory.source == "ldap":
        where.lines.append(("Kopie van de directory: " if nl else "Directory copy: ")
                           + str(config.state_dir / "directory-cache.json"))
    retention = Section(t["retention"], lines=[
        ("Persoonsgegevens in registraties: " if nl else "Personal data in records: ")
        + audit_keep + ("; daarna gewist door de gateway zelf (hashes blijven), behalve bij "
                        "een juridische bewaarplicht" if nl and config.audit.retention_days else
                        "; then purged by the gateway itself (hashes stay), except under a "
                        "legal hold" if config.audit.retention_days else ""),
        ("Quarantaine: " if nl else "Quarantine: ")
        + f"{config.quarantine.retention_days} {days}",
        ("Controlepunten: blijven (geen persoonsgegevens)" if nl else
         "Checkpoints: kept (no personal data)"),
        ("Logboek: volgens journald.conf van de server" if nl else
         "Logs: as the server's journald.conf says"),
    ])
    who = Section(t["who"], table=[["gebruiker" if nl else "user", "rol" if nl else "role"]])
    for name, (role, _) in sorted(web_users.items()):
        who.table.append([name, role])
    who.lines.append("auditor: registraties, rapporten; admin: ook quarantaine vrijgeven/"
                     "verwijderen; statistics: alleen aantallen per regel, artikel en maand, "
                     "zonder namen. Elke inzage wordt zelf geregistreerd." if nl else
                     "auditor: records, reports; admin: also releases/deletes held messages; "
                     "statistics: counts per rule, article and month only, no names. Every "
                     "view is itself recorded.")
    parties = Section(t["parties"], lines=[
        ("Volgende mailserver (aflevering): " if nl else "Next hop (delivery): ")
        + config.next_hop.split("?")[0],
        ("Meldingen: de afzender zelf" if nl else "Notices: the sender")
        + ((" en de leidinggevende" if nl else " and the supervisor")
           if any(rp.notice_supervisor for rp in policy.rules.values()) else ""),
    ])
    if config.dns.authenticate:
        parties.lines.append(("DNS-servers (domeinnamen van afzenders, voor SPF/DKIM/DMARC): "
                              if nl else "DNS servers (sender domains, for SPF/DKIM/DMARC): ")
                             + (", ".join(config.dns.nameservers) or "resolv.conf"))
    for rp in policy.rules.values():
        for partner in rp.params.get("partners", ()) or ():
            parties.lines.append(f"{rp.id}: {partner}")
    return [rules, fields_, where, retention, who, parties]


def render_md(title: str, sections: Iterable[Section], note: str) -> str:
    out = [f"# {title}", "", note, ""]
    for s in sections:
        out += [f"## {s.title}", ""]
        out += [f"- {line}" for line in s.lines]
        if s.table:
            out.append("| " + " | ".join(s.table[0]) + " |")
            out.append("|" + " --- |" * len(s.table[0]))
            out += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |"
                    for row in s.table[1:]]
        out.append("")
    return "\n".join(out)


def render_html(title: str, sections: Iterable[Section], note: str, lang: str) -> str:
    e = html.escape
    body = [f"<h1>{e(title)}</h1>", f"<p>{e(note)}</p>"]
    for s in sections:
        body.append(f"<h2>{e(s.title)}</h2>")
        if s.lines:
            body.append("<ul>" + "".join(f"<li>{e(x)}</li>" for x in s.lines) + "</ul>")
        if s.table:
            body.append("<table><tr>" + "".join(f"<th>{e(c)}</th>" for c in s.table[0])
                        + "</tr>" + "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row)
                                            + "</tr>" for row in s.table[1:]) + "</table>")
    style = ("body{font-family:sans-serif;max-width:60em;margin:2em auto}table{border-collapse:"
             "collapse}td,th{border:1px solid #999;padding:.3em;text-align:left;vertical-align:"
             "top}@media print{body{margin:0}}")
    return (f'<!doctype html><html lang="{lang}"><meta charset="utf-8"><title>{e(title)}'
            f"</title><style>{style}</style><body>{''.join(body)}</body></html>\n")


# -- access request (AVG art. 15) ----------------------------------------------------------------

@dataclass
class AccessExport:
    person: str
    addresses: list[str]
    records: list[AuditRecord]           # decisions and notices about them
    holds: list[AuditRecord]
    views: list[AuditRecord]             # who looked at their records, when
    quarantine: list[dict[str, Any]]     # metadata only, never the message

    def to_json(self) -> dict[str, Any]:
        return {"person": self.person, "addresses": self.addresses,
                "records": [r.to_json() for r in self.records],
                "legal_holds": [r.to_json() for r in self.holds],
                "views": [{"id": r.id, "ts": r.ts, "event": r.event, "actor": r.actor,
                           "what": r.evidence} for r in self.views],
                "quarantine": self.quarantine}


def _names(record: AuditRecord, who: set[str]) -> bool:
    if {record.sender.lower(), record.auth_user.lower()} & who or \
            {r.lower() for r in record.recipients} & who:
        return True
    return any(isinstance(r.get("evidence"), dict)
               and str(r["evidence"].get("staff_member", "")).lower() in who
               for r in record.rules)


def access_export(store: AuditStore, quarantine: Quarantine, person: str,
                  linked: Iterable[str] = ()) -> AccessExport:
    """Everything kept about ``person`` (and the private addresses the directory links to
    them): records, legal holds, quarantine entries (metadata), and every view of them."""
    who = {person.lower(), *(a.lower() for a in linked)}
    records: dict[int, AuditRecord] = {}
    for address in sorted(who):
        for r in store.records(Filters(person=address)):
            records[r.id] = r
    views: list[AuditRecord] = []
    holds: list[AuditRecord] = []
    # One pass in record order: a view or a hold always comes after the record it names
    # (the store is append-only), so the set of the person's records is complete for it.
    for r in store.records(Filters()):
        if r.id in records:
            continue
        if r.event in HOLD_EVENTS:
            if (str(r.evidence.get("person", "")).lower() in who
                    or int(r.evidence.get("record", 0) or 0) in records):
                holds.append(r)
            continue
        if r.event in ("viewed", "exported"):
            seen = {int(x) for x in r.evidence.get("ids", []) if str(x).isdigit()}
            one = str(r.evidence.get("id", ""))
            if (any(i in records for i in seen) or str(r.evidence.get("person", "")).lower()
                    in who or (one.isdigit() and int(one) in records)):
                views.append(r)
            continue
        if r.rules and _names(r, who):  # named as the staff member behind a private address
            records[r.id] = r
    held = [{"id": e.id, "stored_at": datetime.fromtimestamp(
                 float(e.meta.get("stored_at", 0)), UTC).isoformat(),
             "txid": e.meta.get("txid", ""),
             "sender": e.meta.get("envelope", {}).get("mail_from", ""),
             "recipients": e.meta.get("envelope", {}).get("rcpt_tos", []),
             "rules": [r.get("id", "") for r in e.meta.get("verdict", {}).get("rules", [])]}
            for e in quarantine.entries()
            if {e.meta.get("envelope", {}).get("mail_from", "").lower(),
                *(x.lower() for x in e.meta.get("envelope", {}).get("rcpt_tos", []))} & who]
    return AccessExport(person, sorted(who), sorted(records.values(), key=lambda r: r.id),
                        sorted(holds, key=lambda r: r.id), views, held)


def export_html(export: AccessExport, lang: str = "nl") -> str:
    nl = lang == "nl"
    rows = [[str(r.id), r.ts[:19].replace("T", " "), r.event,
             ", ".join(str(x.get("id", "")) for x in r.rules), r.sender,
             ", ".join(r.recipients), r.subject, r.txid] for r in export.records]
    sections = [
        Section("Registraties" if nl else "Records", table=[
            ["nr", "tijd (UTC)" if nl else "time (UTC)", "gebeurtenis" if nl else "event",
             "regels" if nl else "rules", "afzender" if nl else "sender",
             "ontvangers" if nl else "recipients", "onderwerp" if nl else "subject", "ref"],
            *rows]),
        Section("Quarantaine" if nl else "Quarantine", table=[
            ["id", "tijd" if nl else "time", "regels" if nl else "rules"],
            *[[q["id"], q["stored_at"][:19], ", ".join(q["rules"])]
              for q in export.quarantine]]),
        Section("Juridische bewaarplicht" if nl else "Legal holds",
                lines=[f"{r.ts[:19]} {r.event} {r.actor}: {r.evidence.get('reason', '')}"
                       for r in export.holds]),
        Section("Wie heeft deze gegevens ingezien" if nl else "Who looked at these records",
                table=[["tijd (UTC)" if nl else "time (UTC)", "wie" if nl else "who",
                        "wat" if nl else "what"],
                       *[[r.ts[:19].replace("T", " "), r.actor,
                          ", ".join(f"{k}={v}" for k, v in sorted(r.evidence.items()))]
                         for r in export.views]]),
    ]
    title = (f"Inzageverzoek (AVG art. 15): {export.person}" if nl else
             f"Access request (GDPR art. 15): {export.person}")
    note = ("Adressen: " if nl else "Addresses: ") + ", ".join(export.addresses)
    return render_html(title, sections, note, lang)
