"""The message model survives bad input with a defined verdict, and sees what senders wrote."""

from __future__ import annotations

from pathlib import Path

import pytest

from milter.core.context import Envelope
from milter.core.message import Unparseable, normalize_line_endings, parse
from milter.runtime import Runtime
from tests.conftest import make_message, write_config


@pytest.fixture
def rt(tmp_path: Path) -> Runtime:
    return Runtime.load(str(write_config(tmp_path)))


def evaluate(rt: Runtime, raw: bytes) -> dict:  # type: ignore[type-arg]
    env = Envelope("someone@school.example", ("x@ext.example",), "127.0.0.1", txid="T")
    return rt.evaluate(env, raw).verdict.to_json()


@pytest.mark.parametrize("raw,expected", [
    (b"a\nb\rc\r\nd", b"a\r\nb\r\nc\r\nd"),
    (b"x\n.\nMAIL FROM:<a@b>\n", b"x\r\n.\r\nMAIL FROM:<a@b>\r\n"),
    (b"\r\r\n", b"\r\n\r\n"),
    (b"plain", b"plain"),
])
def test_line_endings_normalised_once(raw: bytes, expected: bytes) -> None:
    assert normalize_line_endings(raw) == expected
    assert normalize_line_endings(expected) == expected  # idempotent


def test_inspected_bytes_are_the_normalised_bytes(rt: Runtime) -> None:
    raw = b"From: someone@school.example\nTo: x@ext.example\rSubject: s\n\nbody\r"
    ev = rt.evaluate(Envelope("someone@school.example", ("x@ext.example",), "127.0.0.1"), raw)
    assert ev.raw == normalize_line_endings(raw)
    assert ev.message is not None and ev.message.raw == ev.raw
    assert b"\r\n" in ev.raw and b"\n\n" not in ev.raw


@pytest.mark.parametrize("raw", [
    make_message(body="x" * 5000 + "\r\n"),                                  # line over 998
    make_message(subject="caf\xe9".encode("latin-1").decode("latin-1")),      # 8-bit header
    b"From: someone@school.example\r\nSubject: \xff\xfe bad\r\n\r\nbody\r\n",
    b"From: someone@school.example\r\nSubject: nul\x00here\r\n\r\nbo\x00dy\r\n",
    b"From: someone@school.example\r\nSubject: no body\r\n",                 # headers only
    b"From: someone@school.example\r\nContent-Type: multipart/mixed; boundary=zz\r\n\r\n"
    b"no boundary ever\r\n",                                                 # broken MIME
    b"From: someone@school.example\r\nContent-Type: multipart/mixed\r\n\r\n--x\r\n\r\n",
    b"From: someone@school.example\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!*\r\n",
    b"",
    b"\r\n\r\n\r\n",
])
def test_bad_input_gets_a_defined_verdict(rt: Runtime, raw: bytes) -> None:
    v = evaluate(rt, raw)
    assert v["action"] in ("accept", "tag", "quarantine", "reject")
    assert v["smtp_reply"][:3] in ("250", "550", "554")


def test_missing_from_is_b1_violation(rt: Runtime) -> None:
    v = evaluate(rt, b"To: x@ext.example\r\nSubject: s\r\n\r\nbody\r\n")
    assert v["action"] == "reject" and "no-from" in v["rules"][0]["evidence"]["problems"]


def nested(depth: int) -> bytes:
    head = b"From: someone@school.example\r\nMIME-Version: 1.0\r\n"
    parts = [head]
    for i in range(depth):
        parts.append(f"Content-Type: multipart/mixed; boundary=\"b{i}\"\r\n\r\n--b{i}\r\n".encode())
    parts.append(b"Content-Type: text/plain\r\n\r\ndeep\r\n")
    for i in reversed(range(depth)):
        parts.append(f"--b{i}--\r\n".encode())
    return b"".join(parts)


def test_moderate_nesting_parses() -> None:
    msg = parse(nested(10))
    assert [p.text.strip() for p in msg.parts] == ["deep"]


