"""DATA as the next hop gets it: dot-stuffed, CRLF-terminated, in line-aligned chunks."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from milter.nexthop import stuffed_chunks

_lines = st.lists(st.sampled_from([b"", b".", b"..", b".x", b"x.", b"abc", b"a" * 50, b". ."]),
                  max_size=60)


@given(_lines, st.integers(1, 120))
def test_chunks_are_the_stuffed_message(lines: list[bytes], size: int) -> None:
    content = b"".join(line + b"\r\n" for line in lines)
    chunks = list(stuffed_chunks(content, size=size))
    wire = b"".join(chunks)
    # what a receiving server unstuffs (RFC 5321 4.5.2) is the message, byte for byte
    received = [line[1:] if line.startswith(b".") else line
                for line in wire.split(b"\r\n")[:-1]]
    assert b"".join(line + b"\r\n" for line in received) == content
    assert all(line != b"." for line in wire.split(b"\r\n"))  # no early end of data
    assert all(c.endswith(b"\r\n") for c in chunks)             # line-aligned


def test_message_without_final_line_end_gets_one() -> None:
    assert b"".join(stuffed_chunks(b"a\r\n.b")) == b"a\r\n..b\r\n"
    assert b"".join(stuffed_chunks(b"")) == b""  # DATA, then only the dot


@given(_lines, _lines, st.integers(1, 50))
def test_head_and_body_are_one_message(head: list[bytes], body: list[bytes], size: int) -> None:
    h, b = (b"".join(line + b"\r\n" for line in x) for x in (head, body))
    assert b"".join(stuffed_chunks(h, b, size=size)) == b"".join(stuffed_chunks(h + b))


def test_large_message_is_sent_in_bounded_pieces() -> None:
    content = b"x" * 70 + b"\r\n"
    chunks = list(stuffed_chunks(content * 100_000))
    assert len(chunks) > 20 and max(map(len, chunks)) < 300_000

