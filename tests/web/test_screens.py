"""Each screen of the web view and each act on it, as an auditor or an admin uses them in
Chromium; every test leaves screenshots behind (see conftest.SHOTS)."""

from __future__ import annotations

import csv
import io
import urllib.parse
from typing import Any

from milter.audit.store import OUTCOMES, Filters
from milter.quarantine import QuarantineStore
from tests.web.conftest import browser_login, csrf_of, gone, login_cookie, request, shot


def by(kind: str) -> Any:
    from selenium.webdriver.common.by import By

    return getattr(By, kind)


def search(driver: Any, base: str, **fields: str) -> None:
    """Fill the search form as a user does and submit it. A page still settling from the
    previous navigation can swap its document under the driver ("Node ... does not belong
    to the document", seen in CI): the form is then filled again on the new page."""
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    for attempt in range(3):
        driver.get(base + "/messages")
        try:
            for name, value in fields.items():
                box = driver.find_element(by("ID"), f"f-{name}")
                box.clear()
                box.send_keys(value)
            button = driver.find_element(by("ID"), "filter")
            button.click()
        except (StaleElementReferenceException, WebDriverException):
            if attempt == 2:
                raise
            continue
        WebDriverWait(driver, 30).until(lambda _, b=button: gone(b))
        WebDriverWait(driver, 30).until(  # the results page, whole
            lambda d: d.execute_script("return document.readyState") == "complete")
        return



def refs_shown(driver: Any) -> list[str]:
    return [row.get_attribute("id").removeprefix("m-")
            for row in driver.find_elements(by("CSS_SELECTOR"), "#messages tbody tr")]


def outcomes(site: dict[str, Any], **filters: str) -> int:
    return sum(1 for r in site["store"].records(Filters(**filters)) if r.event in OUTCOMES)


def test_one_row_per_message_newest_first_with_totals_and_paging(site: dict[str, Any],
                                                                 browser: Any) -> None:
    base = site["base"]
    browser_login(browser, base, "anna", "auditor-pass-1")
    total = outcomes(site)
    assert total == 64
    totals = browser.find_element(by("ID"), "totals").text
    assert f"{total} messages found; showing 1–50" in totals
    first = refs_shown(browser)
    assert len(first) == 50 and first[0] == "held2" and first[1] == "held1"
    # times are labelled as local, a message's events are one click away
    assert "Europe/Amsterdam" in browser.page_source
    shot(browser, "messages-first-page")
    browser.find_element(by("ID"), "older").click()
    second = refs_shown(browser)
    assert len(second) == total - 50 and not set(first) & set(second)
    assert "showing 51–64" in browser.find_element(by("ID"), "totals").text
    assert second[-1] == "ref0" and browser.find_elements(by("ID"), "older") == []
    shot(browser, "messages-second-page")
    browser.find_element(by("ID"), "newer").click()
    assert refs_shown(browser) == first
    browser.find_element(by("LINK_TEXT"), "records").click()  # held2's event records
    assert "ref=held2" in browser.current_url


