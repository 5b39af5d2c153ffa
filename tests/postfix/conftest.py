"""A private Postfix instance on loopback high ports, in its own temporary directories.

Never the system's instance, never port 25: its own config_directory, queue_directory and
data_directory, started with ``postfix -c DIR`` and stopped after the test. .ci/run installs
Postfix from Debian's packages when it is missing.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.e2e.conftest import free_port, sink  # noqa: F401  (fixture)

POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"
DEPLOY = ROOT / "deploy" / "postfix"


def _no_chroot(master_cf: str) -> str:
    """Debian's master.cf chroots services; a private instance in /tmp cannot."""
    out = []
    for line in master_cf.splitlines():
        parts = line.split()
        if len(parts) >= 8 and not line.startswith((" ", "\t", "#")) and parts[4] == "y":
            parts[4] = "n"
            line = "  ".join(parts)
        out.append(line)
    return "\n".join(out) + "\n"


class PrivatePostfix:
    def __init__(self, main_extra: str, listeners: str, relay_port: int) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="pf", dir="/tmp"))
        self.dir.chmod(0o755)  # the postfix user must reach its data directory
        self.conf, self.queue, self.data = (self.dir / n for n in ("c", "q", "d"))
        for d in (self.conf, self.queue, self.data):
            d.mkdir()
        shutil.chown(self.data, "postfix")
        self.log = self.dir / "maillog"
        (self.conf / "main.cf").write_text(f"""
compatibility_level = 3.6
queue_directory = {self.queue}
data_directory = {self.data}
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = mx.school.example
mydestination =
mynetworks = 127.0.0.0/8
relayhost = [127.0.0.1]:{relay_port}
maillog_file = {self.log}
maillog_file_prefixes = {self.dir}
smtputf8_enable = no
smtpd_relay_restrictions = permit_mynetworks, reject
biff = no
delay_warning_time = 0
notify_classes =
{main_extra}
""")
        base = Path("/etc/postfix/master.cf").read_text()
        base = re.sub(r"(?m)^smtp\s+inet\s.*$", "# (port 25 not used by the tests)", base)
        for line in listeners.splitlines():  # loopback high ports only, never 25/587/465
            parts = line.split()
            if len(parts) > 1 and parts[1] == "inet" and not line[0].isspace():
                assert parts[0].startswith("127.0.0.1:"), f"a test listener not on loopback: {line}"
        (self.conf / "master.cf").write_text(_no_chroot(base) + "\n" + listeners)

    def postfix(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([POSTFIX, "-c", str(self.conf), *args], capture_output=True,
                              text=True, timeout=60)

    def start(self, port: int) -> None:
        result = self.postfix("start")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"postfix did not start: {result.stderr}\n{self.maillog()}")

    def maillog(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def held(self) -> list[Path]:
        hold = self.queue / "hold"
        return [p for p in hold.rglob("*") if p.is_file()] if hold.exists() else []

    def stop(self) -> None:
        self.postfix("stop")
        time.sleep(0.2)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def postfix_available() -> None:
    if not os.path.exists(POSTFIX) or not Path("/etc/postfix/master.cf").exists():
        pytest.fail("Postfix is not installed (.ci/run installs it: apt-get install postfix)")


@pytest.fixture
def private_postfix(postfix_available: None) -> Iterator[list[PrivatePostfix]]:
    started: list[PrivatePostfix] = []
    yield started
    for p in started:
        p.stop()
