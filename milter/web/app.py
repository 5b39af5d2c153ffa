"""The auditors' web view: Flask on waitress, Jinja2 templates, no JavaScript, no external
assets.

Every page needs a session (HttpOnly, SameSite=Strict, Secure cookies); every form carries a
per-session CSRF token; every response carries strict security headers; every page view and
export is itself an audit record (who looked at whose records, when). Templates autoescape:
no page is built by string concatenation of stored values.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import json
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import flask
import jinja2
import waitress

from milter import csvcells
from milter import directory as directory_mod
from milter.audit import search
from milter.audit.report import REPORT_FIELDS, check_records, violations
from milter.audit.sql import COLUMNS
from milter.audit.store import OUTCOMES, AuditEvent, AuditStore, Filters
from milter.audit.verify import UnusableKeys, Verification, verify
from milter.config import Config
from milter.directory_ldap import LdapError, LoginRefused
from milter.quarantine import Entry, Quarantine
from milter.web import charts, preview, terms, users
from milter.web.actions import ActionError, QuarantineActions, SelfReleaseRefused
from milter.web.staff_login import DirectoryLogin
from milter.web.texts import T
from milter.web.throttle import HashGate, LoginThrottle

PAGE = 50
MAX_FORM = 65536            # bytes of a posted form; ours are a few hundred
LOGIN_FORM_SECONDS = 900    # how long a login form stays valid
MAX_REASON = 500            # characters of a release/delete reason
# What a "statistics" account may open: counts per rule, article and month, no persons.
NAMELESS = ("/dashboard", "/summary", "/logout")
# What a "staff" account may open: its own held messages' release pages (the notice's link).
OWN = "/vrijgeven"
NEXT = re.compile(r"^/vrijgeven/[A-Za-z0-9_-]{1,64}$")  # where a login may lead back to
REF = re.compile(r"^[0-9A-Za-z_.-]{1,64}$")
STATIC = Path(__file__).parent / "static"

HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}

TEMPLATES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
TEMPLATES.filters["local"] = terms.local_time
TEMPLATES.filters["age"] = terms.age_words
TEMPLATES.filters["urlq"] = lambda d: urlencode({k: v for k, v in d.items() if v})


@dataclass
class Session:
    user: str
    role: str
    csrf: str
    expires: float
    stamp: str = ""  # role and password hash at login: a change ends the session


@dataclass
class WebApp:
    config: Config
    store: AuditStore
    quarantine: Quarantine
    users_file: Path
    actions: QuarantineActions
    rule_ids: tuple[str, ...] = ()
    directory: directory_mod.Directory = directory_mod.EMPTY
    sessions: dict[str, Session] = field(default_factory=dict)
    # Login-form CSRF tokens are signed, not stored: requests without a session must not be
    # able to fill the server's memory.
    secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    throttle: LoginThrottle = field(default_factory=LoginThrottle)
    hashing: HashGate = field(default_factory=HashGate)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # Staff signing in with their school account ([web] staff_ldap_login): from the config.
    staff_directory: DirectoryLogin | None = None
    # Directory binds at once: cheap, but a hanging server must not hold every thread (and
    # has its own gate, so it never keeps the users file's admins out).
    directory_gate: HashGate = field(default_factory=lambda: HashGate(at_once=4))

    def __post_init__(self) -> None:
        if self.staff_directory is None:
            self.staff_directory = DirectoryLogin.from_config(self.config)

    def login_token(self, now: float | None = None) -> str:
        stamp = f"{int(now if now is not None else time.time())}.{secrets.token_urlsafe(12)}"
        mac = hmac.new(self.secret, stamp.encode(), hashlib.sha256).hexdigest()
        return f"{stamp}.{mac}"

    def login_token_ok(self, token: str, max_age: float = LOGIN_FORM_SECONDS) -> bool:
        stamp, _, mac = token.rpartition(".")
        want = hmac.new(self.secret, stamp.encode(), hashlib.sha256).hexdigest()
        issued = stamp.split(".", 1)[0]
        return (hmac.compare_digest(mac, want) and issued.isdigit()
                and 0 <= time.time() - int(issued) <= max_age)

    def audit(self, session: Session, event: str, what: dict[str, Any]) -> None:
        self.store.append(AuditEvent(event=event, action=event, actor=f"web:{session.user}",
                                     evidence={k: v for k, v in what.items() if v}))


@dataclass
class Search:
    """A search form understood: the store query, what it means in words, what was wrong."""

    query: search.MessageQuery
    meaning: list[str]
    problems: list[str]


class Page:
    """One request's view of the web app: the pages, written against the request and
    answering with a response (the routes in ``create_wsgi`` pick the method)."""

    def __init__(self, app: WebApp, request: flask.Request) -> None:
        self.app = app
        self.request = request
        self.path = request.full_path.removesuffix("?")
        self.headers = request.headers
        self.response: flask.Response | None = None

    # -- plumbing --------------------------------------------------------------------------
    def _lang(self) -> str:
        asked = self.request.args.get("lang", "")
        if asked in T:
            return asked
        cookie = self.request.cookies.get("lang", "")
        if cookie in T:
            return cookie
        return "en" if self.headers.get("Accept-Language", "").lower().startswith("en") else "nl"

    def _session(self) -> Session | None:
        token = self.request.cookies.get("skot_session")
        if not token:
            return None
        with self.app.lock:
            s = self.app.sessions.get(token)
            if s is None or s.expires < time.time():
                self.app.sessions.pop(token, None)
                return None
        # the users file is the truth: a removed user, a new role or password ends it
        if s.stamp and users.stamp(self.app.users_file, s.user) != s.stamp:
            with self.app.lock:
                self.app.sessions.pop(token, None)
            return None
        with self.app.lock:
            s.expires = time.time() + self.app.config.web.session_minutes * 60
            return s

    def _send(self, status: int, body: bytes, ctype: str = "text/html; charset=utf-8",
              extra: dict[str, str] | None = None, cookies: list[str] | None = None) -> None:
        resp = flask.Response(body, status=status)
        for k, v in {"Content-Type": ctype, **(extra or {})}.items():
            resp.headers[k] = v
        for c in cookies or []:  # written out by hand: the flags are what the tests pin
            resp.headers.add("Set-Cookie", c)
        self.response = resp

    def _cookie(self, name: str, value: str, max_age: int | None = None) -> str:
        secure = "; Secure" if self.app.config.web.secure_cookies else ""
        age = f"; Max-Age={max_age}" if max_age is not None else ""
        return f"{name}={value}; Path=/; HttpOnly; SameSite=Strict{secure}{age}"

    def _render(self, template: str, title: str, session: Session | None, status: int = 200,
                cookies: list[str] | None = None, **context: Any) -> None:
        lang = self._lang()
        page = TEMPLATES.get_template(template).render(
            t=T[lang], lang=lang, title=title, session=session, path=self.request.path,
            **context)
        lang_cookie = []
        if self.request.args.get("lang", "") in T:
            lang_cookie = [self._cookie("lang", self.request.args["lang"], 86400 * 365)]
        self._send(status, page.encode(), cookies=(cookies or []) + lang_cookie)

    def _message(self, session: Session | None, title: str, text: str, status: int,
                 css: str = "bad") -> None:
        self._render("message_box.html", title, session, status, text=text, css=css)

    def _logout(self, session: Session) -> None:
        with self.app.lock:
            self.app.sessions = {k: v for k, v in self.app.sessions.items() if v is not
                                 session}
        self._send(HTTPStatus.SEE_OTHER, b"", extra={"Location": "/login"},
                   cookies=[self._cookie("skot_session", "", 0)])

    # -- sign-in -----------------------------------------------------------------------------
    def _next(self, value: str) -> str:
        """Where a login leads back to: only a release page (no open redirect)."""
        return value if NEXT.match(value) else ""

    def _login_form(self, error: str = "", status: int = 200, after: str = "") -> None:
        t = T[self._lang()]
        after = self._next(after or self.request.args.get("next", ""))
        self._render("login.html", t["login"], None, status, error=error,
                     token=self.app.login_token(), after=after,
                     school_login=self.app.staff_directory is not None)

    def _login(self, form: dict[str, str]) -> None:
        if not self.app.login_token_ok(form.get("csrf", "")):
            self._send(HTTPStatus.FORBIDDEN, b"CSRF token missing or wrong", "text/plain")
            return
        name = form.get("user", "")[:200]
        address = self.request.remote_addr or ""
        keys = (f"user:{name.strip().lower()}", f"address:{address}")
        wait = self.app.throttle.wait(keys)
        if wait:
            self.app.audit(Session(name, "", "", 0), "login-throttled",
                           {"address": address, "retry_after": int(wait) + 1})
            minutes = int(wait // 60) + 1
            self._send(HTTPStatus.TOO_MANY_REQUESTS,
                       (f"Te veel mislukte pogingen; probeer het over {minutes} minuten "
                        f"opnieuw. / Too many failed attempts; try again in {minutes} "
                        "minutes.").encode(), "text/plain; charset=utf-8",
                       extra={"Retry-After": str(int(wait) + 1)})
            return
        # A users-file name (any case) is checked there; a school address that is not one
        # goes to the directory when staff sign in with their school account.
        directory = self.app.staff_directory
        if directory is not None and (not directory.applies(name) or name.strip().lower() in {
                n.lower() for n in users.read(self.app.users_file)}):
            directory = None
        gate = self.app.hashing if directory is None else self.app.directory_gate
        if not gate.acquire():  # argon2 is 64 MiB a check: a few at a time
            self._send(HTTPStatus.SERVICE_UNAVAILABLE, b"busy, try again in a moment",
                       "text/plain", extra={"Retry-After": "5"})
            return
        why = down = ""
        try:
            if directory is None:
                user = users.authenticate(self.app.users_file, name, form.get("password", ""))
            else:
                try:
                    user = directory.check(name, form.get("password", ""))
                except LoginRefused as exc:
                    user, why = None, exc.why
                except LdapError as exc:
                    user, down = None, str(exc)
        finally:
            gate.release()
        via = "directory" if directory is not None else ""
        if down:  # nobody's fault at the keyboard: not counted against them
            self.app.audit(Session(name, "", "", 0), "login-failed",
                           {"address": address, "via": via,
                            "reason": f"directory unavailable: {down}"})
            self._login_form(T[self._lang()]["directory_down"], 503, form.get("next", ""))
            return
        if user is None:
            self.app.throttle.failed(keys)
            self.app.audit(Session(name, "", "", 0), "login-failed",
                           {"address": address, "via": via, "reason": why})
            self._login_form(T[self._lang()]["bad_login"], 401, form.get("next", ""))
            return
        self.app.throttle.succeeded(keys[0])
        token = secrets.token_urlsafe(32)
        minutes = self.app.config.web.session_minutes
        # a users-file session ends when its line changes; a directory one when it expires
        session = Session(user.name, user.role, secrets.token_urlsafe(24),
                          time.time() + minutes * 60,
                          users.stamp(self.app.users_file, user.name) if not via else "")
        with self.app.lock:
            self.app.sessions[token] = session
        self.app.audit(session, "login", {"role": user.role, "address": address, "via": via})
        home = ({"statistics": "/dashboard", "staff": OWN}.get(user.role, "/messages"))
        home = self._next(form.get("next", "")) or home
        self._send(HTTPStatus.SEE_OTHER, b"", extra={"Location": home},
                   cookies=[self._cookie("skot_session", token)])

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
        actions: tuple[str, ...] = ()
        if q.get("action", "").strip():
            action = terms.understand(terms.ACTIONS, q["action"])
            if action is None:
                problems.append(t["bad_value"].format(field=t["action"], value=q["action"],
                                                      allowed=_allowed(terms.ACTIONS, lang)))
            else:
                actions = (action,)
                meaning.append(f"{t['action']} {terms.word(terms.ACTIONS, action, lang)}")
        direction = ""
        if q.get("direction", "").strip():
            d = terms.understand(terms.DIRECTIONS, q["direction"])
            if d is None:
                problems.append(t["bad_value"].format(
                    field=t["direction"], value=q["direction"],
                    allowed=_allowed(terms.DIRECTIONS, lang)))
            else:
                direction = d
                meaning.append(f"{t['direction']} {terms.word(terms.DIRECTIONS, d, lang)}")
        outcome = ""
        if q.get("outcome", "").strip():
            o = terms.understand(terms.OUTCOME_WORDS, q["outcome"])
            if o is None:
                problems.append(t["bad_value"].format(
                    field=t["outcome"], value=q["outcome"],
                    allowed=_allowed(terms.OUTCOME_WORDS, lang)))
            else:
                outcome = o
                meaning.append(f"{t['outcome']} {terms.word(terms.OUTCOME_WORDS, o, lang)}")
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

    def _searchable(self) -> search.Searchable:
        store = self.app.store
        assert hasattr(store, "select"), "the web view needs an SQL audit store"
        return store  # type: ignore[return-value]

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

    # -- quarantine --------------------------------------------------------------------------
    def _held(self) -> list[preview.Held]:
        days = self.app.config.quarantine.retention_days
        lang = self._lang()
        return sorted((preview.summarise(e, days, lang=lang)
                       for e in self.app.quarantine.entries()), key=lambda h: -h.stored_at)

    def _quarantine(self, session: Session, q: dict[str, str]) -> None:
        t = T[self._lang()]
        self.app.audit(session, "viewed", {"page": "quarantine"})
        self._render("quarantine.html", t["quarantine"], session, held=self._held(),
                     admin=session.role == "admin")

    def _quarantine_entry(self, session: Session, qid: str) -> None:
        t = T[self._lang()]
        entry = self.app.quarantine.get(qid)
        if entry is None:
            self._message(session, "404", t["not_held"].format(id=qid), 404)
            return
        self.app.audit(session, "viewed", {"page": "quarantine-preview", "id": qid,
                                           "ref": str(entry.meta.get("txid", ""))})
        headers, text = preview.preview(entry)
        self._render("quarantine_entry.html", f"{t['quarantine']}: {qid}", session,
                     h=preview.summarise(entry, self.app.config.quarantine.retention_days,
                                         lang=self._lang()),
                     headers=headers, text=text, admin=session.role == "admin")

    def _quarantine_confirm(self, session: Session, qid: str, act: str,
                            error: str = "", status: int = 200) -> None:
        t = T[self._lang()]
        if session.role != "admin":
            self.app.audit(session, "denied", {"page": f"quarantine-{act}", "id": qid})
            self._message(session, t["quarantine"], t["no_access"], 403)
            return
        entry = self.app.quarantine.get(qid)
        if entry is None:
            self._message(session, "404", t["not_held"].format(id=qid), 404)
            return
        h = preview.summarise(entry, self.app.config.quarantine.retention_days,
                              lang=self._lang())
        self._render("quarantine_confirm.html", t[f"confirm_{act}"], session, status, h=h,
                     act=act, error=error)

    def _quarantine_act(self, session: Session, qid: str, act: str,
                        form: dict[str, str]) -> None:
        t = T[self._lang()]
        if session.role != "admin":
            self.app.audit(session, "denied", {"page": f"quarantine-{act}", "id": qid})
            self._message(session, t["quarantine"], t["no_access"], 403)
            return
        entry = self.app.quarantine.get(qid)
        if entry is None:
            self._message(session, "404", t["not_held"].format(id=qid), 404)
            return
        reason = " ".join(form.get("reason", "").split())[:MAX_REASON]
        if not reason:
            self._quarantine_confirm(session, qid, act, t["reason_required"], 400)
            return
        actor = f"web:{session.user}"
        try:
            if act == "release":
                result = self.app.actions.release(entry, actor, reason,
                                                  form.get("notify") == "1")
                text = t["released"].format(id=qid, reply=result)
            else:
                self.app.actions.delete(entry, actor, reason)
                text = t["deleted"].format(id=qid)
        except ActionError as exc:
            self._message(session, t["quarantine"], str(exc), 502)
            return
        self._render("done.html", t["done"], session, text=text,
                     ref=str(entry.meta.get("txid", "")))

    # -- the sender's own release, by the notice's link ----------------------------------
    def _own_home(self, session: Session, q: dict[str, str]) -> None:
        t = T[self._lang()]
        self._message(session, t["sr_title"], t["sr_home"], 200, "ok")

    def _self_refused(self, session: Session, key: str, why: str, status: int,
                      entry: Entry | None = None, **values: str) -> None:
        """A refusal: said in words on the page, and on record (who, which message, why)."""
        t = T[self._lang()]
        text = t[key].format(user=session.user, postmaster=self.app.config.school.postmaster,
                             **values)
        txid = str(entry.meta.get("txid", "")) if entry is not None else ""
        self.app.store.append(AuditEvent(
            event="self-release-refused", action="self-release-refused", txid=txid,
            sender=session.user if session.role == "staff" else "",
            actor=f"web:{session.user}", reply=text,
            evidence={"why": why, "via": "web", "role": session.role,
                      **({"quarantine_id": entry.id} if entry is not None else {})}))
        self._message(session, t["sr_title"], text, status)

    def _own_entry(self, session: Session, token: str) -> Entry | None:
        """The held message behind the link, or None after a refusal was shown."""
        if session.role != "staff":  # an auditor or admin is not the sender
            self._self_refused(session, "sr_not_staff", f"signed in as {session.role}", 403)
            return None
        try:
            return self.app.actions.own_held(token, session.user, self.app.store)
        except SelfReleaseRefused as exc:
            status = {"sr_unknown": 404, "sr_limit": 429, "sr_already": 409}.get(exc.key, 403)
            per_day = str(self.app.actions.policy.self_release.per_day
                          if self.app.actions.policy is not None else 0)
            self._self_refused(session, exc.key, exc.why, status, exc.entry, n=per_day)
            return None

    def _own_page(self, session: Session, token: str, error: str = "",
                  status: int = 200) -> None:
        entry = self._own_entry(session, token)
        if entry is None:
            return
        t = T[self._lang()]
        lang = self._lang()
        if not error:
            self.app.audit(session, "viewed", {"page": "self-release", "id": entry.id,
                                               "ref": str(entry.meta.get("txid", ""))})
        self._render("self_release.html", t["sr_title"], session, status, error=error,
                     h=preview.summarise(entry, self.app.config.quarantine.retention_days,
                                         lang=lang),
                     why=self.app.actions.reasons(entry, lang), token=token)

    def _own_release(self, session: Session, token: str, form: dict[str, str]) -> None:
        t = T[self._lang()]
        entry = self._own_entry(session, token)
        if entry is None:
            return
        reason = " ".join(form.get("reason", "").split())[:MAX_REASON]
        if not reason:
            self.app.store.append(AuditEvent(
                event="self-release-refused", action="self-release-refused",
                txid=str(entry.meta.get("txid", "")), sender=session.user,
                actor=f"web:{session.user}", reply=t["sr_reason_required"],
                evidence={"why": "no reason given", "via": "web", "quarantine_id": entry.id}))
            self._own_page(session, token, t["sr_reason_required"], 400)
            return
        try:
            line = self.app.actions.self_release(entry, session.user, reason)
        except SelfReleaseRefused as exc:
            self._self_refused(session, exc.key, exc.why, 409, exc.entry)
            return
        except ActionError as exc:
            self._message(session, t["sr_title"], t["sr_failed"].format(error=str(exc)), 502)
            return
        self.app.store.append(AuditEvent(
            event="self-release", action="self-release", txid=str(entry.meta.get("txid", "")),
            sender=session.user, actor=f"web:{session.user}", reply=line,
            recipients=tuple(entry.meta.get("envelope", {}).get("rcpt_tos", [])),
            evidence={"quarantine_id": entry.id, "released_txid": entry.meta.get("txid", ""),
                      "reason": reason, "next_hop_reply": line, "via": "web"}))
        self._message(session, t["sr_title"], t["sr_done"], 200, "ok")

    # -- statistics --------------------------------------------------------------------------
    def _dashboard(self, session: Session, q: dict[str, str]) -> None:
        t = T[self._lang()]
        lang = self._lang()
        days = int(q["days"]) if q.get("days", "").isdigit() else 30
        days = min(max(days, 1), 366)
        today = datetime.now(UTC).astimezone(terms.LOCAL).date()
        first = today - timedelta(days=days - 1)
        since, until = terms.day_start(first), terms.day_start(today + timedelta(days=1))
        store = self._searchable()
        per_day: dict[date, dict[str, int]] = {}
        days_of: dict[str, date] = {}  # a year has 8 760 hours but ten times as many rows
        for hour, event, n in search.events_by_hour(store, terms.stored_ts(since),
                                                    terms.stored_ts(until)):
            day = days_of.get(hour)
            if day is None:
                day = days_of[hour] = terms.local_day(hour + ":00:00Z")
            counts = per_day.setdefault(day, {})
            counts[event] = counts.get(event, 0) + n
        span = {"since": _nl(first), "until": _nl(today)}
        colors = dict(zip(OUTCOMES, charts.PALETTE, strict=False))
        daily = []
        notices = []
        for i in range(days):
            day = first + timedelta(days=i)
            counts = per_day.get(day, {})
            one = {"since": _nl(day), "until": _nl(day)}
            daily.append((day.strftime("%d-%m"), [
                charts.Bar(terms.word(terms.OUTCOME_WORDS, o, lang), counts.get(o, 0),
                           "/messages?" + urlencode({**one, "outcome": o}), colors[o],
                           f"{day.isoformat()}:{o}") for o in OUTCOMES]))
            notices.append((day.strftime("%d-%m"), [
                charts.Bar(terms.word(terms.EVENT_WORDS, ev, lang), counts.get(ev, 0),
                           "/records?" + urlencode({**one, "event": ev}), color,
                           f"{day.isoformat()}:{ev}")
                for ev, color in (("notice-sent", charts.PALETTE[3]),
                                  ("notice-suppressed", charts.PALETTE[2]),
                                  ("notice-failed", charts.PALETTE[1]))]))
        s_ts, u_ts = terms.stored_ts(since), terms.stored_ts(until)
        rules = [charts.Bar(f"{r} ({a})", n, "/messages?" + urlencode({**span, "rule": r}),
                            key=r) for r, a, n in search.rules_between(store, s_ts, u_ts)]
        senders = [charts.Bar(sender, n, "/messages?" + urlencode({**span, "sender": sender}),
                              charts.PALETTE[1], key=sender)
                   for sender, n in search.top_senders(store, s_ts, u_ts)]
        months = []
        month = date(today.year, today.month, 1)
        starts = []
        for _ in range(12):
            starts.append(month)
            month = (month - timedelta(days=1)).replace(day=1)
        article_colors: dict[str, str] = {}
        for m in reversed(starts):
            nxt = (m + timedelta(days=32)).replace(day=1)
            bars = []
            for article, n in search.articles_between(store, terms.stored_ts(
                    terms.day_start(m)), terms.stored_ts(terms.day_start(nxt))):
                color = article_colors.setdefault(
                    article, charts.PALETTE[len(article_colors) % len(charts.PALETTE)])
                bars.append(charts.Bar(article, n, "/messages?" + urlencode(
                    {"since": _nl(m), "until": _nl(nxt - timedelta(days=1)),
                     "article": article}), color, f"{m:%Y-%m}:{article}"))
            months.append((f"{m:%m-%Y}", bars))
        held = self._held()
        ages = [(t["age_1"], 0, 1), (t["age_7"], 1, 7), (t["age_30"], 7, 30),
                (t["age_old"], 30, 10**6)]
        q_bars = [charts.Bar(label, sum(1 for h in held if lo <= h.age_days < hi),
                             "/quarantine", charts.PALETTE[2], f"age:{lo}")
                  for label, lo, hi in ages]
        self.app.audit(session, "viewed", {"page": "dashboard", "days": days})
        self._render(
            "dashboard.html", t["dashboard"], session, days=days, first=first, today=today,
            daily=charts.columns("chart-daily", t["chart_daily"], daily),
            notices=charts.columns("chart-notices", t["chart_notices"], notices),
            rules=charts.hbars("chart-rules", t["chart_rules"], rules),
            senders=(charts.hbars("chart-senders", t["chart_senders"], senders)
                     if session.role != "statistics" else ""),
            articles=charts.columns("chart-articles", t["chart_articles"], months),
            quarantine=charts.hbars("chart-quarantine", t["chart_quarantine"], q_bars),
            held_count=len(held), held_bytes=sum(h.size for h in held),
            legend=[(terms.word(terms.OUTCOME_WORDS, o, lang), colors[o]) for o in OUTCOMES],
            article_legend=sorted(article_colors.items()),
            this_month=f"{today:%Y-%m}")

    def _summary(self, session: Session, q: dict[str, str]) -> None:
        """The month's decisions per article, for the board (HTML and CSV)."""
        t = T[self._lang()]
        lang = self._lang()
        m = re.match(r"^(\d{4})-(\d{1,2})$", q.get("month", ""))
        today = datetime.now(UTC).astimezone(terms.LOCAL).date()
        try:
            start = date(int(m.group(1)), int(m.group(2)), 1) if m else today.replace(day=1)
        except ValueError:
            start = today.replace(day=1)
        end = (start + timedelta(days=32)).replace(day=1)
        rows = search.articles_by_outcome(self._searchable(),
                                          terms.stored_ts(terms.day_start(start)),
                                          terms.stored_ts(terms.day_start(end)))
        fmt = q.get("format", "html")
        self.app.audit(session, "exported" if fmt == "csv" else "viewed",
                       {"page": "summary", "month": f"{start:%Y-%m}", "format": fmt})
        header = [t["article"], *(terms.word(terms.OUTCOME_WORDS, o, lang) for o in OUTCOMES),
                  t["total"]]
        table = []
        for article, counts in sorted(rows.items()):
            table.append([article, *(counts.get(o, 0) for o in OUTCOMES),
                          sum(counts.values())])
        if fmt == "csv":
            buf = io.StringIO()
            w = csv.writer(buf)
            w.writerow(csvcells.row(header))
            w.writerows(csvcells.row(r) for r in table)
            self._send(200, buf.getvalue().encode(), "text/csv; charset=utf-8",
                       extra={"Content-Disposition": f'attachment; filename="summary-'
                                                     f'{start:%Y-%m}.csv"'})
            return
        prev = (start - timedelta(days=1)).replace(day=1)
        self._render("summary.html", f"{t['summary']} {start:%m-%Y}", session, header=header,
                     table=table, month=f"{start:%Y-%m}", prev=f"{prev:%Y-%m}",
                     next=f"{end:%Y-%m}", outcomes=OUTCOMES,
                     span={"since": _nl(start), "until": _nl(end - timedelta(days=1))})


