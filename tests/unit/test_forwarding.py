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


# -- real header samples, alone and together ---------------------------------------------------

EXCHANGE_RULE = "X-MS-Exchange-Inbox-Rules-Loop: teacher@school.example\r\n"
GMAIL_FORWARD = ("Delivered-To: teacher@school.example\r\n"
                 "X-Forwarded-To: theo@gmail.example\r\n"
                 "X-Forwarded-For: teacher@school.example theo@gmail.example\r\n")
RESENT_BLOCK = ("Resent-From: Theo Teacher <teacher@school.example>\r\n"
                "Resent-Date: Mon, 3 Mar 2025 09:12:00 +0100\r\n"
                "Resent-Message-ID: <r1.20250303@school.example>\r\n"
                "Resent-To: theo@gmail.example\r\n")


def test_auto_forward_signals_together_all_named(rt: Runtime) -> None:
    headers = "Auto-Submitted: auto-forwarded\r\n" + RESENT_BLOCK + EXCHANGE_RULE + GMAIL_FORWARD
    raw = make_message(**PARENT_MAIL, extra_headers=headers)
    f = fired(verdict(rt, raw, mail_from="SRS0=HHH=TT=example.org=parent@school.example"))
    ev = f["FWD.auto-external"]["evidence"]
    assert ev["signals"] == ["auto-submitted-auto-forwarded", "resent-headers",
                             "exchange-inbox-rule", "gmail-forwarded",
                             "delivered-to-school-mailbox", "srs-envelope-sender"]
    assert ev["forwarding_mailbox"] == "teacher@school.example"
    assert ev["original_author"] == "parent@example.org"
    assert ev["external_recipients"] == ["theo@gmail.example"]


def test_internal_author_relayed_by_another_mailbox(rt: Runtime) -> None:
    """Postfix/Sieve redirect: delivered to the teacher, sent on with the teacher as envelope
    sender while the director wrote it: two weak signals together fire."""
    raw = make_message(frm="Dana Director <director@school.example>",
                       to="teacher@school.example",
                       extra_headers="Delivered-To: teacher@school.example\r\n")
    f = fired(verdict(rt, raw))["FWD.auto-external"]
    assert f["evidence"]["signals"] == ["delivered-to-school-mailbox",
                                        "envelope-sender-not-author"]
    assert f["evidence"]["original_author"] == "director@school.example"
    assert f["evidence"]["author_internal"] is True


@pytest.mark.parametrize("headers,mail_from", [
    ("Delivered-To: teacher@school.example\r\n", "director@school.example"),  # weak alone
    ("X-Original-To: teacher@school.example\r\n", "director@school.example"),  # weak alone
    ("", "noreply@school.example"),                           # envelope differs, alone
    # Delivered-To of an outside mailbox says nothing about a school mailbox.
    ("Delivered-To: theo@gmail.example\r\n", "noreply@school.example"),
])
def test_weak_signal_alone_does_not_fire(rt: Runtime, headers: str, mail_from: str) -> None:
    raw = make_message(frm="director@school.example", to="theo@gmail.example",
                       extra_headers=headers)
    assert "FWD.auto-external" not in fired(verdict(rt, raw, mail_from=mail_from))


def test_newsletter_auto_generated_to_parent_passes(rt: Runtime) -> None:
    raw = make_message(frm="Nieuwsbrief <nieuwsbrief@school.example>", to="ouder@example.org",
                       subject="Nieuwsbrief maart",
                       extra_headers="Auto-Submitted: auto-generated\r\n"
                                     "Precedence: bulk\r\n"
                                     "List-Unsubscribe: <mailto:uit@school.example>\r\n")
    v = verdict(rt, raw, mail_from="bounces+ouder=example.org@school.example",
                rcpts=("ouder@example.org",))
    assert fired(v) == {} and v["action"] == "accept"