def test_search_by_ref_part_of_name_dutch_values_and_dates(site: dict[str, Any],
                                                           browser: Any) -> None:
    base = site["base"]
    browser_login(browser, base, "anna", "auditor-pass-1", lang="nl")
    # the reference every refusal and notice quotes, pasted as it appears there
    search(browser, base, ref="ref=ref3")
    assert refs_shown(browser) == ["ref3"]
    shot(browser, "search-ref")
    # part of a name: the directory's Theo Teacher, with his private addresses
    search(browser, base, person="theo")
    shown = refs_shown(browser)
    assert sorted(shown) == ["held2", "priv1", "ref1", "ref3", "ref5"]
    assert "theo@home.example" in browser.find_element(by("ID"), "totals").text
    shot(browser, "search-name")
    # part of an address nobody in the directory has
    search(browser, base, person="parent7")
    assert refs_shown(browser) == ["ok07"]
    # Dutch values
    search(browser, base, action="weigeren")
    assert len(refs_shown(browser)) == outcomes(site, action="reject") == 7
    search(browser, base, action="reject")
    assert len(refs_shown(browser)) == 7
    browser.get(base + "/messages?direction=inkomend")
    assert refs_shown(browser) == ["priv1"]
    # a Dutch date is a local day: 00:30 on 3 March in Amsterdam is 2 March in UTC
    search(browser, base, since="03-03-2026", until="03-03-2026")
    assert refs_shown(browser) == ["priv1"]
    shot(browser, "search-dutch-date")
    browser.get(base + "/messages?since_pick=2026-03-03&until_pick=2026-03-03")  # picked
    assert refs_shown(browser) == ["priv1"]
    search(browser, base, since="02-03-2026", until="02-03-2026")
    assert refs_shown(browser) == []
    why = browser.find_element(by("ID"), "why").text
    assert "Vanaf 02-03-2026" in why and "Tot en met 02-03-2026" in why
    shot(browser, "search-empty-says-why")
    # what is not understood is said, never an empty list
    search(browser, base, since="31-02-2026")
    problem = browser.find_element(by("CLASS_NAME"), "problem").text
    assert "31-02-2026" in problem and "dd-mm-jjjj" in problem
    search(browser, base, action="wegsturen")
    assert "weigeren" in browser.find_element(by("CLASS_NAME"), "problem").text
    search(browser, base, person="niemand-bekend")
    assert "niemand-bekend" in browser.find_element(by("CLASS_NAME"), "problem").text
    # rule and article
    search(browser, base, rule="private")
    assert refs_shown(browser) == ["priv1"]
    search(browser, base, article="a1")
    assert refs_shown(browser) == ["held2", "held1"]
    search(browser, base, subject="nieuwsbrief 7")
    assert refs_shown(browser) == ["ok07"]
    # every search was audited with what was asked
    asked = [r.evidence for r in site["store"].records(Filters(event="viewed"))
             if r.evidence.get("page") == "messages"]
    assert any(e.get("person") == "theo" for e in asked)
    assert any(e.get("since") == "03-03-2026" for e in asked)


def test_message_page_in_words(site: dict[str, Any], browser: Any) -> None:
    base = site["base"]
    browser_login(browser, base, "anna", "auditor-pass-1", lang="nl")
    search(browser, base, ref="held1")
    browser.find_element(by("LINK_TEXT"), "held1").click()
    what = browser.find_element(by("ID"), "summary-line").text
    assert "someone@school.example" in what and "vastgehouden in quarantaine" in what
    why = browser.find_element(by("ID"), "why").text
    assert "bijlage leerlingenlijst.xlsx: 25 rijen met naam en geboortedatum" in why
    told = browser.find_element(by("ID"), "told")
    assert "someone@school.example" in told.text
    told.find_element(by("TAG_NAME"), "a").click()          # the notice's own record
    assert "notice-sent" in browser.find_element(by("ID"), "record").text
    browser.back()
    # the hashes are there for the expert, folded away
    hashes = browser.find_element(by("ID"), "hashes")
    assert hashes.get_attribute("open") is None
    assert not browser.find_element(by("CSS_SELECTOR"), "#hashes table").is_displayed()
    shot(browser, "message-page")
    browser.find_element(by("ID"), "to-quarantine").click()
    assert "/quarantine/" in browser.current_url
    viewed = [r.evidence for r in site["store"].records(Filters(event="viewed"))]
    assert any(e.get("page") == "message" and e.get("ref") == "held1" for e in viewed)


