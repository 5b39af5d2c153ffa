"""The auditors' web view, driven for real: headless Chromium (Debian's) through Selenium,
plus raw HTTP for what a browser would never send (no session, no CSRF token)."""

from __future__ import annotations

import re
import urllib.parse
from typing import Any

import pytest

from milter.audit.store import Filters
from milter.quarantine import QuarantineStore
from milter.web import users
from tests.web.conftest import browser_login, login_cookie, request, shot

PATHS = ["/records", "/records/1", "/report?person=x", "/export?format=csv", "/verify",
         "/quarantine", "/", "/messages?ref=ref1", "/messages/ref1", "/dashboard",
         "/summary?format=csv", "/quarantine/x", "/report?person=x&format=csv",
         "/quarantine/x/release"]


def test_unauthenticated_requests_get_nothing(site: dict[str, Any]) -> None:
    for path in PATHS:
        resp = request(site, "GET", path)
        body = resp.read()
        assert resp.status == 303 and resp.getheader("Location") == "/login", path
        assert body == b""


def test_post_without_session_or_csrf_refused(site: dict[str, Any]) -> None:
    qid = site["qid"]
    assert request(site, "POST", f"/quarantine/{qid}/delete").status == 403
    cookie = login_cookie(site, "bert", "admin-pass-12")
    resp = request(site, "POST", f"/quarantine/{qid}/delete", "", cookie)
    assert resp.status == 403 and b"CSRF" in resp.read()
    resp = request(site, "POST", f"/quarantine/{qid}/delete", "csrf=forged", cookie)
    assert resp.status == 403
    assert QuarantineStore(site["cfg"].quarantine_dir).get(qid) is not None
    # an auditor with a valid session and token still may not delete
    page = request(site, "GET", "/records", cookie=(auditor := login_cookie(
        site, "anna", "auditor-pass-1"))).read().decode()
    token = page.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    resp = request(site, "POST", f"/quarantine/{qid}/delete", f"csrf={token}", auditor)
    assert resp.status == 403
    assert QuarantineStore(site["cfg"].quarantine_dir).get(qid) is not None
    # and a login form posted without its token is refused too
    assert request(site, "POST", "/login", "user=bert&password=admin-pass-12").status == 403


@pytest.mark.parametrize("length,status", [("-1", 400), ("abc", 400), ("99999999", 413)])
def test_bad_content_length_gets_a_defined_answer(site: dict[str, Any], length: str,
                                                  status: int) -> None:
    import socket

    with socket.create_connection(("127.0.0.1", site["port"]), timeout=5) as sock:
        sock.sendall(f"POST /login HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n"
                     f"Content-Type: application/x-www-form-urlencoded\r\n\r\nuser=a".encode())
        answer = sock.recv(4096).decode("latin-1")  # before the client hangs up: no hang
    assert re.match(rf"HTTP/1\.[01] {status} ", answer), answer
    assert request(site, "GET", "/login").status == 200


def test_login_form_tokens_are_signed_and_expire(site: dict[str, Any]) -> None:
    import time

    app = site["app"]
    old = app.login_token(now=time.time() - 1000)
    stamp, mac = app.login_token().rsplit(".", 1)
    forged = f"{stamp}.{'0' * len(mac)}"
    for token in (old, forged, "", "1.2.3"):
        body = urllib.parse.urlencode({"csrf": token, "user": "bert",
                                       "password": "admin-pass-12"})
        assert request(site, "POST", "/login", body).status == 403
    assert login_cookie(site, "bert", "admin-pass-12").startswith("skot_session=")


def test_security_headers_and_cookie_flags(site: dict[str, Any]) -> None:
    resp = request(site, "GET", "/login")
    assert "default-src 'none'" in resp.getheader("Content-Security-Policy", "")
    assert resp.getheader("X-Frame-Options") == "DENY"
    assert resp.getheader("X-Content-Type-Options") == "nosniff"
    assert resp.getheader("Cache-Control") == "no-store"
    assert b"<script" not in resp.read()
    page = request(site, "GET", "/login").read().decode()
    token = page.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    resp = request(site, "POST", "/login", urllib.parse.urlencode(
        {"csrf": token, "user": "anna", "password": "auditor-pass-1"}))
    cookie = resp.getheader("Set-Cookie", "")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie


def test_wrong_password_refused(site: dict[str, Any]) -> None:
    page = request(site, "GET", "/login").read().decode()
    token = page.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    resp = request(site, "POST", "/login", urllib.parse.urlencode(
        {"csrf": token, "user": "anna", "password": "nope-nope-nope"}))
    assert resp.status == 401 and resp.getheader("Set-Cookie") is None