@pytest.mark.parametrize("headers", [
    EXCHANGE_RULE,
    "X-MS-Exchange-ForwardingLoop: teacher@school.example;a1b2c3d4-0000-tenant\r\n",
    "X-Forwarded-To: theo@gmail.example\r\n"
    "X-Forwarded-For: teacher@school.example theo@gmail.example\r\n",
    "X-Sieve-Redirected-From: teacher@school.example\r\n",
    RESENT_BLOCK,
])
def test_allow_list_names_the_forwarding_mailbox(tmp_path: Path, headers: str) -> None:
    """An approved forward of one mailbox: the mailbox is named by the forwarding headers
    even when the envelope sender is rewritten (SRS); another mailbox's forward still fires."""
    from tests.conftest import POLICY

    pol = tmp_path / "p.toml"
    pol.write_text(POLICY.read_text().replace("allowed = []",
                                              'allowed = ["teacher@school.example"]'))
    rt = Runtime.load(str(write_config(tmp_path, policy=pol)))
    srs = "SRS0=HHH=TT=example.org=parent@school.example"
    raw = make_message(**PARENT_MAIL, extra_headers=headers)
    assert "FWD.auto-external" not in fired(verdict(rt, raw, mail_from=srs))
    other = make_message(**PARENT_MAIL, extra_headers=headers.replace("teacher@", "someone@"))
    f = fired(verdict(rt, other, mail_from=srs))["FWD.auto-external"]
    assert f["evidence"]["forwarding_mailbox"] == "someone@school.example"


# -- manual forwards ---------------------------------------------------------------------------

GMAIL_BLOCK = ("Zie hieronder.\r\n\r\n---------- Forwarded message ---------\r\n"
               "From: Dana Director <director@school.example>\r\n"
               "Date: Mon, 3 Mar 2025 at 09:12\r\nSubject: rooster\r\n"
               "To: <teacher@school.example>\r\n\r\ntekst\r\n")


@pytest.mark.parametrize("prefix", ["Fwd", "FW", "Fw", "Doorst", "TR", "WG", "RV", "VS", "ENC"])
def test_forward_prefixes(rt: Runtime, prefix: str) -> None:
    raw = make_message(frm="teacher@school.example", to="theo@gmail.example",
                       subject=f"{prefix}: rooster", body=GMAIL_BLOCK)
    f = fired(verdict(rt, raw))["FWD.manual-external"]
    assert f["evidence"]["signals"] == ["forward-subject-prefix", "inline-forwarded-headers"]


def test_inline_block_alone_without_prefix(rt: Runtime) -> None:
    raw = make_message(frm="teacher@school.example", to="theo@gmail.example",
                       subject="rooster", body=GMAIL_BLOCK)
    f = fired(verdict(rt, raw))["FWD.manual-external"]
    assert f["evidence"]["signals"] == ["inline-forwarded-headers"]
    assert f["evidence"]["external_recipients"] == ["theo@gmail.example"]


def test_attached_message_alone_without_prefix(rt: Runtime) -> None:
    raw = forward_with_attached("director@school.example").replace(
        b"Subject: FW: Leerlingbespreking", b"Subject: Leerlingbespreking")
    f = fired(verdict(rt, raw))["FWD.manual-external"]
    assert f["evidence"]["signals"] == ["attached-message"]


def test_all_manual_signals_together(rt: Runtime) -> None:
    inner = EmailMessage()
    inner["From"] = "Dana Director <director@school.example>"
    inner["Subject"] = "rooster"
    inner.set_content("intern")
    outer = EmailMessage()
    outer["From"] = "teacher@school.example"
    outer["To"] = "theo@gmail.example, ouder@example.org"
    outer["Subject"] = "Doorst: rooster"
    outer.set_content("Van: Sam Someone <someone@school.example>\r\n"
                      "Verzonden: dinsdag 4 maart 2025 10:00\r\nAan: Theo Teacher\r\n"
                      "Onderwerp: rooster\r\n\r\nzie bijlage\r\n")
    outer.add_attachment(inner)
    raw = outer.as_bytes(policy=outer.policy.clone(linesep="\r\n"))
    f = fired(verdict(rt, raw, rcpts=("theo@gmail.example", "ouder@example.org",
                                      "director@school.example")))["FWD.manual-external"]
    assert f["evidence"]["signals"] == ["forward-subject-prefix", "attached-message",
                                        "inline-forwarded-headers"]
    assert f["evidence"]["original_authors"] == ["director@school.example",
                                                 "someone@school.example"]
    assert f["evidence"]["external_recipients"] == ["theo@gmail.example", "ouder@example.org"]


