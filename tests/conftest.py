"""Shared fixtures: a temp config pointing at the project's own policy, and message builders."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
POLICY = ROOT / "policies" / "skot.toml"

STAFF_CSV = """address;role;name;private_addresses;supervisor
someone@school.example;staff;Sam Someone;sam.someone@gmail.example;director@school.example
director@school.example;staff;Dana Director;;
teacher@school.example;staff;Theo Teacher;theo@home.example t.teacher@mail.example;\
director@school.example
pupil1@leerling.school.example;pupil;Pim Pupil;;
"""


def write_config(tmp: Path, gateway_extra: str = "", extra: str = "",
                 next_hop: str = "maildir:maildir", policy: Path = POLICY,
                 dns: str = "authenticate = false", listen: str = "127.0.0.1:0",
                 internal: str = '["127.0.0.0/8", "::1/128"]') -> Path:
    """A config in ``tmp``. DNS authentication is off unless a test points it at its own
    loopback DNS server (tests never query the internet)."""
    (tmp / "staff.csv").write_text(STAFF_CSV)
    cfg = tmp / "skot-milter.toml"
    cfg.write_text(f"""
[gateway]
listen = "{listen}"
next_hop = "{next_hop}"
hostname = "relay.school.example"
node = "test"
internal_networks = {internal}
policy = "{policy}"
{gateway_extra}

[school]
domains = ["school.example"]
postmaster = "postmaster@school.example"

[directory]
csv = "staff.csv"

[audit]
url = "sqlite:///audit.sqlite3"

[dns]
{dns}
{extra}
""")
    return cfg


@pytest.fixture(autouse=True)
def _no_site_config(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
                    ) -> None:
    """Commands run in-process never read this machine's /etc/skot-milter or an admin's
    $SKOT_MILTER_CONFIG: a test names its config, or means the bundled defaults."""
    from milter import config

    monkeypatch.delenv("SKOT_MILTER_CONFIG", raising=False)
    monkeypatch.setattr(config, "SITE_CONFIG", tmp_path_factory.getbasetemp() / "no-site.toml")


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    return write_config(tmp_path)


def make_message(frm: str = "Sam <someone@school.example>", to: str = "x@ext.example",
                 subject: str = "Hallo", body: str = "Goedemorgen.\r\n",
                 extra_headers: str = "") -> bytes:
    head = f"From: {frm}\r\n" if frm else ""
    return (f"{head}To: {to}\r\nSubject: {subject}\r\nMessage-ID: <m1@school.example>\r\n"
            f"{extra_headers}\r\n{body}").encode()


@pytest.fixture
def msg() -> Callable[..., bytes]:
    return make_message
