"""The forwarded-header search starts at a date line's mark ("Verzonden:", "Date:"); it is
looked for at each colon instead of in a lower-case copy of the whole text: the same answer
on any text."""

from __future__ import annotations

import random

from milter.rules.forwarding import _DATE_MARKS, _has_date_mark


def old(text: str) -> bool:
    lowered = text.lower()
    return any(mark in lowered for mark in _DATE_MARKS)


def test_the_same_answer_as_a_search_of_the_lower_case_text() -> None:
    rng = random.Random(5)
    pieces = ["Verzonden", "SENT", "absent", "Date", "datum", "DaTuM", "update", ":", " ",
              "\n", "Van", "x", "é", "İ", "K", "dat", "um", "sen", "t"]
    hits = 0
    for _ in range(20000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))
        assert _has_date_mark(text) == old(text), text
        hits += old(text)
    assert 1000 < hits < 19000   # both answers were tried often


def test_a_forward_block_and_a_letter_without_one() -> None:
    assert _has_date_mark("Tekst\n\nVan: Juf Anna\nVerzonden: maandag 3 maart\nAan: x")
    assert _has_date_mark("-----Original Message-----\nFrom: a\nSent: Monday")
    assert not _has_date_mark("Beste ouders, hierbij de informatie over deze week: veel plezier.")