def test_quarantine_read_only_for_auditors_with_inert_preview(site: dict[str, Any],
                                                              browser: Any) -> None:
    base, qid = site["base"], site["qid"]
    browser_login(browser, base, "anna", "auditor-pass-1", lang="nl")
    browser.get(base + "/quarantine")
    row = browser.find_element(by("ID"), f"q-{qid}").text
    assert "Klassenlijst groep 7" in row and "leerlingenlijst.xlsx" in row
    assert "25 rijen met naam en geboortedatum" in row
    assert "0 uur" in row and "over 30 dagen" in row  # held just now, kept 30 days
    assert browser.find_elements(by("ID"), f"release-{qid}") == []
    shot(browser, "quarantine-auditor")
    browser.find_element(by("CSS_SELECTOR"), f"#q-{qid} a").click()
    text = browser.find_element(by("ID"), "preview-text").text
    assert "Hierbij de lijst van groep 7." in text
    source = browser.page_source
    assert "tracker.example" not in source and "<img" not in source
    assert "<script" not in source
    shot(browser, "quarantine-preview")
    # an auditor's release, asked for directly, is refused and recorded
    cookie = login_cookie(site, "anna", "auditor-pass-1")
    body = urllib.parse.urlencode({"csrf": csrf_of(site, cookie), "reason": "ik mag dit"})
    assert request(site, "POST", f"/quarantine/{qid}/release", body, cookie).status == 403
    assert QuarantineStore(site["cfg"].quarantine_dir).get(qid) is not None
    assert site["sink"].messages == []
    denied = [r for r in site["store"].records(Filters(event="denied"))]
    assert [r.actor for r in denied] == ["web:anna"]


def test_admin_release_needs_confirmation_and_a_reason(site: dict[str, Any],
                                                       browser: Any) -> None:
    base, qid = site["base"], site["qid"]
    cookie = login_cookie(site, "bert", "admin-pass-12")
    # without a reason nothing happens, whatever a client sends
    body = urllib.parse.urlencode({"csrf": csrf_of(site, cookie), "reason": "  "})
    resp = request(site, "POST", f"/quarantine/{qid}/release", body, cookie)
    assert resp.status == 400 and "reason" in resp.read().decode().lower()
    assert QuarantineStore(site["cfg"].quarantine_dir).get(qid) is not None
    browser_login(browser, base, "bert", "admin-pass-12", lang="nl")
    browser.get(base + "/quarantine")
    shot(browser, "quarantine-admin")
    browser.find_element(by("ID"), f"release-{qid}").click()   # a page, not the act
    assert QuarantineStore(site["cfg"].quarantine_dir).get(qid) is not None
    assert browser.find_element(by("ID"), "reason").get_attribute("required") is not None
    browser.find_element(by("ID"), "reason").send_keys("Lijst is geanonimiseerd, akkoord "
                                                       "directeur")
    browser.find_element(by("ID"), "notify").click()
    shot(browser, "quarantine-confirm-release")
    browser.find_element(by("ID"), "confirm-release").click()
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    result = WebDriverWait(browser, 30).until(ec.presence_of_element_located((by("ID"),
                                                                               "result")))
    shot(browser, "quarantine-released")
    assert "vrijgegeven" in result.text
    # the message went out, and so did a word to its sender
    rcpts = sorted(tuple(m.rcpt_tos) for m in site["sink"].messages)
    assert rcpts == [("ouder@example.org",), ("someone@school.example",)]
    assert QuarantineStore(site["cfg"].quarantine_dir).get(qid) is None
    release = [r for r in site["store"].records(Filters(event="quarantine-release"))]
    assert [(r.actor, r.txid, r.evidence.get("reason")) for r in release] == [
        ("web:bert", "held1", "Lijst is geanonimiseerd, akkoord directeur")]
    notices = [r for r in site["store"].records(Filters(txid="held1", event="notice-sent"))]
    assert any(r.evidence.get("kind") == "released" for r in notices)
    # the message's page and the list say so in words
    browser.find_element(by("LINK_TEXT"), "Bericht held1").click()
    assert "vrijgegeven door bert" in browser.find_element(by("ID"), "summary-line").text
    assert "Lijst is geanonimiseerd" in browser.find_element(by("ID"), "after").text
    search(browser, base, ref="held1")
    assert "vrijgegeven door bert" in browser.find_element(by("ID"), "m-held1").text


