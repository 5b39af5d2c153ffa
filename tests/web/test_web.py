"""The auditors' web view, driven for real: headless Chromium (Debian's) through Selenium,
plus raw HTTP for what a browser would never send (no session, no CSRF token)."""

from __future__ import annotations

import http.client
import shutil
import tempfile
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from milter import config as config_mod
from milter.audit.sqlite import SQLiteStore
from milter.audit.store import AuditEvent
from milter.commands.web import build_app
from milter.quarantine import QuarantineStore
from milter.web import users
from milter.web.app import make_server
from tests.conftest import make_message, write_config
from tests.e2e.conftest import SinkHandler, free_port

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture
def site(tmp_path: Path, sink: tuple[SinkHandler, int]) -> Iterator[dict[str, Any]]:
    cfg_path = write_config(tmp_path, next_hop=f"smtp://127.0.0.1:{sink[1]}",
                            extra="[web]\nsecure_cookies = false\n")
    cfg = config_mod.load(cfg_path)
    users.add(tmp_path / "web-users.txt", "anna", "auditor", "auditor-pass-1")
    users.add(tmp_path / "web-users.txt", "bert", "admin", "admin-pass-12")
    store = SQLiteStore(tmp_path / "audit.sqlite3", "test")
    for i, who in enumerate(["someone@school.example", "teacher@school.example"] * 3):
        store.append(AuditEvent(event="rejected", txid=f"ref{i}", sender=who,
                                recipients=("ouder@example.org",), action="reject",
                                direction="outbound", subject=f"Onderwerp {i}",
                                rules=({"id": "B1.sender-domain", "article": "B1",
                                        "action": "reject", "mode": "enforce",
                                        "evidence": {"problems": ["from-external"]}},)))
    # the records are signed as the gateway would have signed them (issue 13: verify wants
    # checkpoints before it says "intact")
    from milter.cli import main as cli

    assert cli(["audit", "checkpoint", "--config", str(cfg_path)]) == 0
    qid = QuarantineStore(cfg.quarantine_dir).put(
        "held1", make_message(), {"mail_from": "someone@school.example",
                                  "rcpt_tos": ["ouder@example.org"]},
        {"rules": [{"id": "A1.confidential-attachment"}], "direction": "outbound"})
    app = build_app(cfg)
    port = free_port()
    server = make_server(app, "127.0.0.1", port)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield {"base": f"http://127.0.0.1:{port}", "port": port, "store": store, "qid": qid,
           "sink": sink[0], "cfg": cfg, "app": app}
    server.shutdown()
    server.server_close()


def request(site: dict[str, Any], method: str, path: str, body: str = "",
            cookie: str = "") -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", site["port"], timeout=10)
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if cookie:
        headers["Cookie"] = cookie
    conn.request(method, path, body=body, headers=headers)
    return conn.getresponse()


def login_cookie(site: dict[str, Any], user: str, password: str) -> str:
    page = request(site, "GET", "/login").read().decode()
    token = page.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    resp = request(site, "POST", "/login", urllib.parse.urlencode(
        {"csrf": token, "user": user, "password": password}))
    assert resp.status == 303
    return resp.getheader("Set-Cookie", "").split(";", 1)[0]


@pytest.mark.parametrize("path", ["/records", "/records/1", "/report?person=x",
                                  "/export?format=csv", "/verify", "/quarantine"])
def test_unauthenticated_requests_get_nothing(site: dict[str, Any], path: str) -> None:
    resp = request(site, "GET", path)
    body = resp.read()
    assert resp.status == 303 and resp.getheader("Location") == "/login"
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
    assert answer.startswith(f"HTTP/1.0 {status} ")
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


