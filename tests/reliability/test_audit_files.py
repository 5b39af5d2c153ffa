"""Issue 13 item 4: the SQLite audit files made unwritable under a running gateway (even for
root: ``chattr +i``). SQLite maps the ``-shm`` file into memory; a write to an immutable
mapped file is SIGBUS, which used to kill the process and every session with it. Now the
client hears 451 and the gateway recovers when the files are writable again."""

from __future__ import annotations

import shutil
import smtplib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller

from milter.audit.sqlite import SQLiteStore
from tests.conftest import make_message, write_config
from tests.e2e.conftest import SinkHandler, free_port


def chattr(on: bool, *paths: Path) -> bool:
    done = subprocess.run(["chattr", "+i" if on else "-i", *map(str, paths)],
                          capture_output=True, check=False)
    return done.returncode == 0


@pytest.fixture
def immutable_ok(tmp_path: Path) -> Iterator[None]:
    probe = tmp_path / "probe"
    probe.touch()
    if shutil.which("chattr") is None or not chattr(True, probe):
        pytest.skip("needs chattr and a file system with the immutable attribute (e2fsprogs, "
                    "ext4/xfs, root)")
    chattr(False, probe)
    yield


def send(port: int) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as c:
        c.ehlo("c.school.example")
        c.mail("someone@school.example")
        c.rcpt("ouder@example.org")
        return c.data(make_message())


def test_unwritable_shm_is_451_not_sigbus(tmp_path: Path, immutable_ok: None) -> None:
    sink = SinkHandler()
    sink_port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=sink_port)
    controller.start()
    port = free_port()
    cfg = write_config(tmp_path, listen=f"127.0.0.1:{port}",
                       next_hop=f"smtp://127.0.0.1:{sink_port}",
                       extra="[notices]\nenabled = false\n")
    proc = subprocess.Popen([sys.executable, "-m", "milter.cli", "serve", "--config", str(cfg)],
                            stderr=subprocess.DEVNULL)
    audit = tmp_path / "audit.sqlite3"
    files = [audit, audit.with_name(audit.name + "-wal"), audit.with_name(audit.name + "-shm")]
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                assert send(port)[0] == 250
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.05)
        assert all(f.exists() for f in files)
        try:
            assert chattr(True, *files)
            for _ in range(3):
                code, text = send(port)
                assert code == 451 and b"Audit store unavailable" in text, (code, text)
            assert proc.poll() is None, f"gateway died: exit {proc.returncode}"
        finally:
            chattr(False, *files)
        assert send(port)[0] == 250      # recovered
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        controller.stop()
    assert len(sink.messages) == 2       # exactly the two that got 250
    store = SQLiteStore(audit, "test")
    try:
        assert [r.event for r in store.records()].count("delivered") == 2
    finally:
        store.close()


def test_the_store_process_dying_is_451_and_the_next_message_goes_through(
        tmp_path: Path) -> None:
    """The SQLite connection lives in a child process: its death (here: SIGBUS sent by hand,
    the signal an unwritable -shm raises) costs one 451, not the gateway."""
    import os
    import signal

    from tests.e2e.conftest import GatewayThread

    sink = SinkHandler()
    sink_port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=sink_port)
    controller.start()
    gw = GatewayThread(write_config(tmp_path, next_hop=f"smtp://127.0.0.1:{sink_port}",
                                    extra="[notices]\nenabled = false\n"))
    try:
        assert send(gw.port)[0] == 250
        store = gw.running.gateway.audit.store
        os.kill(store._proc.pid, signal.SIGBUS)
        store._proc.join(timeout=5)
        code, text = send(gw.port)
        assert code == 451 and b"Audit store unavailable" in text, (code, text)
        assert send(gw.port)[0] == 250  # a fresh store process
    finally:
        gw.stop()
        controller.stop()
    assert len(sink.messages) == 2
    store = SQLiteStore(tmp_path / "audit.sqlite3", "test")
    try:
        assert [r.event for r in store.records()].count("delivered") == 2
    finally:
        store.close()


def test_the_store_process_dying_while_an_append_awaits_its_answer_is_451(
        tmp_path: Path) -> None:
    """The writer sends a batch from the event loop and waits for the child's answer there:
    a child that dies meanwhile (SIGBUS, here SIGKILL while it is stopped) fails that batch
    with AuditUnavailable (451 for its clients), the loop goes on, and the next append
    starts a fresh child and is written; a call from another thread while an answer is
    awaited reads that answer first and is served too."""
    import asyncio
    import os
    import signal
    import threading

    from milter.audit.isolated import IsolatedSQLiteStore
    from milter.audit.store import AuditEvent, AuditUnavailable
    from milter.audit.writer import AuditWriter

    store = IsolatedSQLiteStore(tmp_path / "audit.sqlite3", "test")
    writer = AuditWriter(store)

    def event(txid: str) -> AuditEvent:
        return AuditEvent(event="delivered", txid=txid, message_id="", client="127.0.0.1",
                          direction="outbound", sender="someone@school.example",
                          recipients=("o@example.org",), auth_user="", rules=(),
                          action="accept", reply="", evidence={}, subject="")

    async def main() -> None:
        assert (await writer.append(event("first"))).txid == "first"
        pid = store._proc.pid
        os.kill(pid, signal.SIGSTOP)  # it takes the next request but cannot answer
        pending = asyncio.create_task(writer.append(event("lost")))
        await asyncio.sleep(0.2)
        assert not pending.done() and store._async is not None  # sent from the loop
        os.kill(pid, signal.SIGKILL)
        try:
            await asyncio.wait_for(pending, 10)
        except AuditUnavailable as exc:
            assert "died" in str(exc)
        else:
            raise AssertionError("the append of a dead child must fail")
        assert (await writer.append(event("after"))).txid == "after"  # a fresh child
        # an answer awaited on the loop, and a reader on another thread at the same time
        os.kill(store._proc.pid, signal.SIGSTOP)
        racing = asyncio.create_task(writer.append(event("raced")))
        await asyncio.sleep(0.1)
        found: list[int] = []
        reader = threading.Thread(target=lambda: found.append(len(list(store.records()))))
        reader.start()
        await asyncio.sleep(0.1)
        os.kill(store._proc.pid, signal.SIGCONT)
        assert (await asyncio.wait_for(racing, 10)).txid == "raced"
        await asyncio.to_thread(reader.join, 10)
        assert found == [3]  # first, after, raced

    asyncio.run(main())
    writer.close()
    check = SQLiteStore(tmp_path / "audit.sqlite3", "test")
    try:
        assert [r.txid for r in check.records()] == ["first", "after", "raced"]
        assert check.verify().ok
    finally:
        check.close()
