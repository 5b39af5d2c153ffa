"""The digit scan behind the BSN and IBAN detectors finds exactly the candidates a regex
pass over every character finds; only the way to them is faster."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from milter.inspect.detectors import (
    _BSN_CAND,
    _bsn_matches,
    _digit_positions,
    count_bsn,
    count_iban,
)

_pieces = st.sampled_from(["111222333", "1112.22.333", "111 222 333", "111-222-333", "123456782",
                           "NL91ABNA0417164300", "NL91 ABNA 0417 1643 00", "nl91abna0417164300",
                           "BE68539007547034", "0", "12", " ", ".", "-", ",", "a", "NL", "x9",
                           "\u0663", "\u00b2", "\u00e9", "\n", "999999999", "1234 AB",
                           "1234.56.782", "123 456 782", ";", "(", "\t", "\u00a0", "\"",
                           "312 298 105"])


def same_candidates(text: str) -> None:
    positions = _digit_positions(text)
    if text.isascii() and len(text) < 4096:
        assert positions is not None  # the fast path is the one taken, and checked here
    assert positions is None or positions == [m.start() for m in re.finditer(r"\d", text)]
    assert [m.span() for m in _bsn_matches(text)] == [m.span() for m in
                                                      _BSN_CAND.finditer(text)]


@settings(max_examples=400)
@given(st.lists(_pieces, max_size=40))
def test_scan_finds_what_a_full_regex_pass_finds(pieces: list[str]) -> None:
    same_candidates("".join(pieces))


def test_digit_heavy_and_non_ascii_texts_take_the_regex_path_with_the_same_answer() -> None:
    heavy = "BSN 111222333 rekening NL91ABNA0417164300 en " * 200   # > 4096 digits
    assert _digit_positions(heavy) is None
    same_candidates(heavy)
    assert count_bsn(heavy) == 200 and count_iban(heavy) == 200
    accented = "Leerling \u00e9: BSN 111222333 en IBAN NL91ABNA0417164300 \u0663\u0663"
    assert _digit_positions(accented) is None
    same_candidates(accented)
    assert count_bsn(accented) == 1 and count_iban(accented) == 1
