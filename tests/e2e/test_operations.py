"""Running it in production: the real `skot-milter serve` process, signals, logs, metrics,
PROXY protocol."""

from __future__ import annotations

import json
import os
import signal
import smtplib
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from milter.audit.sqlite import SQLiteStore
from tests.conftest import POLICY, make_message, write_config
from tests.e2e.conftest import free_port

VIOLATION = make_message(frm="me@gmail.example")


class Served:
    def __init__(self, cfg: Path) -> None:
        self.cfg = cfg
        self.log = cfg.parent / "serve.log"
        self.proc = subprocess.Popen([sys.executable, "-m", "milter.cli", "serve", "--config",
                                      str(cfg)], stderr=self.log.open("w"),
                                     stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while "ready" not in self.log.read_text():
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.05)

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait_log_count(self, needle: str, count: int, timeout: float = 20) -> None:
        end = time.monotonic() + timeout
        while self.log.read_text().count(needle) < count:
            assert time.monotonic() < end, self.log.read_text()
            time.sleep(0.05)

    def wait_log(self, needle: str, timeout: float = 10) -> None:
        end = time.monotonic() + timeout
        while needle not in self.log.read_text():
            assert time.monotonic() < end, self.log.read_text()
            time.sleep(0.05)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Any]:
    procs: list[Served] = []

    def start(**kw: Any) -> tuple[Served, int]:
        port = free_port()
        cfg = write_config(tmp_path, listen=f"127.0.0.1:{port}", **kw)
        s = Served(cfg)
        procs.append(s)
        return s, port

    yield start
    for p in procs:
        if p.proc.poll() is None:
            p.proc.kill()
            p.proc.wait()


def send(port: int, raw: bytes, sender: str) -> int:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as c:
        try:
            c.sendmail(sender, ["ouder@example.org"], raw)
        except smtplib.SMTPDataError as exc:
            return exc.smtp_code
    return 250


def test_sighup_reloads_policy_and_refuses_broken_config(served: Any, tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY.read_text())
    proc, port = served(policy=policy)
    assert send(port, VIOLATION, "me@gmail.example") == 550
    # roll B1 back to monitor mode and reload
    policy.write_text(POLICY.read_text().replace('action = "reject"\n',
                                                 'action = "reject"\nmode = "monitor"\n', 1))
    proc.signal(signal.SIGHUP)
    proc.wait_log("reloaded")
    assert send(port, VIOLATION, "me@gmail.example") == 250
    # a broken config is refused; the running one keeps working
    proc.cfg.write_text(proc.cfg.read_text() + "\n[gateway]\nbogus = 1\n")
    proc.signal(signal.SIGHUP)
    proc.wait_log("reload refused")
    assert send(port, VIOLATION, "me@gmail.example") == 250
    assert proc.proc.poll() is None


def test_sigterm_stops_cleanly(served: Any) -> None:
    proc, port = served()
    assert send(port, make_message(), "someone@school.example") == 250
    proc.signal(signal.SIGTERM)
    assert proc.proc.wait(timeout=30) == 0
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass


def test_json_logs_carry_transaction_id(served: Any, tmp_path: Path) -> None:
    proc, port = served(extra='[logging]\nformat = "json"\n')
    assert send(port, VIOLATION, "me@gmail.example") == 550
    proc.wait_log('"txid"')
    lines = [json.loads(line) for line in proc.log.read_text().splitlines()
             if line.startswith("{")]
    decided = [x for x in lines if "action=reject" in x["msg"]]
    ref = SQLiteStore(tmp_path / "audit.sqlite3", "test").records().__next__().txid
    assert decided and decided[0]["txid"] == ref


def test_metrics_endpoint(served: Any) -> None:
    mport = free_port()
    proc, port = served(extra=f'[metrics]\nlisten = "127.0.0.1:{mport}"\n')
    send(port, VIOLATION, "me@gmail.example")
    send(port, make_message(), "someone@school.example")
    body = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=5).read().decode()
    assert 'skot_transactions_total{action="reject",direction="outbound",front="smtp"} 1.0' \
        in body
    assert 'skot_rule_hits_total{mode="enforce",rule="B1.sender-domain"} 1.0' in body
    assert "skot_audit_write_seconds_count" in body and "skot_transaction_seconds_bucket" in body


