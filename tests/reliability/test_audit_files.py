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
