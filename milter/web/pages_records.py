"""The auditors' pages: searching messages, the expert's log of records, one record, the
export, the per-person report and the chain's verification."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from typing import Any

from milter import csvcells
from milter.audit import search
from milter.audit.report import REPORT_FIELDS, check_records, violations
from milter.audit.sql import COLUMNS
from milter.audit.store import OUTCOMES, Filters
from milter.audit.verify import UnusableKeys, Verification, verify
from milter.web import terms
from milter.web.base import (
    MAX_PAGE,
    PAGE,
    REF,
    PageBase,
    Session,
    _allowed,
    _bounded,
    _show,
)
from milter.web.texts import T


@dataclass
class Search:
    """A search form understood: the store query, what it means in words, what was wrong."""

    query: search.MessageQuery
    meaning: list[str]
    problems: list[str]


class RecordPages(PageBase):
    """What an auditor reads: messages, records, exports, reports, the chain."""

    # -- messages ----------------------------------------------------------------------------
    def _understand(self, q: dict[str, str]) -> Search:
        """The search form in store terms; every value not understood is a problem."""
        t = T[self._lang()]
        lang = self._lang()
        meaning: list[str] = []
        problems: list[str] = []
        since = until = ""
        for key in ("since", "until"):
            # typed (dd-mm-jjjj) or picked (the browser's date picker sends jjjj-mm-dd)
            text = q.get(key, "").strip() or q.get(f"{key}_pick", "").strip()
            if not text:
                continue
            moment = terms.parse_local(text, end=key == "until")
            if moment is None:
                problems.append(t["bad_date"].format(field=t[key], value=text))
            elif key == "since":
                since = terms.stored_ts(moment)
                meaning.append(f"{t['since']} {text}")
            else:
                until = terms.stored_ts(moment)
                meaning.append(f"{t['until']} {text}")
        ref = q.get("ref", "").strip().removeprefix("ref=").strip()
        if ref and not REF.match(ref):
            problems.append(t["bad_ref"].format(value=ref))
            ref = ""
        elif ref:
            meaning.append(f"{t['ref']} {ref}")
        def one_of(field: str, table: dict[str, tuple[str, str, tuple[str, ...]]]) -> str:
            """A Dutch or English value of ``field`` understood, said in words; "" when
            absent or not understood (then said as a problem)."""
            if not q.get(field, "").strip():
                return ""
            value = terms.understand(table, q[field])
            if value is None:
                problems.append(t["bad_value"].format(field=t[field], value=q[field],
                                                      allowed=_allowed(table, lang)))
                return ""
            meaning.append(f"{t[field]} {terms.word(table, value, lang)}")
            return value

        action = one_of("action", terms.ACTIONS)
        actions: tuple[str, ...] = (action,) if action else ()
        direction = one_of("direction", terms.DIRECTIONS)
        outcome = one_of("outcome", terms.OUTCOME_WORDS)
        rules: tuple[str, ...] = ()
        if q.get("rule", "").strip():
            text = q["rule"].strip().lower()
            known = self.app.rule_ids
            exact = [r for r in known if r.lower() == text]
            rules = tuple(exact or [r for r in known if text in r.lower()])
            if not rules:
                problems.append(t["bad_value"].format(field=t["rule"], value=q["rule"],
                                                      allowed=", ".join(known)))
            else:
                meaning.append(f"{t['rule']} {', '.join(rules)}")
        article = q.get("article", "").strip().upper().removeprefix("ARTIKEL ").strip()
        if article:
            meaning.append(f"{t['article']} {article}")
        addresses: tuple[str, ...] | None = None
        person = q.get("person", "").strip()
        if person:
            found = self._people(person)
            addresses = tuple(sorted(found))
            if found:
                shown = ", ".join(addresses[:10]) + (
                    t["and_more"].format(n=len(addresses) - 10) if len(addresses) > 10 else "")
                meaning.append(t["person_means"].format(value=person, addresses=shown))
            else:
                problems.append(t["no_person"].format(value=person))
        sender = q.get("sender", "").strip().lower()
        query = search.MessageQuery(since=since, until=until, ref=ref, addresses=addresses,
                                    rules=rules, article=article, actions=actions,
                                    direction=direction, outcome=outcome,
                                    subject=q.get("subject", "").strip(),
                                    violations_of=sender)
        if query.subject:
            meaning.append(f"{t['subject']} ~ {query.subject}")
        if sender:
            meaning.append(t["violations_of"].format(value=sender))
        return Search(query, meaning, problems)

    def _people(self, part: str) -> set[str]:
        """Every address ``part`` may mean: directory names and addresses (with the private
        addresses the directory links to a person), and addresses in the store."""
        p = part.strip().lower()
        found: set[str] = set()
        for person in self.app.directory.people.values():
            names = (person.name.lower(), person.address.lower(),
                     *(a.lower() for a in person.private_addresses))
            if any(p in n for n in names if n):
                found |= {person.address.lower(), *(a.lower() for a in
                                                    person.private_addresses)}
        found |= set(search.addresses_like(self._searchable(), p))
        return found

    def _messages(self, session: Session, q: dict[str, str]) -> None:
        t = T[self._lang()]
        lang = self._lang()
        s = self._understand(q)
        keep = {k: v for k, v in q.items() if k not in ("before", "after", "lang") and v}
        rows: list[dict[str, Any]] = []
        total = first = 0
        newer = older = False
        if not s.problems:
            before = _bounded(q.get("before", ""))
            after = _bounded(q.get("after", ""))
            store = self._searchable()
            found = search.messages(store, s.query, before=before, after=after, limit=PAGE)
            if after and len(found) < PAGE:  # ran into the newest: show the first page
                found = search.messages(store, s.query, limit=PAGE)
            total = search.count(store, s.query)
            if found:
                newer = search.newer_exists(store, s.query, found[0].id)
                first = (search.count(store, s.query, newer_than=found[0].id) + 1
                         if newer else 1)
                older = first + len(found) - 1 < total
            related = search.by_refs(store, [r.txid for r in found])
            for r in found:
                state = terms.final_state(r, related.get(r.txid, []), lang)
                rows.append({"rec": r, "state": state,
                             "rules": ", ".join(f"{x.get('id', '')} ({x.get('article', '')})"
                                                for x in r.rules),
                             "notices": terms.notified(state.after)})
        self.app.audit(session, "viewed", {"page": "messages", **{
            k: q.get(k, "") for k in ("ref", "since", "until", "rule", "person", "article",
                                      "action", "direction", "outcome", "subject",
                                      "sender", "since_pick", "until_pick")},
                                           "results": total})
        self._render("messages.html", t["messages"], session, q=q, keep=keep, rows=rows,
                     total=total, first=first, newer=newer, older=older, search=s,
                     directions=terms.DIRECTIONS, actions=terms.ACTIONS,
                     rule_ids=self.app.rule_ids, outcome_words=terms.OUTCOME_WORDS,
                     dirword=lambda d: terms.word(terms.DIRECTIONS, d, lang))

    def _message_page(self, session: Session, ref: str) -> None:
        t = T[self._lang()]
        lang = self._lang()
        records = search.by_refs(self._searchable(), [ref]).get(ref, [])
        if not records:
            self._message(session, "404", t["no_message"].format(ref=ref), 404)
            return
        outcomes = [r for r in records if r.event in OUTCOMES]
        main = outcomes[-1] if outcomes else records[-1]
        state = terms.final_state(main, records, lang)
        qid = str(main.evidence.get("quarantine_id", ""))
        entry = self.app.quarantine.get(qid) if qid else None
        self.app.audit(session, "viewed", {"page": "message", "ref": ref,
                                           "ids": [r.id for r in records]})
        self._render("message.html", f"{t['message']} {ref}", session, ref=ref, main=main,
                     state=state, records=records, findings=terms.findings(main, lang),
                     notices=terms.notified(records), qid=qid, held=entry is not None,
                     acts=[r for r in records if r.event.startswith("quarantine-")],
                     event_words=lambda e: terms.word(terms.EVENT_WORDS, e, lang),
                     actword=lambda a: terms.word(terms.ACTIONS, a, lang),
                     direction_word=terms.word(terms.DIRECTIONS, main.direction, lang))

    # -- raw records -------------------------------------------------------------------------
    def _filters(self, q: dict[str, str]) -> Filters:
        since = terms.parse_local(q["since"]) if q.get("since") else None
        until = terms.parse_local(q["until"], end=True) if q.get("until") else None
        return Filters(since=terms.stored_ts(since) if since else q.get("since", ""),
                       until=terms.stored_ts(until) if until else q.get("until", ""),
                       rule=q.get("rule", ""), person=q.get("person", ""),
                       article=q.get("article", ""), action=q.get("action", ""),
                       direction=q.get("direction", ""), event=q.get("event", ""),
                       txid=q.get("ref", ""))

    def _records(self, session: Session, q: dict[str, str]) -> None:
        """Every audit record (events, views, acts) with the old filters: the expert's log."""
        t = T[self._lang()]
        page = min(_bounded(q.get("page", "")), MAX_PAGE)
        f = self._filters(q)
        rows = list(self.app.store.records(Filters(**{**f.__dict__, "limit": PAGE,
                                                      "offset": page * PAGE})))
        self.app.audit(session, "viewed", {"page": "records", **{
            k: q.get(k, "") for k in ("since", "until", "rule", "person", "article", "action",
                                      "direction", "event", "ref")}})
        keep = {k: v for k, v in q.items() if k not in ("page", "lang") and v}
        self._render("records.html", t["records"], session, q=q, rows=rows, keep=keep,
                     page=page, more=len(rows) == PAGE, page_size=PAGE)

    def _record(self, session: Session, record_id: int) -> None:
        t = T[self._lang()]
        r = self.app.store.get(record_id)
        if r is None:
            self._message(session, "404", t["not_found"], 404)
            return
        self.app.audit(session, "viewed", {"page": "record", "ids": [record_id]})
        lang = self._lang()
        hashes = {k: v for k, v in r.to_json().items()
                  if k in ("chain", "seq", "prev_hash", "personal_hash", "content_hash", "hash")}
        self._render("record.html", f"{t['record']} {record_id}", session, r=r, hashes=hashes,
                     raw={k: _show(v) for k, v in r.to_json().items() if k not in hashes},
                     findings=terms.findings(r, lang),
                     event_word=terms.word(terms.EVENT_WORDS, r.event, lang))

    def _export(self, session: Session, q: dict[str, str]) -> None:
        fmt = q.get("format", "csv")
        f = self._filters(q)
        rows = list(self.app.store.records(f))
        self.app.audit(session, "exported", {"page": "export", "format": fmt,
                                             "records": len(rows), "person": f.person,
                                             "rule": f.rule})
        if fmt == "jsonl":
            body = "".join(json.dumps(r.to_json(), ensure_ascii=False, sort_keys=True) + "\n"
                           for r in rows).encode()
            ctype, name = "application/x-ndjson", "audit.jsonl"
        else:
            buf = io.StringIO()
            w = csv.writer(buf)
            w.writerow(COLUMNS)  # the same columns as `skot-milter audit export`
            for r in rows:
                row = r.to_json()
                w.writerow(csvcells.row(_show(row[k]) for k in COLUMNS))
            body, ctype, name = buf.getvalue().encode(), "text/csv; charset=utf-8", "audit.csv"
        self._send(200, body, ctype, extra={"Content-Disposition":
                                            f'attachment; filename="{name}"'})

    # -- per person --------------------------------------------------------------------------
    def _report(self, session: Session, q: dict[str, str]) -> None:
        t = T[self._lang()]
        person = q.get("person", "").strip()
        if not person:
            self._render("report.html", t["report"], session, q=q, person="", who=None,
                         rows=[], problems=[], fields=REPORT_FIELDS)
            return
        who = self.app.directory.lookup(person)
        since = terms.parse_local(q["since"]) if q.get("since") else None
        until = terms.parse_local(q["until"], end=True) if q.get("until") else None
        rows = violations(self.app.store, person, terms.stored_ts(since) if since else "",
                          terms.stored_ts(until) if until else "",
                          who.private_addresses if who is not None else ())
        problems = check_records(self.app.store, [int(r["record"]) for r in rows])
        fmt = q.get("format", "html")
        self.app.audit(session, "exported" if fmt == "csv" else "viewed",
                       {"page": "report", "person": person, "records": len(rows),
                        "format": fmt})
        if fmt == "csv":
            buf = io.StringIO()
            w = csv.DictWriter(buf, fieldnames=["name", *REPORT_FIELDS])
            w.writeheader()
            for row in rows:
                w.writerow(csvcells.record({"name": who.name if who else "", **row}))
            buf.write(f"# {len(rows)} rows: their records "
                      + (f"BROKEN: {'; '.join(problems)}" if problems else
                         "and their links in the audit chain are intact") + "\n")
            self._send(200, buf.getvalue().encode(), "text/csv; charset=utf-8",
                       extra={"Content-Disposition": 'attachment; filename="report.csv"'})
            return
        lang = self._lang()
        for row in rows:  # the CLI's words (English, UTC) said in the page's language
            row["state"] = terms.report_state(row["state"], lang)
            # the reason given with a release (the sender's own, or an admin's)
            _, said, why = row.get("afterwards", "").partition(": ")
            row["reason"] = why if said and row["outcome"] == "quarantined" else ""
            if row["notified"] == "no":
                row["notified"] = t["no"]
        self._render("report.html", f"{t['report']}: {who.name if who and who.name else person}",
                     session, q=q, person=person, who=who, rows=rows, problems=problems,
                     fields=REPORT_FIELDS)

    def _verify(self, session: Session, q: dict[str, str]) -> None:
        t = T[self._lang()]
        # the same answer as `skot-milter audit verify`: the chains and the signed checkpoints
        try:
            result = verify(self.app.store, self.app.config)
        except UnusableKeys as exc:
            result = Verification(self.app.store.verify(), [str(exc)])
        self.app.audit(session, "viewed", {"page": "verify"})
        self._render("verify.html", t["verify"], session, result=result,
                     chains=json.dumps(result.chains.chains)
                     + (f"; {result.checkpoints} checkpoints" if result.checkpoints else ""))
