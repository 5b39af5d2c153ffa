"""The auditors' web view: stdlib HTTP server, no JavaScript, no external assets.

Every page needs a session (HttpOnly, SameSite=Strict, Secure cookies); every form carries a
per-session CSRF token; every response carries strict security headers; every page view and
export is itself an audit record (who looked at whose records, when).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import hmac
import html
import io
import json
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from milter import quarantine
from milter.audit.report import REPORT_FIELDS, violations
from milter.audit.sql import COLUMNS
from milter.audit.store import AuditEvent, AuditStore, Filters
from milter.audit.verify import UnusableKeys, Verification, verify
from milter.config import Config
from milter.quarantine import Quarantine
from milter.web import users

e = html.escape
PAGE = 50
MAX_FORM = 65536            # bytes of a posted form; ours are a few hundred
LOGIN_FORM_SECONDS = 900    # how long a login form stays valid

T = {
    "nl": {"records": "Registraties", "report": "Rapport per persoon", "verify": "Controle",
           "quarantine": "Quarantaine", "logout": "Afmelden", "login": "Aanmelden",
           "user": "Gebruiker", "password": "Wachtwoord", "filter": "Filteren",
           "since": "Vanaf", "until": "Tot", "rule": "Regel", "article": "Artikel",
           "person": "Persoon", "action": "Actie", "direction": "Richting", "export": "Exporteren",
           "time": "Tijd", "event": "Gebeurtenis", "sender": "Afzender",
           "recipients": "Ontvangers", "ref": "Referentie", "intact": "Audit-keten intact",
           "broken": "Audit-keten GEBROKEN", "release": "Vrijgeven", "delete": "Verwijderen",
           "bad_login": "Onbekende gebruiker of onjuist wachtwoord.",
           "no_access": "Alleen beheerders mogen berichten vrijgeven of verwijderen.",
           "done": "Gedaan", "next": "Volgende", "subject": "Onderwerp", "evidence": "Bewijs"},
    "en": {"records": "Records", "report": "Per-person report", "verify": "Verification",
           "quarantine": "Quarantine", "logout": "Log out", "login": "Log in",
           "user": "User", "password": "Password", "filter": "Filter",
           "since": "Since", "until": "Until", "rule": "Rule", "article": "Article",
           "person": "Person", "action": "Action", "direction": "Direction", "export": "Export",
           "time": "Time", "event": "Event", "sender": "Sender", "recipients": "Recipients",
           "ref": "Reference", "intact": "Audit chain intact", "broken": "Audit chain BROKEN",
           "release": "Release", "delete": "Delete",
           "bad_login": "Unknown user or wrong password.",
           "no_access": "Only admins may release or delete messages.",
           "done": "Done", "next": "Next", "subject": "Subject", "evidence": "Evidence"},
}

CSS = """body{font-family:sans-serif;margin:1em 2em;max-width:80em}
nav a{margin-right:1em}table{border-collapse:collapse}td,th{border:1px solid #bbb;
padding:2px 6px;text-align:left;vertical-align:top}.ok{color:#060}.bad{color:#a00}
form.inline{display:inline}pre{white-space:pre-wrap}"""

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


@dataclass
class Session:
    user: str
    role: str
    csrf: str
    expires: float


@dataclass
class WebApp:
    config: Config
    store: AuditStore
    quarantine: Quarantine
    users_file: Path
    release: Callable[[str, str], str]     # (quarantine id, actor) -> next hop reply
    sessions: dict[str, Session] = field(default_factory=dict)
    # Login-form CSRF tokens are signed, not stored: requests without a session must not be
    # able to fill the server's memory.
    secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    lock: threading.Lock = field(default_factory=threading.Lock)

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

    def verify(self) -> Verification:
        """Chains and signed checkpoints, exactly as ``skot-milter audit verify`` checks."""
        try:
            return verify(self.store, self.config)
        except UnusableKeys as exc:
            return Verification(self.store.verify(), [str(exc)])

    def audit(self, session: Session, event: str, what: dict[str, Any]) -> None:
        self.store.append(AuditEvent(event=event, action=event, actor=f"web:{session.user}",
                                     evidence={k: v for k, v in what.items() if v}))


class Handler(BaseHTTPRequestHandler):
    app: WebApp
    server_version = "skot-milter-web"
    sys_version = ""

    # -- plumbing --------------------------------------------------------------------------
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        return None  # access is audited in the store; no personal data in stderr

    def _lang(self) -> str:
        q = parse_qs(urlsplit(self.path).query)
        if q.get("lang", [""])[0] in T:
            return q["lang"][0]
        cookie = self._cookies().get("lang")
        if cookie is not None and cookie.value in T:
            return cookie.value
        return "en" if self.headers.get("Accept-Language", "").lower().startswith("en") else "nl"

    def _cookies(self) -> SimpleCookie:
        c: SimpleCookie = SimpleCookie()
        with contextlib.suppress(Exception):  # a malformed Cookie header is no session
            c.load(self.headers.get("Cookie", ""))
        return c

    def _session(self) -> Session | None:
        morsel = self._cookies().get("skot_session")
        if morsel is None:
            return None
        with self.app.lock:
            s = self.app.sessions.get(morsel.value)
            if s is None or s.expires < time.time():
                self.app.sessions.pop(morsel.value, None)
                return None
            s.expires = time.time() + self.app.config.web.session_minutes * 60
            return s

    def _send(self, status: int, body: bytes, ctype: str = "text/html; charset=utf-8",
              extra: dict[str, str] | None = None, cookies: list[str] | None = None) -> None:
        self.send_response(status)
        for k, v in {**HEADERS, "Content-Type": ctype, **(extra or {})}.items():
            self.send_header(k, v)
        for c in cookies or []:
            self.send_header("Set-Cookie", c)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _cookie(self, name: str, value: str, max_age: int | None = None) -> str:
        secure = "; Secure" if self.app.config.web.secure_cookies else ""
        age = f"; Max-Age={max_age}" if max_age is not None else ""
        return f"{name}={value}; Path=/; HttpOnly; SameSite=Strict{secure}{age}"

    def _page(self, title: str, body: str, session: Session | None, status: int = 200,
              cookies: list[str] | None = None) -> None:
        t = T[self._lang()]
        nav = ""
        if session is not None:
            links = [("/records", t["records"]), ("/report", t["report"]),
                     ("/verify", t["verify"])]
            if session.role == "admin":
                links.append(("/quarantine", t["quarantine"]))
            nav = ("<nav>" + "".join(f'<a href="{h}">{e(n)}</a>' for h, n in links)
                   + f'<form class="inline" method="post" action="/logout">'
                   f'<input type="hidden" name="csrf" value="{e(session.csrf)}">'
                   f'<button>{e(t["logout"])} ({e(session.user)})</button></form>'
                   ' <a href="?lang=nl">nl</a> <a href="?lang=en">en</a></nav>')
        page = (f'<!DOCTYPE html><html lang="{self._lang()}"><head><meta charset="utf-8">'
                f'<title>{e(title)} - skot-milter</title>'
                f'<link rel="stylesheet" href="/static/style.css"></head><body>{nav}'
                f"<h1>{e(title)}</h1>{body}</body></html>")
        lang_cookie = []
        q = parse_qs(urlsplit(self.path).query)
        if q.get("lang", [""])[0] in T:
            lang_cookie = [self._cookie("lang", q["lang"][0], 86400 * 365)]
        self._send(status, page.encode(), cookies=(cookies or []) + lang_cookie)

    def _form(self) -> dict[str, str] | None:
        """The posted form, or None after answering a body we will not read (400/413)."""
        raw = (self.headers.get("Content-Length") or "0").strip()
        if not raw.isdigit():  # "-1" would read until the client hangs up
            self._send(HTTPStatus.BAD_REQUEST, b"bad Content-Length", "text/plain",
                       extra={"Connection": "close"})
            self.close_connection = True
            return None
        if int(raw) > MAX_FORM:
            self._send(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, b"form too large", "text/plain",
                       extra={"Connection": "close"})
            self.close_connection = True
            return None
        data = self.rfile.read(int(raw)).decode("utf-8", "replace")
        return {k: v[0] for k, v in parse_qs(data).items()}

    # -- routes ------------------------------------------------------------------------------
    def do_GET(self) -> None:  # noqa: N802
        url = urlsplit(self.path)
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        if url.path == "/static/style.css":
            self._send(200, CSS.encode(), "text/css; charset=utf-8")
            return
        if url.path == "/login":
            self._login_form()
            return
        session = self._session()
        if session is None:
            # Unauthenticated requests get nothing but the way to the login page.
            self._send(HTTPStatus.SEE_OTHER, b"", extra={"Location": "/login"})
            return
        routes: dict[str, Callable[[Session, dict[str, str]], None]] = {
            "/": self._records, "/records": self._records, "/report": self._report,
            "/verify": self._verify, "/export": self._export, "/quarantine": self._quarantine}
        if url.path.startswith("/records/") and url.path[9:].isdigit():
            self._record(session, int(url.path[9:]))
        elif url.path in routes:
            routes[url.path](session, q)
        else:
            self._page("404", "", session, 404)

    def do_POST(self) -> None:  # noqa: N802
        url = urlsplit(self.path)
        form = self._form()
        if form is None:
            return
        if url.path == "/login":
            self._login(form)
            return
        session = self._session()
        if session is None:
            self._send(HTTPStatus.FORBIDDEN, b"forbidden", "text/plain")
            return
        if not secrets.compare_digest(form.get("csrf", ""), session.csrf):
            self._send(HTTPStatus.FORBIDDEN, b"CSRF token missing or wrong", "text/plain")
            return
        if url.path == "/logout":
            with self.app.lock:
                self.app.sessions = {k: v for k, v in self.app.sessions.items() if v is not
                                     session}
            self._send(HTTPStatus.SEE_OTHER, b"", extra={"Location": "/login"},
                       cookies=[self._cookie("skot_session", "", 0)])
            return
        parts = url.path.strip("/").split("/")
        if len(parts) == 3 and parts[0] == "quarantine" and parts[2] in ("release", "delete"):
            self._quarantine_act(session, parts[1], parts[2])
            return
        self._send(HTTPStatus.NOT_FOUND, b"not found", "text/plain")

    # -- pages -------------------------------------------------------------------------------
    def _login_form(self, error: str = "", status: int = 200) -> None:
        t = T[self._lang()]
        token = self.app.login_token()
        body = (f'<p class="bad">{e(error)}</p>' if error else "") + (
            f'<form method="post" action="/login"><input type="hidden" name="csrf" '
            f'value="{token}"><p><label>{e(t["user"])} <input name="user" id="user" '
            f'autocomplete="username" required></label></p><p><label>{e(t["password"])} '
            f'<input type="password" name="password" id="password" '
            f'autocomplete="current-password" required></label></p>'
            f'<p><button id="login">{e(t["login"])}</button></p></form>')
        self._page(t["login"], body, None, status)

    def _login(self, form: dict[str, str]) -> None:
        if not self.app.login_token_ok(form.get("csrf", "")):
            self._send(HTTPStatus.FORBIDDEN, b"CSRF token missing or wrong", "text/plain")
            return
        user = users.authenticate(self.app.users_file, form.get("user", ""),
                                  form.get("password", ""))
        if user is None:
            self._login_form(T[self._lang()]["bad_login"], 401)
            return
        token = secrets.token_urlsafe(32)
        minutes = self.app.config.web.session_minutes
        session = Session(user.name, user.role, secrets.token_urlsafe(24),
                          time.time() + minutes * 60)
        with self.app.lock:
            self.app.sessions[token] = session
        self.app.audit(session, "login", {"role": user.role})
        self._send(HTTPStatus.SEE_OTHER, b"", extra={"Location": "/records"},
                   cookies=[self._cookie("skot_session", token)])

    def _filters(self, q: dict[str, str]) -> Filters:
        page = int(q["page"]) if q.get("page", "").isdigit() else 0
        return Filters(since=q.get("since", ""), until=q.get("until", ""),
                       rule=q.get("rule", ""), person=q.get("person", ""),
                       article=q.get("article", ""), action=q.get("action", ""),
                       direction=q.get("direction", ""), limit=PAGE, offset=page * PAGE)

    def _records(self, session: Session, q: dict[str, str]) -> None:
        t = T[self._lang()]
        f = self._filters(q)
        rows = list(self.app.store.records(f))
        self.app.audit(session, "viewed", {"page": "records", **{
            k: q.get(k, "") for k in ("since", "until", "rule", "person", "article", "action",
                                      "direction")}})
        inputs = "".join(
            f'<label>{e(t[k])} <input name="{k}" id="f-{k}" value="{e(q.get(k, ""))}"></label> '
            for k in ("since", "until", "rule", "article", "person", "action", "direction"))
        keep = {k: v for k, v in q.items() if k != "page" and v}
        table = "".join(
            f'<tr><td><a href="/records/{r.id}">{r.id}</a></td><td>{e(r.ts[:19])}</td>'
            f"<td>{e(r.event)}</td><td>{e(r.action)}</td><td>{e(r.direction)}</td>"
            f"<td>{e(r.sender)}</td><td>{e(', '.join(r.recipients))}</td>"
            f"<td>{e(', '.join(str(x.get('id', '')) for x in r.rules))}</td>"
            f"<td>{e(r.txid)}</td></tr>" for r in rows)
        nxt = (f'<p><a href="/records?{e(urlencode({**keep, "page": f.offset // PAGE + 1}))}">'
               f'{e(t["next"])}</a></p>' if len(rows) == PAGE else "")
        body = (f'<form method="get" action="/records">{inputs}<button id="filter">'
                f'{e(t["filter"])}</button></form>'
                f'<p><a id="export" href="/export?{e(urlencode({**keep, "format": "csv"}))}">'
                f'{e(t["export"])} CSV</a> · <a href="/export?'
                f'{e(urlencode({**keep, "format": "jsonl"}))}">JSON lines</a></p>'
                f'<table id="records"><tr><th>id</th><th>{e(t["time"])}</th><th>'
                f'{e(t["event"])}</th><th>{e(t["action"])}</th><th>{e(t["direction"])}</th>'
                f'<th>{e(t["sender"])}</th><th>{e(t["recipients"])}</th><th>{e(t["rule"])}'
                f'</th><th>{e(t["ref"])}</th></tr>{table}</table>{nxt}')
        self._page(t["records"], body, session)

    def _record(self, session: Session, record_id: int) -> None:
        t = T[self._lang()]
        r = self.app.store.get(record_id)
        if r is None:
            self._page("404", "", session, 404)
            return
        self.app.audit(session, "viewed", {"page": "record", "ids": [record_id]})
        rows = "".join(f"<tr><th>{e(k)}</th><td><pre>{e(_show(v))}</pre></td></tr>"
                       for k, v in r.to_json().items())
        self._page(f"{t['records']} {record_id}", f'<table id="record">{rows}</table>', session)

    def _report(self, session: Session, q: dict[str, str]) -> None:
        t = T[self._lang()]
        person = q.get("person", "")
        form = (f'<form method="get" action="/report"><label>{e(t["person"])} <input '
                f'name="person" id="r-person" value="{e(person)}"></label> <label>'
                f'{e(t["since"])} <input name="since" value="{e(q.get("since", ""))}"></label> '
                f'<label>{e(t["until"])} <input name="until" value="{e(q.get("until", ""))}">'
                f'</label> <button id="report-go">{e(t["report"])}</button></form>')
        if not person:
            self._page(t["report"], form, session)
            return
        rows = violations(self.app.store, person, q.get("since", ""), q.get("until", ""))
        result = self.app.verify()
        self.app.audit(session, "viewed", {"page": "report", "person": person,
                                           "records": len(rows)})
        status = (f'<p class="ok">{e(t["intact"])}</p>' if result.ok else
                  f'<p class="bad">{e(t["broken"])}: {e("; ".join(result.problems))}</p>')
        table = "".join("<tr>" + "".join(f"<td>{e(row[k])}</td>" for k in REPORT_FIELDS)
                        + "</tr>" for row in rows)
        self._page(f"{t['report']}: {person}", form + status + '<table id="report"><tr>'
                   + "".join(f"<th>{e(k)}</th>" for k in REPORT_FIELDS) + f"</tr>{table}"
                   "</table>", session)

    def _verify(self, session: Session, q: dict[str, str]) -> None:
        t = T[self._lang()]
        result = self.app.verify()
        self.app.audit(session, "viewed", {"page": "verify"})
        body = (f'<p id="chain" class="{"ok" if result.ok else "bad"}">'
                f'{e(t["intact"] if result.ok else t["broken"])}: {result.chains.records} '
                f'({e(json.dumps(result.chains.chains))})'
                + (f"; {result.checkpoints} checkpoints" if result.checkpoints else "") + "</p>"
                + "".join(f'<p class="bad">{e(p)}</p>' for p in result.problems)
                + "".join(f"<p>{e(w)}</p>" for w in result.chains.warnings))
        self._page(t["verify"], body, session)

    def _export(self, session: Session, q: dict[str, str]) -> None:
        fmt = q.get("format", "csv")
        f = self._filters(q)
        f = Filters(**{**f.__dict__, "limit": 0, "offset": 0})
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
                w.writerow([_show(row[k]) for k in COLUMNS])
            body, ctype, name = buf.getvalue().encode(), "text/csv; charset=utf-8", "audit.csv"
        self._send(200, body, ctype, extra={"Content-Disposition":
                                            f'attachment; filename="{name}"'})

    def _quarantine(self, session: Session, q: dict[str, str]) -> None:
        t = T[self._lang()]
        if session.role != "admin":
            self.app.audit(session, "denied", {"page": "quarantine"})
            self._page(t["quarantine"], f'<p class="bad">{e(t["no_access"])}</p>', session, 403)
            return
        self.app.audit(session, "viewed", {"page": "quarantine"})
        rows = []
        for entry in self.app.quarantine.entries():
            env = entry.meta.get("envelope", {})
            rules = ", ".join(r.get("id", "") for r in entry.meta.get("verdict", {}).get(
                "rules", []))
            forms = "".join(
                f'<form class="inline" method="post" action="/quarantine/{e(entry.id)}/{act}">'
                f'<input type="hidden" name="csrf" value="{e(session.csrf)}">'
                f'<button id="{act}-{e(entry.id)}">{e(t[act])}</button></form> '
                for act in ("release", "delete"))
            rows.append(f"<tr><td>{e(entry.id)}</td><td>{e(env.get('mail_from', ''))}</td>"
                        f"<td>{e(', '.join(env.get('rcpt_tos', [])))}</td><td>{e(rules)}</td>"
                        f"<td>{forms}</td></tr>")
        self._page(t["quarantine"], '<table id="quarantine">' + "".join(rows) + "</table>",
                   session)

    def _quarantine_act(self, session: Session, qid: str, act: str) -> None:
        t = T[self._lang()]
        if session.role != "admin":
            self.app.audit(session, "denied", {"page": f"quarantine-{act}", "id": qid})
            self._page(t["quarantine"], f'<p class="bad">{e(t["no_access"])}</p>', session, 403)
            return
        entry = self.app.quarantine.get(qid)
        if entry is None:
            self._page("404", "", session, 404)
            return
        actor = f"web:{session.user}"
        try:
            if act == "release":
                result = self.app.release(qid, actor)
            else:
                quarantine.delete(self.app.config, self.app.quarantine, entry, actor)
                result = "deleted"
        except Exception as exc:  # noqa: BLE001 - shown to the admin, nothing changed
            self._page(t["quarantine"], f'<p class="bad">{e(str(exc))}</p>', session, 502)
            return
        self._page(t["done"], f'<p id="result">{e(act)} {e(qid)}: {e(result)}</p>'
                   f'<p><a href="/quarantine">{e(t["quarantine"])}</a></p>', session)


def _show(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v, ensure_ascii=False, sort_keys=True)


def make_server(app: WebApp, host: str, port: int) -> ThreadingHTTPServer:
    handler = type("BoundHandler", (Handler,), {"app": app})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server
