"""The lean parse (long base64 runs parsed as one line, decoded from the raw bytes) reads
every message exactly as the plain stdlib parse does: same structure, parts, names,
payloads and defects. Checked on hand-made edge cases and on generated MIME."""

from __future__ import annotations

import base64
import os
import tracemalloc

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from milter.core.message import Message, normalize_line_endings, parse


def shape(m: Message) -> object:
    return {
        "parts": [(p.path, p.content_type, p.filename, p.is_attachment, p.defects, p.payload)
                  for p in m.parts],
        "defects": m.defects,
        "authors": m.authors,
        "subject": m.subject,
        "headers": m.headers,
        "nested": [sorted(n.items()) for n in m.nested_messages],
        "preambles": [(n.preamble, n.epilogue) for n in m.email.walk()],
    }


def same(raw: bytes) -> Message:
    raw = normalize_line_endings(raw)
    lean, plain = parse(raw), parse(raw, elide=False)
    assert shape(lean) == shape(plain)
    return lean


def b64(data: bytes) -> bytes:
    return base64.encodebytes(data).replace(b"\n", b"\r\n")


def mail(*parts: bytes, preamble: bytes = b"", epilogue: bytes = b"") -> bytes:
    body = b"".join(b"--XYZ\r\n" + p + b"\r\n" for p in parts)
    return (b"From: a@school.example\r\nTo: b@example.org\r\nSubject: s\r\n"
            b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=XYZ\r\n\r\n"
            + preamble + body + b"--XYZ--\r\n" + epilogue)


def attachment(name: str, payload: bytes, cte: str = "base64") -> bytes:
    return (f"Content-Type: application/octet-stream; name={name}\r\n"
            f"Content-Disposition: attachment; filename={name}\r\n"
            f"Content-Transfer-Encoding: {cte}\r\n\r\n").encode() + payload


RUN = b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0NTY3ODkwYWJjZGVmZ2hpamtsbW5vcHFy\r\n" * 40


def parsed_with_peak(raw: bytes) -> tuple[Message, int]:
    """The lean parse and the most memory it held at once."""
    tracemalloc.start()
    try:
        message = parse(raw)
        return message, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_large_attachment_is_decoded_exactly_and_cheaply() -> None:
    data = os.urandom(3 * 2**20)
    raw = normalize_line_endings(mail(attachment("rapport.pdf", b64(data))))
    message, peak = parsed_with_peak(raw)
    # the plain stdlib parse holds the 4 MB of base64 text several times over
    assert peak < len(raw) // 2
    assert message.attachments[0].payload == data
    assert message.attachments[0].filename == "rapport.pdf"
    same(raw)


def test_large_text_body_is_read_from_the_raw_bytes() -> None:
    text = ("Beste ouders, de rapporten komen vrijdag mee naar huis. " * 2 + "\r\n") * 40_000
    raw = normalize_line_endings(mail(b"Content-Type: text/plain\r\n\r\n" + text.encode(),
                                      attachment("q.txt", text.encode(), "quoted-printable")))
    message, peak = parsed_with_peak(raw)
    assert peak < len(raw) // 2  # the stdlib holds every line as a string, and then some
    assert message.parts[0].text == text
    same(raw)


def test_runs_outside_base64_parts_are_restored() -> None:
    same(mail(b"Content-Type: text/plain\r\n\r\n" + RUN + b"groet\r\n",
              attachment("a.txt", RUN, "7bit"), attachment("q.txt", RUN, "quoted-printable"),
              preamble=RUN, epilogue=RUN))


def test_broken_base64_reads_as_the_stdlib_reads_it() -> None:
    for payload in (RUN + b"QUJD\r\n",            # length not a multiple of 4
                    RUN + b"QU=JD\r\n" + RUN,      # padding in the middle
                    RUN + b"!!!!\r\n" + RUN,       # not base64 at all
                    RUN[:-2] + b"=\r\n",           # padding glued to the run
                    RUN + b"\r\n" + RUN):          # two runs, blank line between
        same(mail(attachment("x.bin", payload)))


def test_a_forged_token_in_the_message_is_just_text() -> None:
    forged = b"0SKOTELIDED0000000000000000000N0\r\n"  # 32 characters
    message = same(mail(attachment("x.bin", forged + RUN + forged)))
    assert message.attachments[0].payload == base64.b64decode(
        (forged + RUN + forged).replace(b"\r\n", b""))


def test_runs_in_header_sections_and_nested_messages() -> None:
    nested = (b"Content-Type: message/rfc822\r\n\r\nFrom: c@school.example\r\n"
              + RUN + b"Subject: x\r\n\r\nbody\r\n")
    same(mail(nested))
    same(b"From: a@school.example\r\n" + RUN + b"Subject: s\r\n\r\n" + RUN)
    report = (b"Content-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; x\r\n"
              + RUN + b"\r\nFinal-Recipient: rfc822; b@example.org\r\n")
    same(mail(report))


_line = st.sampled_from([
    b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0NTY3", b"YWJj", b"YQ==", b"=", b"--XYZ", b"--XYZ--",
    b"--inner", b"--inner--", b"", b"Content-Type: text/plain", b"x: y", b" folded",
    b"Content-Transfer-Encoding: base64", b"Content-Type: multipart/mixed; boundary=inner",
    b"Content-Type: message/rfc822", b"hello world", b".", b"From: c@school.example",
    b"From me to you", b"\tindented", b"-dash", b"plain words, no colon", b"caf\xc3\xa9 =C3=A9",
    b"soft break=", b"Content-Transfer-Encoding: quoted-printable",
    b"Content-Transfer-Encoding: base64 ", b"Content-Transfer-Encoding: 8bit",
    b"Content-Transfer-Encoding: x-uuencode", b"begin 644 f.txt", b"#86)C", b"end",
    b"Content-Type: message/delivery-status", b"Content-Type: text/plain; charset=utf-8"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(_line, st.integers(1, 40)), max_size=25))
def test_generated_mime_reads_the_same(lines: list[tuple[bytes, int]]) -> None:
    body = b"".join((line + b"\r\n") * n for line, n in lines)
    same(b"From: a@school.example\r\nMIME-Version: 1.0\r\n"
         b"Content-Type: multipart/mixed; boundary=XYZ\r\n\r\n" + body)
    same(mail(b"Content-Transfer-Encoding: base64\r\n\r\n" + body))
