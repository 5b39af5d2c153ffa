"""The web view driven for real: a store with messages of every kind, the web server on a
loopback port, headless Chromium (Debian's) through Selenium, raw HTTP for what a browser
never sends. Screenshots go to ``$SKOT_SCREENSHOTS`` (default ``tests/web/screenshots``),
the folder CI keeps."""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import tempfile
import threading
import urllib.parse
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from milter import config as config_mod
from milter.audit.sqlite import SQLiteStore
from milter.audit.store import AuditEvent
from milter.commands.web import build_app
from milter.quarantine import QuarantineStore
from milter.web import users
from milter.web.app import make_server
from tests.conftest import make_message, write_config
from tests.e2e.conftest import free_port, sink  # noqa: F401  (a fixture, used by name)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
SHOTS = Path(os.environ.get("SKOT_SCREENSHOTS", Path(__file__).parent / "screenshots"))

B1 = {"id": "B1.sender-domain", "article": "B1", "action": "reject", "mode": "enforce",
      "reason": "sender outside the school domain", "evidence": {"problems": ["from-external"]}}
PRIVATE = {"id": "B1.private-address", "article": "B1", "action": "reject", "mode": "enforce",
           "reason": "mail from a staff member's private address to school recipients",
           "evidence": {"staff_member": "teacher@school.example"}}
A1 = {"id": "A1.confidential-attachment", "article": "A1", "action": "quarantine",
      "mode": "enforce", "reason": "confidential content: pupil_rows",
      "evidence": {"items": [{"name": "leerlingenlijst.xlsx", "type": "application/vnd."
                              "openxmlformats-officedocument.spreadsheetml.sheet",
                              "size": 5000, "sha256": "ab" * 32, "pupil_rows": 25}],
                   "external_recipients": 1}}


def held_message() -> bytes:
    """A held message whose HTML would fetch an image and run a script if it were rendered."""
    msg = EmailMessage()
    msg["From"] = "Sam <someone@school.example>"
    msg["To"] = "ouder@example.org"
    msg["Subject"] = "Klassenlijst groep 7"
    msg.set_content("Beste ouder,\n\nHierbij de lijst van groep 7.\n")
    msg.add_alternative('<p>Beste ouder,<img src="http://tracker.example/x.png">'
                        "<script>alert(1)</script></p>", subtype="html")
    msg.add_attachment(b"PK\x03\x04 not really a spreadsheet", maintype="application",
                       subtype="vnd.openxmlformats-officedocument.spreadsheetml.sheet",
                       filename="leerlingenlijst.xlsx")
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))  # as SMTP delivers it


def fill(store: SQLiteStore, qid: str) -> None:
    """Messages of every kind; two at a fixed moment (00:30 on 3 March 2026 in Amsterdam is
    23:30 on 2 March in UTC: a search by Dutch date must use local days)."""
    for i, who in enumerate(["someone@school.example", "teacher@school.example"] * 3):
        store.append(AuditEvent(event="rejected", txid=f"ref{i}", sender=who,
                                recipients=("ouder@example.org",), action="reject",
                                direction="outbound", subject=f"Onderwerp {i}", rules=(B1,),
                                reply="550 5.7.1 [B1.sender-domain] ..."))
    store.append(AuditEvent(event="notice-sent", txid="ref1", sender="postmaster@school.example",
                            recipients=("teacher@school.example",), action="notice-sent",
                            evidence={"kind": "sender", "rules": ["B1.sender-domain"]}))
    store.append_many([AuditEvent(event="delivered", txid=f"ok{i:02d}",
                                  sender="director@school.example",
                                  recipients=(f"parent{i}@example.org",), action="accept",
                                  direction="outbound", subject=f"Nieuwsbrief {i}")
                       for i in range(55)])
    with mock.patch("milter.audit.sql.now_iso", return_value="2026-03-02T23:30:00.000000Z"):
        store.append(AuditEvent(event="rejected", txid="priv1", sender="theo@home.example",
                                recipients=("pupil1@leerling.school.example",),
                                action="reject", direction="inbound", rules=(PRIVATE,),
                                subject="Huiswerk"))
    store.append(AuditEvent(event="quarantined", txid="held1", sender="someone@school.example",
                            recipients=("ouder@example.org",), action="quarantine",
                            direction="outbound", rules=(A1,), subject="Klassenlijst groep 7",
                            evidence={"quarantine_id": qid, "attachments": [
                                {"name": "leerlingenlijst.xlsx", "sha256": "ab" * 32}]}))
    store.append(AuditEvent(event="notice-sent", txid="held1", sender="postmaster@school.example",
                            recipients=("someone@school.example",), action="notice-sent",
                            evidence={"kind": "sender", "rules": [A1["id"]]}))


