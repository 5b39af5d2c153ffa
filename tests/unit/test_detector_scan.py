"""The digit scan behind the BSN and IBAN detectors finds exactly what a regex pass over
every character finds (the reference below is the straightforward regex version)."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from milter.inspect.detectors import _BSN, _IBAN_CI, bsn_valid, count_bsn, count_iban, iban_valid

_RUN = re.compile(r"\d[\d. -]{7,11}\d")


def reference_bsn(text: str) -> int:
    count, last_end = 0, -1
    for run in _RUN.finditer(text):
        lo = max(0, run.start() - 1)
        for m in _BSN.finditer(text, lo, min(len(text), run.end() + 2)):
            if m.start(1) >= last_end and bsn_valid(re.sub(r"\D", "", m.group(1))):
                count += 1
                last_end = m.end(1)
    return count


def reference_iban(text: str) -> int:
    count, last_end = 0, -1
    for pair in re.finditer(r"\d\d", text):
        pos = pair.start() - 2
        if pos < last_end or pos < 0 or not text[pos:pos + 2].isalpha() \
                or (pos and text[pos - 1].isalnum()):
            continue
        m = _IBAN_CI.match(text, pos)
        if m and iban_valid(m.group(1)):
            count += 1
            last_end = m.end(1)
    return count


_pieces = st.sampled_from(["111222333", "1112.22.333", "111 222 333", "111-222-333", "123456782",
                           "NL91ABNA0417164300", "NL91 ABNA 0417 1643 00", "nl91abna0417164300",
                           "BE68539007547034", "0", "12", " ", ".", "-", ",", "a", "NL", "x9",
                           "٣", "²", "é", "\n", "999999999", "1234 AB"])


@settings(max_examples=400)
@given(st.lists(_pieces, max_size=40))
def test_scan_finds_what_a_full_regex_pass_finds(pieces: list[str]) -> None:
    text = "".join(pieces)
    assert count_bsn(text) == reference_bsn(text)
    assert count_iban(text) == reference_iban(text)


def test_digit_heavy_and_non_ascii_texts_take_the_regex_path_with_the_same_answer() -> None:
    heavy = "BSN 111222333 rekening NL91ABNA0417164300 en " * 200   # > 4096 digits
    assert count_bsn(heavy) == reference_bsn(heavy) == 200
    assert count_iban(heavy) == reference_iban(heavy) == 200
    accented = "Leerling é: BSN 111222333 en IBAN NL91ABNA0417164300"
    assert count_bsn(accented) == 1 and count_iban(accented) == 1
