"""Release with a justification by the notice's link: the teacher signs in to the web view
with a staff account (their own school address), says why, and the held message goes out
once; the supervisor gets a copy with the reason; every other attempt is refused in Dutch and
on record. The gateway holds the message over SMTP and sends the notice; the web view runs
on the same configuration, as `skot-milter web` does."""

from __future__ import annotations

import email
import re
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from milter import config as config_mod
from milter import selfrelease
from milter.audit.sqlite import SQLiteStore
from milter.audit.store import AuditEvent
from milter.cli import main
from milter.commands.web import build_app
from milter.web import users
from milter.web.app import make_server
from tests.e2e.conftest import GatewayThread, SinkHandler, free_port, make_gateway, sink  # noqa: F401
from tests.e2e.test_self_release import MARKED, PUPIL_LIST, held_notice, to_parent
from tests.web.conftest import gone, request, shot

STAFF_PW = "juf-wachtwoord-1"


def events(tmp: Path, event: str = "") -> list[Any]:
    return [r for r in SQLiteStore(tmp / "audit.sqlite3", "test").records()
            if not event or r.event == event]


def text_of(msg: email.message.Message) -> str:
    part = msg.get_payload()[0]  # type: ignore[index]
    return part.get_payload(decode=True).decode()  # type: ignore[no-any-return,union-attr]


def html_of(msg: email.message.Message) -> str:
    part = msg.get_payload()[1]  # type: ignore[index]
    return part.get_payload(decode=True).decode()  # type: ignore[no-any-return,union-attr]