OUTLOOK_HTML_NL = """<html><body><div class=WordSection1><p class=MsoNormal>Ter info.</p>
<div style='border:none;border-top:solid #E1E1E1 1.0pt;padding:3.0pt 0cm 0cm 0cm'>
<p class=MsoNormal><b><span lang=NL>Van:</span></b><span lang=NL> Dana
Director<br><b>Verzonden:</b> maandag 3 maart 2025 09:12<br><b>Aan:</b> Theo Teacher
&lt;teacher@school.example&gt;<br><b>Onderwerp:</b> rooster<o:p></o:p></span></p></div>
<p class=MsoNormal>Interne notities.</p></div></body></html>"""


def test_outlook_html_block_with_display_name_only(rt: Runtime) -> None:
    """Outlook writes only the display name for senders in its own organisation: the staff
    directory names the author."""
    raw = make_message(frm="teacher@school.example", to="theo@gmail.example",
                       subject="Doorst: rooster", body=OUTLOOK_HTML_NL.replace("\n", "\r\n"),
                       extra_headers="MIME-Version: 1.0\r\n"
                                     "Content-Type: text/html; charset=utf-8\r\n")
    f = fired(verdict(rt, raw))["FWD.manual-external"]
    assert f["evidence"]["original_authors"] == ["director@school.example"]


@pytest.mark.parametrize("body", [
    # Thunderbird
    "-------- Forwarded Message --------\r\nSubject: rooster\r\n"
    "Date: Mon, 3 Mar 2025 09:12:00 +0100\r\nFrom: Dana Director <director@school.example>\r\n"
    "To: teacher@school.example\r\n\r\ntekst\r\n",
    # Apple Mail
    "Begin forwarded message:\r\n\r\nFrom: Dana Director <director@school.example>\r\n"
    "Subject: rooster\r\nDate: 3 March 2025 at 09:12:00 CET\r\n"
    "To: teacher@school.example\r\n\r\ntekst\r\n",
    # Outlook, English, plain text with the old mailto form
    "-----Original Message-----\r\nFrom: Dana Director [mailto:director@school.example]\r\n"
    "Sent: Monday, March 3, 2025 9:12 AM\r\nTo: Theo Teacher\r\nSubject: rooster\r\n\r\ntekst",
])
def test_other_mail_programs_forward_blocks(rt: Runtime, body: str) -> None:
    raw = make_message(frm="teacher@school.example", to="theo@gmail.example",
                       subject="rooster", body=body)
    f = fired(verdict(rt, raw))["FWD.manual-external"]
    assert f["evidence"]["original_authors"] == ["director@school.example"]


OUTLOOK_REPLY_QUOTE = ("Beste ouder,\r\n\r\nDat klopt.\r\n\r\n"
                       "Van: Dana Director <director@school.example>\r\n"
                       "Verzonden: maandag 3 maart 2025 09:12\r\n"
                       "Aan: ouder@example.org\r\nOnderwerp: Fwd: uitje\r\n\r\ntekst\r\n")


@pytest.mark.parametrize("subject,rcpts", [
    ("Re: Fwd: uitje", ("director@school.example",)),   # a reply between staff
    ("Re: Fwd: uitje", ("ouder@example.org",)),         # a reply quoting the thread
    ("Antw: uitje", ("ouder@example.org",)),
    ("AW: WG: uitje", ("ouder@example.org",)),
])
def test_replies_quoting_internal_mail_are_not_forwards(rt: Runtime, subject: str,
                                                        rcpts: tuple[str, ...]) -> None:
    raw = make_message(frm="teacher@school.example", to=", ".join(rcpts), subject=subject,
                       body=OUTLOOK_REPLY_QUOTE + GMAIL_BLOCK)
    assert "FWD.manual-external" not in fired(verdict(rt, raw, rcpts=rcpts))


def test_attached_external_message_is_not_manual_fwd(rt: Runtime) -> None:
    raw = forward_with_attached("Parent <parent@example.org>")
    assert "FWD.manual-external" not in fired(verdict(rt, raw))


def test_unknown_display_name_and_table_like_text_pass(rt: Runtime) -> None:
    body = ("Van: Onbekende Collega\r\nVerzonden: gisteren\r\n\r\n"
            "Datum: 12 maart\r\nTijd: 19:00\r\nVan: de ouderraad\r\n")
    raw = make_message(frm="teacher@school.example", to="theo@gmail.example",
                       subject="Fwd: ouderavond", body=body)
    assert "FWD.manual-external" not in fired(verdict(rt, raw))