def _nl(day: date) -> str:
    return day.strftime("%d-%m-%Y")


def _allowed(table: dict[str, tuple[str, str, tuple[str, ...]]], lang: str) -> str:
    return ", ".join(f"{nl} / {en}" for nl, en, _ in table.values())


MAX_ID = 2**63 - 1   # the largest record id either database can hold
MAX_PAGE = 10**6     # pages of the expert's log: beyond, an offset no store can serve


def _bounded(text: str) -> int:
    """A number from a query string, 0 when absent, capped at what the stores can hold: a
    huge ``?page=`` or ``?before=`` is an empty page, never an overflow and a dropped
    connection (issue 13 item 14)."""
    return min(int(text), MAX_ID) if text.isdigit() else 0


def _show(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v, ensure_ascii=False, sort_keys=True)


def create_wsgi(app: WebApp) -> flask.Flask:
    """The WSGI application: routes, the session and CSRF guard, the security headers."""
    wsgi = flask.Flask(__name__, static_folder=None)
    wsgi.config["MAX_CONTENT_LENGTH"] = MAX_FORM

    def page() -> Page:
        current: Page = flask.g.page
        return current

    def answer(p: Page) -> flask.Response:
        assert p.response is not None
        return p.response

    @wsgi.before_request
    def guard() -> flask.Response | None:
        """Nothing but the login page and the stylesheet without a session; no POST
        without the session's CSRF token."""
        p = flask.g.page = Page(app, flask.request)
        if flask.request.path in ("/login", "/static/style.css"):
            return None
        session = p._session()
        if session is None:
            if flask.request.method in ("GET", "HEAD"):
                # the notice's link: back to it after signing in
                after = ("/login?" + urlencode({"next": flask.request.path})
                         if NEXT.match(flask.request.path) else "/login")
                return flask.Response(b"", HTTPStatus.SEE_OTHER, {"Location": after})
            return flask.Response(b"forbidden", HTTPStatus.FORBIDDEN, mimetype="text/plain")
        if flask.request.method == "POST" and not secrets.compare_digest(
                flask.request.form.get("csrf", ""), session.csrf):
            return flask.Response(b"CSRF token missing or wrong", HTTPStatus.FORBIDDEN,
                                  mimetype="text/plain")
        flask.g.session = session
        own = flask.request.path == OWN or flask.request.path.startswith(OWN + "/")
        if session.role == "staff" and not own and flask.request.path != "/logout":
            p.app.audit(session, "denied", {"page": flask.request.path})
            return flask.Response(b"forbidden: this account releases its own held messages "
                                  b"only", HTTPStatus.FORBIDDEN, mimetype="text/plain")
        if session.role == "statistics" and flask.request.path not in NAMELESS:
            p.app.audit(session, "denied", {"page": flask.request.path})
            return flask.Response(b"forbidden: this account sees counts only",
                                  HTTPStatus.FORBIDDEN, mimetype="text/plain")
        return None

    @wsgi.after_request
    def secure(resp: flask.Response) -> flask.Response:
        for k, v in HEADERS.items():
            resp.headers[k] = v
        return resp

    @wsgi.errorhandler(HTTPStatus.NOT_FOUND)
    def not_found(_: Exception) -> flask.Response:
        p = page()
        p._message(flask.g.get("session"), "404", T[p._lang()]["not_found"], 404)
        return answer(p)

    @wsgi.get("/static/style.css")
    def style() -> flask.Response:
        return flask.Response((STATIC / "style.css").read_bytes(),
                              mimetype="text/css", content_type="text/css; charset=utf-8")

    @wsgi.get("/login")
    def login_form() -> flask.Response:
        p = page()
        p._login_form()
        return answer(p)

    @wsgi.post("/login")
    def login() -> flask.Response:
        p = page()
        p._login({k: v for k, v in flask.request.form.items()})
        return answer(p)

    @wsgi.post("/logout")
    def logout() -> flask.Response:
        p = page()
        p._logout(flask.g.session)
        return answer(p)

    def view(method: Callable[[Page, Session, dict[str, str]], None]
             ) -> Callable[[], flask.Response]:
        def run() -> flask.Response:
            p = page()
            method(p, flask.g.session, {k: v for k, v in flask.request.args.items()})
            return answer(p)
        return run

    for rule, method in (("/", Page._messages), ("/messages", Page._messages),
                         ("/records", Page._records), ("/report", Page._report),
                         ("/verify", Page._verify), ("/export", Page._export),
                         ("/quarantine", Page._quarantine), ("/dashboard", Page._dashboard),
                         ("/summary", Page._summary)):
        wsgi.add_url_rule(rule, f"page{rule}", view(method), methods=["GET"])

    wsgi.add_url_rule(OWN, "page/own", view(Page._own_home), methods=["GET"])

    @wsgi.get("/vrijgeven/<token>")
    def own_page(token: str) -> flask.Response:
        p = page()
        p._own_page(flask.g.session, token)
        return answer(p)

    @wsgi.post("/vrijgeven/<token>")
    def own_release(token: str) -> flask.Response:
        p = page()
        p._own_release(flask.g.session, token, {k: v for k, v in flask.request.form.items()})
        return answer(p)

    @wsgi.get("/records/<int:record_id>")
    def record(record_id: int) -> flask.Response:
        if record_id > MAX_ID:  # no such record; a database integer would overflow
            flask.abort(HTTPStatus.NOT_FOUND)
        p = page()
        p._record(flask.g.session, record_id)
        return answer(p)

    @wsgi.get("/messages/<ref>")
    def message(ref: str) -> flask.Response:
        if not REF.match(ref):
            flask.abort(HTTPStatus.NOT_FOUND)
        p = page()
        p._message_page(flask.g.session, ref)
        return answer(p)

    @wsgi.get("/quarantine/<qid>")
    def held(qid: str) -> flask.Response:
        p = page()
        p._quarantine_entry(flask.g.session, qid)
        return answer(p)

    @wsgi.get("/quarantine/<qid>/<any(release, delete):act>")
    def confirm(qid: str, act: str) -> flask.Response:
        p = page()
        p._quarantine_confirm(flask.g.session, qid, act)
        return answer(p)

    @wsgi.post("/quarantine/<qid>/<any(release, delete):act>")
    def act(qid: str, act: str) -> flask.Response:
        p = page()
        p._quarantine_act(flask.g.session, qid, act,
                          {k: v for k, v in flask.request.form.items()})
        return answer(p)

    return wsgi