@pytest.fixture
def linked(tmp_path: Path, sink: tuple[SinkHandler, int],  # noqa: F811
           make_gateway: Any) -> Iterator[dict[str, Any]]:  # noqa: F811
    """A gateway whose notices link to this web view, and the web view itself; staff
    accounts for the sender and for her supervisor, an auditor and an admin."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    gw: GatewayThread = make_gateway(
        f"smtp://127.0.0.1:{sink[1]}",
        extra=f'[web]\nsecure_cookies = false\npublic_url = "{base}"\n')
    people = tmp_path / "web-users.txt"
    users.add(people, "someone@school.example", "staff", STAFF_PW)
    users.add(people, "director@school.example", "staff", "directeur-pass-1")
    users.add(people, "anna", "auditor", "auditor-pass-1")
    users.add(people, "bert", "admin", "admin-pass-12")
    cfg = config_mod.load(gw.config)
    app = build_app(cfg)
    server = make_server(app, "127.0.0.1", port)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield {"gw": gw, "sink": sink[0], "base": base, "port": port, "tmp": tmp_path,
           "cfg": cfg, "app": app}
    server.shutdown()
    server.server_close()


def hold(site: dict[str, Any], raw: bytes = MARKED) -> str:
    """Send a message the gateway holds; the path of the link its notice offers."""
    gw: GatewayThread = site["gw"]
    with gw.client() as c:
        c.sendmail("someone@school.example", ["ouder@example.org"], raw)
    gw.call(gw.running.gateway.notifier.drain())  # type: ignore[union-attr]
    text = text_of(held_notice(site["sink"]))
    found = re.search(re.escape(site["base"]) + r"(/vrijgeven/[A-Za-z0-9_-]{20,})", text)
    assert found, text
    return found.group(1)


def sign_in(site: dict[str, Any], user: str, password: str, after: str = "") -> str:
    page = request(site, "GET", "/login" + (f"?next={after}" if after else "")).read().decode()
    token = page.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    form = {"csrf": token, "user": user, "password": password}
    if after:
        assert f'name="next" value="{after}"' in page
        form["next"] = after
    resp = request(site, "POST", "/login", urllib.parse.urlencode(form))
    assert resp.status == 303
    if after:
        assert resp.getheader("Location") == after  # straight back to the link
    return resp.getheader("Set-Cookie", "").split(";", 1)[0]


def form_csrf(page: str) -> str:
    return page.split('name="csrf" value="', 1)[1].split('"', 1)[0]


def post_reason(site: dict[str, Any], link: str, cookie: str, reason: str) -> tuple[int, str]:
    page = request(site, "GET", link, cookie=cookie).read().decode()
    csrf = form_csrf(page)
    resp = request(site, "POST", link, urllib.parse.urlencode({"csrf": csrf,
                                                                "reason": reason}),
                   cookie=cookie)
    return resp.status, resp.read().decode()


def test_the_notice_links_to_the_page_next_to_the_reply_address(
        linked: dict[str, Any]) -> None:
    link = hold(linked)
    notice = held_notice(linked["sink"])
    token = link.rpartition("/")[2]
    # one token, in both ways; only its hash is kept with the held message
    assert notice["Reply-To"] == f"vrijgeven+{token}@school.example"
    text = text_of(notice)
    assert "of open " + linked["base"] + link + ", meld je aan" in text
    assert f'<a href="{linked["base"]}{link}">' in html_of(notice)
    (entry,) = linked["gw"].running.gateway.quarantine.entries()
    assert entry.meta["envelope"]["release_token_sha256"] == selfrelease.token_hash(token)
    assert token not in str(entry.meta)
    # a pupil list gets neither
    with linked["gw"].client() as c:
        c.sendmail("someone@school.example", ["ouder@example.org"], PUPIL_LIST)
    linked["gw"].call(linked["gw"].running.gateway.notifier.drain())
    notice = held_notice(linked["sink"])
    assert notice["Reply-To"] is None and "/vrijgeven/" not in text_of(notice)


def test_sign_in_give_a_reason_released_once_supervisor_copy_and_report(
        linked: dict[str, Any], capsys: Any) -> None:
    site, s = linked, linked["sink"]
    link = hold(site)
    # not signed in: the login page, and back to the link afterwards
    resp = request(site, "GET", link)
    assert resp.status == 303
    assert resp.getheader("Location") == "/login?" + urllib.parse.urlencode({"next": link})
    cookie = sign_in(site, "someone@school.example", STAFF_PW, after=link)
    page = request(site, "GET", link, cookie=cookie).read().decode()
    # what was held and why, as in the notice; no body text; a reason is asked for
    assert "Stukken" in page and "ouder@example.org" in page and "verslag.docx" in page
    assert "Waarom is het tegengehouden?" in page and "vertrouwelijk" in page.lower()
    assert "Zie bijlage." not in page
    assert 'name="reason"' in page and "required" in page
    # a form without the session's CSRF token does nothing
    resp = request(site, "POST", link, urllib.parse.urlencode({"reason": "Mag."}),
                   cookie=cookie)
    assert resp.status == 403 and to_parent(s) == []
    # no reason: not released, asked again, on record
    status, page = post_reason(site, link, cookie, "   ")
    assert status == 400 and "zonder uitleg wordt het niet vrijgegeven" in page
    assert to_parent(s) == [] and len(site["gw"].running.gateway.quarantine.entries()) == 1
    assert [r.evidence["why"] for r in events(site["tmp"], "self-release-refused")] == [
        "no reason given"]
    # with a reason: released, the bytes as held, on record with the reason
    status, page = post_reason(site, link, cookie, "De ouders vroegen zelf om dit verslag.")
    assert status == 200 and "Je bericht is vrijgegeven en verstuurd" in page
    (delivered,) = to_parent(s)
    assert delivered.content == MARKED
    assert site["gw"].running.gateway.quarantine.entries() == []
    (release,) = events(site["tmp"], "quarantine-release")
    assert release.actor == "self:someone@school.example"
    assert release.evidence["reason"] == "De ouders vroegen zelf om dit verslag."
    assert release.evidence["via"] == "web"
    (done,) = events(site["tmp"], "self-release")
    assert done.actor == "web:someone@school.example" and done.evidence["via"] == "web"
    # the supervisor (director@, from the directory) gets the copy with the reason
    copy = [m for m in s.messages if m.rcpt_tos == ["director@school.example"]]
    assert copy, "no copy for the supervisor"
    body = text_of(email.message_from_bytes(copy[-1].content))
    assert "Sam Someone heeft een tegengehouden bericht zelf vrijgegeven" in body
    assert "De ouders vroegen zelf om dit verslag." in body
    assert any(r.event == "notice-sent" and r.recipients == ("director@school.example",)
               for r in events(site["tmp"]))
    # a second attempt: already released, nothing sent again, on record
    resp = request(site, "GET", link, cookie=cookie)
    page = resp.read().decode()
    assert resp.status == 409 and "al vrijgegeven of verwijderd" in page
    assert len(to_parent(s)) == 1
    assert events(site["tmp"], "self-release-refused")[-1].evidence["why"] == \
        "already released or deleted"
    # the per-person report lists it, with the reason (CLI and web view)
    assert main(["audit", "report", "--config", str(site["gw"].config), "--person",
                 "someone@school.example", "--format", "csv"]) == 0
    assert "zelf vrijgegeven / released by the sender: De ouders vroegen zelf om dit " \
           "verslag." in capsys.readouterr().out
    auditor = sign_in(site, "anna", "auditor-pass-1")
    report = request(site, "GET", "/report?person=someone%40school.example",
                     cookie=auditor).read().decode()
    assert "de afzender zelf (someone@school.example)" in report
    assert "Reden: De ouders vroegen zelf om dit verslag." in report


def _refusal(site: dict[str, Any], case: str, link: str) -> tuple[str, str, str]:
    """(user, password, link) for one kind of refused attempt, the store prepared."""
    if case == "wrong-token":
        return "someone@school.example", STAFF_PW, "/vrijgeven/" + "x" * 24
    if case == "other-user":  # the right link, signed in as someone else (her supervisor)
        return "director@school.example", "directeur-pass-1", link
    if case == "admin":  # an admin is not the sender: the admin release is elsewhere
        return "bert", "admin-pass-12", link
    if case == "over-the-limit":  # three released today already (the bundled per_day)
        store = SQLiteStore(site["tmp"] / "audit.sqlite3", "test")
        for i in range(3):
            store.append(AuditEvent(event="quarantine-release", txid=f"earlier{i}",
                                    action="quarantine-release",
                                    actor="self:someone@school.example",
                                    evidence={"reason": "eerder"}))
        return "someone@school.example", STAFF_PW, link
    raise AssertionError(case)


@pytest.mark.parametrize("case,status,words,why", [
    ("wrong-token", 404, "Deze link is onbekend", "unknown link"),
    ("other-user", 403, "Alleen de afzender kan een tegengehouden bericht zelf vrijgeven",
     "only the original sender may release it"),
    ("admin", 403, "Als beheerder geef je berichten vrij via Quarantaine", "signed in as admin"),
    ("over-the-limit", 429, "al 3 berichten zelf vrijgegeven", "daily limit of 3 reached"),
])
def test_other_attempts_are_refused_in_dutch_and_on_record(
        linked: dict[str, Any], case: str, status: int, words: str, why: str) -> None:
    site = linked
    link = hold(site)
    user, password, target = _refusal(site, case, link)
    cookie = sign_in(site, user, password)
    resp = request(site, "GET", target, cookie=cookie)
    page = resp.read().decode()
    assert resp.status == status and words in page and 'name="reason"' not in page
    # a forged post with the session's own CSRF token is refused the same way
    csrf = form_csrf(request(site, "GET", "/vrijgeven", cookie=cookie).read().decode())
    resp = request(site, "POST", target, urllib.parse.urlencode(
        {"csrf": csrf, "reason": "Het mag echt."}), cookie=cookie)
    assert resp.status == status and words in resp.read().decode()
    assert to_parent(site["sink"]) == []
    assert len(site["gw"].running.gateway.quarantine.entries()) == 1
    refused = events(site["tmp"], "self-release-refused")
    assert len(refused) == 2 and {r.evidence["why"] for r in refused} == {why}
    assert all(r.actor == f"web:{user}" and r.evidence["via"] == "web" for r in refused)
    assert all(words in r.reply for r in refused)  # what the page said


def test_not_eligible_under_the_policy_is_refused(linked: dict[str, Any]) -> None:
    """A token on a message the policy (no longer) lets the sender release: a pupil list."""
    site = linked
    token = selfrelease.new_token()
    pupil = {"id": "A1.confidential-attachment", "article": "A1", "action": "quarantine",
             "mode": "enforce", "reason": "pupil list",
             "evidence": {"items": [{"name": "lijst.xlsx", "findings": [
                 {"signal": "people", "confidence": "high"}]}]}}
    site["gw"].running.gateway.quarantine.put(
        "old1", MARKED, {"mail_from": "someone@school.example",
                         "rcpt_tos": ["ouder@example.org"],
                         "release_token_sha256": selfrelease.token_hash(token)},
        {"action": "quarantine", "direction": "outbound", "rules": [pupil]})
    cookie = sign_in(site, "someone@school.example", STAFF_PW)
    resp = request(site, "GET", f"/vrijgeven/{token}", cookie=cookie)
    assert resp.status == 403
    assert "Dit bericht kun je niet zelf vrijgeven" in resp.read().decode()
    (refused,) = events(site["tmp"], "self-release-refused")
    assert refused.txid == "old1" and "policy" in refused.evidence["why"]


def test_an_admin_release_first_makes_the_link_say_already_released(
        linked: dict[str, Any]) -> None:
    """The quarantine's claim decides, for link, reply and admin alike: the teacher whose
    admin (on any node) claimed the message a moment before hears that it is taken."""
    site = linked
    link = hold(site)
    cookie = sign_in(site, "someone@school.example", STAFF_PW)
    page = request(site, "GET", link, cookie=cookie).read().decode()
    store = site["gw"].running.gateway.quarantine
    (entry,) = store.entries()
    claimed = store.claim(entry.id, "web:bert")  # the admin got there first
    assert claimed is not None
    resp = request(site, "POST", link, urllib.parse.urlencode(
        {"csrf": form_csrf(page), "reason": "Het mag."}), cookie=cookie)
    # while the admin's release is under way the page says so (not "unknown link")
    assert resp.status == 409
    assert "wordt op dit moment al vrijgegeven of verwijderd" in resp.read().decode()
    assert to_parent(site["sink"]) == []
    assert events(site["tmp"], "self-release-refused")[-1].evidence["why"] == \
        "being released or deleted just now"
    store.unclaim(claimed)  # the admin's send failed: held again, the link works again
    resp = request(site, "GET", link, cookie=cookie)
    assert resp.status == 200 and "Vrijgeven en versturen" in resp.read().decode()


def test_a_staff_account_sees_nothing_else(linked: dict[str, Any]) -> None:
    site = linked
    cookie = sign_in(site, "someone@school.example", STAFF_PW)
    for path in ("/messages", "/quarantine", "/report?person=x", "/records", "/dashboard"):
        assert request(site, "GET", path, cookie=cookie).status == 403
    home = request(site, "GET", "/vrijgeven", cookie=cookie)
    assert home.status == 200 and "Open de link uit de melding" in home.read().decode()
    denied = events(site["tmp"], "denied")
    assert {r.evidence["page"] for r in denied} >= {"/messages", "/quarantine"}
    # a login never leads anywhere but a release page
    page = request(site, "GET", "/login?next=//evil.example/").read().decode()
    assert 'name="next"' not in page


def test_staff_accounts_are_school_addresses(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="school address"):
        users.add(tmp_path / "u.txt", "juf", "staff", "lang-genoeg-1")
    from tests.conftest import write_config

    cfg = write_config(tmp_path)
    assert main(["web", "adduser", "--config", str(cfg), "--role", "staff",
                 "juf@gmail.example", "--password-stdin"]) != 0


def test_the_public_url_is_https_or_loopback() -> None:
    check = config_mod.SCHEMA["web"]["public_url"][0]
    assert check("https://mailcontrole.school.example/") == \
        "https://mailcontrole.school.example"
    for bad in ("http://mailcontrole.school.example", "https://x.example/pad",
                "javascript:alert(1)"):
        with pytest.raises(ValueError):
            check(bad)


def test_in_a_browser(linked: dict[str, Any], browser: Any) -> None:
    """The teacher clicks the link in the notice: Chromium asks her to sign in, brings her
    back to the page, she says why and releases it."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    site = linked
    link = hold(site)
    browser.get(site["base"] + "/login?lang=nl")  # a Dutch browser (the headless one is not)
    browser.get(site["base"] + link)
    WebDriverWait(browser, 30).until(ec.presence_of_element_located((By.ID, "login-why")))
    shot(browser, "self-release-login")
    browser.find_element(By.ID, "user").send_keys("someone@school.example")
    browser.find_element(By.ID, "password").send_keys(STAFF_PW)
    browser.find_element(By.ID, "login").click()
    WebDriverWait(browser, 30).until(ec.presence_of_element_located((By.ID, "reason")))
    assert browser.current_url == site["base"] + link
    assert "Stukken" in browser.find_element(By.ID, "held-subject").text
    shot(browser, "self-release-page")
    browser.find_element(By.ID, "reason").send_keys("Afgesproken met de ouders.")
    button = browser.find_element(By.ID, "self-release")
    button.click()
    WebDriverWait(browser, 30).until(lambda _: gone(button))
    WebDriverWait(browser, 30).until(ec.presence_of_element_located((By.ID, "box")))
    assert "Je bericht is vrijgegeven en verstuurd" in browser.find_element(By.ID, "box").text
    shot(browser, "self-release-done")
    assert len(to_parent(site["sink"])) == 1
    (release,) = events(site["tmp"], "quarantine-release")
    assert release.evidence["reason"] == "Afgesproken met de ouders."
