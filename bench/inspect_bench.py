"""Inspection benchmark: MB/s per attachment type, and the cost per message of the whole policy.

    python bench/inspect_bench.py [--seconds 2]

Prints figures; asserts nothing (speed is measured here, never in tests). The attachments are
made with the same real libraries the tests use (python-docx, openpyxl, reportlab, zipfile).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from milter.core.context import Envelope  # noqa: E402
from milter.core.message import parse  # noqa: E402
from milter.inspect import Limits, inspect_message  # noqa: E402
from milter.runtime import Runtime  # noqa: E402
from tests.fixtures import files  # noqa: E402

DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


def samples() -> dict[str, bytes]:
    para = ["Verslag van de vergadering over het rooster en de activiteiten. " * 8] * 200
    return {
        "docx 200 paragraphs": files.mail_with([("verslag.docx", files.docx(para), DOCX)]),
        "xlsx 2000 rows": files.mail_with([("lijst.xlsx", files.xlsx(files.pupil_rows(2000)),
                                            XLSX)]),
        "pdf 40 lines": files.mail_with([("brief.pdf", files.pdf(["Regel tekst"] * 40),
                                          "application/pdf")]),
        "zip of docx+pdf": files.mail_with([("map.zip", files.zip_of({
            "a.docx": files.docx(para[:50]), "b.pdf": files.pdf(["x"] * 20)}),
            "application/zip")]),
        "photo 1 MP": files.mail_with([("foto.jpg", files.photo(1000, 1000), "image/jpeg")]),
        "plain 2 KB": files.mail_with([], body="Beste ouders,\n" + "tekst " * 300),
        "digit csv 10 MB": files.mail_with([("export.csv", _digit_csv(10 * 2**20), "text/csv")]),
    }


def _digit_csv(size: int) -> bytes:
    """The detectors' worst case: nothing but nine-digit numbers (1 in 11 passes the
    11-test), comma-separated."""
    import random

    rng = random.Random(10)
    rows = ["Bestelnummer,Artikel,Bedrag,Code,Ref,A,B,C"]
    total = 0
    while total < size:
        rows.append(",".join(str(rng.randint(100_000_000, 999_999_999)) for _ in range(8)))
        total += len(rows[-1]) + 2
    return "\r\n".join(rows).encode()


def rate(fn: object, seconds: float) -> tuple[int, float]:
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()  # type: ignore[operator]
        n += 1
    return n, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=2.0, help="time per figure")
    args = ap.parse_args()
    rt = Runtime.load(None)
    env = Envelope("someone@school.example", ("ouder@example.org",), "127.0.0.1", txid="b")
    print(f"{'sample':<22} {'size KB':>8} {'inspect MB/s':>13} {'policy ms/msg':>14}  verdict")
    for name, raw in samples().items():
        n, t = rate(lambda raw=raw: inspect_message(parse(raw), Limits()), args.seconds)
        mbs = len(raw) * n / t / 2**20
        m, t2 = rate(lambda raw=raw: rt.evaluate(env, raw), args.seconds)
        action = rt.evaluate(env, raw).verdict.action
        print(f"{name:<22} {len(raw) / 1024:>8.0f} {mbs:>13.1f} {t2 / m * 1000:>14.2f}  {action}")


if __name__ == "__main__":
    main()
