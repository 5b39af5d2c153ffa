"""An independent red-team of the A1 detectors: messages a school really sends, written apart
from the bench corpus, each through the real policy as ``skot-milter check`` runs it.

Look-alikes that must pass (a staff birthday calendar, a list of clubs with their phone
numbers, an invitation to the OPP meeting, a phone number after "+31" near a BSN mention) and
leaks that must be held (a class list typed as plain text, surname-first names, a marks list,
a note about a named pupil's health, a BSN with dots on a line with a name and a birth date).
Each was a false positive or a miss before the fix named in its test.
"""

from __future__ import annotations

import datetime
import json
from typing import Any

import pytest

from milter.core.context import Envelope
from milter.inspect.detectors import (
    DEFAULT_BSN_KEYWORDS,
    HIGH,
    LOW,
    MEDIUM,
    bsn_in_text,
    bsn_valid,
    marking_levels,
)
from milter.inspect.tables import people_table, text_tables
from milter.runtime import Runtime
from tests.conftest import POLICY, write_config
from tests.fixtures import files

DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
NAMES = ["Sem Bakker", "Emma de Vries", "Daan Jansen", "Noor El Amrani", "Lucas Visser",
         "Tess Smit", "Finn Meijer", "Julia Mulder", "Levi Bos", "Mila van Dijk",
         "Bram de Boer", "Saar Dekker"]
BIRTHS = ["12-03-2015", "02-11-2016", "23-07-2014", "14-01-2017", "30-09-2015", "05-05-2016",
          "17-08-2014", "21-12-2015", "09-02-2016", "11-06-2014", "28-10-2015", "03-04-2017"]
PHONES = ["06-12345678", "06-23456789", "030-2345678", "06-34567890", "06 4567 8901",
          "06-56789012", "0612345670", "06-67890123", "06-78901234", "030-6543210",
          "06-89012345", "06-90123456"]
STAFF = ["Anna Verbeek", "Theo Kramer", "Sam Someone", "Ingrid de Wit", "Peter Hoekstra",
         "Marieke Vos", "Jeroen Dekker", "Fatima Ouali", "Karin Brouwer", "Hans Meulenbelt",
         "Linda Schouten", "Erik van Leeuwen"]
CLUBS = ["Voetbalclub Zeist", "Tennisclub Houten", "Muziekschool Utrecht", "Scouting Bunnik",
         "Judoschool Nieuwegein", "Zwembad De Vijf", "Bibliotheek Zeist", "Turnclub Houten",
         "Hockeyclub Bunnik", "Dansschool Utrecht", "Atletiekclub Zeist",
         "Kinderboerderij Houten"]
BSN, BSN2 = "111222333", "123456782"
PHONE_LIKE = "302345681"   # nine digits that pass the 11-test: +31 30 234 5681 written plain


@pytest.fixture(scope="module")
def rt(tmp_path_factory: pytest.TempPathFactory) -> Runtime:
    tmp = tmp_path_factory.mktemp("redteam")
    cfg = write_config(tmp, policy=POLICY)
    (tmp / "staff.csv").write_text(
        "address;role;name;private_addresses;supervisor;groups\n"
        "someone@school.example;staff;Sam Someone;;;\n")
    return Runtime.load(str(cfg))


def mail(body: str = "Zie bijlage.", attachments: list[tuple[str, bytes, str]] | None = None,
         subject: str = "Informatie") -> bytes:
    from email.message import EmailMessage

    msg = EmailMessage()
    msg["From"] = "someone@school.example"
    msg["To"] = "ouder@example.org"
    msg["Subject"] = subject
    msg.set_content(body)
    for name, data, ctype in attachments or []:
        maintype, subtype = ctype.split("/")
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


def verdict(rt: Runtime, raw: bytes) -> dict[str, Any]:
    env = Envelope("someone@school.example", ("ouder@example.org",), "127.0.0.1", txid="R")
    return rt.evaluate(env, raw).verdict.to_json()


def signals(v: dict[str, Any]) -> set[str]:
    return {f["signal"] for r in v["rules"] if r["id"] == "A1.confidential-attachment"
            for item in r["evidence"]["items"] for f in item["findings"]
            if "action" not in f}


# -- look-alikes: ordinary school mail that must pass ---------------------------------------