def test_proxy_protocol_from_trusted_balancer(served: Any, tmp_path: Path) -> None:
    proc, port = served(gateway_extra='proxy_protocol_from = ["127.0.0.1/32"]',
                        internal='["10.0.0.0/8"]')
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"PROXY TCP4 198.51.100.77 127.0.0.1 40000 25\r\n")
    c = smtplib.SMTP()
    c.sock = sock
    c.file = None
    assert c.getreply()[0] == 220
    c.ehlo("mx.example")
    code = 0
    try:
        c.sendmail("parent@example.org", ["someone@school.example"],
                   make_message(frm="parent@example.org", to="someone@school.example"))
        code = 250
    except smtplib.SMTPException as exc:
        code = getattr(exc, "smtp_code", 0)
    c.close()
    assert code == 250
    rec = [r for r in SQLiteStore(tmp_path / "audit.sqlite3", "test").records()
           if r.event == "delivered"][0]
    assert rec.client == "198.51.100.77" and rec.direction == "inbound"


def test_proxy_protocol_required_when_configured(served: Any) -> None:
    proc, port = served(gateway_extra='proxy_protocol_from = ["10.9.9.9/32"]')
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"PROXY TCP4 198.51.100.77 127.0.0.1 40000 25\r\n")
    sock.settimeout(10)
    assert sock.recv(100) == b""  # an untrusted balancer is cut off before the greeting
    sock.close()




def test_worker_processes_share_the_port_and_one_chain(served: Any, tmp_path: Path,
                                                       capsys: Any) -> None:
    from milter.cli import main

    proc, port = served(gateway_extra="workers = 2")
    proc.wait_log_count("ready", 2)  # the port opens with the first; a SIGHUP before the
    # second is up would stop it before it says so (seen under load)
    codes = [send(port, make_message(), "someone@school.example") for _ in range(12)]
    assert codes == [250] * 12
    proc.signal(signal.SIGHUP)
    proc.wait_log("reloaded")
    proc.signal(signal.SIGTERM)
    assert proc.proc.wait(timeout=30) == 0
    assert proc.log.read_text().count("ready") == 2
    assert main(["audit", "verify", "--config", str(proc.cfg)]) == 0
    assert "intact: 24 records" in capsys.readouterr().out


def test_metrics_add_up_over_worker_processes(served: Any, tmp_path: Path) -> None:
    """With several workers the exporter (worker 1) reports what all of them did."""
    mport = free_port()
    proc, port = served(gateway_extra="workers = 2",
                        extra=f'[metrics]\nlisten = "127.0.0.1:{mport}"\n')
    proc.wait_log_count("ready", 2)  # worker 1 (the exporter) may be the later one
    assert [send(port, make_message(), "someone@school.example") for _ in range(16)] == \
        [250] * 16
    assert send(port, VIOLATION, "me@gmail.example") == 550
    served_by = {r.txid for r in SQLiteStore(tmp_path / "audit.sqlite3", "test").records()}
    assert len(served_by) == 17
    body = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=5).read().decode()
    assert 'skot_transactions_total{action="accept",direction="outbound",front="smtp"} 16.0' \
        in body
    assert 'skot_rule_hits_total{mode="enforce",rule="B1.sender-domain"} 1.0' in body
    proc.signal(signal.SIGTERM)
    assert proc.proc.wait(timeout=30) == 0


def test_sigterm_while_a_worker_is_replaced_leaves_no_worker_behind(served: Any) -> None:
    """A worker dies; during the pause before its replacement the supervisor gets SIGTERM:
    no replacement starts (it would never hear the SIGTERM), and the gateway exits."""
    proc, port = served(gateway_extra="workers = 2")
    proc.wait_log_count("ready", 2)  # both workers up before one is killed
    pid = proc.proc.pid
    workers = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    assert len(workers) == 2, proc.log.read_text()
    os.kill(workers[1], signal.SIGKILL)
    proc.wait_log("exited with")           # the supervisor is pausing before a new one
    proc.signal(signal.SIGTERM)
    assert proc.proc.wait(timeout=30) == 0
    assert proc.log.read_text().count("ready") == 2  # no third worker was started


def test_workers_do_not_outlive_a_killed_supervisor(served: Any) -> None:
    """The supervisor killed outright (SIGKILL, an OOM kill): its workers stop too, instead
    of serving the port with nobody left to stop or replace them."""
    proc, port = served(gateway_extra="workers = 2")
    proc.wait_log_count("ready", 2)
    pid = proc.proc.pid
    workers = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    assert len(workers) == 2
    proc.proc.kill()
    proc.proc.wait()
    def alive(worker: int) -> bool:
        try:
            return "zombie" not in Path(f"/proc/{worker}/status").read_text().lower()
        except FileNotFoundError:
            return False

    deadline = time.monotonic() + 20
    while any(alive(w) for w in workers):
        assert time.monotonic() < deadline, "a worker outlived its supervisor"
        time.sleep(0.1)
