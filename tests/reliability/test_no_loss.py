"""No mail lost under faults: soaks of a couple of thousand messages from concurrent clients
while the next hop fails, stalls, goes away and comes back, while the audit store refuses
writes or loses its connections (SQLite and PostgreSQL), and while the gateway is SIGKILLed
and restarted. Afterwards, for every message a client sent: either it got 250 and the sink has
it exactly once with its audit record, or it got 4xx/5xx (and for 5xx the audit has the
verdict), or its connection failed. Nothing else."""

from __future__ import annotations

import asyncio
import random
import shutil
import signal
import smtplib
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import psycopg
import pytest
from aiosmtpd.controller import Controller

from milter.audit.postgres import PostgresStore
from milter.audit.sqlite import SQLiteStore
from milter.audit.store import OUTCOMES, AuditStore
from tests.conftest import write_config
from tests.e2e.conftest import GatewayThread, free_port
from tests.postgres.conftest import admin_url

CLIENTS = 8  # concurrent client threads in every soak
NO_NOTICES = "[notices]\nenabled = false\n"
HOP_TIMEOUT = "next_hop_timeout = 0.7"


class FaultySink:
    """Accepts, refuses with 451, or stalls past the gateway's next-hop timeout, at random."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.ids: list[str] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        roll = self.rng.random()
        if roll < 0.10:
            return "451 4.3.0 sink busy"
        if roll < 0.12:
            await asyncio.sleep(1.2)  # longer than next_hop_timeout: it keeps the message
        msg = BytesParser().parsebytes(envelope.original_content, headersonly=True)
        with self.lock:
            self.ids.append(str(msg["Message-ID"]))
        return "250 2.0.0 Ok"


class Hop:
    """The next hop on a fixed port that a test can stop and start again."""

    def __init__(self, sink: FaultySink) -> None:
        self.sink, self.port = sink, free_port()
        self.controller: Controller | None = None
        self.start()

    def start(self) -> None:
        self.controller = Controller(self.sink, hostname="127.0.0.1", port=self.port)
        self.controller.start()

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None


def message(i: int, bad: bool = False) -> tuple[str, bytes]:
    sender = "me@gmail.example" if bad else "someone@school.example"
    return sender, (f"From: {sender}\r\nTo: ouder@example.org\r\nSubject: n{i}\r\n"
                    f"Message-ID: <soak-{i}@school.example>\r\n\r\nbericht {i}\r\n").encode()


def is_bad(i: int) -> bool:
    return i % 10 == 3  # every tenth message breaks the policy (B1: private sender domain)


def send_one(port: int, i: int, bad: bool) -> tuple[int, str]:
    """The client's view: the reply code it got for the message (0: connection refused or
    cut, so the client keeps the message and retries) and the reply text."""
    sender, raw = message(i, bad)
    try:
        c = smtplib.SMTP("127.0.0.1", port, timeout=15)
    except OSError as exc:
        return 0, str(exc)
    try:
        c.sendmail(sender, ["ouder@example.org"], raw)
        answer = (250, "")  # sendmail returns only after 250 to the final dot
    except smtplib.SMTPResponseException as exc:
        answer = (exc.smtp_code, exc.smtp_error.decode(errors="replace"))
    except smtplib.SMTPRecipientsRefused as exc:
        code, text = list(exc.recipients.values())[0]
        answer = (code, text.decode(errors="replace"))
    except (OSError, smtplib.SMTPException) as exc:
        answer = (0, str(exc))
    try:
        c.quit()  # a 250 already heard stays heard, whatever happens to QUIT
    except (OSError, smtplib.SMTPException):
        c.close()
    return answer


@dataclass(frozen=True)
class Answer:
    code: int
    text: str
    phases: tuple[int, int]  # the fault phase when the client connected and when it finished

    @property
    def reason(self) -> str:
        """What the answer says, in a word, for the tallies."""
        for needle, word in (("Audit store", "audit"), ("sink busy", "sink-451"),
                             ("Next hop failed", "hop-failed"),
                             ("Next hop unavailable", "hop-unavailable")):
            if needle in self.text:
                return word
        return "ok" if self.code == 250 else str(self.code)


class Soak:
    """``total`` messages from CLIENTS threads, each claiming the next number from a shared
    counter. A fault driver (the test body) waits on that counter to open and close fault
    windows; every answer remembers the window(s) its transaction ran in, so a test can ask
    what the clients heard while a fault was fully in force."""

    def __init__(self, port: int, total: int) -> None:
        self.port, self.total = port, total
        self.cond = threading.Condition()
        self.claimed = 0
        self.phases = ["clean"]
        self.answers: dict[int, Answer] = {}
        self.abort = False

    def enter(self, name: str) -> None:
        with self.cond:
            self.phases.append(name)

    def stop_after(self, n: int) -> None:
        """End the soak ``n`` messages from now (for a soak whose length the faults decide)."""
        with self.cond:
            self.total = self.claimed + n
            self.cond.notify_all()

    def wait_claimed(self, n: int) -> bool:
        """Block until message ``n`` is claimed; False once the soak ran out of messages."""
        with self.cond:
            self.cond.wait_for(lambda: self.claimed >= n or self.claimed >= self.total
                               or self.abort, timeout=120)
            return self.claimed >= n and not self.abort

    def _client(self) -> None:
        while True:
            with self.cond:
                if self.claimed >= self.total or self.abort:
                    return
                i, self.claimed = self.claimed, self.claimed + 1
                before = len(self.phases) - 1
                self.cond.notify_all()
            code, text = send_one(self.port, i, is_bad(i))
            with self.cond:
                self.answers[i] = Answer(code, text, (before, len(self.phases) - 1))
            if code == 0:
                time.sleep(0.2)  # like an MTA, it keeps the message and waits before the next

    def run(self, driver: Callable[[Soak], None]) -> None:
        clients = [threading.Thread(target=self._client, daemon=True) for _ in range(CLIENTS)]
        for t in clients:
            t.start()
        try:
            driver(self)
        except BaseException:
            with self.cond:
                self.abort = True
                self.cond.notify_all()
            raise
        finally:
            for t in clients:
                t.join(timeout=120)
        assert len(self.answers) == self.total, "a client thread hung"

    def inside(self, name: str) -> list[Answer]:
        """Answers to transactions that began and ended while the fault ``name`` held."""
        return [a for a in self.answers.values()
                if a.phases[0] == a.phases[1] and self.phases[a.phases[0]] == name]

    def tally(self) -> dict[str, Counter[str]]:
        out: dict[str, Counter[str]] = {}
        for a in self.answers.values():
            name = self.phases[a.phases[0]] if a.phases[0] == a.phases[1] else "straddling"
            out.setdefault(name, Counter())[f"{a.code} {a.reason}"] += 1
        return out

    def codes(self) -> dict[int, int]:
        return {i: a.code for i, a in self.answers.items()}


def check_invariant(results: dict[int, int], delivered_ids: list[str],
                    store: AuditStore) -> None:
    """The promise to every client, checked against the sink and the audit store."""
    counts = Counter(delivered_ids)
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
    # One outcome per transaction: an outcome written late is never written twice.
    outcomes = Counter(r.txid for r in records if r.event in OUTCOMES)
    assert not [t for t, n in outcomes.items() if n > 1]
    result = store.verify()
    assert result.ok, result.problems
    late = sum("deferred_since" in r.evidence for r in records)
    print(f"audit: {len(records)} records, {late} outcomes written late, "
          f"{len(result.warnings)} intents without outcome")


def soak_through(gw: GatewayThread, faults: Callable[[Soak], None],
                 messages: int = 1000) -> Soak:
    """Send ``messages`` through the gateway while ``faults`` runs; stop the gateway."""
    soak = Soak(gw.port, messages)
    try:
        soak.run(faults)
    finally:
        gw.stop()
    return soak


def assert_faults_bit(soak: Soak, refused: tuple[str, ...]) -> None:
    """Each fault window made itself heard, and none let a message through that should not."""
    tally = soak.tally()
    print(f"\n{len(soak.answers)} messages:", {k: dict(v) for k, v in tally.items()})
    overall = Counter(a.reason for a in soak.answers.values())
    assert overall["ok"] > soak.total // 3 and overall["550"] > soak.total // 50
    assert overall["sink-451"] > 0 and overall["hop-failed"] > 0  # the sink's 451s and stalls
    hop_down = soak.inside("hop-down")  # the next hop is opened at MAIL: even a 550 waits
    assert len(hop_down) >= CLIENTS and all(a.reason == "hop-unavailable" for a in hop_down)
    for name in refused:  # the audit store takes no write: nothing is accepted or rejected
        answers = soak.inside(name)
        assert len(answers) >= CLIENTS, (name, len(answers))
        assert all(a.code // 100 == 4 and a.reason == "audit" for a in answers), name


@pytest.fixture
def hop() -> Iterator[Hop]:
    h = Hop(FaultySink(seed=7))
    yield h
    h.stop()


def chattr(on: bool, *paths: Path) -> bool:
    """Set or clear the immutable attribute; False where the file system has none."""
    done = subprocess.run(["chattr", "+i" if on else "-i", *map(str, paths)],
                          capture_output=True, check=False)
    return done.returncode == 0


def test_soak_sqlite_with_next_hop_and_audit_faults(tmp_path: Path, hop: Hop) -> None:
    gw = GatewayThread(write_config(tmp_path, next_hop=f"smtp://127.0.0.1:{hop.port}",
                                    gateway_extra=HOP_TIMEOUT, extra=NO_NOTICES))
    audit = tmp_path / "audit.sqlite3"
    # -shm too: it is mapped into memory, and an immutable one used to be SIGBUS (issue 13)
    files = (audit, audit.with_name(audit.name + "-wal"), audit.with_name(audit.name + "-shm"))
    probe = tmp_path / "probe"
    probe.touch()
    immutable = shutil.which("chattr") is not None and chattr(True, probe)
    chattr(False, probe)

    def deny(on: bool) -> None:
        # We run as root, and root ignores mode bits: a read-only file (or directory) does
        # not stop its writes. A trigger that fails every INSERT stands in for the disk
        # refusing writes: the gateway's commit fails the same way, with an sqlite3 error
        # inside its write transaction, on every file system.
        con = sqlite3.connect(audit, timeout=30)
        con.execute("CREATE TRIGGER deny BEFORE INSERT ON records BEGIN "
                    "SELECT RAISE(ABORT, 'disk full'); END" if on else "DROP TRIGGER deny")
        con.commit()
        con.close()

    def faults(soak: Soak) -> None:
        soak.wait_claimed(200)
        hop.stop()                  # the next hop goes away ...
        soak.enter("hop-down")
        soak.wait_claimed(300)
        hop.start()                 # ... and comes back
        soak.enter("clean")
        soak.wait_claimed(450)
        deny(True)                  # the audit store refuses writes for a while
        soak.enter("audit-refused")
        soak.wait_claimed(550)
        deny(False)
        soak.enter("clean")
        soak.wait_claimed(700)
        if immutable:               # where the file system can: a real write error (EPERM)
            try:                    # even for root, on the database file, its WAL and -shm
                assert chattr(True, *files)
                soak.enter("disk-refused")
                soak.wait_claimed(800)
            finally:
                chattr(False, *files)
            soak.enter("clean")

    soak = soak_through(gw, faults)
    assert_faults_bit(soak, refused=("audit-refused", "disk-refused") if immutable
                      else ("audit-refused",))
    store = SQLiteStore(audit, "test")
    check_invariant(soak.codes(), hop.sink.ids, store)
    store.close()


def audit_to(cfg: Path, url: str) -> Path:
    """The config ``cfg`` with its audit store at ``url``."""
    cfg.write_text(cfg.read_text().replace('url = "sqlite:///audit.sqlite3"', f'url = "{url}"'))
    return cfg


def admin(sql: str) -> int:
    """Run ``sql`` as the PostgreSQL superuser; the number of rows it returned."""
    with psycopg.connect(admin_url(), autocommit=True, connect_timeout=5) as conn:
        cur = conn.execute(sql)
        return len(cur.fetchall()) if cur.description else 0


def test_soak_postgres_with_next_hop_and_audit_faults(tmp_path: Path, hop: Hop,
                                                      pg_url: str) -> None:
    db = pg_url.rsplit("/", 1)[1]
    gw = GatewayThread(audit_to(write_config(tmp_path, next_hop=f"smtp://127.0.0.1:{hop.port}",
                                             gateway_extra=HOP_TIMEOUT, extra=NO_NOTICES),
                                pg_url))
    # Only our own database's sessions: the server is shared with other tests and sessions.
    # The victims are chosen in a materialized CTE: with pg_terminate_backend() in the WHERE
    # clause of pg_stat_activity, the planner runs it on every backend of the server before
    # the join that filters on datname.
    kill = (f"WITH victims AS MATERIALIZED (SELECT pid FROM pg_stat_activity "
            f"WHERE datname = '{db}' AND pid <> pg_backend_pid()) "
            f"SELECT pid FROM victims WHERE pg_terminate_backend(pid)")
    killed = 0

    def faults(soak: Soak) -> None:
        nonlocal killed
        soak.wait_claimed(150)
        hop.stop()
        soak.enter("hop-down")
        soak.wait_claimed(250)
        hop.start()
        soak.enter("clean")
        soak.wait_claimed(400)
        soak.enter("connections-killed")   # the store's sessions die, again and again
        while soak.claimed < 550 and not soak.abort:
            killed += admin(kill)
            time.sleep(0.02)
        soak.enter("clean")
        soak.wait_claimed(650)
        # Writes refused: new sessions are read-only, and the old ones are ended so that the
        # gateway's pool must open new ones (a failover to a read-only standby looks so).
        admin(f'ALTER DATABASE "{db}" SET default_transaction_read_only = on')
        killed += admin(kill)
        soak.enter("audit-refused")
        soak.wait_claimed(750)
        admin(f'ALTER DATABASE "{db}" RESET default_transaction_read_only')
        killed += admin(kill)    # the read-only sessions go; the next ones may write
        soak.enter("recovering")
        soak.wait_claimed(750 + CLIENTS)
        soak.enter("clean")

    soak = soak_through(gw, faults)
    assert killed > 0
    assert_faults_bit(soak, refused=("audit-refused",))
    assert sum(a.reason == "audit" for a in soak.inside("connections-killed")) > 0
    store = PostgresStore(pg_url, "test")
    check_invariant(soak.codes(), hop.sink.ids, store)
    store.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_gateway_sigkilled_and_restarted(tmp_path: Path, hop: Hop, backend: str,
                                         request: pytest.FixtureRequest) -> None:
    port = free_port()
    cfg = write_config(tmp_path, listen=f"127.0.0.1:{port}",
                       next_hop=f"smtp://127.0.0.1:{hop.port}", gateway_extra=HOP_TIMEOUT,
                       extra=NO_NOTICES)
    pg_url = request.getfixturevalue("pg_url") if backend == "postgres" else ""
    if pg_url:
        audit_to(cfg, pg_url)

    def start() -> subprocess.Popen[bytes]:
        p = subprocess.Popen([sys.executable, "-m", "milter.cli", "serve", "--config",
                              str(cfg)], stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:
            try:
                with smtplib.SMTP("127.0.0.1", port, timeout=2):
                    return p
            except OSError:
                if p.poll() is not None or time.monotonic() > deadline:
                    p.kill()
                    p.wait()
                    pytest.fail("the gateway did not come up")
                time.sleep(0.05)

    gateways = [start()]

    def faults(soak: Soak) -> None:
        for _ in range(3):
            soak.wait_claimed(soak.claimed + 100)
            soak.enter("killed")                      # mid-transaction, mid-commit
            gateways[-1].send_signal(signal.SIGKILL)
            gateways[-1].wait(timeout=10)
            soak.enter("gateway-down")
            soak.wait_claimed(soak.claimed + 2 * CLIENTS)
            # The new process may answer before start() sees it up: from here on a client
            # can be served, so "gateway-down" must already be over (it used to end only
            # after start() returned, and a 250 got counted as heard while down).
            soak.enter("restarting")
            gateways.append(start())                  # restarted on the same store
            soak.enter("clean")
        soak.stop_after(120)

    # As long as the faults take: while the gateway restarts, clients keep trying.
    soak = Soak(port, 100_000)
    try:
        soak.run(faults)
    finally:
        gateways[-1].send_signal(signal.SIGTERM)
        status = gateways[-1].wait(timeout=20)
    assert status == 0  # after all that, it still stops cleanly
    tally = soak.tally()
    print(f"\n{len(soak.answers)} messages:", {k: dict(v) for k, v in tally.items()})
    down = soak.inside("gateway-down")  # the client is told nothing good while it is gone
    assert len(down) >= 3 * CLIENTS and all(a.code == 0 for a in down)
    last = [a for a in soak.answers.values() if a.phases[0] == len(soak.phases) - 1]
    assert sum(a.code == 250 for a in last) > 50  # the last restart serves again
    store: AuditStore = PostgresStore(pg_url, "test") if pg_url \
        else SQLiteStore(tmp_path / "audit.sqlite3", "test")
    check_invariant(soak.codes(), hop.sink.ids, store)
    store.close()
