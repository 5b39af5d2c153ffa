"""Whatever bytes come, a verdict or a defined error (HOSTILE-INPUTS 17-26, 29)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from milter.cli import main
from milter.core.context import Envelope
from milter.runtime import Runtime
from tests.conftest import write_config

REPLIES = ("250", "451", "550", "554")


@pytest.fixture(scope="module")
def rt(tmp_path_factory: pytest.TempPathFactory) -> Runtime:
    return Runtime.load(str(write_config(tmp_path_factory.mktemp("cfg"))))


ENV = Envelope("someone@school.example", ("ouder@example.org",), "127.0.0.1", txid="p")


def check(rt: Runtime, raw: bytes) -> None:
    v = rt.evaluate(ENV, raw).verdict
    assert v.action in ("accept", "tag", "quarantine", "reject", "tempfail")
    assert v.smtp_reply[:3] in REPLIES and "\n" not in v.smtp_reply


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=3000))
def test_any_bytes(rt: Runtime, data: bytes) -> None:
    check(rt, data)


HEADER = st.sampled_from([
    b"From: someone@school.example", b"From: =?utf-8?b?QUFBQABAZXZpbC5leGFtcGxl?= <x@y>",
    b"Content-Type: multipart/mixed; boundary=b", b"Content-Type: multipart/mixed",
    b"Content-Type: text/plain; charset=bogus-8", b"Content-Transfer-Encoding: base64",
    b"Content-Transfer-Encoding: quoted-printable",
    b"Content-Disposition: attachment; filename*0=a; filename*1=.zip",
    b"Content-Type: application/zip; name==?utf-8?q?x=2Ezip?=", b"Subject: \xff\xfe",
    b"Content-Type: message/rfc822", b"X: " + b"y" * 1200,
])
BODY = st.sampled_from([b"--b", b"--b--", b"UEsDBBQ", b"%PDF-1.4", b"=41=4", b"\x00\x01",
                        b"", b"--b\r\nContent-Type: text/plain\r\n\r\nhi", b"!!!!"])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(HEADER, max_size=8), st.lists(BODY, max_size=12),
       st.sampled_from([b"\r\n", b"\n", b"\r"]))
def test_mime_shaped_bytes(rt: Runtime, headers: list[bytes], body: list[bytes],
                           eol: bytes) -> None:
    check(rt, eol.join(headers) + eol + eol + eol.join(body))


def nasty_corpus() -> dict[str, bytes]:
    deep = b"From: someone@school.example\r\n"
    for i in range(300):
        deep += f"Content-Type: multipart/mixed; boundary=\"d{i}\"\r\n\r\n--d{i}\r\n".encode()
    return {
        "deep-300.eml": deep + b"Content-Type: text/plain\r\n\r\nx\r\n",
        "duplicate-boundaries.eml": (
            b"From: someone@school.example\r\nContent-Type: multipart/mixed; boundary=a\r\n\r\n"
            b"--a\r\nContent-Type: multipart/mixed; boundary=a\r\n\r\n--a\r\n\r\nx\r\n--a--\r\n"
            b"--a--\r\n"),
        "broken-base64.eml": (
            b"From: someone@school.example\r\nContent-Type: multipart/mixed; boundary=q\r\n\r\n"
            b"--q\r\nContent-Type: application/pdf; name=a.pdf\r\nContent-Transfer-Encoding: "
            b"base64\r\n\r\nJVBERi0x*&^%$\r\n--q--\r\n"),
        "hidden-filename.eml": (
            b"From: someone@school.example\r\nContent-Type: multipart/mixed; boundary=q\r\n\r\n"
            b"--q\r\nContent-Type: application/octet-stream;\r\n name*0*=utf-8''leerling;\r\n"
            b" name*1*=dossier%2Epdf\r\n\r\nabc\r\n--q--\r\n"),
        "two-content-types.eml": (
            b"From: someone@school.example\r\nContent-Type: text/plain\r\n"
            b"Content-Type: multipart/mixed; boundary=z\r\n\r\n--z\r\n\r\nx\r\n--z--\r\n"),
        "mailsploit.eml": (b"From: =?utf-8?b?cG90dXNAd2hpdGVob3VzZS5nb3YAKG51bGwp?= "
                           b"<x@evil.example>\r\n\r\nhi\r\n"),
        "no-headers.eml": b"\r\n\r\njust a body\r\n",
        "nul-everywhere.eml": b"From: a\x00@school.example\r\nSub\x00ject: x\r\n\r\n\x00\r\n",
    }


@pytest.mark.parametrize("name", sorted(nasty_corpus()))
def test_nasty_corpus_through_check(name: str, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path)
    eml = tmp_path / name
    eml.write_bytes(nasty_corpus()[name])
    assert main(["check", "--config", str(cfg), "--json", "--mail-from",
                 "someone@school.example", "--rcpt", "ouder@example.org", str(eml)]) == 0
    verdict = json.loads(capsys.readouterr().out)
    assert verdict["smtp_reply"][:3] in REPLIES
    if name in ("hidden-filename.eml", "two-content-types.eml", "broken-base64.eml",
                "duplicate-boundaries.eml"):
        assert verdict["action"] != "accept"  # never "clean" when we cannot tell
    if name == "mailsploit.eml":
        assert verdict["action"] == "reject"