@pytest.fixture
def browser() -> Iterator[Any]:
    if not CHROMIUM or not CHROMEDRIVER:
        pytest.fail("chromium and chromium-driver are needed (.ci/run installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="skot-chromium-")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", f"--user-data-dir={profile}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(20)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def browser_login(driver: Any, base: str, user: str, password: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(base + "/login?lang=en")
    driver.find_element(By.ID, "user").send_keys(user)
    driver.find_element(By.ID, "password").send_keys(password)
    driver.find_element(By.ID, "login").click()
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 10).until(ec.url_contains("/records"))


def test_auditor_filters_opens_record_exports_cannot_release(site: dict[str, Any],
                                                             browser: Any) -> None:
    from selenium.webdriver.common.by import By

    base = site["base"]
    browser_login(browser, base, "anna", "auditor-pass-1")
    assert "Records" in browser.find_element(By.TAG_NAME, "h1").text
    browser.find_element(By.ID, "f-person").send_keys("teacher@school.example")
    browser.find_element(By.ID, "filter").click()
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, 10).until(ec.url_contains("person="))
    rows = browser.find_elements(By.CSS_SELECTOR, "#records tr")[1:]
    assert len(rows) == 3 and all("teacher@school.example" in r.text for r in rows)
    rows[0].find_element(By.TAG_NAME, "a").click()
    detail = browser.find_element(By.ID, "record").text
    assert "B1.sender-domain" in detail and "from-external" in detail
    # export: the link carries the filter; fetch it with the browser's session
    href = browser.find_element(By.LINK_TEXT, "Records").get_attribute("href")
    assert href
    browser.get(base + "/records?person=teacher%40school.example")
    export = browser.find_element(By.ID, "export").get_attribute("href")
    cookie = "skot_session=" + browser.get_cookie("skot_session")["value"]
    resp = request(site, "GET", urllib.parse.urlsplit(export).path + "?"
                   + urllib.parse.urlsplit(export).query, cookie=cookie)
    lines = resp.read().decode().strip().splitlines()
    assert resp.status == 200 and len(lines) == 4 and lines[0].startswith("id,")
    # the per-person report and the chain status
    browser.get(base + "/report?person=teacher%40school.example")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#report tr")) == 4
    assert "intact" in browser.page_source
    # an auditor may not release a quarantined message
    browser.get(base + "/quarantine")
    assert "Only admins" in browser.page_source
    assert browser.find_elements(By.ID, f"release-{site['qid']}") == []
    # and every look was audited with the auditor's name
    viewed = [r for r in site["store"].records() if r.event in ("viewed", "exported",
                                                                "denied")]
    assert {r.actor for r in viewed} == {"web:anna"}
    assert {r.evidence.get("page") for r in viewed} >= {"records", "record", "export",
                                                        "report", "quarantine"}
    assert [r.evidence["page"] for r in viewed if r.event == "denied"] == ["quarantine"]


def test_admin_releases_quarantined_message(site: dict[str, Any], browser: Any) -> None:
    from selenium.webdriver.common.by import By

    browser_login(browser, site["base"], "bert", "admin-pass-12")
    browser.get(site["base"] + "/quarantine")
    browser.find_element(By.ID, f"release-{site['qid']}").click()
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    result = WebDriverWait(browser, 15).until(ec.presence_of_element_located((By.ID, "result")))
    assert "release" in result.text
    # the held message to its recipient, then the notice to its sender that it went out
    released, notice = site["sink"].messages
    assert released.rcpt_tos == ["ouder@example.org"] and b"X-SKOT-Notice" not in \
        released.content
    assert notice.rcpt_tos == ["someone@school.example"]
    assert b"alsnog verstuurd" in notice.content
    events = [(r.event, r.actor) for r in site["store"].records()]
    assert ("quarantine-release", "web:bert") in events
    assert [r.recipients for r in site["store"].records() if r.event == "notice-sent"] == [
        ("someone@school.example",)]


def test_dutch_by_default(site: dict[str, Any]) -> None:
    page = request(site, "GET", "/login").read().decode()
    assert "Aanmelden" in page and 'lang="nl"' in page
