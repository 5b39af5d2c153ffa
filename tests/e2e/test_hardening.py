"""Issue 13: heavy or hostile input must never hurt other senders. Real sockets throughout;
each test says what the client hears and that no message is lost."""

from __future__ import annotations

import random
import select
import smtplib
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from milter import transaction
from milter.audit.sqlite import SQLiteStore
from milter.core.verdict import Finding
from tests.conftest import make_message, write_config
from tests.e2e.conftest import GatewayThread, SinkHandler, free_port
from tests.e2e.test_transaction_paths import Both
from tests.fixtures import files


@pytest.fixture
def fronts(tmp_path: Path, sink: tuple[SinkHandler, int]) -> Iterator[Both]:
    """The gateway with both fronts (SMTP and milter) and a sink as next hop."""
    cfg = write_config(tmp_path, next_hop=f"smtp://127.0.0.1:{sink[1]}",
                       extra=f'[milter]\nlisten = "127.0.0.1:{free_port()}"\n')
    g = GatewayThread(cfg)
    yield Both(g, sink[0], tmp_path)
    g.stop()


def records(tmp: Path) -> list[Any]:
    return list(SQLiteStore(tmp / "audit.sqlite3", "test").records())


def digit_csv_zip(members: int, rows: int = 20000) -> bytes:
    """The zip of CSVs full of 9-digit numbers from the issue (2 MB of text per member)."""
    rng = random.Random(13)
    pool = [str(rng.randrange(10**8, 10**9)) for _ in range(5000)]
    text = "".join(";".join(rng.choice(pool) for _ in range(10)) + "\n"
                   for _ in range(rows)).encode()
    return files.zip_of({f"export{i}.csv": text for i in range(members)})


# -- 1. inspection off the event loop, with an enforced budget -------------------------------

def test_heavy_inspection_does_not_hold_up_a_small_message(tmp_path: Path, make_gateway: Any,
                                                           sink: tuple[SinkHandler, int]) -> None:
    """A staff member's zip of digit CSVs is inspected while another client's small message
    is answered; past the time budget the zip is held as A1.uninspectable (250, quarantined),
    never a stall. (main: the small client waits for the whole scan, ~10 s here.)"""
    gw = make_gateway(f"smtp://127.0.0.1:{sink[1]}",
                      gateway_extra="max_message_size = 104857600",
                      extra="[inspection]\ntime_budget = 1.0\n")
    heavy_msg = files.mail_with([("leerlingen.zip", digit_csv_zip(12), "application/zip")])
    heavy = gw.client()
    heavy.ehlo("heavy.school.example")
    assert heavy.mail("someone@school.example")[0] == 250
    assert heavy.rcpt("ouder@example.org")[0] == 250
    assert heavy.docmd("DATA")[0] == 354
    heavy.send(heavy_msg + b".\r\n")      # all of it handed to the kernel
    time.sleep(0.3)                        # the gateway reads it and starts inspecting
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=5) as small:
        small.sendmail("teacher@school.example", ["ouder@example.org"],
                       make_message(frm="teacher@school.example"))
    # The small message was answered while the heavy one has no answer yet.
    ready, _, _ = select.select([heavy.sock], [], [], 0)
    assert not ready, "the heavy message was answered before the small one"
    code, text = heavy.getreply()
    heavy.quit()
    assert code == 250 and b"held" in text
    assert len(sink[0].messages) == 1  # the small one; the heavy one is in quarantine
    recs = records(tmp_path)
    held = [r for r in recs if r.event == "quarantined"]
    assert len(held) == 1 and held[0].rules[0]["id"] == "A1.uninspectable"
    assert "time budget" in held[0].rules[0]["reason"]
    assert [r.event for r in recs].count("delivered") == 1


@pytest.mark.parametrize("front", ["smtp", "milter"])
def test_a_rule_that_ignores_the_budget_is_cut_off(fronts: Both, front: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A check that never looks at the clock (here: a sleep) cannot stall the client either:
    past the budget plus the backstop the message is held as A1.uninspectable."""
    monkeypatch.setattr(transaction, "BACKSTOP", 0.3)
    stop = threading.Event()

    def stuck(*_: Any) -> Finding | None:
        stop.wait(30)
        return None

    from milter.core.limits import check_deadline  # new in issue 13

    def spins(*_: Any) -> Finding | None:
        while True:
            check_deadline()

    rt = fronts.gateway.running.gateway.runtime
    fronts.gateway.running.gateway.runtime = replace(rt, config=replace(
        rt.config, inspection=replace(rt.config.inspection, time_budget=0.5)))
    try:
        for fn in (stuck, spins):
            fronts.swap_rule("B1.sender-domain", fn)
            started = time.monotonic()
            out = fronts.send(front, files.mail_with([("a.txt", b"hallo", "text/plain")]),
                            "someone@school.example")
            assert time.monotonic() - started < 10
            assert out.code == 250 and (out.held or "held" in out.text), out
    finally:
        stop.set()
    held = [r for r in fronts.records() if r.event == "quarantined"]
    assert [r.rules[0]["id"] for r in held] == ["A1.uninspectable"] * 2
    assert not fronts.sink.messages
