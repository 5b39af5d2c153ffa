"""FWD rules: automatic and manual forwards of school mail to outside, and look-alikes."""

from __future__ import annotations

from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from milter.core.context import Envelope
from milter.runtime import Runtime
from tests.conftest import make_message, write_config
from tests.fixtures import files

DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"


@pytest.fixture
def rt(tmp_path: Path) -> Runtime:
    return Runtime.load(str(write_config(tmp_path)))


def verdict(rt: Runtime, raw: bytes, mail_from: str = "teacher@school.example",
            rcpts: tuple[str, ...] = ("theo@gmail.example",)) -> dict[str, Any]:
    return rt.evaluate(Envelope(mail_from, rcpts, "127.0.0.1", txid="T"), raw).verdict.to_json()


def fired(v: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in v["rules"]}


PARENT_MAIL = dict(frm="Ouder <parent@example.org>", to="teacher@school.example")


@pytest.mark.parametrize("headers,signal", [
    ("Auto-Submitted: auto-forwarded\r\n", "auto-submitted-auto-forwarded"),
    ("Resent-From: teacher@school.example\r\nResent-To: theo@gmail.example\r\n",
     "resent-headers"),
    ("X-MS-Exchange-Inbox-Rules-Loop: teacher@school.example\r\n", "exchange-inbox-rule"),
    ("X-MS-Exchange-Organization-AutoForwarded: true\r\n", "exchange-autoforwarded"),
    ("X-Forwarded-To: theo@gmail.example\r\nX-Forwarded-For: teacher@school.example "
     "theo@gmail.example\r\n", "gmail-forwarded"),
    ("X-Sieve-Redirected-From: teacher@school.example\r\n", "sieve-redirect"),
])
def test_auto_forward_signals_reject(rt: Runtime, headers: str, signal: str) -> None:
    raw = make_message(**PARENT_MAIL, extra_headers=headers)
    v = verdict(rt, raw)
    f = fired(v)["FWD.auto-external"]
    assert v["action"] == "reject" and signal in f["evidence"]["signals"]
    assert f["evidence"]["original_author"] == "parent@example.org"
    assert f["evidence"]["external_recipients"] == ["theo@gmail.example"]


def test_srs_envelope_sender(rt: Runtime) -> None:
    raw = make_message(**PARENT_MAIL)
    v = verdict(rt, raw, mail_from="SRS0=abcd=XY=example.org=parent@school.example")
    assert "srs-envelope-sender" in fired(v)["FWD.auto-external"]["evidence"]["signals"]


def test_auto_forward_to_internal_recipient_is_fine(rt: Runtime) -> None:
    raw = make_message(**PARENT_MAIL, extra_headers="Auto-Submitted: auto-forwarded\r\n")
    v = verdict(rt, raw, rcpts=("director@school.example",))
    assert "FWD.auto-external" not in fired(v)


def test_envelope_mismatch_alone_does_not_fire(rt: Runtime) -> None:
    raw = make_message(frm="director@school.example", to="ouder@example.org")
    v = verdict(rt, raw, mail_from="noreply@school.example", rcpts=("ouder@example.org",))
    assert "FWD.auto-external" not in fired(v)


def test_allow_list(tmp_path: Path) -> None:
    from tests.conftest import POLICY

    pol = tmp_path / "p.toml"
    pol.write_text(POLICY.read_text().replace("allowed = []", 'allowed = ["theo@gmail.example"]'))
    rt = Runtime.load(str(write_config(tmp_path, policy=pol)))
    raw = make_message(**PARENT_MAIL, extra_headers="Auto-Submitted: auto-forwarded\r\n")
    assert "FWD.auto-external" not in fired(verdict(rt, raw))


def forward_with_attached(author: str, attachment: tuple[str, bytes, str] | None = None
                          ) -> bytes:
    inner = EmailMessage()
    inner["From"] = author
    inner["To"] = "teacher@school.example"
    inner["Subject"] = "Leerlingbespreking"
    inner.set_content("Interne notities.")
    if attachment:
        inner.add_attachment(attachment[1], maintype=attachment[2].split("/")[0],
                             subtype=attachment[2].split("/")[1], filename=attachment[0])
    outer = EmailMessage()
    outer["From"] = "teacher@school.example"
    outer["To"] = "theo@gmail.example"
    outer["Subject"] = "FW: Leerlingbespreking"
    outer.set_content("Zie onder.")
    outer.add_attachment(inner)
    return outer.as_bytes(policy=outer.policy.clone(linesep="\r\n"))


def test_manual_forward_attached_internal_message_tagged(rt: Runtime) -> None:
    v = verdict(rt, forward_with_attached("director@school.example"))
    f = fired(v)["FWD.manual-external"]
    assert v["action"] == "tag" and f["evidence"]["original_authors"] == [
        "director@school.example"]
    assert "attached-message" in f["evidence"]["signals"]


def test_manual_forward_with_confidential_content_strongest_wins(rt: Runtime) -> None:
    att = ("verslag.docx", files.docx(["x"], label="Vertrouwelijk"), DOCX)
    v = verdict(rt, forward_with_attached("director@school.example", att))
    assert v["action"] == "quarantine"
    assert {"FWD.manual-external", "A1.confidential-attachment"} <= set(fired(v))


@pytest.mark.parametrize("subject,body", [
    ("Doorst: rooster", "Hoi,\r\n\r\nVan: Dana Director <director@school.example>\r\n"
     "Verzonden: maandag 3 maart 2025 09:12\r\nAan: teacher@school.example\r\n"
     "Onderwerp: rooster\r\n\r\ntekst"),
    ("FW: rooster", "See below\r\n\r\nFrom: Dana Director [mailto:director@school.example]\r\n"
     "Sent: Monday, March 3, 2025 9:12 AM\r\nTo: teacher@school.example\r\n\r\ntext"),
    ("Fwd: rooster", "---------- Forwarded message ---------\r\nFrom: Dana Director "
     "<director@school.example>\r\nDate: Mon, 3 Mar 2025\r\nSubject: rooster\r\n\r\ntekst"),
    ("WG: rooster", "---------- Doorgestuurd bericht ---------\r\nVan: Dana Director "
     "<director@school.example>\r\nDatum: 3 maart 2025\r\n\r\ntekst"),
])
def test_inline_forwarded_blocks(rt: Runtime, subject: str, body: str) -> None:
    raw = make_message(frm="teacher@school.example", to="theo@gmail.example", subject=subject,
                       body=body)
    f = fired(verdict(rt, raw)).get("FWD.manual-external")
    assert f is not None and f["evidence"]["original_authors"] == ["director@school.example"]


def test_forward_of_external_mail_is_not_manual_fwd(rt: Runtime) -> None:
    body = ("---------- Forwarded message ---------\r\nFrom: Parent <parent@example.org>\r\n"
            "Date: Mon\r\n\r\ntekst")
    raw = make_message(frm="teacher@school.example", to="theo@gmail.example",
                       subject="Fwd: vraag", body=body)
    assert "FWD.manual-external" not in fired(verdict(rt, raw))


@pytest.mark.parametrize("subject", ["Fwd: agenda", "Trip: Frankrijk", "Info: ouderavond"])
def test_lookalikes_without_internal_original_pass(rt: Runtime, subject: str) -> None:
    raw = make_message(frm="teacher@school.example", to="theo@gmail.example", subject=subject,
                       body="Van harte welkom op de ouderavond.\r\n")
    assert fired(verdict(rt, raw)) == {}