def test_deep_nesting_is_permanent_554(rt: Runtime) -> None:
    with pytest.raises(Unparseable):
        parse(nested(2000))
    v = evaluate(rt, nested(2000))
    assert v["action"] == "reject" and v["smtp_reply"].startswith("554 5.6.0")


def attachment(disposition: str, ctype: str = "application/pdf") -> bytes:
    return (b"From: someone@school.example\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: multipart/mixed; boundary=\"B\"\r\n\r\n--B\r\n"
            b"Content-Type: text/plain\r\n\r\nhi\r\n--B\r\n"
            + f"Content-Type: {ctype}\r\n{disposition}"
              "Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--B--\r\n".encode())


def test_rfc2231_continuations_are_joined() -> None:
    msg = parse(attachment("Content-Disposition: attachment;\r\n filename*0=\"leerling\";\r\n"
                           " filename*1=\"dossier\";\r\n filename*2=\".pdf\"\r\n"))
    assert [a.filename for a in msg.attachments] == ["leerlingdossier.pdf"]


def test_rfc2231_encoded_name() -> None:
    msg = parse(attachment("Content-Disposition: attachment;\r\n"
                           " filename*=utf-8''vertrouwelijk%20overzicht.pdf\r\n"))
    assert msg.attachments[0].filename == "vertrouwelijk overzicht.pdf"


def test_encoded_word_in_quoted_filename_is_decoded() -> None:
    msg = parse(attachment("Content-Disposition: attachment; "
                           "filename=\"=?utf-8?q?zorgdossier_J=C3=A9r=C3=B4me.pdf?=\"\r\n"))
    assert msg.attachments[0].filename == "zorgdossier Jérôme.pdf"


def test_name_only_without_disposition_is_an_attachment() -> None:
    msg = parse(attachment("", ctype="application/pdf; name=\"OPP.pdf\""))
    assert [a.filename for a in msg.attachments] == ["OPP.pdf"]
    assert msg.attachments[0].payload.startswith(b"%PDF")


def test_duplicate_content_type_is_recorded_as_defect() -> None:
    raw = (b"From: someone@school.example\r\nContent-Type: text/plain\r\n"
           b"Content-Type: multipart/mixed; boundary=x\r\n\r\nbody\r\n")
    assert "DuplicateContentType" in parse(raw).defects


def test_attachment_evidence_has_no_content() -> None:
    msg = parse(attachment("Content-Disposition: attachment; filename=\"a.pdf\"\r\n"))
    ev = msg.attachments[0].evidence()
    assert set(ev) == {"name", "type", "size", "sha256"} and ev["size"] == 9


def test_summary_keeps_no_body(rt: Runtime) -> None:
    raw = make_message(body="Geheime tekst over Jantje\r\n")
    ev = rt.evaluate(Envelope("someone@school.example", ("x@ext.example",), "127.0.0.1"), raw)
    assert "Jantje" not in str(ev.summary)
    assert ev.summary["sha256"] and ev.summary["message_id"] == "<m1@school.example>"


@pytest.mark.parametrize("content_type", [
    'text/plain; charset="UTF-8"', "text/plain; CHARSET=Windows-1252", "text/plain",
    "text/plain;\r\n charset*=utf-8''iso-8859-1", "text/plain; charset*0=utf; charset*1=-8",
    "text/plain; charset=ISO-8859-1; charset=utf-8", 'text/plain; charset="a;b"',
    "text/plain; charset*=utf-8'en'%C3%A9", "text/plain; charset=", "text/plain; charset=x (y)",
    "text/plain; charset=caf\xe9", "text/plain; charset=" + "x" * 600,
])
def test_body_charset_is_the_one_mail_programs_read(content_type: str) -> None:
    """The part's charset (read once per Content-Type value) is the stdlib's reading."""
    raw = ("From: a@school.example\r\nContent-Type: " + content_type
           + "\r\n\r\nhallo\r\n").encode("utf-8")
    part = parse(raw).parts[0]
    assert part.text_charset() == part._msg.get_content_charset()
