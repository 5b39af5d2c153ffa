"""IBANs that a line break cuts in two: a mail hard-wrapped at 72 characters, a narrow PDF
column, a quoted reply. Three parents' accounts so written were a miss (the red-team's
leftover); the country's length and the check digits decide, so a next line's amount or
reference never becomes part of an account."""

from __future__ import annotations

import random

import pytest

from milter.inspect.detectors import count_iban, iban_numbers, iban_valid
from milter.runtime import Runtime
from tests.unit.test_detection_redteam import mail, rt, signals, verdict  # noqa: F401


def nl_iban(seed: int) -> str:
    rng = random.Random(seed)
    bank = rng.choice(["ABNA", "INGB", "RABO", "SNSB", "TRIO"])
    account = "".join(str(rng.randint(0, 9)) for _ in range(10))
    check = 98 - int("".join(str(int(c, 36)) for c in bank + account + "NL00")) % 97
    raw = f"NL{check:02d}{bank}{account}"
    return " ".join(raw[i:i + 4] for i in range(0, len(raw), 4))


PARENTS = ["Sem Bakker", "Emma de Vries", "Daan Jansen", "Noor El Amrani"]
IBANS = [nl_iban(i) for i in range(4)]


def wrapped_letter(cut: int, quote: str = "") -> str:
    """A collection letter whose every account is broken after ``cut`` groups."""
    lines = ["Beste penningmeester,", "", "Hierbij de machtigingen voor de schoolreis:"]
    for who, iban in zip(PARENTS, IBANS, strict=True):
        groups = iban.split(" ")
        lines += [f"{who}, rekening {' '.join(groups[:cut])}", " ".join(groups[cut:])
                  + ", bedrag 35 euro"]
    return "\n".join(quote + line for line in lines)


@pytest.mark.parametrize("cut", [1, 2, 3, 4])
def test_accounts_cut_by_a_line_break_are_counted(cut: int) -> None:
    text = wrapped_letter(cut)
    assert iban_numbers(text) == {i.replace(" ", "") for i in IBANS}
    assert count_iban(text) == 4


def test_in_a_quoted_reply_and_without_spaces() -> None:
    assert len(iban_numbers(wrapped_letter(2, quote="> "))) == 4
    raw = IBANS[0].replace(" ", "")
    assert iban_numbers(f"Rekening {raw[:11]}\n{raw[11:]} graag.") == {raw}


def test_three_parents_accounts_in_a_wrapped_letter_are_held(rt: Runtime) -> None:  # noqa: F811
    v = verdict(rt, mail(wrapped_letter(2)))
    assert v["action"] in ("quarantine", "reject") and "iban" in signals(v), v


def test_the_next_line_never_becomes_part_of_an_account() -> None:
    whole = IBANS[0]
    # a whole account at a line's end, an amount or a date on the next line: that account
    for after in ("\n2026 betaald", "\n1643 00 euro", "\nABNA 0417", "\n> 12 34"):
        assert iban_numbers(f"Rekening {whole}{after}") == {whole.replace(' ', '')}
    # a cut account whose continuation runs on into a longer word is no account
    groups = whole.split(" ")
    assert iban_numbers(f"{' '.join(groups[:2])}\n{' '.join(groups[2:])}XYZ") == set()
    # the piece of a reference number before a break, digits after: the check digits say no
    assert count_iban("Ref NL12 ABCD\n1234 5678 90 en NL34 WXYZ\n9876 5432 10") == 0


def test_joined_lines_give_only_valid_accounts_that_are_in_the_text() -> None:
    """Random lines of account-like groups: whatever is found is a valid IBAN whose
    characters stand in the text in that order, separated by spaces, breaks or '>'."""
    rng = random.Random(7)
    alphabet = "ABNA0123456789 "
    found = 0
    for _ in range(3000):
        text = "\n".join("NL" + "".join(rng.choice(alphabet) for _ in range(rng.randint(2, 14)))
                         for _ in range(rng.randint(2, 4)))
        squeezed = "".join(c for c in text if c.isalnum())
        for iban in iban_numbers(text):
            found += 1
            assert iban_valid(iban) and iban in squeezed.upper()
    assert found < 3000 // 10   # chance joins stay rare (1 in 97 by the check digits)
