"""Inspection of real attachments, the detectors, and the A1/A5 content rules."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from milter.core.context import Envelope
from milter.core.message import parse
from milter.inspect import Limits, inspect_message
from milter.inspect.detectors import bsn_valid, count_bsn, count_iban, pupil_rows
from milter.runtime import Runtime
from tests.conftest import write_config
from tests.fixtures import files

DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


@pytest.fixture
def rt(tmp_path: Path) -> Runtime:
    return Runtime.load(str(write_config(tmp_path)))


def verdict(rt: Runtime, raw: bytes, rcpts: tuple[str, ...] = ("ouder@example.org",),
            mail_from: str = "someone@school.example") -> dict[str, Any]:
    env = Envelope(mail_from, rcpts, "127.0.0.1", txid="T")
    return rt.evaluate(env, raw).verdict.to_json()


def rule(v: dict[str, Any], rid: str) -> dict[str, Any] | None:
    return next((r for r in v["rules"] if r["id"] == rid), None)


# -- detectors -----------------------------------------------------------------------------

@pytest.mark.parametrize("number", files.BSNS)
def test_bsn_passing_11_test(number: str) -> None:
    assert bsn_valid(number)
    assert count_bsn(f"BSN: {number}") == 1
    assert count_bsn(f"BSN {number[:4]}.{number[4:6]}.{number[6:]}") == 1
    assert count_bsn(f"BSN {number[:3]} {number[3:6]} {number[6:]}") == 1


@pytest.mark.parametrize("number", files.NOT_BSNS)
def test_nine_digit_lookalikes_do_not_count(number: str) -> None:
    assert not bsn_valid(number)
    assert count_bsn(f"ordernummer {number}") == 0


def test_bsn_inside_longer_numbers_does_not_count() -> None:
    assert count_bsn("telefoon 0031111222333 en bedrag 1.111222333") == 0


def test_iban_mod97() -> None:
    assert count_iban("Rekening NL91 ABNA 0417 1643 00 en NL91ABNA0417164300") == 2
    assert count_iban("NL91ABNA0417164301") == 0  # check digits fail
    assert count_iban("DE89 3704 0044 0532 0130 00") == 1


def test_pupil_rows() -> None:
    rows = [[str(c) for c in r] for r in files.pupil_rows(12)]
    assert pupil_rows(rows) == 12
    assert pupil_rows([["Product", "Prijs"], ["Pen", "1,20"], ["Schrift", "2,50"]]) == 0


# -- readers ------------------------------------------------------------------------------

def items_of(raw: bytes, limits: Limits | None = None) -> list[Any]:
    return list(inspect_message(parse(raw), limits or Limits()).attachments)


def test_labelled_docx_label_read() -> None:
    raw = files.mail_with([("verslag.docx", files.docx(["Gewoon verslag"],
                                                       label="Vertrouwelijk"), DOCX)])
    (item,) = items_of(raw)
    assert item.kind == "docx" and "Vertrouwelijk" in item.labels
    assert files.LABEL_GUID in item.labels and "Gewoon verslag" in item.text


def test_real_type_from_bytes_not_name() -> None:
    raw = files.mail_with([("vakantie.txt", files.pdf(["hallo"]), "text/plain")])
    assert items_of(raw)[0].kind == "pdf"


def test_xlsx_rows_read() -> None:
    raw = files.mail_with([("klas.xlsx", files.xlsx(files.pupil_rows(3)), XLSX)])
    (item,) = items_of(raw)
    assert item.kind == "xlsx" and item.rows[0] == ["Leerlingnummer", "Voornaam", "Achternaam",
                                                    "Geboortedatum"]
    assert len(item.rows) == 4


def test_bsn_in_docx_in_zip_in_zip() -> None:
    inner = files.docx([f"Leerling BSN {files.BSNS[0]}"])
    nested = files.zip_of({"binnen.zip": files.zip_of({"dossier.docx": inner})})
    raw = files.mail_with([("archief.zip", nested, "application/zip")])
    names = {i.name: i for i in items_of(raw)}
    member = names["archief.zip/binnen.zip/dossier.docx"]
    assert member.kind == "docx" and count_bsn(member.text) == 1 and member.depth == 2


def test_zip_beyond_depth_is_uninspectable() -> None:
    data = files.zip_of({"x.txt": b"x"})
    for i in range(4):
        data = files.zip_of({f"laag{i}.zip": data})
    raw = files.mail_with([("diep.zip", data, "application/zip")])
    assert any("nested deeper" in i.uninspectable for i in items_of(raw))


def test_encrypted_zip_uninspectable() -> None:
    raw = files.mail_with([("geheim.zip", files.encrypted_zip({"a.txt": b"BSN"}),
                            "application/zip")])
    assert "encrypted" in items_of(raw)[0].uninspectable


def test_encrypted_docx_uninspectable() -> None:
    raw = files.mail_with([("rapport.docx", files.encrypted_docx(), DOCX)])
    (item,) = items_of(raw)
    assert item.kind == "encrypted-office" and "password" in item.uninspectable


def test_password_pdf_uninspectable() -> None:
    raw = files.mail_with([("cijfers.pdf", files.pdf(["x"], password="pw"), "application/pdf")])
    assert "password" in items_of(raw)[0].uninspectable


def test_zip_bomb_capped_and_uninspectable() -> None:
    bomb = files.zip_bomb()
    assert len(bomb) < 200_000
    raw = files.mail_with([("bom.zip", bomb, "application/zip")])
    (item,) = items_of(raw)
    assert "expand" in item.uninspectable


def test_overlapping_entries_zip_bomb() -> None:
    raw = files.mail_with([("overlap.zip", files.overlapping_zip(), "application/zip")])
    assert "overlapping" in items_of(raw)[0].uninspectable


def test_expanded_bytes_budget() -> None:
    data = files.zip_of({f"f{i}.txt": bytes(range(256)) * 400 for i in range(5)})
    raw = files.mail_with([("veel.zip", data, "application/zip")])
    limits = Limits(max_expanded_bytes=200_000)
    assert "limit" in items_of(raw, limits)[0].uninspectable


def test_broken_base64_attachment_not_clean() -> None:
    raw = (b"From: someone@school.example\r\nTo: ouder@example.org\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\nContent-Type: text/plain"
           b"\r\n\r\nhoi\r\n--B\r\nContent-Type: application/octet-stream; name=x.bin\r\n"
           b"Content-Transfer-Encoding: base64\r\n\r\n0M8R4KGxGuE=====*&^%\r\n--B--\r\n")
    items = items_of(raw)
    assert items and items[0].uninspectable


# -- rules ----------------------------------------------------------------------------------

def test_labelled_docx_to_external_quarantined(rt: Runtime) -> None:
    raw = files.mail_with([("verslag.docx", files.docx(["Gewoon verslag"],
                                                       label="Vertrouwelijk"), DOCX)])
    v = verdict(rt, raw)
    assert v["action"] == "quarantine"
    r = rule(v, "A1.confidential-attachment")
    assert r is not None and r["evidence"]["items"][0]["labels"]


def test_xlsx_pupil_list_quarantined(rt: Runtime) -> None:
    raw = files.mail_with([("klas.xlsx", files.xlsx(files.pupil_rows(25)), XLSX)])
    v = verdict(rt, raw)
    r = rule(v, "A1.confidential-attachment")
    assert v["action"] == "quarantine" and r is not None
    assert r["evidence"]["items"][0]["pupil_rows"] == 25


def test_short_table_passes(rt: Runtime) -> None:
    raw = files.mail_with([("klas.xlsx", files.xlsx(files.pupil_rows(3)), XLSX)])
    assert verdict(rt, raw)["action"] == "accept"


def test_pdf_saying_vertrouwelijk_quarantined(rt: Runtime) -> None:
    raw = files.mail_with([("brief.pdf", files.pdf(["VERTROUWELIJK", "Gesprek met ouders"]),
                            "application/pdf")])
    v = verdict(rt, raw)
    r = rule(v, "A1.confidential-attachment")
    assert v["action"] == "quarantine" and r is not None
    assert r["evidence"]["items"][0]["markings"] == ["vertrouwelijk"]


def test_bsn_nested_quarantined_without_the_number_in_evidence(rt: Runtime) -> None:
    inner = files.docx([f"Leerling BSN {files.BSNS[1]}"])
    nested = files.zip_of({"binnen.zip": files.zip_of({"dossier.docx": inner})})
    v = verdict(rt, files.mail_with([("archief.zip", nested, "application/zip")]))
    assert v["action"] == "quarantine"
    assert files.BSNS[1] not in str(v)
    assert rule(v, "A1.confidential-attachment")["evidence"]["items"][0]["bsn"] == 1  # type: ignore[index]


def test_lookalike_numbers_pass(rt: Runtime) -> None:
    text = ["Bestelnummers: " + ", ".join(files.NOT_BSNS)]
    v = verdict(rt, files.mail_with([("bestelling.docx", files.docx(text), DOCX)]))
    assert v["action"] == "accept"


def test_marking_in_file_name(rt: Runtime) -> None:
    raw = files.mail_with([("OPP Jan.docx", files.docx(["tekst"]), DOCX)])
    assert verdict(rt, raw)["action"] == "quarantine"
    raw = files.mail_with([("opplossing.docx", files.docx(["tekst"]), DOCX)])
    assert verdict(rt, raw)["action"] == "accept"


def test_internal_only_is_tagged_at_most(rt: Runtime) -> None:
    raw = files.mail_with([("verslag.docx", files.docx(["x"], label="Vertrouwelijk"), DOCX)])
    v = verdict(rt, raw, rcpts=("director@school.example",))
    assert v["action"] == "tag"


def test_mixed_recipients_external_decide(rt: Runtime) -> None:
    raw = files.mail_with([("verslag.docx", files.docx(["x"], label="Vertrouwelijk"), DOCX)])
    v = verdict(rt, raw, rcpts=("director@school.example", "ouder@example.org"))
    assert v["action"] == "quarantine"


def test_encrypted_zip_to_external_quarantined_as_uninspectable(rt: Runtime) -> None:
    raw = files.mail_with([("geheim.zip", files.encrypted_zip({"a.txt": b"x"}),
                            "application/zip")])
    v = verdict(rt, raw)
    assert v["action"] == "quarantine" and rule(v, "A1.uninspectable") is not None


def test_ambiguous_mime_is_uninspectable(rt: Runtime) -> None:
    raw = (b"From: someone@school.example\r\nTo: ouder@example.org\r\n"
           b"Content-Type: text/plain\r\nContent-Type: multipart/mixed; boundary=x\r\n\r\n"
           b"--x\r\nContent-Type: application/pdf; name=a.pdf\r\n\r\n%PDF-1.4\r\n--x--\r\n")
    v = verdict(rt, raw)
    assert rule(v, "A1.uninspectable") is not None and v["action"] == "quarantine"


def test_photo_to_external_tagged(rt: Runtime) -> None:
    raw = files.mail_with([("schoolreisje.jpg", files.photo(), "image/jpeg")])
    v = verdict(rt, raw)
    assert v["action"] == "tag" and rule(v, "A5.media-external") is not None


def test_photo_from_media_group_passes(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    (tmp_path / "staff.csv").write_text(
        "address;role;name;private_addresses;supervisor;groups\n"
        "someone@school.example;staff;Sam;;;media\n")
    rt = Runtime.load(str(cfg))
    raw = files.mail_with([("schoolreisje.jpg", files.photo(), "image/jpeg")])
    assert verdict(rt, raw)["action"] == "accept"


def test_photo_internal_only_not_flagged(rt: Runtime) -> None:
    raw = files.mail_with([("schoolreisje.jpg", files.photo(), "image/jpeg")])
    assert verdict(rt, raw, rcpts=("director@school.example",))["action"] == "accept"


def test_plain_attachment_passes(rt: Runtime) -> None:
    raw = files.mail_with([("rooster.docx", files.docx(["Rooster week 12"]), DOCX)])
    assert verdict(rt, raw)["action"] == "accept"


def test_detectors_count_every_occurrence_once() -> None:
    text = ("Leerlingen: 111222333 en 123456782; opnieuw 111222333.\n"
            "1112.22.333 staat er ook. Rekeningen NL91ABNA0417164300 en DE89370400440532013000")
    assert count_bsn(text) == 4
    assert count_iban(text) == 2
    assert count_bsn("x" * 50_000 + " 123456782") == 1


def test_markings_word_starts_and_acronyms() -> None:
    from milter.inspect.detectors import markings

    words, cs = ["vertrouwelijk", "OPP"], ["OPP"]
    assert markings(["Een vertrouwelijke brief"], words, cs) == ["vertrouwelijk"]
    assert markings(["onvertrouwelijk", "OPPERVLAKTE", "opp"], words, cs) == []
    assert markings(["Het OPP van Jan", "(OPP)"], words, cs) == ["OPP"]


def test_time_budget_makes_attachments_uninspectable() -> None:
    raw = files.mail_with([("verslag.docx", files.docx(["x"]), DOCX)])
    (item,) = items_of(raw, Limits(time_budget=0.0))
    assert item.uninspectable == "inspection time budget exhausted"