LOOKALIKES = {
    # a phone number written without spaces after the country code, a BSN named in the text
    "phone after +31 near a BSN mention": mail(
        "Vragen over het BSN van uw kind bij de inschrijving? Bel de administratie op +31 "
        f"{PHONE_LIKE} (ma-do)."),
    # the invitation names topics, no one: two care words in prose are not a care file
    "invitation to the OPP meeting about the handelingsplan": mail(
        "Beste ouders,\n\nGraag nodig ik u uit voor het OPP-gesprek op donderdag. We bespreken "
        "dan ook het handelingsplan voor de komende periode.\n\nMet vriendelijke groet,\nJuf Anna"),
    "reply quoting a disclaimer the list does not know, OPP named": mail(
        "Beste mevrouw Jansen,\n\nDank voor uw bericht. Donderdag bespreken we het OPP.\n\n"
        "Groet, Juf Anna\n\n> Op 3 maart schreef J. Jansen:\n> Kunnen we het verzetten?\n>\n"
        "> Deze e-mail is vertrouwelijk. Heeft u deze per abuis ontvangen, verwijder hem dan.\n"),
    # a birthday without a year on a staff calendar is not a birth date
    "staff birthday calendar to the ouderraad": mail("Verjaardagen team.", [(
        "verjaardagen.xlsx", files.xlsx([["Naam", "Verjaardag"]] + [
            [t, f"{i + 3} {['januari', 'maart', 'mei', 'juli'][i % 4]}"]
            for i, t in enumerate(STAFF)]), XLSX)]),
    # organisations with phone numbers are not people (tab or comma)
    "newsletter list of clubs with phone numbers, tabs": mail(
        "Sportaanbod:\n" + "\n".join(f"{c}\t{p}" for c, p in zip(CLUBS, PHONES, strict=True))),
    "newsletter list of clubs with phone numbers, commas": mail(
        "Sportaanbod:\n" + "\n".join(f"{c}, {p}" for c, p in zip(CLUBS, PHONES, strict=True))),
    "newsletter agenda, one date a line": mail("Agenda:\n" + "\n".join(
        f"{d}-{m}-2026, {w}" for d, m, w in [
            (3, 3, "Studiedag"), (12, 3, "Sportdag Groep 5"), (20, 3, "Kamp Groep 8"),
            (2, 4, "Paasontbijt"), (17, 4, "Koningsspelen"), (27, 4, "Koningsdag"),
            (5, 5, "Bevrijdingsdag"), (14, 5, "Hemelvaart"), (25, 5, "Pinksteren"),
            (12, 6, "Schoolreis Groep 1-4"), (1, 7, "Musical Groep 8"),
            (10, 7, "Laatste Schooldag")])),
    "camp letter asking for allergies and medication": mail(
        "Beste ouders,\n\nGeef allergieën en medicatie voor het kamp door aan Juf Anna. Heeft "
        "uw kind ADHD-medicatie of een allergie, vermeld dat dan op het formulier.\n\nGroet"),
    "information evening with a named speaker": mail(
        "Beste ouders,\n\nOp 12 maart spreekt orthopedagoog Karin Brouwer over dyslexie en "
        "ADHD bij kinderen.\n\nGroet, de directie"),
    # contact lines that are sentences ("..., regelt de luizencontrole") are prose, not rows
    "newsletter with volunteers' roles and phone numbers": mail("Ouderraad:\n" + "\n".join(
        f"{t}, {p}, {role}." for t, p, role in zip(STAFF, PHONES, [
            "is de contactpersoon van de ouderraad", "regelt de luizencontrole op maandag",
            "is penningmeester van de ouderraad", "coördineert de hulpouders in groep 5",
            "is voorzitter van de MR", "organiseert de avondvierdaagse in juni",
            "doet de schoolreis van groep 1 tot en met 4", "is verkeersouder bij de oversteek",
            "helpt bij de bieb op dinsdag", "is de conciërge van de school",
            "zoekt nog hulp bij het kerstdiner", "maakt de foto's bij de musical"],
                                      strict=True))),
    "jarigen of the month with ages": mail("Jarigen deze maand:\n" + "\n".join(
        f"{n} ({7 + i % 4} jaar)" for i, n in enumerate(NAMES))),
    "test timetable with teachers": mail("Toetsrooster.", [("toetsen.xlsx", files.xlsx(
        [["Datum", "Toets", "Groep", "Leerkracht"]] + [
            [f"{i + 1}-03-2026", f"Rekenen blok {i % 4 + 1}", f"Groep {i % 8 + 1}", "Juf " + t]
            for i, t in enumerate(STAFF)]), XLSX)]),
    "parents' evening sign-up for the ouderraad": mail("Inschrijvingen.", [(
        "inschrijving.xlsx", files.xlsx([["Tijd", "Naam ouder", "Kind", "Groep"]] + [
            [f"19:{(i % 4) * 15:02d}", "Fam. " + n.split()[-1], n.split()[0],
             f"Groep {i % 8 + 1}"] for i, n in enumerate(NAMES)]), XLSX)]),
    "empty photo permission form": mail("Formulier.", [("toestemming.docx", files.docx(
        ["Toestemmingsformulier beeldmateriaal", "Naam leerling: ______________",
         "Geboortedatum: ___-___-______", "Handtekening ouder/verzorger: ________"],
        table=[["Naam", "Geboortedatum", "Telefoon"]] + [["", "", ""]] * 12), DOCX)]),
}


