"""No mail lost under faults: a bounded soak while the next hop fails, stalls, goes away and
comes back, while the audit store refuses writes, and while the gateway is SIGKILLed.
Afterwards, for every message the client sent: either it got 250 and the sink has it exactly
once with its audit record, or it got 4xx/5xx (and for 5xx the audit has the verdict)."""

from __future__ import annotations

import random
import signal
import smtplib
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from email.parser import BytesParser
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

from milter.audit.sqlite import SQLiteStore
from tests.conftest import write_config
from tests.e2e.conftest import GatewayThread, free_port


class FaultySink:
    """Accepts, refuses with 451, or stalls past the gateway's next-hop timeout, at random."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.ids: list[str] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        import asyncio

        roll = self.rng.random()
        if roll < 0.15:
            return "451 4.3.0 sink busy"
        if roll < 0.20:
            await asyncio.sleep(1.2)  # longer than next_hop_timeout
        msg = BytesParser().parsebytes(envelope.original_content, headersonly=True)
        with self.lock:
            self.ids.append(str(msg["Message-ID"]))
        return "250 2.0.0 Ok"


def message(i: int, bad: bool = False) -> tuple[str, bytes]:
    sender = "me@gmail.example" if bad else "someone@school.example"
    return sender, (f"From: {sender}\r\nTo: ouder@example.org\r\nSubject: n{i}\r\n"
                    f"Message-ID: <soak-{i}@school.example>\r\n\r\nbericht {i}\r\n").encode()


def send_one(port: int, i: int, bad: bool) -> int:
    sender, raw = message(i, bad)
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=15) as c:
            c.sendmail(sender, ["ouder@example.org"], raw)
        return 250
    except smtplib.SMTPResponseException as exc:
        return exc.smtp_code
    except smtplib.SMTPRecipientsRefused as exc:
        return list(exc.recipients.values())[0][0]
    except (OSError, smtplib.SMTPException):
        return 0  # connection refused or cut: the client keeps the message and retries


def check_invariant(results: dict[int, int], delivered_ids: list[str], audit: Path) -> None:
    counts = Counter(delivered_ids)
    store = SQLiteStore(audit, "test")
    records = list(store.records())
    delivered_audit = {r.message_id for r in records if r.event == "delivered"}
    rejected_audit = {r.message_id for r in records if r.event == "rejected"}
    for i, code in results.items():
        mid = f"<soak-{i}@school.example>"
        if code == 250:
            assert counts[mid] == 1, (i, counts[mid])
            assert mid in delivered_audit, i
        elif 500 <= code < 600:
            assert mid in rejected_audit, i
            assert counts[mid] == 0
        else:
            assert code == 0 or 400 <= code < 500, (i, code)
    assert store.verify().ok


def test_soak_with_next_hop_and_audit_faults(tmp_path: Path) -> None:
    sink = FaultySink(seed=7)
    sink_port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=sink_port)
    controller.start()
    gw = GatewayThread(write_config(tmp_path, next_hop=f"smtp://127.0.0.1:{sink_port}",
                                    gateway_extra="next_hop_timeout = 0.7",
                                    extra="[notices]\nenabled = false\n"))
    results: dict[int, int] = {}
    try:
        for i in range(160):
            if i == 40:
                controller.stop()          # next hop goes away ...
            if i == 55:
                controller = Controller(sink, hostname="127.0.0.1", port=sink_port)
                controller.start()         # ... and comes back
            if i == 90:                    # the audit store refuses writes for a while
                con = sqlite3.connect(tmp_path / "audit.sqlite3")
                con.execute("CREATE TRIGGER deny BEFORE INSERT ON records BEGIN "
                            "SELECT RAISE(ABORT, 'disk full'); END")
                con.commit()
                con.close()
            if i == 105:
                con = sqlite3.connect(tmp_path / "audit.sqlite3")
                con.execute("DROP TRIGGER deny")
                con.commit()
                con.close()
            results[i] = send_one(gw.port, i, bad=(i % 10 == 3))
    finally:
        gw.stop()
        controller.stop()
    codes = Counter(results.values())
    assert codes[250] > 60 and codes[550] > 5 and sum(v for k, v in codes.items()
                                                        if 400 <= k < 500) > 20
    assert all(results[i] // 100 == 4 for i in range(41, 55) if i % 10 != 3)  # hop down
    assert all(results[i] // 100 == 4 for i in range(91, 105))                # audit down
    check_invariant(results, sink.ids, tmp_path / "audit.sqlite3")


def test_gateway_sigkilled_and_restarted(tmp_path: Path) -> None:
    sink = FaultySink(seed=3)
    sink.rng = random.Random(3)
    sink_port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=sink_port)
    controller.start()
    port = free_port()
    cfg = write_config(tmp_path, listen=f"127.0.0.1:{port}",
                       next_hop=f"smtp://127.0.0.1:{sink_port}",
                       gateway_extra="next_hop_timeout = 0.7",
                       extra="[notices]\nenabled = false\n")

    def start() -> subprocess.Popen[bytes]:
        p = subprocess.Popen([sys.executable, "-m", "milter.cli", "serve", "--config",
                              str(cfg)], stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:
            try:
                with smtplib.SMTP("127.0.0.1", port, timeout=2):
                    return p
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.05)

    proc = start()
    results: dict[int, int] = {}
    stop = threading.Event()

    def killer() -> None:
        time.sleep(1.0)
        proc.send_signal(signal.SIGKILL)
        stop.set()

    threading.Thread(target=killer, daemon=True).start()
    i = 0
    try:
        while not stop.is_set() and i < 400:
            results[i] = send_one(port, i, bad=(i % 10 == 3))
            i += 1
        proc.wait(timeout=10)
        for j in range(i, i + 5):  # while it is down: the client is told nothing good
            results[j] = send_one(port, j, bad=False)
            assert results[j] != 250
        proc = start()             # restarted: it serves again, the store still verifies
        for j in range(i + 5, i + 40):
            results[j] = send_one(port, j, bad=(j % 10 == 3))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
        controller.stop()
    assert Counter(results.values())[250] > 20
    check_invariant(results, sink.ids, tmp_path / "audit.sqlite3")