@pytest.fixture
def site(tmp_path: Path, sink: Any) -> Iterator[dict[str, Any]]:  # noqa: F811
    cfg_path = write_config(tmp_path, next_hop=f"smtp://127.0.0.1:{sink[1]}",
                            extra="[web]\nsecure_cookies = false\n")
    cfg = config_mod.load(cfg_path)
    users.add(tmp_path / "web-users.txt", "anna", "auditor", "auditor-pass-1")
    users.add(tmp_path / "web-users.txt", "bert", "admin", "admin-pass-12")
    store = SQLiteStore(tmp_path / "audit.sqlite3", "test")
    quarantine = QuarantineStore(cfg.quarantine_dir)
    qid = quarantine.put("held1", held_message(), {"mail_from": "someone@school.example",
                                                   "rcpt_tos": ["ouder@example.org"]},
                         {"rules": [A1], "direction": "outbound"})
    qid2 = quarantine.put("held2", make_message(subject="Tweede"),
                          {"mail_from": "teacher@school.example",
                           "rcpt_tos": ["x@ext.example"]},
                          {"rules": [A1], "direction": "outbound"})
    fill(store, qid)
    store.append(AuditEvent(event="quarantined", txid="held2", sender="teacher@school.example",
                            recipients=("x@ext.example",), action="quarantine",
                            direction="outbound", rules=(A1,), subject="Tweede",
                            evidence={"quarantine_id": qid2}))
    # the records are signed as the gateway would have signed them (issue 13: verify wants
    # checkpoints before it says "intact")
    from milter.cli import main as cli

    assert cli(["audit", "checkpoint", "--config", str(cfg_path)]) == 0
    app = build_app(cfg)
    port = free_port()
    server = make_server(app, "127.0.0.1", port)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield {"base": f"http://127.0.0.1:{port}", "port": port, "store": store, "qid": qid,
           "qid2": qid2, "sink": sink[0], "cfg": cfg, "app": app}
    server.shutdown()
    server.server_close()


def request(site: dict[str, Any], method: str, path: str, body: str = "",
            cookie: str = "", timeout: float = 10) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", site["port"], timeout=timeout)
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


def csrf_of(site: dict[str, Any], cookie: str) -> str:
    page = request(site, "GET", "/messages", cookie=cookie).read().decode()
    return page.split('name="csrf" value="', 1)[1].split('"', 1)[0]


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """One Chromium per test module (starting one takes a second or two)."""
    if not CHROMIUM or not CHROMEDRIVER:
        pytest.fail("chromium and chromium-driver are needed (.ci/run installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="skot-chromium-")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
                 "--window-size=1280,900"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def browser(chromium: Any) -> Iterator[Any]:
    """The module's Chromium with no cookies: each test signs in afresh."""
    chromium.delete_all_cookies()
    chromium.set_window_size(1280, 900)
    yield chromium
    with contextlib.suppress(Exception):
        chromium.delete_all_cookies()  # the site's (cookies ignore the port)
        chromium.get("about:blank")


def browser_login(driver: Any, base: str, user: str, password: str, lang: str = "en") -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(base + f"/login?lang={lang}")
    driver.find_element(By.ID, "user").send_keys(user)
    driver.find_element(By.ID, "password").send_keys(password)
    driver.find_element(By.ID, "login").click()
    WebDriverWait(driver, 30).until(ec.url_contains("/messages"))
    # and the page has finished loading: the next navigation must not race this one
    WebDriverWait(driver, 30).until(
        lambda d: d.execute_script("return document.readyState") == "complete")


def gone(element: Any) -> bool:
    """The page the element was on has been replaced. Chromium says so in two ways: a stale
    element reference, or (while the old document is being swapped out) "Node with given id
    does not belong to the document", which selenium's ``staleness_of`` does not know and
    raised out of the wait (seen: 1 run in 8 under load)."""
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException

    try:
        element.is_enabled()
    except StaleElementReferenceException:
        return True
    except WebDriverException as exc:
        if "does not belong to the document" in str(exc):
            return True
        raise
    return False


def shot(driver: Any, name: str) -> None:
    """A full-page screenshot for the humans reviewing the run."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, min(max(int(height), 600), 4000))
    driver.save_screenshot(str(SHOTS / f"{name}.png"))
    driver.set_window_size(1280, 900)