@pytest.mark.parametrize("case", sorted(LOOKALIKES))
def test_lookalike_passes(rt: Runtime, case: str) -> None:
    v = verdict(rt, LOOKALIKES[case])
    assert v["action"] == "accept", (case, signals(v))


# -- leaks that must be held ----------------------------------------------------------------

def _header_only_docx() -> bytes:
    import io

    import docx as python_docx

    doc = python_docx.Document()
    doc.sections[0].header.paragraphs[0].text = "OPP"
    doc.add_paragraph("Verslag gesprek met de ouders van Sem Bakker, groep 6.")
    buf = io.BytesIO()
    doc.save(buf)
    return buf.getvalue()


LEAKS: dict[str, tuple[bytes, str]] = {
    "class list typed with commas": (mail(
        "Beste collega,\n\nHierbij de klassenlijst van groep 5:\n\n" + "\n".join(
            f"{n}, {b}, {p}" for n, b, p in zip(NAMES, BIRTHS, PHONES, strict=True))
        + "\n\nGroet, Sam"), "people"),
    "class list, name then birth date": (mail("De nieuwe groep 3:\n" + "\n".join(
        f"{n} {b}" for n, b in zip(NAMES, BIRTHS, strict=True))), "people"),
    "class list, name - birth date": (mail("Lijst:\n" + "\n".join(
        f"{n} - {b}" for n, b in zip(NAMES, BIRTHS, strict=True))), "people"),
    "class list, name (birth date)": (mail("Lijst:\n" + "\n".join(
        f"{n} ({b})" for n, b in zip(NAMES, BIRTHS, strict=True))), "people"),
    "class list, name, geboren date": (mail("Lijst:\n" + "\n".join(
        f"{n}, geboren {b}" for n, b in zip(NAMES, BIRTHS, strict=True))), "people"),
    "pupils with a parent's phone after a dash": (mail("Belrij groep 5:\n" + "\n".join(
        f"{n} - moeder {p}" for n, p in zip(NAMES, PHONES, strict=True))), "people"),
    "class list in a PDF, single spaces": (mail("Lijst.", [("klas.pdf", files.pdf(
        ["Klassenlijst groep 5"] + [f"{n} {b} {p}" for n, b, p in
                                    zip(NAMES, BIRTHS, PHONES, strict=True)]),
        "application/pdf")]), "people"),
    "xlsx surname first ('de Vries, Emma')": (mail("Lijst.", [("klas.xlsx", files.xlsx(
        [["Naam", "Geboortedatum"]] + [[n.split(" ", 1)[1] + ", " + n.split()[0], b]
                                       for n, b in zip(NAMES, BIRTHS, strict=True)]), XLSX)]),
        "people"),
    "xlsx with Excel dates under Geboortedatum": (mail("Lijst.", [("klas.xlsx", files.xlsx(
        [["Achternaam", "Voornaam", "Geboortedatum"]] + [
            [n.split(" ", 1)[1], n.split()[0], datetime.date(2014 + i % 4, i % 12 + 1, i + 1)]
            for i, n in enumerate(NAMES)]), XLSX)]), "people"),
    "cijferlijst xlsx": (mail("Cijfers.", [("cijferlijst.xlsx", files.xlsx(
        [["Naam", "Rekenen", "Taal", "Spelling", "Gemiddeld"]] + [
            [n, 6 + i % 4, 5.5 + (i % 5) / 2, 7, 6.8] for i, n in enumerate(NAMES)]), XLSX)]),
        "people"),
    "eindtoets scores and advice pasted under a title": (mail(
        "Cijfers groep 8:\n" + "\n".join(["Naam\tCito\tAdvies"] + [
            f"{n}\t{530 + i}\t{['havo', 'vwo', 'vmbo-t'][i % 3]}"
            for i, n in enumerate(NAMES)])), "people"),
    "health note about named pupils": (mail(
        "Beste kampleiding,\n\nSem Bakker heeft een ernstige pinda-allergie en gebruikt "
        "medicatie (Ritalin) voor zijn ADHD.\n\nGroet, Juf Anna"), "marking"),
    "diagnosis and medication of a named pupil": (mail(
        "Hoi Karin,\n\nBij Daan Jansen (groep 6) is de diagnose ADHD gesteld; hij krijgt "
        "medicatie.\n\nGroet"), "marking"),
    "health notes in a docx": (mail("Zie bijlage.", [("kamp.docx", files.docx(
        ["Aandachtspunten kamp", "Sem Bakker heeft een pinda-allergie en gebruikt medicatie.",
         "Daan Jansen heeft ADHD en krijgt medicatie om 12 uur."]), DOCX)]), "marking"),
    "BSN with dots next to a name and a birth date": (mail(
        f"Sem Bakker, geboren 12-03-2015, {BSN2[:3]}.{BSN2[3:6]}.{BSN2[6:]}"), "bsn"),
    "two bare BSNs on person lines": (mail(
        f"Sem Bakker 12-03-2015 {BSN}\nEmma de Vries 02-11-2016 {BSN2}"), "bsn"),
    "docx with OPP only in the page header": (mail("Verslag.", [(
        "verslag.docx", _header_only_docx(), DOCX)]), "marking"),
}