def test_admin_delete_with_reason(site: dict[str, Any], browser: Any) -> None:
    base, qid = site["base"], site["qid2"]
    browser_login(browser, base, "bert", "admin-pass-12")
    browser.get(base + f"/quarantine/{qid}")
    browser.find_element(by("ID"), f"delete-{qid}").click()
    browser.find_element(by("ID"), "reason").send_keys("Per ongeluk verstuurd")
    browser.find_element(by("ID"), "confirm-delete").click()
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    result = WebDriverWait(browser, 30).until(ec.presence_of_element_located((by("ID"),
                                                                               "result")))
    assert "deleted" in result.text
    shot(browser, "quarantine-deleted")
    assert QuarantineStore(site["cfg"].quarantine_dir).get(qid) is None
    # nothing went out but the word to its sender that it was deleted (issue 18)
    assert [(m.mail_from, m.rcpt_tos) for m in site["sink"].messages] == [
        ("postmaster@school.example", ["teacher@school.example"])]
    [rec] = site["store"].records(Filters(event="quarantine-delete"))
    assert rec.actor == "web:bert" and rec.evidence["reason"] == "Per ongeluk verstuurd"
    search(browser, base, ref="held2")
    assert "deleted by bert" in browser.find_element(by("ID"), "m-held2").text


def bars(driver: Any, chart: str) -> dict[str, int]:
    return {a.get_attribute("data-key"): int(a.get_attribute("data-value"))
            for a in driver.find_elements(by("CSS_SELECTOR"), f"#{chart} a")}


def test_dashboard_numbers_equal_the_store(site: dict[str, Any], browser: Any) -> None:
    base, store = site["base"], site["store"]
    browser_login(browser, base, "anna", "auditor-pass-1")
    browser.get(base + "/dashboard?days=365")
    shot(browser, "dashboard")
    rules = bars(browser, "chart-rules")
    want: dict[str, int] = {}
    per_outcome: dict[str, int] = {}
    for r in store.records():  # every message of the fixture is within the last 365 days
        if r.event in OUTCOMES:
            per_outcome[r.event] = per_outcome.get(r.event, 0) + 1
            for rule in r.rules:
                want[rule["id"]] = want.get(rule["id"], 0) + 1
    assert rules == want and rules["B1.sender-domain"] == 6
    shown: dict[str, int] = {}
    for key, n in bars(browser, "chart-daily").items():
        shown[key.split(":")[1]] = shown.get(key.split(":")[1], 0) + n
    assert shown == per_outcome and sum(shown.values()) == 64
    senders = bars(browser, "chart-senders")
    assert senders["teacher@school.example"] == 4 and senders["theo@home.example"] == 1
    assert bars(browser, "chart-quarantine")["age:0"] == 2
    notices = bars(browser, "chart-notices")
    assert sum(n for k, n in notices.items() if k.endswith("notice-sent")) == 2
    # each bar leads to the records behind it, and the list agrees with the bar
    link = browser.find_element(by("CSS_SELECTOR"), "#chart-rules a[data-key='B1.sender-"
                                                    "domain']")
    browser.get(base + link.get_dom_attribute("href"))
    assert "6 messages found" in browser.find_element(by("ID"), "totals").text
    browser.get(base + "/dashboard?days=365")
    link = browser.find_element(by("CSS_SELECTOR"), "#chart-senders a[data-key='teacher@"
                                                    "school.example']")
    browser.get(base + link.get_dom_attribute("href"))
    assert sorted(refs_shown(browser)) == ["held2", "ref1", "ref3", "ref5"]


def test_monthly_summary_html_and_csv(site: dict[str, Any], browser: Any) -> None:
    base = site["base"]
    browser_login(browser, base, "anna", "auditor-pass-1", lang="nl")
    browser.get(base + "/summary?month=2026-03")
    rows = browser.find_elements(by("CSS_SELECTOR"), "#summary tbody tr")
    # per outcome (delivered, rejected, quarantined, tempfailed, unknown), then the total
    assert [r.text.split() for r in rows] == [["B1", "0", "1", "0", "0", "0", "1"]]
    shot(browser, "summary-march")
    cookie = login_cookie(site, "anna", "auditor-pass-1")
    resp = request(site, "GET", "/summary?month=2026-03&format=csv", cookie=cookie)
    table = list(csv.reader(io.StringIO(resp.read().decode())))
    assert table[0][0] in ("Artikel", "Article")
    assert table[1] == ["B1", "0", "1", "0", "0", "0", "1"]
    assert any(r.event == "exported" and r.evidence.get("page") == "summary"
               for r in site["store"].records())


