"""The SMTP front's edges in time: stopping with transactions in flight, clients that vanish
after the final dot, a next hop that closes its session (421) under us."""

from __future__ import annotations

import signal
import smtplib
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tests.conftest import write_config
from tests.e2e.conftest import GatewayThread, free_port
from tests.e2e.test_smtp_proxy import CLEAN, events


def send_in_background(port: int, result: dict[str, Any]) -> threading.Thread:
    def client() -> None:
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=20) as c:
                c.sendmail("someone@school.example", ["ouder@example.org"], CLEAN)
            result["code"] = 250
        except smtplib.SMTPResponseException as exc:
            result["code"] = exc.smtp_code
        except (smtplib.SMTPException, OSError) as exc:
            result["error"] = repr(exc)

    thread = threading.Thread(target=client)
    thread.start()
    return thread


def test_sigterm_lets_a_transaction_in_flight_finish(sink: Any, tmp_path: Path) -> None:
    sink[0].data_delay = 1.5
    port = free_port()
    cfg = write_config(tmp_path, listen=f"127.0.0.1:{port}",
                       next_hop=f"smtp://127.0.0.1:{sink[1]}")
    log = tmp_path / "serve.log"
    with log.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "milter.cli", "serve", "--config",
                                 str(cfg)], stderr=err, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while "ready" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        idle = socket.create_connection(("127.0.0.1", port), timeout=10)  # never sends
        idle.recv(512)
        result: dict[str, Any] = {}
        thread = send_in_background(port, result)
        while not sink[0].sessions:  # the transaction has reached the next hop
            time.sleep(0.02)
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()
        thread.join(timeout=10)
        # the client heard the next hop's acceptance; the idle one was told we are going
        assert result == {"code": 250}
        assert idle.recv(512).startswith(b"421 4.3.2")
        idle.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert len(sink[0].messages) == 1
    assert [e[0] for e in events(tmp_path)] == ["intent", "delivered"]


def test_stop_after_grace_still_records_a_send_past_the_final_dot(gateway: GatewayThread,
                                                                  sink: Any,
                                                                  tmp_path: Path) -> None:
    sink[0].data_delay = 1.5
    result: dict[str, Any] = {}
    thread = send_in_background(gateway.port, result)
    while not sink[0].sessions:
        time.sleep(0.02)
    time.sleep(0.3)  # the final dot is downstream, the next hop is thinking
    gateway.call(gateway.running.stop(grace=0.2))
    thread.join(timeout=10)
    # Grace ran out: the client is told to come back (a duplicate is the price, RFC 5321
    # 6.1), but the delivery that did happen is on record, never an intent alone.
    assert result.get("code") == 421 or "error" in result
    assert len(sink[0].messages) == 1
    assert [e[0] for e in events(tmp_path)] == ["intent", "delivered"]


def test_client_gone_after_final_dot_delivery_recorded_once(gateway: GatewayThread,
                                                            sink: Any, tmp_path: Path) -> None:
    sink[0].data_delay = 0.8
    s = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
    f = s.makefile("rb")
    f.readline()
    for cmd in (b"EHLO client.school.example", b"MAIL FROM:<someone@school.example>",
                b"RCPT TO:<ouder@example.org>", b"DATA"):
        s.sendall(cmd + b"\r\n")
        while f.readline()[3:4] != b" ":
            pass
    s.sendall(CLEAN + b".\r\n")
    time.sleep(0.2)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST
    s.close()
    deadline = time.monotonic() + 5
    while len(events(tmp_path)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(sink[0].messages) == 1
    assert [e[0] for e in events(tmp_path)] == ["intent", "delivered"]


def test_next_hop_421_at_rcpt_is_451_and_the_client_starts_again(gateway: GatewayThread,
                                                                 sink: Any,
                                                                 tmp_path: Path) -> None:
    sink[0].rcpt_replies["busy@example.org"] = "421 4.3.2 Sink shutting down"
    with gateway.client() as c:
        c.ehlo()
        assert c.mail("someone@school.example")[0] == 250
        code, msg = c.rcpt("busy@example.org")
        assert (code, msg) == (451, b"4.3.2 Sink shutting down")
        # the transaction went with the next-hop session: a new MAIL, no RSET needed
        assert c.rcpt("ouder@example.org")[0] == 503
        c.sendmail("someone@school.example", ["ouder@example.org"], CLEAN)
    assert [m.rcpt_tos for m in sink[0].messages] == [["ouder@example.org"]]
    ev = events(tmp_path)  # the failed attempt is on record, then the delivery
    assert [e[0] for e in ev] == ["tempfailed", "intent", "delivered"]


def test_next_hop_421_at_end_of_data_is_451(gateway: GatewayThread, sink: Any,
                                            tmp_path: Path) -> None:
    sink[0].data_reply = "421 4.3.2 Sink shutting down"
    with gateway.client() as c:
        c.ehlo()
        c.mail("someone@school.example")
        c.rcpt("ouder@example.org")
        code, msg = c.data(CLEAN)
        assert (code, msg) == (451, b"4.3.2 Sink shutting down")
        assert c.noop()[0] == 250  # our session with the client goes on
    assert [e[0] for e in events(tmp_path)] == ["intent", "tempfailed"]
