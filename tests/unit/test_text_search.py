"""The text detectors' faster ways find exactly what the plain ones found: the marking search
what one search per word over the whole text found (the sieve in front of it only skips
searches that would have found nothing), the table reader the lines of str.splitlines."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from milter.inspect import detectors
from milter.inspect.detectors import (
    HEALTH,
    LOW,
    LOWER_TO_ASCII,
    MEDIUM,
    NONE,
    _WordSearch,
    marking_levels,
)
from milter.inspect.tables import _lines

WORDS = ["vertrouwelijk", "strikt vertrouwelijk", "confidential", "zorgdossier", "OPP",
         "medisch dossier", "handelingsplan", "diagnose", "privé"]
CASE_SENSITIVE = ["OPP"]
HEALTH_WORDS = ["allergie", "allergisch", "medicatie", "ADHD", "ADD", "diagnose", "dyslexie"]


def reference_levels(text: str, words: Sequence[str], case_sensitive: Sequence[str],
                     where: str, health: Sequence[str] = ()) -> dict[str, int]:
    """marking_levels as it was: one search per word over the whole text."""
    lower = text.lower()
    out: dict[str, int] = {}
    prose: list[tuple[str, int]] = []
    for w in words:
        exact = w in case_sensitive
        hay, needle = (text, w) if exact else (lower, w.lower())
        pos = hay.find(needle)
        while pos >= 0:
            end = pos + len(needle)
            before = hay[pos - 1] if pos else " "
            after = hay[end:end + 1] or " "
            if before.isalpha() or (exact and after.isalpha()):
                pos = hay.find(needle, pos + 1)
                continue
            level = detectors._marking_level(text, lower, pos, end, where)
            if level > out.get(w, NONE):
                out[w] = level
            if level in (LOW, MEDIUM) and where in ("body", "attachment"):
                prose.append((w, pos))
            pos = hay.find(needle, pos + 1)
    if where in ("body", "attachment") and (prose or health):
        _reference_care_notes(text, lower, out, prose, health, where)
    return {w: lvl for w, lvl in out.items() if lvl > NONE}


def _reference_care_notes(text: str, lower: str, out: dict[str, int],
                          prose: list[tuple[str, int]], health: Sequence[str],
                          where: str) -> None:
    hits = list(prose)
    for h in health:
        exact = h.isupper()
        hay, needle = (text, h) if exact else (lower, h.lower())
        pos = hay.find(needle)
        while pos >= 0:
            end = pos + len(needle)
            if not (pos and hay[pos - 1].isalpha()) \
                    and not (exact and hay[end:end + 1].isalpha()) \
                    and not detectors._NEGATED.search(lower, max(0, pos - 12), pos):
                hits.append((h, pos))
            pos = hay.find(needle, pos + 1)
    if not hits:
        return
    terms = {w.lower() for w, _ in hits}
    by_sentence: dict[tuple[int, int], set[str]] = {}
    for w, pos in hits:
        by_sentence.setdefault(detectors._sentence(text, pos), set()).add(w)
    named = {span: ws for span, ws in by_sentence.items()
             if detectors._names_person(text[span[0]:span[1]], terms)}
    marks = {w for w, _ in prose}
    if where == "body" and len(out) >= 2 and any(ws & marks for ws in named.values()):
        for w in marks:
            out[w] = max(out[w], MEDIUM)
    for (start, end), ws in named.items():
        if len(ws) >= 2 and ws - marks and detectors._HAS.search(lower, start, end):
            for w in ws & marks:
                out[w] = max(out[w], MEDIUM)
            out[HEALTH] = MEDIUM


# Words and the letters, cases and characters around them that the boundaries, the case and
# the sieve's byte folding turn on: overlapping words, a case-sensitive word inside a longer
# one (OPPERVLAKTE, ADDRESS), negations, disclaimers, names and sentences, letters beyond
# ASCII (é, ë, ’, the Turkish İ and the Kelvin sign that lower to ASCII, a final sigma, a
# lone surrogate).
_pieces = st.sampled_from([
    "vertrouwelijk", "Vertrouwelijk", "VERTROUWELIJK", "vertrouwelijke", "strikt ", "Strikt ",
    "onvertrouwelijk", "niet ", "geen ", "OPP", "opp", "Opp", "OPPERVLAKTE", "OPP-gesprek",
    "ADHD", "ADD", "ADDRESS", "add", "Adhd", "allergie", "allergisch", "ALLERGIE", "medicatie",
    "diagnose", "DIAGNOSE", "dyslexie", "zorgdossier", "medisch dossier", "medisch  dossier",
    "handelingsplan", "confidential", "privé", "PRIVÉ", "privÉ", "Sem", "Bakker", "Juf ",
    "heeft ", "gebruikt ", "Sem Bakker heeft ", "geadresseerde", "disclaimer", "may contain",
    " ", "  ", "\n", "\n\n", ".", ":", "-", "(", "'", "a", "k", "x", "é", "ë", "’", "1", "_",
    "\u0130", "\u212a", "\u212aonfidential", "vertrouwelij\u212a", "\u0130ADD", "\u03a3",
    "\u03a3OPP", "\udcff", "\u00a0", "ß", "\u1e9e"])
_texts = st.lists(st.one_of(_pieces, st.text(max_size=6)), max_size=40).map("".join)
# Sentences of names, titles, verbs, health words and markings: what care notes are made of
# ("Sem Bakker heeft medicatie voor ADHD."), among the rest.
_sentence = st.tuples(
    st.lists(st.sampled_from(["Sem", "Bakker", "Juf", "Anna", "heeft", "gebruikt", "allergie",
                              "medicatie", "ADHD", "diagnose", "vertrouwelijk", "Vertrouwelijk",
                              "handelingsplan", "OPP", "zorgdossier", "voor", "niet", "de"]),
             min_size=1, max_size=8).map(" ".join),
    st.sampled_from([". ", "\n", "\n\n", ": ", " "])).map("".join)
_notes = st.lists(st.one_of(_sentence, _pieces), max_size=12).map("".join)


# A second word list: a case-sensitive word that is, lower-cased, also a case-insensitive
# one, a marking that is a health word, words that share a beginning or an end.
CONFIGS = [(WORDS, CASE_SENSITIVE, HEALTH_WORDS),
           (["diagnose", "Vertrouwelijk", "vertrouwelijk", "OPP", "zorgdossier",
             "leerlingdossier", "medisch dossier"],
            ["diagnose", "Vertrouwelijk"], ["Diagnose", "diagnose", "ADD", "allergie",
                                            "allergisch", "dossier"])]


@settings(max_examples=800, deadline=None)
@given(st.one_of(_texts, _notes), st.sampled_from(["body", "attachment", "subject", "name"]),
       st.sampled_from(CONFIGS))
def test_marking_levels_are_those_of_one_search_per_word(
        text: str, where: str, config: tuple[list[str], list[str], list[str]]) -> None:
    words, case_sensitive, health = config
    assert marking_levels(text, words, case_sensitive, where, health) == \
        reference_levels(text, words, case_sensitive, where, health)


def _plain_starts(text: str, needle: str, exact: bool) -> list[int]:
    hay = text if exact else text.lower()
    return [i for i in range(len(hay)) if hay.startswith(needle, i)
            and not (i and hay[i - 1].isalpha())
            and not (exact and hay[i + len(needle):i + len(needle) + 1].isalpha())]


@settings(max_examples=400, deadline=None)
@given(_texts, st.lists(st.one_of(_pieces, st.text(min_size=1, max_size=5)), min_size=1,
                        max_size=6))
def test_word_starts_are_those_of_a_check_at_every_position(text: str,
                                                            words: list[str]) -> None:
    """Any words (sharing parts or not, any characters): what the search finds, and that it
    says "no word can be there" only when none is."""
    folded = sorted({w.lower() for w in words})
    exact = sorted(set(words))
    lower, found = _WordSearch(folded, exact).starts(text)
    expected = {(w, e): _plain_starts(text, w, e) for ws, e in ((folded, False), (exact, True))
                for w in ws}
    assert found == {k: v for k, v in expected.items() if v}
    if lower is None:
        assert not found and not any(w in text.lower() for w in folded)
    else:
        assert lower == text.lower()


def test_ordinary_letter_leaves_no_word_to_search_for() -> None:
    """What the checks are for: an ordinary letter with é and ’ in it (where text.lower()
    is slow) is not lower-cased; one word of the list is found where it is."""
    letter = ("Beste ouders, op dinsdag is er een studiedag en vrijdag sluiten we af met een "
              "voorstelling in het café van ’t dorp. Met vriendelijke groet, Juf Anna\n") * 50
    search = detectors._word_search(tuple(WORDS), tuple(CASE_SENSITIVE), tuple(HEALTH_WORDS))
    assert search.starts(letter) == (None, {})
    assert search.starts(letter + "Sem heeft ADHD.")[1] == {("ADHD", True): [len(letter) + 10]}
    lower, found = search.starts(letter + "Een VERTROUWELIJK verslag")
    assert lower is not None and found == {("vertrouwelijk", False): [len(letter) + 4]}


def test_lower_to_ascii_lists_every_character_whose_lower_case_holds_ascii() -> None:
    """The sieve folds ASCII letters itself; a text with any other character whose lower case
    holds an ASCII one takes the plain path. This list must be complete for the Python
    running it."""
    found = tuple(chr(c) for c in range(0x80, sys.maxunicode + 1)
                  if any(ord(x) < 0x80 for x in chr(c).lower()))
    assert found == LOWER_TO_ASCII


@settings(max_examples=400)
@given(st.lists(st.sampled_from(["a", " ", "\n", "\r", "\r\n", "\v", "\f", "\x1c", "\x1d",
                                 "\x1e", "\x85", "\u2028", "\u2029", "é", "\t"]),
                max_size=20).map("".join))
def test_table_lines_are_those_of_splitlines(text: str) -> None:
    assert _lines(text) == text.splitlines()
