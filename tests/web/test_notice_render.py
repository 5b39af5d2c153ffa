"""The HTML notices as a mail client shows them: each Dutch variant rendered in headless
Chromium (Debian's, through Selenium), read back as the visible text, and photographed to
``tests/artifacts/notices/`` (CI keeps that folder) for a person to look at."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from milter.commands.notice import variants
from milter.notices import Style
from milter.policy import load
from tests.conftest import POLICY

# the `browser` fixture comes from tests/web/conftest.py

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts" / "notices"
POL = load(POLICY)
STYLE = Style(templates=POLICY.parent / "notices", postmaster="postmaster@school.example",
              school="De Regenboog", school_domains=("school.example",))


def dutch_variants(register: str = "je") -> Iterator[tuple[str, tuple[str, str, str]]]:
    yield from variants(POL, replace(STYLE, register_nl=register), "school.example",
                        langs=("nl",))


def test_every_dutch_html_notice_reads_whole_in_chromium(browser: Any,  # noqa: F811
                                                         tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.set_window_size(800, 1000)
    shown = 0
    for label, (_, text, body_html) in dutch_variants():
        name = re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")
        page = tmp_path / f"{name}.html"
        page.write_text(body_html, encoding="utf-8")
        browser.get(page.as_uri())
        visible = browser.find_element(By.TAG_NAME, "body").text
        assert re.search(r"\{[a-z_]+\}", visible) is None, label
        assert "Beste " in visible and "mailcontrole van De Regenboog" in visible, label
        # what the plain text says, the page shows (same words, paragraph for paragraph)
        for paragraph in (p for p in text.split("\n") if p.strip()):
            flat = paragraph.removeprefix("- ")
            if ":" in flat and flat.split(":")[0] in ("Onderwerp", "Aan", "Tijdstip"):
                flat = flat.split(":", 1)[1].strip()
            assert flat in visible.replace("\n", " ") or flat in visible, (label, flat)
        # nothing wider than the window: a teacher never scrolls sideways
        overflow = browser.execute_script(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 0, label
        assert "Verstuurd" not in visible and "UTC" not in visible
        browser.save_screenshot(str(ARTIFACTS / f"{name}.png"))
        shown += 1
    assert shown >= 20  # every rule, inside and outside, supervisor, summary, release, delete
    assert (ARTIFACTS / "a1-confidential-attachment-to-outside-nl-sender.png").stat().st_size


def test_the_findings_are_a_list_and_the_facts_a_table(browser: Any,  # noqa: F811
                                                       tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    label, (_, _, body_html) = next(
        v for v in dutch_variants("u") if v[0] == "A1.confidential-attachment, to outside, "
                                                  "nl, sender")
    page = tmp_path / "a1.html"
    page.write_text(body_html, encoding="utf-8")
    browser.get(page.as_uri())
    items = browser.find_elements(By.CSS_SELECTOR, "ul li")
    assert len(items) == 1 and "leerlingenlijst groep 5.xlsx" in items[0].text
    assert "Vertrouwelijke of persoonlijke gegevens naar buiten" in \
        items[0].find_element(By.TAG_NAME, "strong").text
    rows = {r.find_element(By.TAG_NAME, "th").text: r.find_element(By.TAG_NAME, "td").text
            for r in browser.find_elements(By.CSS_SELECTOR, "table tr")}
    assert rows["Tijdstip"] == "dinsdag 24 november 2026 om 14.30 uur"
    assert rows["Aan"] == "ouder@example.org"
    body = browser.find_element(By.TAG_NAME, "body").text
    assert "Wat kunt u doen?" in body and "Uw bericht is tegengehouden" in body
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "a1-confidential-attachment-register-u.png"))


@pytest.mark.parametrize("lang", ["nl", "en"])
def test_every_variant_text_has_whole_sentences_per_line(lang: str) -> None:
    from tests.unit.test_notices import whole_sentences

    for register in ("je", "u"):
        for label, (_, text, _) in variants(POL, replace(STYLE, register_nl=register),
                                            "school.example", langs=(lang,)):
            assert whole_sentences(text) == [], label
            assert re.search(r"\{[a-z_]+\}", text) is None, label
