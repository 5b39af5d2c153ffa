"""The digit scan behind the BSN and IBAN detectors finds exactly the candidates a regex
pass over every character finds; only the way to them is faster."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from milter.inspect.detectors import (
    _BSN_CAND,
    _IBAN_START,
    _bsn_matches,
    _digit_positions,
    _iban_starts,
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
    assert list(_iban_starts(text)) == [m.start() for m in _IBAN_START.finditer(text)]


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


_cells = st.lists(st.lists(st.one_of(_pieces, st.text(max_size=12),
                                     st.sampled_from(["Naam", "BSN", "Geboortedatum", "E-mail",
                                                      "NL91 ABNA 0417 1643 00", "a@b.nl",
                                                      "Sem Bakker", "12-03-2015", "NL:1",
                                                      "06-12345678", "1.2E8", "12345672",
                                                      "NL91 ABNA 041:1643 00"])),
                           max_size=6), max_size=8)


@settings(max_examples=300)
@given(_cells)
def test_context_detectors_never_raise(rows: list[list[str]]) -> None:
    """A detector that raises is a rule crash, and a crash is a 451 for every retry: any
    text and any table must get an answer."""
    from milter.inspect.detectors import (
        DEFAULT_BSN_KEYWORDS,
        bsn_in_rows,
        bsn_in_text,
        iban_numbers,
        marking_levels,
    )
    from milter.inspect.markup import read_html
    from milter.inspect.tables import best_people_table, text_tables

    text = "\n".join("\t".join(r) for r in rows)
    bsn_in_text(text, DEFAULT_BSN_KEYWORDS, 300)
    bsn_in_rows(rows, DEFAULT_BSN_KEYWORDS)
    iban_numbers(text)
    for where in ("body", "subject", "name", "attachment"):
        marking_levels(text, ["vertrouwelijk", "OPP"], ["OPP"], where)
    best_people_table([rows, *text_tables(text)], ("school.example",))
    read_html("<table>" + "".join("<tr>" + "".join(f"<td>{c}" for c in r) for r in rows),
              1000)
