"""Detection quality on a seeded, labelled corpus: ordinary school mail against real leaks.

    python bench/detect_eval.py [--seed 14] [--ordinary 400] [--leaks 200] [--show-errors]

Every message runs through the real policy exactly as ``skot-milter check`` runs it
(``Runtime.evaluate`` with the bundled SKOT policy, an internal client, outbound to parents).
A message is *stopped* when its verdict is quarantine or reject. An ordinary message that is
stopped is a false positive; a leak is caught when the rule its label names takes the action
the label expects (A1 leaks: quarantine; media: the A5 rule fires). Prints precision and recall
per detector and per channel, the false-positive rate on ordinary mail and the miss rate on
leaks. The goal: false positives <= 0.5% and misses <= 2% at the same time.
Asserts nothing: figures, not tests (speed and quality live in bench/, never in timed tests).
"""

from __future__ import annotations

import argparse
import io
import random
import sys
import tempfile
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from milter.core.context import Envelope  # noqa: E402
from milter.runtime import Runtime  # noqa: E402
from tests.fixtures import files  # noqa: E402

DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
PPTX = "application/vnd.openxmlformats-officedocument.presentationml.presentation"
ODS = "application/vnd.oasis.opendocument.spreadsheet"
SCHOOL_IBAN = "NL91 ABNA 0417 1643 00"     # the school's own account (policy: own_ibans)
SCHOOL = "school.example"
TEACHER = "someone@school.example"
MEDIA = "media@school.example"              # member of the directory group "media"

FIRST = ["Emma", "Daan", "Sophie", "Lucas", "Julia", "Sem", "Tess", "Finn", "Noor", "Levi",
         "Mila", "Bram", "Saar", "Jesse", "Lotte", "Thijs", "Anna", "Ruben", "Fenna", "Milan"]
LAST = ["de Vries", "Jansen", "Bakker", "Visser", "Smit", "Meijer", "Mulder", "Bos", "van Dijk",
        "de Boer", "Dekker", "van der Berg", "Vos", "Peters", "Hendriks", "El Amrani", "Yilmaz"]
STREETS = ["Dorpsstraat", "Kerkweg", "Schoollaan", "Molenweg", "Beukenlaan", "Lindenhof"]
TOWNS = ["Utrecht", "Zeist", "Houten", "Bunnik", "Nieuwegein"]


# -- numbers ---------------------------------------------------------------------------------

def bsn(rng: random.Random, leading_zero: bool = False) -> str:
    """A number that passes the 11-test (what a real BSN is)."""
    while True:
        head = ("0" if leading_zero else str(rng.randint(1, 9))) + "".join(
            str(rng.randint(0, 9)) for _ in range(7))
        total = sum(int(d) * w for d, w in zip(head, range(9, 1, -1), strict=True))
        last = total % 11
        if last < 10:
            return head + str(last)


def nine_digits(rng: random.Random) -> str:
    """An ordinary nine-digit reference: about 1 in 11 passes the 11-test by chance."""
    return str(rng.randint(100_000_000, 999_999_999))


def iban(rng: random.Random) -> str:
    bank = rng.choice(["ABNA", "INGB", "RABO", "SNSB", "TRIO"])
    account = "".join(str(rng.randint(0, 9)) for _ in range(10))
    digits = "".join(str(int(c, 36)) for c in bank + account + "NL00")
    check = 98 - int(digits) % 97
    raw = f"NL{check:02d}{bank}{account}"
    return " ".join(raw[i:i + 4] for i in range(0, len(raw), 4)) if rng.random() < .5 else raw


def wrapped_in_iban(rng: random.Random, before: str) -> str:
    """``before`` and an IBAN (in groups), hard-wrapped at spaces as a mail program does, at
    a width that breaks the line inside the IBAN (after its first, second, third or fourth
    group)."""
    import textwrap

    account = iban(rng).replace(" ", "")
    grouped = " ".join(account[i:i + 4] for i in range(0, len(account), 4))
    width = len(before) + 1 + rng.choice([4, 9, 14, 19])
    return "\n".join(textwrap.wrap(f"{before} {grouped}, graag voor 1 oktober.", width))


def name(rng: random.Random) -> str:
    return f"{rng.choice(FIRST)} {rng.choice(LAST)}"


def birth(rng: random.Random) -> str:
    return f"{rng.randint(1, 28):02d}-{rng.randint(1, 12):02d}-20{rng.randint(12, 20)}"


def phone(rng: random.Random) -> str:
    return rng.choice([f"06-{rng.randint(10_000_000, 99_999_999)}",
                       f"06 {rng.randint(1000, 9999)} {rng.randint(1000, 9999)}",
                       f"030-{rng.randint(1_000_000, 9_999_999)}"])


def address(rng: random.Random) -> str:
    return (f"{rng.choice(STREETS)} {rng.randint(1, 200)}, {rng.randint(1000, 9999)} "
            f"{rng.choice('ABCDEFGHJK')}{rng.choice('ABCDEFGHJK')} {rng.choice(TOWNS)}")


def parent_mail(rng: random.Random, who: str) -> str:
    return who.split()[0].lower() + f".ouder{rng.randint(1, 99)}@" + rng.choice(
        ["gmail.com", "hotmail.com", "ziggo.nl", "kpnmail.nl"])


def amount(rng: random.Random) -> str:
    return f"{rng.randint(1, 999)},{rng.randint(0, 99):02d}"


def date(rng: random.Random) -> str:
    return f"{rng.randint(1, 28)}-{rng.randint(1, 12)}-2026"


# -- files: tests/fixtures/files.py makes them with real libraries --------------------------

csv_bytes, ods, pptx = files.csv_bytes, files.ods, files.pptx
docx_with_photos, pdf_with_photo, pdf_table = (files.docx_with_photos, files.pdf_with_photo,
                                               files.pdf_table)


# -- messages --------------------------------------------------------------------------------

@dataclass
class Sample:
    label: str                       # "ordinary" or the leak's detector
    channel: str                     # body, html, tsv, subject, docx, xlsx, csv, ods, pdf, ...
    kind: str                        # what it is, for the error listing
    raw: bytes
    mail_from: str = TEACHER
    auth_user: str = ""
    expect: set[str] = field(default_factory=set)   # signals a leak must be caught by