class WebServer:
    """waitress serving the WSGI application: a maintained production server with bounded
    request sizes, idle time-outs and a fixed pool of worker threads."""

    def __init__(self, app: WebApp, host: str, port: int, threads: int = 8) -> None:
        self._server = waitress.create_server(
            create_wsgi(app), host=host, port=port, threads=threads, ident="skot-milter-web",
            max_request_body_size=MAX_FORM, max_request_header_size=65536,
            channel_timeout=60, clear_untrusted_proxy_headers=True)
        self.server_address = (host, int(getattr(self._server, "effective_port", port)))
        self._closed = False

    def serve_forever(self) -> None:
        self._server.run()

    def shutdown(self) -> None:
        """Stop listening. The sockets are closed by the serving thread itself (through
        waitress's trigger): closing them under its select() would fail there."""
        self._server.task_dispatcher.shutdown(timeout=5)  # requests under way finish first
        closed = threading.Event()

        def close() -> None:
            self.server_close()
            closed.set()

        try:
            self._server.trigger.pull_trigger(close)
        except OSError:  # the serving loop has already closed its trigger: it is gone
            self.server_close()
            return
        closed.wait(5)

    def server_close(self) -> None:
        """Close the listening socket (from the serving thread, or after it returned)."""
        if not self._closed:
            self._closed = True
            self._server.close()


def make_server(app: WebApp, host: str, port: int) -> WebServer:
    return WebServer(app, host, port)
