"""The auditors' web view: Flask on waitress, Jinja2 templates, no JavaScript, no external
assets.

Every page needs a session (HttpOnly, SameSite=Strict, Secure cookies); every form carries a
per-session CSRF token; every response carries strict security headers; every page view and
export is itself an audit record (who looked at whose records, when). Templates autoescape:
no page is built by string concatenation of stored values.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable
from http import HTTPStatus
from urllib.parse import urlencode

import flask
import waitress

from milter.web.base import (
    HEADERS,
    MAX_FORM,
    MAX_ID,
    NAMELESS,
    NEXT,
    OWN,
    REF,
    STATIC,
    Session,
    WebApp,
)
from milter.web.pages_quarantine import QuarantinePages
from milter.web.pages_records import RecordPages
from milter.web.pages_stats import StatsPages
from milter.web.texts import T


class Page(RecordPages, QuarantinePages, StatsPages):
    """Every page of the view (the routes below call its methods)."""


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