def mail(body: str, attachments: list[tuple[str, bytes, str]] = (),  # type: ignore[assignment]
         subject: str = "Informatie", frm: str = TEACHER, html: str = "") -> bytes:
    msg = EmailMessage()
    msg["From"] = frm
    msg["To"] = "ouder@example.org"
    msg["Subject"] = subject
    msg["Message-ID"] = "<eval@school.example>"
    msg.set_content(body)
    if html:
        msg.add_alternative(html, subtype="html")
    for fname, data, ctype in attachments:
        maintype, subtype = ctype.split("/")
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=fname)
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


GREETING = ["Beste ouders,", "Beste ouders en verzorgers,", "Hallo allemaal,",
            "Geachte heer, mevrouw,"]
SIGN = ["Met vriendelijke groet,\nJuf Sam\nGroep 5", "Groeten,\nMeester Theo",
        "Met vriendelijke groet,\nDe directie"]
DISCLAIMERS = [
    "Dit e-mailbericht is uitsluitend bestemd voor de geadresseerde(n) en kan vertrouwelijke "
    "informatie bevatten. Bent u niet de geadresseerde, verwijder het bericht dan en stel de "
    "afzender op de hoogte.",
    "De informatie in dit bericht is vertrouwelijk en uitsluitend bestemd voor de "
    "geadresseerde. Openbaarmaking, vermenigvuldiging of verspreiding is niet toegestaan.",
    "This e-mail may contain confidential information and is intended solely for the "
    "addressee. If you are not the intended recipient, please delete it.",
    "Disclaimer: aan dit bericht kunnen geen rechten worden ontleend. Dit bericht kan "
    "VERTROUWELIJKE informatie bevatten en is alleen bedoeld voor de geadresseerde.",
    "CONFIDENTIALITY NOTICE:\nThis e-mail and any attachments are for the exclusive use of "
    "the intended recipient. If you are not the intended recipient, please delete it.",
    "VERTROUWELIJK\nDe informatie in dit bericht is uitsluitend bestemd voor de "
    "geadresseerde. Gebruik door anderen is niet toegestaan.",
]


def letter(rng: random.Random, lines: list[str], disclaimer: bool | None = None) -> str:
    text = "\n\n".join([rng.choice(GREETING), *lines, rng.choice(SIGN)])
    if disclaimer if disclaimer is not None else rng.random() < .3:
        text += "\n\n--\n" + rng.choice(DISCLAIMERS)
    text += "\nBasisschool De Regenboog, Schoollaan 1, 3581 AB Utrecht, tel. 030-2345678"
    return text


def ordinary_lines(rng: random.Random) -> list[str]:
    """What ordinary letters carry: dates, amounts, phones, postcodes, references."""
    pool = [
        lambda: f"Op {date(rng)} is er een studiedag; de kinderen zijn dan vrij.",
        lambda: f"De ouderbijdrage is dit jaar EUR {amount(rng)}. Graag overmaken op "
                f"{SCHOOL_IBAN} o.v.v. de naam van uw kind.",
        lambda: f"Uw bestelling met bestelnummer {nine_digits(rng)} is onderweg.",
        lambda: f"Factuurnummer {nine_digits(rng)}, klantnummer {rng.randint(10000, 99999)}.",
        lambda: f"Voor vragen kunt u bellen met {phone(rng)} of mailen naar info@{SCHOOL}.",
        lambda: f"Het schoolreisje kost {amount(rng)} euro; betalen voor {date(rng)}.",
        lambda: f"Ons KvK-nummer is {rng.randint(10_000_000, 99_999_999)}.",
        lambda: f"Kenmerk: {nine_digits(rng)}. Referentie {rng.randint(1000, 9999)}-"
                f"{rng.randint(100, 999)}.",
        lambda: f"De bus vertrekt om {rng.randint(7, 9)}:{rng.choice(['00', '15', '30'])} "
                f"vanaf Schoollaan 1, 3581 AB Utrecht.",
        lambda: f"Trackingcode {nine_digits(rng)}{rng.randint(0, 9)} bij PostNL.",
        lambda: "Wij gaan vertrouwelijk om met de gegevens die u ons geeft.",
        lambda: "Dit bericht is niet vertrouwelijk; u mag het delen met andere ouders.",
        lambda: f"Ordernummer: {nine_digits(rng)}, bedrag {amount(rng)}.",
        lambda: f"Uw kind heeft op {date(rng)} de verjaardag van de juf gevierd.",
    ]
    return [rng.choice(pool)() for _ in range(rng.randint(2, 5))]


def order_rows(rng: random.Random, n: int) -> list[list[str]]:
    rows = [["Bestelnummer", "Artikel", "Aantal", "Prijs"]]
    for _ in range(n):
        rows.append([nine_digits(rng), rng.choice(["Schriften", "Potloden", "Lijm", "Gum",
                                                   "Scharen", "Verf"]),
                     str(rng.randint(1, 50)), amount(rng)])
    return rows


def budget_rows(rng: random.Random, n: int) -> list[list[object]]:
    rows: list[list[object]] = [["Post", "Begroot", "Realisatie", "Verschil"]]
    for post in ["Leermiddelen", "Excursies", "ICT", "Schoonmaak", "Nascholing", "Inventaris",
                 "Kopieerkosten", "Sport"][:n]:
        a, b = rng.randint(100, 999), rng.randint(100, 999)
        rows.append([post, a, b, a - b])
    return rows


def timetable_rows(rng: random.Random) -> list[list[str]]:
    rows = [["Tijd", "Maandag", "Dinsdag", "Woensdag", "Donderdag", "Vrijdag"]]
    for hour in range(8, 15):
        rows.append([f"{hour}:30"] + [rng.choice(["Rekenen", "Taal", "Gym", "Muziek", "Lezen",
                                                  "Pauze"]) for _ in range(5)])
    return rows


