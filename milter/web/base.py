"""The web view's plumbing: the application's state, the session, sign-in and sign-out,
and how a page is rendered and sent; the pages themselves are in ``pages_*.py``."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import date
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import flask
import jinja2

from milter import directory as directory_mod
from milter.audit import search
from milter.audit.store import AuditEvent, AuditStore
from milter.config import Config
from milter.directory_ldap import LdapError, LoginRefused
from milter.quarantine import Quarantine
from milter.web import preview, terms, users
from milter.web.actions import QuarantineActions
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
    via: str = ""    # "directory": signed in with the school account (checked again to act)


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


class PageBase:
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
                          users.stamp(self.app.users_file, user.name) if not via else "",
                          via)
        with self.app.lock:
            self.app.sessions[token] = session
        self.app.audit(session, "login", {"role": user.role, "address": address, "via": via})
        home = ({"statistics": "/dashboard", "staff": OWN}.get(user.role, "/messages"))
        home = self._next(form.get("next", "")) or home
        self._send(HTTPStatus.SEE_OTHER, b"", extra={"Location": home},
                   cookies=[self._cookie("skot_session", token)])

    # -- what several pages read ---------------------------------------------------------
    def _searchable(self) -> search.Searchable:
        store = self.app.store
        assert hasattr(store, "select"), "the web view needs an SQL audit store"
        return store  # type: ignore[return-value]

    def _held(self) -> list[preview.Held]:
        days = self.app.config.quarantine.retention_days
        lang = self._lang()
        return sorted((preview.summarise(e, days, lang=lang)
                       for e in self.app.quarantine.entries()), key=lambda h: -h.stored_at)


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