def test_auditor_filters_opens_record_exports_cannot_release(site: dict[str, Any],
                                                             browser: Any) -> None:
    from selenium.webdriver.common.by import By

    base = site["base"]
    browser_login(browser, base, "anna", "auditor-pass-1")
    assert "Messages" in browser.find_element(By.TAG_NAME, "h1").text
    browser.get(base + "/records")
    browser.find_element(By.ID, "f-person").send_keys("teacher@school.example")
    browser.find_element(By.ID, "filter").click()
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, 30).until(ec.url_contains("person="))
    shot(browser, "records-person")
    rows = browser.find_elements(By.CSS_SELECTOR, "#records tr")[1:]
    refs = sorted(r.find_elements(By.TAG_NAME, "td")[8].text for r in rows)
    # sent by them, a notice to them, and mail from their private address naming them
    assert refs == ["held2", "priv1", "ref1", "ref1", "ref3", "ref5"]
    assert len(rows) == len(list(site["store"].records(Filters(
        person="teacher@school.example"))))
    rows[0].find_element(By.TAG_NAME, "a").click()
    detail = browser.find_element(By.ID, "record").text
    assert "teacher@school.example" in detail
    browser.get(base + "/records?person=teacher%40school.example&rule=B1.sender-domain")
    browser.find_element(By.CSS_SELECTOR, "#records tr td a").click()
    detail = browser.find_element(By.ID, "record").text
    assert "B1.sender-domain" in detail and "from-external" in detail
    # export: the link carries the filter; fetch it with the browser's session
    browser.get(base + "/records?person=teacher%40school.example")
    export = browser.find_element(By.ID, "export").get_attribute("href")
    cookie = "skot_session=" + browser.get_cookie("skot_session")["value"]
    resp = request(site, "GET", urllib.parse.urlsplit(export).path + "?"
                   + urllib.parse.urlsplit(export).query, cookie=cookie)
    lines = resp.read().decode().strip().splitlines()
    assert resp.status == 200 and len(lines) == 7 and lines[0].startswith("id,")
    # the per-person report and the chain status
    browser.get(base + "/report?person=teacher%40school.example")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#report tbody tr")) == 5
    assert "intact" in browser.page_source
    # an auditor sees the quarantine but may not release from it
    browser.get(base + "/quarantine")
    assert "only admins may" in browser.find_element(By.ID, "read-only").text
    assert browser.find_elements(By.ID, f"release-{site['qid']}") == []
    browser.get(base + f"/quarantine/{site['qid']}/release")
    assert "Only admins" in browser.page_source
    # and every look was audited with the auditor's name
    viewed = [r for r in site["store"].records() if r.event in ("viewed", "exported",
                                                                "denied")]
    assert {r.actor for r in viewed} == {"web:anna"}
    assert {r.evidence.get("page") for r in viewed} >= {"records", "record", "export",
                                                        "report", "quarantine"}
    assert [r.evidence["page"] for r in viewed if r.event == "denied"] == [
        "quarantine-release"]


def test_dutch_by_default(site: dict[str, Any]) -> None:
    page = request(site, "GET", "/login").read().decode()
    assert "Aanmelden" in page and 'lang="nl"' in page


def test_every_screen_keeps_the_strict_policy(site: dict[str, Any]) -> None:
    """No script, no inline style, nothing from elsewhere: the CSP stays as strict as it was
    and nothing on the page needs it loosened."""
    cookie = login_cookie(site, "anna", "auditor-pass-1")
    for path in ["/messages", "/messages/held1", "/dashboard?days=365", "/summary",
                 "/report?person=teacher%40school.example", "/quarantine",
                 f"/quarantine/{site['qid']}", "/records", "/records/1", "/verify"]:
        resp = request(site, "GET", path, cookie=cookie)
        page = resp.read().decode()
        assert resp.status == 200, path
        assert resp.getheader("Content-Security-Policy") == (
            "default-src 'none'; style-src 'self'; form-action 'self'; "
            "frame-ancestors 'none'; base-uri 'none'")
        assert "<script" not in page and " style=" not in page and "<style" not in page
        assert "http://" not in page.replace("http://www.w3.org/2000/svg", ""), path
        assert "https://" not in page


def test_stored_values_are_escaped_on_every_screen(site: dict[str, Any]) -> None:
    from milter.audit.store import AuditEvent

    evil = '"><script>alert(1)</script><img src=x onerror=alert(2)>'
    rec = site["store"].append(AuditEvent(
        event="rejected", txid="evil1", sender=f"x{evil}@school.example",
        recipients=(evil,), subject=evil, action="reject", direction="outbound",
        rules=({"id": evil, "article": evil, "reason": evil, "mode": evil,
                "evidence": {"items": [{"name": evil, "pupil_rows": 3}], evil: evil}},
               {"no": "id"})))
    cookie = login_cookie(site, "anna", "auditor-pass-1")
    for path in ["/messages", "/messages/evil1", f"/records/{rec.id}", "/records",
                 "/dashboard", "/summary",
                 "/report?person=" + urllib.parse.quote(f"x{evil}@school.example"),
                 "/messages?person=" + urllib.parse.quote(evil)]:
        resp = request(site, "GET", path, cookie=cookie)
        page = resp.read().decode()
        assert resp.status == 200, path
        assert "<script>" not in page and "<img src=x" not in page, path
    page = request(site, "GET", "/messages/evil1", cookie=cookie).read().decode()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_statistics_account_sees_counts_without_names(site: dict[str, Any]) -> None:
    """Issue 23: the dashboard and the monthly summary for someone who may not see persons
    (a board member, the works council): no sender names, every other page refused."""
    users.add(site["cfg"].resolve(site["cfg"].web.users), "ora", "statistics", "stat-pass-123")
    cookie = login_cookie(site, "ora", "stat-pass-123")
    dash = request(site, "GET", "/dashboard", cookie=cookie)
    body = dash.read().decode()
    assert dash.status == 200 and 'id="chart-rules"' in body
    assert "chart-senders" not in body and "someone@school.example" not in body
    assert request(site, "GET", "/summary?month=2026-03", cookie=cookie).status == 200
    for path in ("/messages", "/records", "/records/1", "/report?person=x", "/quarantine",
                 "/verify", "/export?format=csv", "/messages/ref1"):
        resp = request(site, "GET", path, cookie=cookie)
        assert resp.status == 403, path
        assert b"someone@school.example" not in resp.read()
    denied = [r for r in site["store"].records() if r.event == "denied" and r.actor == "web:ora"]
    assert len(denied) == 8