def meeting_rows(rng: random.Random) -> list[list[str]]:
    rows = [["Tijd", "Gesprek met ouders van", "Lokaal"]]
    for i in range(12):
        rows.append([f"{15 + i // 4}:{(i % 4) * 15:02d}", rng.choice(FIRST),
                     f"{rng.randint(1, 12)}"])
    return rows


def team_rows(rng: random.Random) -> list[list[str]]:
    rows = [["Naam", "Groep", "E-mail"]]
    for g in range(1, 9):
        who = name(rng)
        rows.append([who, f"Groep {g}", who.split()[0].lower() + f"@{SCHOOL}"])
    return rows


def ordinary(rng: random.Random, n: int, photo: bytes) -> list[Sample]:
    makers: list[tuple[str, str, Callable[[], bytes]]] = [
        ("body", "letter", lambda: mail(letter(rng, ordinary_lines(rng)))),
        ("body", "payment letter, own IBAN three times", lambda: mail(letter(rng, [
            f"Graag betalen op {SCHOOL_IBAN}.",
            f"Nogmaals: rekening {SCHOOL_IBAN.replace(' ', '')}.",
            f"IBAN school: {SCHOOL_IBAN}", *ordinary_lines(rng)]))),
        ("body", "order confirmation", lambda: mail(letter(rng, [
            f"Bestelnummer {nine_digits(rng)}", f"Ordernummer {nine_digits(rng)}",
            *ordinary_lines(rng)]))),
        ("subject", "subject says not confidential", lambda: mail(
            letter(rng, ordinary_lines(rng)), subject="Niet vertrouwelijk: roosterwijziging")),
        # a subject names the topic: inviting parents to talk about a plan is ordinary mail
        ("subject", "invitation about a care plan", lambda: mail(
            letter(rng, [f"Graag nodig ik u uit voor een gesprek over {rng.choice(FIRST)}.",
                         *ordinary_lines(rng)]),
            subject=rng.choice(["Uitnodiging gesprek handelingsplan", "OPP-gesprek donderdag",
                                "Afspraak evaluatie groeidocument"]))),
        ("body", "disclaimer", lambda: mail(letter(rng, ordinary_lines(rng), disclaimer=True))),
        ("html", "newsletter table", lambda: mail(letter(rng, ordinary_lines(rng)),
                                                  html=html_table(timetable_rows(rng)))),
        ("html", "meeting schedule", lambda: mail(letter(rng, ["Het schema:"]),
                                                  html=html_table(meeting_rows(rng)))),
        ("tsv", "budget pasted", lambda: mail(letter(rng, ["Begroting:",
                                                           tsv(budget_rows(rng, 8))]))),
        ("docx", "order list", lambda: mail(letter(rng, ["Zie bijlage."]), [(
            "bestelling.docx", files.docx(["Bestelling leermiddelen"],
                                          table=order_rows(rng, 25)), DOCX)])),
        ("docx", "letter", lambda: mail("Zie bijlage.", [("brief.docx", files.docx(
            ordinary_lines(rng) + ordinary_lines(rng)), DOCX)])),
        ("docx", "team list", lambda: mail("Zie bijlage.", [("team.docx", files.docx(
            ["Ons team"], table=team_rows(rng)), DOCX)])),
        ("xlsx", "budget", lambda: mail("Begroting.", [("begroting.xlsx", files.xlsx(
            budget_rows(rng, 8)), XLSX)])),
        ("xlsx", "order list", lambda: mail("Bestellijst.", [("bestelling.xlsx", files.xlsx(
            [[int(c) if c.isdigit() else c for c in r] for r in order_rows(rng, 40)]), XLSX)])),
        ("xlsx", "timetable", lambda: mail("Rooster.", [("rooster.xlsx", files.xlsx(
            timetable_rows(rng)), XLSX)])),
        ("csv", "order list", lambda: mail("Export.", [("orders.csv", csv_bytes(
            order_rows(rng, 40), rng.choice([",", ";"])), "text/csv")])),
        ("ods", "budget", lambda: mail("Begroting.", [("begroting.ods", ods(
            budget_rows(rng, 8)), ODS)])),
        ("pdf", "invoice", lambda: mail("Factuur.", [("factuur.pdf", files.pdf(
            ordinary_lines(rng) + [f"Factuurnummer {nine_digits(rng)}",
                                   f"Te betalen op {SCHOOL_IBAN}"]), "application/pdf")])),
        ("pdf", "budget table", lambda: mail("Begroting.", [("begroting.pdf", pdf_table(
            [[str(c) for c in r] for r in budget_rows(rng, 8)]), "application/pdf")])),
        ("pdf", "order list", lambda: mail("Bestelling.", [("bestelling.pdf", pdf_table(
            order_rows(rng, 30)), "application/pdf")])),
        ("body", "asks for the BSN, quotes another number", lambda: mail(letter(rng, [
            "Voor de aanmelding bij de GGD hebben wij het BSN van uw kind nodig.",
            # the worst case: a reference that happens to pass the 11-test
            rng.choice([f"Uw aanmeldnummer is {bsn(rng)}.",
                        f"Dossiernummer {bsn(rng)}.",
                        f"Het volgnummer van de aanvraag: {bsn(rng)}",
                        f"Uw klantnummer: {bsn(rng)}."])]))),
        ("html", "calendar with teachers", lambda: mail("Agenda.", html=html_table(
            [["Datum", "Activiteit", "Wie"]] + [[date(rng), rng.choice(
                ["Studiedag", "Sportdag", "Excursie", "Kerstviering"]), "Juf " + rng.choice(
                FIRST)] for _ in range(15)]))),
        ("xlsx", "sponsored run results", lambda: mail("Uitslag.", [("sponsorloop.xlsx",
            files.xlsx([["Naam", "Rondes", "Bedrag"]] + [[name(rng), rng.randint(5, 40),
                                                          rng.randint(10, 200)]
                                                         for _ in range(25)]), XLSX)])),
        ("pptx", "presentation", lambda: mail("Presentatie.", [("ouderavond.pptx", pptx(
            ["Ouderavond " + date(rng), "Begroting " + amount(rng)]), PPTX)])),
        ("zip", "orders zipped", lambda: mail("Alles.", [("stukken.zip", files.zip_of({
            "orders.csv": csv_bytes(order_rows(rng, 30)), "brief.txt": "\n".join(
                ordinary_lines(rng)).encode()}), "application/zip")])),
        # the red-team's look-alikes (tests/unit/test_detection_redteam.py)
        ("body", "invitation to the OPP meeting about the handelingsplan", lambda: mail(letter(
            rng, [rng.choice(["Graag nodig ik u uit voor het OPP-gesprek op donderdag.",
                              "Op dinsdag is het gesprek over het OPP van uw kind."]),
                  "We bespreken dan ook het handelingsplan voor de komende periode."]))),
        ("body", "reply quoting a disclaimer the list does not know", lambda: mail(
            "Dank voor uw bericht. Donderdag bespreken we het OPP.\n\nGroet, Juf Sam\n\n"
            "> Op 3 maart schreef een ouder:\n> Kunnen we het gesprek verzetten?\n>\n"
            "> Deze e-mail is vertrouwelijk. Heeft u deze per abuis ontvangen, verwijder hem "
            "dan.\n")),
        ("body", "camp letter asking for allergies and medication", lambda: mail(letter(rng, [
            "Geef allergieën en medicatie voor het kamp door aan Juf " + rng.choice(FIRST) + ".",
            "Heeft uw kind ADHD-medicatie of een allergie, vermeld dat dan op het formulier.",
            *ordinary_lines(rng)]))),
        ("body", "information evening with a named speaker", lambda: mail(letter(rng, [
            f"Op {date(rng)} spreekt " + rng.choice(["orthopedagoog", "jeugdverpleegkundige",
                                                     "psycholoog"])
            + f" {name(rng)} over " + " en ".join(rng.sample(
                ["dyslexie", "ADHD", "autisme", "allergie"], 2)) + " bij kinderen."]))),
        ("body", "phone number after +31 near a BSN mention", lambda: mail(letter(rng, [
            "Voor de inschrijving hebben wij het BSN van uw kind nodig.",
            f"Vragen? Bel de administratie op +31 {bsn(rng)}."]))),
        ("body", "list of clubs with phone numbers", lambda: mail(letter(rng, [
            "Sportaanbod in de buurt:", "\n".join(
                f"{c}{rng.choice([', ', chr(9)])}{phone(rng)}" for c in rng.sample(CLUBS, 12))]))),
        ("body", "volunteers with roles and phone numbers", lambda: mail(letter(rng, [
            "De ouderraad:", "\n".join(f"{name(rng)}, {phone(rng)}, " + rng.choice([
                "is penningmeester van de ouderraad", "regelt de luizencontrole op maandag",
                "is voorzitter van de MR", "organiseert de avondvierdaagse in juni",
                "helpt bij de bieb op dinsdag"]) + "." for _ in range(12))]))),
        ("body", "agenda, one date a line", lambda: mail(letter(rng, ["Agenda:", "\n".join(
            f"{date(rng)}, {rng.choice(['Studiedag', 'Sportdag Groep 5', 'Kamp Groep 8'])}"
            for _ in range(12))]))),
        ("xlsx", "staff birthday calendar", lambda: mail("Verjaardagen team.", [(
            "verjaardagen.xlsx", files.xlsx([["Naam", "Verjaardag"]] + [
                [name(rng), f"{rng.randint(1, 28)} " + rng.choice(["januari", "maart", "mei"])]
                for _ in range(15)]), XLSX)])),
        ("xlsx", "test timetable with teachers", lambda: mail("Toetsrooster.", [(
            "toetsen.xlsx", files.xlsx([["Datum", "Toets", "Groep", "Leerkracht"]] + [
                [date(rng), f"Rekenen blok {rng.randint(1, 4)}", f"Groep {rng.randint(1, 8)}",
                 "Juf " + rng.choice(FIRST)] for _ in range(15)]), XLSX)])),
        ("xlsx", "parents' evening sign-up", lambda: mail("Inschrijvingen.", [(
            "inschrijving.xlsx", files.xlsx([["Tijd", "Naam ouder", "Kind", "Groep"]] + [
                [f"19:{rng.choice(['00', '15', '30'])}", "Fam. " + rng.choice(LAST),
                 rng.choice(FIRST), f"Groep {rng.randint(1, 8)}"] for _ in range(15)]),
            XLSX)])),
    ]
    out: list[Sample] = []
    for i in range(n):
        channel, kind, make = makers[i % len(makers)]
        out.append(Sample("ordinary", channel, kind, make()))
    # the communications officer sends the newsletter with photos: allowed
    for i in range(max(1, n // 40)):
        data = (docx_with_photos(["Nieuwsbrief"], photo, 2) if i % 2 else
                pdf_with_photo(["Nieuwsbrief"], photo))
        fname = "nieuwsbrief.docx" if i % 2 else "nieuwsbrief.pdf"
        out.append(Sample("ordinary", "media", "newsletter with photos from the media group",
                          mail("Nieuwsbrief.", [(fname, data, DOCX if i % 2 else
                                                 "application/pdf")], frm=MEDIA),
                          mail_from=MEDIA, auth_user=MEDIA))
    return out


def docx_tabs(rows: list[list[str]]) -> bytes:
    """A list typed in Word with tab stops, not a table: one paragraph a row."""
    import docx as python_docx
    doc = python_docx.Document()
    for r in rows:
        doc.add_paragraph("\t".join(r))
    buf = io.BytesIO()
    doc.save(buf)
    return buf.getvalue()


def html_table(rows: list[list[str]]) -> str:
    from html import escape
    head = "".join(f"<th>{escape(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in r) + "</tr>"
                   for r in rows[1:])
    return f"<html><body><p>Zie hieronder.</p><table><tr>{head}</tr>{body}</table></body></html>"


def tsv(rows: list[list[object]]) -> str:
    return "\n".join("\t".join(str(c) for c in r) for r in rows)


def pupils(rng: random.Random, n: int, cols: list[str]) -> list[list[str]]:
    """A people table with the given personal columns."""
    header = {"naam": "Naam", "geb": "Geboortedatum", "bsn": "BSN", "llnr": "Leerlingnummer",
              "tel": "Telefoon ouders", "mail": "E-mail ouders", "adres": "Adres",
              "groep": "Groep"}
    rows = [[header[c] for c in cols]]
    for i in range(n):
        who = name(rng)
        value = {"naam": who, "geb": birth(rng), "bsn": bsn(rng), "llnr": str(20140 + i),
                 "tel": phone(rng), "mail": parent_mail(rng, who), "adres": address(rng),
                 "groep": f"Groep {rng.randint(1, 8)}"}
        rows.append([value[c] for c in cols])
    return rows


CLUBS = ["Voetbalclub Zeist", "Tennisclub Houten", "Muziekschool Utrecht", "Scouting Bunnik",
         "Judoschool Nieuwegein", "Zwembad De Vijf", "Bibliotheek Zeist", "Turnclub Houten",
         "Hockeyclub Bunnik", "Dansschool Utrecht", "Atletiekclub Zeist",
         "Kinderboerderij Houten", "Schaakclub Bunnik", "Korfbalvereniging Zeist"]


def plain_list(rng: random.Random) -> str:
    """A class list typed as text: one pupil a line, the cells apart by a comma, a dash,
    brackets or just a space."""
    style = rng.choice(["{n}, {b}, {p}", "{n} - {b}", "{n} ({b})", "{n} {b}",
                        "{n}, geboren {b}", "{n} - moeder {p}"])
    return "\n".join(style.format(n=name(rng), b=birth(rng), p=phone(rng))
                     for _ in range(rng.randint(12, 30)))


def health_note(rng: random.Random) -> str:
    who = name(rng)
    return rng.choice([
        f"{who} heeft een " + rng.choice(["pinda-allergie", "allergie voor noten",
                                          "lactose-allergie"]) + " en gebruikt medicatie.",
        f"Bij {who} is de diagnose " + rng.choice(["ADHD", "autisme"])
        + " gesteld; " + rng.choice(["hij", "zij"]) + " krijgt medicatie.",
        f"{who} heeft epilepsie en krijgt bij een aanval medicatie.",
        f"{who} heeft diabetes; de medicatie zit in de tas.",
    ])


def leaks(rng: random.Random, n: int, photo: bytes) -> list[Sample]:
    def cols() -> list[str]:
        return ["naam", *rng.sample(["geb", "llnr", "tel", "mail", "adres", "groep"],
                                    rng.randint(1, 3))]

    def personal(c: list[str]) -> list[str]:
        return c if set(c) - {"naam", "groep"} else [*c, "tel"]

    def bsn_sentence() -> str:
        return rng.choice([
            f"{name(rng)} (BSN {bsn(rng)}, geboren {birth(rng)}) start volgende week.",
            f"Het burgerservicenummer van {name(rng)} is {bsn(rng)}.",
            f"BSN: {(b := bsn(rng))[:4]}.{b[4:6]}.{b[6:]}",
            f"bsn {(b := bsn(rng))[:3]} {b[3:6]} {b[6:]}; zie dossier.",
            f"Sofinummer/BSN leerling: {bsn(rng)};",
            f"Kunt u het BSN controleren? \"{bsn(rng)}\"",
        ])

    def xlsx_bsn() -> bytes:
        rows: list[list[object]] = [["Naam", "BSN", "Groep"]]
        for _ in range(rng.randint(8, 25)):
            number = bsn(rng, leading_zero=rng.random() < .3)
            rows.append([name(rng), int(number), rng.randint(1, 8)])
        return files.xlsx(rows)

    def xlsx_bsn_zero() -> bytes:
        return files.xlsx([["Naam", "BSN"], [name(rng), int(bsn(rng, leading_zero=True))]])

    labelled = "Vertrouwelijk"
    makers: list[tuple[str, str, str, Callable[[], bytes]]] = [
        ("bsn", "body", "BSN in prose, comma after", lambda: mail(letter(rng, [
            bsn_sentence(), *ordinary_lines(rng)]))),
        ("bsn", "body", "several BSNs in prose", lambda: mail(letter(rng, [
            bsn_sentence() for _ in range(3)]))),
        ("bsn", "csv", "comma CSV of pupils with BSN", lambda: mail("Export.", [(
            "leerlingen.csv", csv_bytes(pupils(rng, rng.randint(5, 30),
                                               ["naam", "bsn", "geb"]), ","), "text/csv")])),
        ("bsn", "csv", "semicolon CSV with BSN", lambda: mail("Export.", [(
            "export.csv", csv_bytes(pupils(rng, rng.randint(3, 9), ["naam", "bsn"]), ";"),
            "text/csv")])),
        ("bsn", "xlsx", "Excel BSN column as numbers", lambda: mail("Lijst.", [(
            "leerlingen.xlsx", xlsx_bsn(), XLSX)])),
        ("bsn", "xlsx", "one BSN, leading zero dropped", lambda: mail("Gegevens.", [(
            "aanmelding.xlsx", xlsx_bsn_zero(), XLSX)])),
        ("bsn", "docx", "BSN in a letter", lambda: mail("Zie bijlage.", [(
            "aanmelding.docx", files.docx([bsn_sentence(), *ordinary_lines(rng)]), DOCX)])),
        ("bsn", "docx", "docx table with BSN column", lambda: mail("Zie bijlage.", [(
            "klas.docx", files.docx(["Klassenlijst"], table=pupils(rng, rng.randint(3, 12),
                                                                   ["naam", "bsn"])), DOCX)])),
        ("bsn", "pdf", "BSN in a PDF form", lambda: mail("Formulier.", [(
            "formulier.pdf", files.pdf(["Aanmeldformulier", f"Naam: {name(rng)}",
                                        f"BSN: {bsn(rng)}", f"Geboren: {birth(rng)}"]),
            "application/pdf")])),
        ("bsn", "html", "HTML table with BSN", lambda: mail("Zie onder.", html=html_table(
            pupils(rng, rng.randint(2, 8), ["naam", "bsn"])))),
        ("bsn", "tsv", "tab-separated BSNs in the body", lambda: mail(letter(rng, [
            "Hierbij de lijst:", tsv(pupils(rng, rng.randint(2, 8), ["naam", "bsn"]))]))),
        ("bsn", "ods", "ODS with BSN column", lambda: mail("Lijst.", [(
            "lijst.ods", ods(pupils(rng, rng.randint(3, 15), ["naam", "bsn"])), ODS)])),
        ("bsn", "zip", "CSV with BSNs in a ZIP", lambda: mail("Lijst.", [(
            "export.zip", files.zip_of({"leerlingen.csv": csv_bytes(pupils(
                rng, 12, ["naam", "bsn", "geb"]))}), "application/zip")])),
        ("people", "xlsx", "names with parents' phone, e-mail, address", lambda: mail(
            "Contactlijst.", [("contactlijst.xlsx", files.xlsx(pupils(rng, rng.randint(
                12, 30), ["naam", "tel", "mail", "adres"])), XLSX)])),
        ("people", "xlsx", "pupil list", lambda: mail("Lijst.", [("klas.xlsx", files.xlsx(
            pupils(rng, rng.randint(12, 30), personal(cols()))), XLSX)])),
        ("people", "csv", "pupil list", lambda: mail("Lijst.", [("klas.csv", csv_bytes(
            pupils(rng, rng.randint(12, 30), personal(cols())), rng.choice([",", ";"])),
            "text/csv")])),
        ("people", "docx", "pupil list typed with tabs", lambda: mail("Lijst.", [(
            "klas.docx", docx_tabs(pupils(rng, rng.randint(12, 30), personal(cols()))),
            DOCX)])),
        ("people", "docx", "pupil table", lambda: mail("Lijst.", [("klas.docx", files.docx(
            ["Groep 5"], table=pupils(rng, rng.randint(12, 30), personal(cols()))), DOCX)])),
        ("people", "pdf", "pupil list as PDF", lambda: mail("Lijst.", [("klas.pdf", pdf_table(
            pupils(rng, rng.randint(12, 30), personal(cols()))), "application/pdf")])),
        ("people", "html", "pupil list as HTML table", lambda: mail("Zie onder.", html=html_table(
            pupils(rng, rng.randint(12, 30), personal(cols()))))),
        ("people", "tsv", "pupil list pasted as text", lambda: mail(letter(rng, [
            "De klassenlijst:", tsv(pupils(rng, rng.randint(12, 30), personal(cols())))]))),
        ("people", "ods", "pupil list as ODS", lambda: mail("Lijst.", [("klas.ods", ods(
            pupils(rng, rng.randint(12, 30), personal(cols()))), ODS)])),
        ("marking", "body", "VERTROUWELIJK and a diagnosis in the body", lambda: mail(
            "VERTROUWELIJK\n\n" + letter(rng, [f"Bij {name(rng)} is de diagnose ADHD gesteld.",
                                               "Graag bespreken we het handelingsplan."]))),
        ("marking", "body", "care file in the body", lambda: mail(letter(rng, [
            f"Hieronder het zorgdossier van {name(rng)}.", "Diagnose: dyslexie.",
            *ordinary_lines(rng)]))),
        ("marking", "subject", "subject marking", lambda: mail(
            letter(rng, [f"Het gesprek met {name(rng)}."]),
            subject=rng.choice(["Vertrouwelijk: gesprek", "Strikt persoonlijk: " +
                                rng.choice(FIRST), "VERTROUWELIJK - verslag"]))),
        ("marking", "docx", "care plan document", lambda: mail("Zie bijlage.", [(
            "verslag.docx", files.docx([rng.choice(["Zorgdossier", "Ontwikkelingsperspectief",
                                                    "VERTROUWELIJK"]),
                                        f"Leerling: {name(rng)}"]), DOCX)])),
        ("marking", "pdf", "confidential PDF", lambda: mail("Zie bijlage.", [(
            "verslag.pdf", files.pdf(["VERTROUWELIJK", f"Gesprek met {name(rng)}",
                                      "Diagnose: dyscalculie"]), "application/pdf")])),
        ("label", "docx", "MSIP label", lambda: mail("Zie bijlage.", [(
            "notulen.docx", files.docx(["Notulen"], label=labelled), DOCX)])),
        ("iban", "xlsx", "parents' IBANs", lambda: mail("Incasso.", [("incasso.xlsx", files.xlsx(
            [["Naam", "IBAN"]] + [[name(rng), iban(rng)] for _ in range(rng.randint(3, 20))]),
            XLSX)])),
        ("iban", "body", "parents' IBANs in the body", lambda: mail(letter(rng, [
            f"{name(rng)}: {iban(rng)}" for _ in range(rng.randint(3, 6))]))),
        ("iban", "body", "parents' IBANs, the letter hard-wrapped", lambda: mail(letter(rng, [
            wrapped_in_iban(rng, f"{name(rng)} betaalt de ouderbijdrage vanaf rekening")
            for _ in range(rng.randint(3, 6))]))),
        # the red-team's leaks (tests/unit/test_detection_redteam.py)
        ("people", "body", "class list typed as plain text", lambda: mail(letter(rng, [
            "De klassenlijst:", plain_list(rng)]))),
        ("people", "pdf", "class list in a PDF, single spaces", lambda: mail("Lijst.", [(
            "klas.pdf", files.pdf(["Klassenlijst"] + [f"{name(rng)} {birth(rng)} {phone(rng)}"
                                                      for _ in range(rng.randint(12, 30))]),
            "application/pdf")])),
        ("people", "xlsx", "surname-first names", lambda: mail("Lijst.", [("klas.xlsx",
            files.xlsx([["Naam", "Geboortedatum"]] + [
                [f"{rng.choice(LAST)}, {rng.choice(FIRST)}", birth(rng)]
                for _ in range(rng.randint(12, 30))]), XLSX)])),
        ("people", "xlsx", "cijferlijst", lambda: mail("Cijfers.", [("cijferlijst.xlsx",
            files.xlsx([["Naam", "Rekenen", "Taal", "Spelling"]] + [
                [name(rng), rng.randint(4, 10), rng.choice([5.5, 6.8, 7.5, 8]),
                 rng.randint(4, 10)] for _ in range(rng.randint(12, 30))]), XLSX)])),
        ("people", "tsv", "eindtoets scores under a title", lambda: mail(
            "Uitslagen groep 8:\n" + tsv([["Naam", "Eindtoets", "Advies"]] + [
                [name(rng), str(rng.randint(501, 550)), rng.choice(["havo", "vwo", "vmbo-t"])]
                for _ in range(rng.randint(12, 30))]))),
        ("marking", "body", "health note about a named pupil", lambda: mail(letter(rng, [
            health_note(rng), *ordinary_lines(rng)]))),
        ("marking", "docx", "health notes in a docx", lambda: mail("Zie bijlage.", [(
            "kamp.docx", files.docx(["Aandachtspunten kamp", health_note(rng),
                                     health_note(rng)]), DOCX)])),
        ("bsn", "body", "bare BSN on a line with a name and a birth date", lambda: mail(
            letter(rng, [f"{name(rng)}, {birth(rng)}, " + rng.choice(
                [(b := bsn(rng)), f"{b[:3]}.{b[3:6]}.{b[6:]}"])]))),
        ("ambiguous", "mime", "two boundaries", lambda: two_boundaries(rng)),
        ("ambiguous", "mime", "filename vs filename*", lambda: filename_star(rng)),
        ("ambiguous", "mime", "two charsets", lambda: two_charsets()),
        ("media", "docx", "photos in a docx", lambda: mail("Foto's!", [(
            "schoolreis.docx", docx_with_photos(["Schoolreis"], photo, 2), DOCX)])),
        ("media", "pptx", "photos in a pptx", lambda: mail("Foto's!", [(
            "schoolreis.pptx", pptx(["Schoolreis"], 2, photo), PPTX)])),
        ("media", "pdf", "photo in a PDF newsletter", lambda: mail("Nieuwsbrief.", [(
            "nieuwsbrief.pdf", pdf_with_photo(["Nieuwsbrief"], photo), "application/pdf")])),
    ]
    out: list[Sample] = []
    for i in range(n):
        label, channel, kind, make = makers[i % len(makers)]
        out.append(Sample(label, channel, kind, make(), expect={label}))
    # media group member in the envelope, another teacher in From: (no SMTP AUTH)
    for _ in range(max(1, n // 40)):
        raw = mail("Foto's.", [("foto.jpg", photo, "image/jpeg")], frm=TEACHER)
        out.append(Sample("media", "media", "envelope of the media group, From: a teacher", raw,
                          mail_from=MEDIA, expect={"media"}))
    return out


def two_boundaries(rng: random.Random) -> bytes:
    return ("From: someone@school.example\r\nTo: ouder@example.org\r\nSubject: stukken\r\n"
            "MIME-Version: 1.0\r\n"
            'Content-Type: multipart/mixed; boundary="A"; boundary="B"\r\n\r\n'
            "--A\r\nContent-Type: text/plain\r\n\r\nZie bijlage.\r\n--A--\r\n"
            "--B\r\nContent-Type: text/csv; name=\"lijst.csv\"\r\n\r\n"
            f"Naam,BSN\r\n{name(rng)},{bsn(rng)}\r\n--B--\r\n").encode()


def filename_star(rng: random.Random) -> bytes:
    return (b"From: someone@school.example\r\nTo: ouder@example.org\r\nSubject: stukken\r\n"
            b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=X\r\n\r\n"
            b"--X\r\nContent-Type: text/plain\r\n\r\nZie bijlage.\r\n"
            b"--X\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Disposition: attachment; filename=\"report.pdf\"; "
            b"filename*=UTF-8''leerlingen.xlsx\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            b"AAECAwQF\r\n--X--\r\n")


def two_charsets() -> bytes:
    return (b"From: someone@school.example\r\nTo: ouder@example.org\r\nSubject: stukken\r\n"
            b"MIME-Version: 1.0\r\n"
            b"Content-Type: text/plain; charset=utf-8; charset=utf-7\r\n\r\n"
            b"Beste ouders, +AEIAUwBO-\r\n")


# -- judging ---------------------------------------------------------------------------------

SIGNALS = ("bsn", "iban", "people", "marking", "label", "ambiguous", "media")
STOP = {"quarantine", "reject"}
SENDER_RULES = ("B1.sender-domain", "B1.auth-identity", "B1.sender-headers",
                "B1.lookalike-sender")


def signals_of(verdict: dict[str, Any]) -> dict[str, str]:
    """Which detector fired, with the action its rule took. Reads the evidence of both the
    original detectors (item keys bsn/iban/pupil_rows/markings/labels) and the context-aware
    ones (item ``findings`` with a ``signal`` and the ``action`` it drove)."""
    out: dict[str, str] = {}

    def put(sig: str, action: str) -> None:
        order = ["accept", "tag", "quarantine", "reject"]
        if order.index(action) >= order.index(out.get(sig, "accept")):
            out[sig] = action

    for r in verdict["rules"]:
        if r["mode"] != "enforce":
            continue
        ev = r.get("evidence") or {}
        if r["id"] == "A1.confidential-attachment":
            for item in ev.get("items", []):
                for f in item.get("findings", []):
                    put(f["signal"], f.get("action", r["action"]))
                for old, sig in (("bsn", "bsn"), ("iban", "iban"), ("pupil_rows", "people"),
                                 ("markings", "marking"), ("labels", "label")):
                    if item.get(old) and "findings" not in item:
                        put(sig, r["action"])
            if ev.get("subject_markings"):
                put("marking", r["action"])
        elif r["id"] == "A1.uninspectable":
            put("ambiguous", r["action"])
        elif r["id"] == "A5.media-external":
            put("media", r["action"])
    return out


def caught(sample: Sample, sig: dict[str, str]) -> bool:
    for want in sample.expect:
        action = sig.get(want, "accept")
        if want == "media":
            if action == "accept":
                return False
        elif action not in STOP:
            return False
    return True


def run(seed: int, n_ordinary: int, n_leaks: int, show_errors: bool) -> None:
    rng = random.Random(seed)
    photo = files.photo(400, 300)
    samples = ordinary(rng, n_ordinary, photo) + leaks(rng, n_leaks, photo)
    sender_marked = 0
    with tempfile.TemporaryDirectory() as tmp:
        rt = Runtime.load(str(_config(Path(tmp))))
        results: list[tuple[Sample, str, dict[str, str]]] = []
        for s in samples:
            env = Envelope(s.mail_from, ("ouder@example.org",), "127.0.0.1",
                           auth_user=s.auth_user, txid="eval")
            v = rt.evaluate(env, s.raw).verdict.to_json()
            results.append((s, v["action"], signals_of(v)))
            if not s.expect:  # the sender-identity rules (issue 15), in any mode
                sender_marked += any(r["id"] in SENDER_RULES for r in v["rules"])
    report(results, show_errors)
    ordinary_count = sum(1 for s, _, _ in results if not s.expect)
    print(f"sender rules ({', '.join(SENDER_RULES)}, any mode) marked: "
          f"{sender_marked}/{ordinary_count} ordinary   (goal 0)")


def _config(tmp: Path) -> Path:
    (tmp / "staff.csv").write_text(
        "address;role;name;private_addresses;supervisor;groups\n"
        f"{TEACHER};staff;Sam Someone;;;\n{MEDIA};staff;Mia Media;;;media\n")
    cfg = tmp / "skot-milter.toml"
    cfg.write_text(f"""
[gateway]
listen = "127.0.0.1:0"
next_hop = "maildir:maildir"
hostname = "relay.school.example"
internal_networks = ["127.0.0.0/8"]
policy = "{tmp / 'policy.toml'}"
[school]
domains = ["{SCHOOL}"]
postmaster = "postmaster@{SCHOOL}"
[directory]
csv = "staff.csv"
[audit]
url = "sqlite:///audit.sqlite3"
[dns]
authenticate = false
""")
    policy = (ROOT / "policies" / "skot.toml").read_text()
    # the school's own account, as a school would configure it (if the policy knows the param)
    if "own_ibans" in policy:
        policy = policy.replace("own_ibans = []", f'own_ibans = ["{SCHOOL_IBAN}"]')
    (tmp / "policy.toml").write_text(policy)
    return cfg


def pct(a: int, b: int) -> str:
    return f"{100 * a / b:6.1f}%" if b else "     - "


def report(results: list[tuple[Sample, str, dict[str, str]]], show_errors: bool) -> None:
    ordinary_ = [(s, a, g) for s, a, g in results if s.label == "ordinary"]
    leaks_ = [(s, a, g) for s, a, g in results if s.label != "ordinary"]
    fp = [(s, a, g) for s, a, g in ordinary_ if a in STOP]
    tagged = [(s, a, g) for s, a, g in ordinary_ if a == "tag"]
    misses = [(s, a, g) for s, a, g in leaks_ if not caught(s, g)]
    print(f"corpus: {len(ordinary_)} ordinary messages, {len(leaks_)} leaks\n")
    print(f"{'detector':<10} {'TP':>5} {'FP':>5} {'FN':>5} {'precision':>10} {'recall':>8}")
    for sig in SIGNALS:
        tp = fp_ = fn = 0
        for s, _, g in results:
            fired = (g.get(sig, "accept") != "accept") if sig == "media" else (
                g.get(sig) in STOP)
            if sig in s.expect:
                tp += fired
                fn += not fired
            elif fired and s.label == "ordinary":
                fp_ += 1
        print(f"{sig:<10} {tp:>5} {fp_:>5} {fn:>5} {pct(tp, tp + fp_):>10} {pct(tp, tp + fn):>8}")
    print(f"\n{'channel':<9} {'ordinary':>8} {'FP':>4} {'FP rate':>8} {'leaks':>6} {'caught':>7}"
          f" {'recall':>8} {'precision':>10}")
    channels = sorted({s.channel for s, _, _ in results})
    for ch in channels:
        o = [x for x in ordinary_ if x[0].channel == ch]
        lk = [x for x in leaks_ if x[0].channel == ch]
        f = sum(1 for _, a, _ in o if a in STOP)
        c = sum(1 for s, _, g in lk if caught(s, g))
        print(f"{ch:<9} {len(o):>8} {f:>4} {pct(f, len(o)):>8} {len(lk):>6} {c:>7} "
              f"{pct(c, len(lk)):>8} {pct(c, c + f):>10}")
    print(f"\nfalse positives (ordinary stopped): {len(fp)}/{len(ordinary_)} = "
          f"{pct(len(fp), len(ordinary_)).strip()}   (goal <= 0.5%)")
    print(f"ordinary tagged (not stopped):      {len(tagged)}/{len(ordinary_)} = "
          f"{pct(len(tagged), len(ordinary_)).strip()}")
    print(f"misses (leaks not caught):          {len(misses)}/{len(leaks_)} = "
          f"{pct(len(misses), len(leaks_)).strip()}   (goal <= 2%)")
    if show_errors:
        kinds = Counter((s.channel, s.kind, "FP") for s, _, _ in fp)
        kinds.update((s.channel, s.kind, "miss") for s, _, _ in misses)
        why: dict[tuple[str, str, str], set[str]] = defaultdict(set)
        for s, _, g in fp:
            why[(s.channel, s.kind, "FP")].update(k for k, v in g.items() if v in STOP)
        print()
        for (ch, kind, what), count in sorted(kinds.items()):
            print(f"  {what:<4} {ch:<8} {kind:<48} x{count} {sorted(why[(ch, kind, what)])}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=14)
    ap.add_argument("--ordinary", type=int, default=420)
    ap.add_argument("--leaks", type=int, default=210)
    ap.add_argument("--show-errors", action="store_true", help="list what was missed or stopped")
    args = ap.parse_args()
    run(args.seed, args.ordinary, args.leaks, args.show_errors)


if __name__ == "__main__":
    main()