@pytest.mark.parametrize("case", sorted(LEAKS))
def test_leak_is_held(rt: Runtime, case: str) -> None:
    raw, signal = LEAKS[case]
    v = verdict(rt, raw)
    assert v["action"] == "quarantine", case
    assert signal in signals(v), (case, signals(v))
    dumped = json.dumps(v)
    assert not any(x in dumped for x in [*NAMES, *BIRTHS, *PHONES, BSN, BSN2])
    # a health note is named as such, never by the condition
    assert not any(x in dumped for x in ["ADHD", "allergie", "medicatie", "epilepsie"])


# -- the detectors directly ------------------------------------------------------------------

def test_a_phone_number_after_the_country_code_is_not_a_bsn() -> None:
    assert bsn_valid(PHONE_LIKE)
    text = f"Het BSN van uw kind? Bel +31 {PHONE_LIKE}."
    assert bsn_in_text(text, DEFAULT_BSN_KEYWORDS, 300) == {}
    assert bsn_in_text(f"Het BSN van uw kind: {PHONE_LIKE}.", DEFAULT_BSN_KEYWORDS, 300) == {
        PHONE_LIKE: HIGH}


def test_a_bare_number_is_medium_only_on_a_line_with_a_name_and_a_date() -> None:
    assert bsn_in_text(f"Sem Bakker 12-03-2015 {BSN}", DEFAULT_BSN_KEYWORDS, 300) == {
        BSN: MEDIUM}
    assert bsn_in_text(f"Zie {BSN} voor 12-03-2026.", DEFAULT_BSN_KEYWORDS, 300) == {BSN: LOW}
    assert bsn_in_text(f"Sem Bakker\n12-03-2015\n{BSN}", DEFAULT_BSN_KEYWORDS, 300) == {
        BSN: LOW}


def test_a_birthday_column_needs_a_year_and_a_marks_column_needs_marks() -> None:
    birthday = [["Naam", "Verjaardag"]] + [[n, "3 maart"] for n in NAMES]
    assert people_table(birthday).rows == 0
    born = [["Naam", "Verjaardag"]] + [[n, b] for n, b in zip(NAMES, BIRTHS, strict=True)]
    assert people_table(born).rows == 12
    marks = [["Naam", "Toets"]] + [[n, "7,5"] for n in NAMES]
    assert people_table(marks).kinds == ("results",)
    planned = [["Naam", "Toets"]] + [[n, "Rekenen blok 3"] for n in NAMES]
    assert people_table(planned).rows == 0


def test_plain_text_lines_split_into_cells_but_prose_stays_whole() -> None:
    assert text_tables("Sem Bakker, 12-03-2015\nEmma Vos (02-11-2016)") == [
        [["Sem Bakker", "12-03-2015"], ["Emma Vos", "02-11-2016"]]]
    assert text_tables("Beste ouders,\nWe gaan op reis.") == []


def test_care_words_rise_only_in_a_sentence_that_names_someone() -> None:
    words = ["OPP", "handelingsplan", "zorgdossier", "diagnose"]
    invite = "We bespreken het OPP en het handelingsplan."
    assert marking_levels(invite, words, ["OPP"], "body") == {"OPP": LOW, "handelingsplan": LOW}
    note = "Hieronder het zorgdossier van Sem. De diagnose is dyslexie."
    assert set(marking_levels(note, words, ["OPP"], "body").values()) == {MEDIUM}
    health = ["allergie", "medicatie", "ADHD"]
    assert marking_levels("Sem Bakker heeft ADHD en krijgt medicatie.", [], [], "body",
                          health) == {"gezondheid": MEDIUM}
    # no one named, or the named one is the speaker: nothing
    assert marking_levels("Heeft uw kind ADHD of medicatie? Meld het.", [], [], "body",
                          health) == {}
    assert marking_levels("Spreker Karin Brouwer heeft het over ADHD en medicatie.", [], [],
                          "body", health) == {}