def test_person_report_name_private_addresses_state_notice_print_csv(
        site: dict[str, Any], browser: Any) -> None:
    base = site["base"]
    browser_login(browser, base, "anna", "auditor-pass-1")
    browser.get(base + "/report?person=teacher%40school.example")
    assert browser.find_element(by("ID"), "who-name").text == "Theo Teacher"
    table = browser.find_element(by("ID"), "report").text
    assert "theo@home.example" in table and "B1.private-address" in table
    rows = browser.find_elements(by("CSS_SELECTOR"), "#report tbody tr")
    by_ref = {r.find_elements(by("TAG_NAME"), "td")[-1].text.split()[0]: r for r in rows}
    assert set(by_ref) == {"held2", "priv1", "ref1", "ref3", "ref5"}
    assert "teacher@school.example" in by_ref["ref1"].find_element(
        by("CLASS_NAME"), "notified").text
    assert by_ref["ref3"].find_element(by("CLASS_NAME"), "notified").text == "no"
    shot(browser, "report-person")
    by_ref["priv1"].find_element(by("LINK_TEXT"), "priv1").click()
    assert "/messages/priv1" in browser.current_url
    # the print stylesheet hides the menu and the form
    css = request(site, "GET", "/static/style.css").read().decode()
    assert "@media print" in css and "nav" in css.split("@media print", 1)[1]
    cookie = login_cookie(site, "anna", "auditor-pass-1")
    resp = request(site, "GET", "/report?person=teacher%40school.example&format=csv",
                   cookie=cookie)
    lines = list(csv.DictReader(io.StringIO(resp.read().decode())))
    assert {row["reference"] for row in lines if row.get("reference")} == set(by_ref)
    assert {row["name"] for row in lines if row["reference"]} == {"Theo Teacher"}


def test_report_shows_release_state(site: dict[str, Any]) -> None:
    cookie = login_cookie(site, "bert", "admin-pass-12")
    body = urllib.parse.urlencode({"csrf": csrf_of(site, cookie), "reason": "akkoord"})
    assert request(site, "POST", f"/quarantine/{site['qid2']}/release", body,
                   cookie).status == 200
    page = request(site, "GET", "/report?person=teacher%40school.example",
                   cookie=cookie).read().decode()
    row = page.split('href="/messages/held2"', 1)[0].rsplit("<tr>", 1)[1]
    state = row.split('class="state"', 1)[1].split("</td>", 1)[0]
    assert "vrijgegeven door bert op " in state and "vastgehouden" not in state


def test_report_names_an_altered_record(site: dict[str, Any]) -> None:
    import sqlite3

    cookie = login_cookie(site, "anna", "auditor-pass-1")
    page = request(site, "GET", "/report?person=teacher%40school.example",
                   cookie=cookie).read().decode()
    assert "Audit chain intact" in page or "Audit-keten intact" in page
    [victim] = [r for r in site["store"].records(Filters(txid="ref3"))]
    con = sqlite3.connect(site["store"].path)
    con.execute("DROP TRIGGER records_no_update")  # what a database owner could do
    con.execute("UPDATE records SET subject = 'iets anders' WHERE id = ?", (victim.id,))
    con.commit()
    con.close()
    page = request(site, "GET", "/report?person=teacher%40school.example",
                   cookie=cookie).read().decode()
    chain = page.split('id="chain"', 1)[1].split("</p>", 1)[0]
    assert "GEBROKEN" in chain or "BROKEN" in chain
    assert f"id={victim.id} " in chain and "content altered" in chain
