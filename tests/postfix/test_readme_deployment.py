"""README.md's "Deploying at the relay", step by step, as an admin types it: `skot-milter init`,
the site's edits, `config check`, `skot-milter serve` (the process, its workers), the Postfix
recipes (ports 25, 587 and 465 as loopback high ports), mail flowing in monitor mode, and
`audit list` showing what would have been refused. The system's own Postfix, systemd and
/etc are never touched: everything lives in temporary folders."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import smtplib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, make_message
from tests.e2e.conftest import SinkHandler, free_port
from tests.postfix.conftest import DEPLOY, PrivatePostfix
from tests.postfix.submission import DovecotAuth, main_cf, ports, self_signed
from tests.postfix.test_postfix import wait
from tests.postfix.test_submission import USERS, client

SKOT = [sys.executable, "-m", "milter.cli"]


def skot(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SKOT, *args], capture_output=True, text=True, timeout=120,
                          cwd=ROOT, env=env)


@pytest.fixture
def sasl() -> Iterator[DovecotAuth]:
    auth = DovecotAuth(USERS)
    yield auth
    auth.stop()


def test_readme_names_the_steps_this_test_follows() -> None:
    readme = (ROOT / "README.md").read_text()
    deploy = readme[readme.index("## Deploying at the relay"):]
    deploy = deploy[:deploy.index("\n## ", 5)]
    for step in ("skot-milter init /etc/skot-milter --domain", "skot-milter config check",
                 "main.cf.proxy", "master.cf.proxy", "main.cf.milter", "master.cf.milter",
                 "587", "465", 'listen = "127.0.0.1:8894"', "skot-milter audit list",
                 'default_mode = "enforce"', "/etc/skot-milter/policy.toml"):
        assert step in deploy, step


@pytest.mark.parametrize("mode", ["proxy", "milter"])
def test_from_init_to_mail_flowing_in_monitor_mode(mode: str, tmp_path: Path,
                                                    sink: tuple[SinkHandler, int],
                                                    sasl: DovecotAuth,
                                                    private_postfix: list[PrivatePostfix]
                                                    ) -> None:
    handler, sink_port = sink
    site, state = tmp_path / "etc", tmp_path / "state"
    # 2. the site: init, then the admin's edits
    made = skot("init", str(site), "--domain", "school.example", "--domain",
                "leerling.school.example", "--state-dir", str(state))
    assert made.returncode == 0, made.stderr
    shutil.copy(ROOT / "deploy" / "example" / "staff.csv", site / "staff.csv")
    cfg = site / "skot-milter.toml"
    gw_port, reinject, milter_port = free_port(), free_port(), free_port()
    text = cfg.read_text()
    edits = {  # this relay's ports instead of the recipe's defaults; no DNS in a test
        'listen = "127.0.0.1:10025"': f'listen = "127.0.0.1:{gw_port}"',
        'next_hop = "smtp://127.0.0.1:10026"': f'next_hop = "smtp://127.0.0.1:{reinject}"',
        '"127.0.0.1:8894"; "" = off.\nlisten = ""':
            f'"127.0.0.1:8894"; "" = off.\nlisten = "127.0.0.1:{milter_port}"',
        'listen = "127.0.0.1:9125"': 'listen = ""',
        "authenticate = true": "authenticate = false",
    }
    if mode == "milter":
        edits[f'listen = "127.0.0.1:{gw_port}"'] = 'listen = ""'
    for old, new in edits.items():
        assert old in text, old
        text = text.replace(old, new)
    cfg.write_text(text)
    env = {**os.environ, "SKOT_MILTER_CONFIG": str(cfg)}
    checked = skot("config", "check", env=env)
    assert checked.returncode == 0, checked.stderr
    assert "config ok" in checked.stdout and f"config {cfg} (SKOT_MILTER_CONFIG)" in \
        checked.stderr
    # 3. run it
    log = tmp_path / "serve.log"
    serve = subprocess.Popen([*SKOT, "serve"], cwd=tmp_path, env=env, stderr=log.open("w"),
                             stdout=subprocess.DEVNULL)
    try:
        assert wait(lambda: "ready" in log.read_text(), 30), log.read_text()
        # 4. Postfix with the recipe: 25, 587 and 465 on loopback high ports
        p = {"smtp": free_port(), "submission": free_port(), "submissions": free_port()}
        cert, key = self_signed(tmp_path)
        if mode == "proxy":
            main = (DEPLOY / "main.cf.proxy").read_text()
            master = ports((DEPLOY / "master.cf.proxy").read_text(), **p)
            master = master.replace("127.0.0.1:10025", f"127.0.0.1:{gw_port}")
            master = master.replace("127.0.0.1:10026", f"127.0.0.1:{reinject}")
        else:
            main = (DEPLOY / "main.cf.milter").read_text()
            master = (f"127.0.0.1:{p['smtp']} inet n - n - - smtpd\n"
                      + ports((DEPLOY / "master.cf.milter").read_text(), **p))
        master = master.replace("127.0.0.1:8894", f"127.0.0.1:{milter_port}")
        main = main.replace("127.0.0.1:8894", f"127.0.0.1:{milter_port}")
        postfix = PrivatePostfix(main + "\n" + main_cf(cert, key, sasl.port), master, sink_port)
        private_postfix.append(postfix)
        postfix.start(p["submissions"])
        # mail flows, and in monitor mode what the policy would refuse passes too
        with smtplib.SMTP("127.0.0.1", p["smtp"], timeout=30) as c:
            c.sendmail("someone@school.example", ["ouder@example.org"],
                       make_message(frm="someone@school.example", to="ouder@example.org",
                                    subject="schoolreis"))
            c.sendmail("me@gmail.example", ["ouder@example.org"],
                       make_message(frm="me@gmail.example", to="ouder@example.org",
                                    subject="vanaf gmail"))
        for service in ("submission", "submissions"):
            with client(service, p[service]) as c:
                c.sendmail("director@school.example", ["ouder@example.org"],
                           make_message(frm="director@school.example", to="ouder@example.org",
                                        subject=f"namens de directeur via {service}"))
        assert wait(lambda: len(handler.messages) == 4, 60), postfix.maillog()
        subjects = sorted(re.search(rb"Subject: ([^\r\n]*)", m.content).group(1).decode()
                          for m in handler.messages)  # type: ignore[union-attr]
        assert subjects == ["namens de directeur via submission",
                            "namens de directeur via submissions", "schoolreis",
                            "vanaf gmail"]
        # 5. watch: the audit says what enforce mode would have refused
        listed = skot("audit", "list", "--json", env=env)
        assert listed.returncode == 0, listed.stderr
        fired = sorted((r["rules"][0]["id"], r["rules"][0]["mode"])
                       for r in json.loads(listed.stdout)
                       if r["rules"] and r["event"] == "delivered")
        assert fired == [("B1.auth-identity", "monitor"), ("B1.auth-identity", "monitor"),
                         ("B1.sender-domain", "monitor")]
        assert "(SKOT_MILTER_CONFIG)" in listed.stderr
    finally:
        serve.send_signal(signal.SIGTERM)
        code = serve.wait(timeout=60)
    assert code == 0, log.read_text()
    assert "Traceback" not in log.read_text()

