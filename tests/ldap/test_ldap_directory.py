"""The staff directory read from a real OpenLDAP server (see conftest.py)."""

from __future__ import annotations

import asyncio
import logging
import shutil
import signal
import smtplib
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from milter import config as config_mod
from milter import directory_source, metrics
from milter.cli import main
from milter.daemon import reload
from milter.directory_ldap import LdapError
from milter.directory_source import DirectorySource
from milter.runtime import Runtime
from tests.conftest import write_config
from tests.e2e.conftest import GatewayThread, SinkHandler, free_port
from tests.ldap.conftest import SERVICE_DN, SERVICE_PW, SUFFIX, Slapd, person, populate

STAFF_OU, PUPIL_OU = f"ou=Personeel,{SUFFIX}", f"ou=Leerlingen,{SUFFIX}"
MEDIA = f"cn=Media,ou=Groepen,{SUFFIX}"


def ldap_config(tmp: Path, url: str, *, password: str = SERVICE_PW,
                base_dns: tuple[str, ...] = (STAFF_OU, PUPIL_OU),
                roles: str = f'staff = ["{STAFF_OU}"], pupil = ["{PUPIL_OU}"]',
                media: str = MEDIA, **kwargs: Any) -> Path:
    """A gateway config whose directory is the test's slapd (plain LDAP on loopback)."""
    cfg = write_config(tmp, **kwargs)
    (tmp / "ldap-password").write_text(password + "\n")
    bases = ", ".join(f'"{b}"' for b in base_dns)
    text = cfg.read_text().replace('[directory]\ncsv = "staff.csv"', f"""[directory]
source = "ldap"
roles = {{ {roles} }}
groups = {{ media = ["{media}"] }}
private_addresses = "otherMailbox"

[directory.ldap]
url = "{url}"
tls = "none"
schema = "openldap"
bind_dn = "{SERVICE_DN}"
bind_password_file = "ldap-password"
base_dns = [{bases}]
""")
    cfg.write_text(text)
    return cfg


@pytest.fixture
def own_slapd() -> Iterator[Slapd]:
    """A slapd of this test alone: it is stopped to play "the directory server is down"."""
    base = Path(tempfile.mkdtemp(prefix="skot-slapd-"))
    server = Slapd(base)
    server.start()
    try:
        populate(server)
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


def test_people_roles_private_addresses_supervisors_and_media_group(slapd: Slapd,
                                                                     tmp_path: Path) -> None:
    cfg = config_mod.load(ldap_config(tmp_path, slapd.url))
    d = DirectorySource(cfg).refresh()

    theo = d.lookup("Teacher@School.example")
    assert theo is not None and theo.role == "staff" and theo.name == "Theo Teacher"
    assert set(theo.private_addresses) == {"theo@home.example", "t.teacher@mail.example"}
    assert d.owner_of_private("theo@home.example") == theo
    assert theo.supervisor == "director@school.example"
    assert theo.language == "nl"
    director = d.lookup("director@school.example")
    assert director is not None and director.language == "en" and director.supervisor == ""
    pim = d.lookup("pim@leerling.school.example")
    assert pim is not None and pim.role == "pupil"
    # A pupil's second address is often a parent's: never taken as a private address.
    assert d.owner_of_private("ouder.pim@home.example") is None
    mia = d.lookup("mia@school.example")
    assert mia is not None and "media" in mia.groups and "media" not in theo.groups
    # Outside the base DNs: not in the directory.
    assert d.lookup("noreply@school.example") is None
    assert d.role_counts() == {"staff": 3, "pupil": 1, "parent": 0, "other": 0}


def test_roles_from_a_group_leave_out_people_in_none(slapd: Slapd, tmp_path: Path) -> None:
    """Staff are the members of the teachers' group (memberOf / member): the director, who
    is not in it, and the pupil are in no mapped role and so not in the directory."""
    cfg = config_mod.load(ldap_config(
        tmp_path, slapd.url, roles=f'staff = ["cn=Leerkrachten,ou=Groepen,{SUFFIX}"]'))
    d = DirectorySource(cfg).refresh()
    assert {p.address for p in d.people.values()} == {"teacher@school.example",
                                                      "mia@school.example"}
    theo = d.lookup("teacher@school.example")
    assert theo is not None and theo.supervisor == "director@school.example"


def test_a_teacher_added_in_ldap_is_known_after_a_refresh_without_restart(
        own_slapd: Slapd, tmp_path: Path, sink: tuple[SinkHandler, int]) -> None:
    """Inbound mail from a new teacher's private address to a pupil passes before she is in
    the directory, and is refused by B1.private-address once SIGHUP's background refresh
    has read her: no restart."""
    slapd = own_slapd
    cfg = ldap_config(tmp_path, slapd.url, next_hop=f"smtp://127.0.0.1:{sink[1]}",
                      internal='["10.99.0.0/16"]')  # loopback clients send inbound mail
    DirectorySource(config_mod.load(cfg)).refresh()   # a saved copy, as after an earlier run
    gw = GatewayThread(cfg)
    try:
        async def wire() -> directory_source.LiveDirectory:
            return directory_source.serve(gw.running, asyncio.get_running_loop())

        served = gw.call(wire())
        msg = (b"From: nina@home.example\r\nTo: pim@leerling.school.example\r\n"
               b"Subject: huiswerk\r\n\r\nHoi Pim\r\n")
        with gw.client() as c:
            c.sendmail("nina@home.example", ["pim@leerling.school.example"], msg)
        slapd.add(*person("nina", "Personeel", "Nina Nieuw", "nina@school.example",
                          otherMailbox=["nina@home.example"]))
        gw.loop.call_soon_threadsafe(served.on_sighup, reload, gw.running, str(cfg))
        deadline = time.monotonic() + 20
        while gw.running.gateway.runtime.directory.lookup("nina@school.example") is None:
            assert time.monotonic() < deadline, "the refresh did not bring the new teacher"
            time.sleep(0.05)
        with gw.client() as c, pytest.raises(smtplib.SMTPDataError) as err:
            c.sendmail("nina@home.example", ["pim@leerling.school.example"], msg)
        assert err.value.smtp_code == 550 and b"B1.private-address" in err.value.smtp_error
        assert len(sink[0].messages) == 1
        gw.call(served.source.stop())
    finally:
        gw.stop()


def test_ldap_down_at_refresh_and_at_start_keeps_the_last_good_copy(
        own_slapd: Slapd, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = ldap_config(tmp_path, own_slapd.url)
    cfg = config_mod.load(path)
    source = DirectorySource(cfg)
    first = source.refresh()
    assert first.lookup("teacher@school.example") is not None
    assert stat.S_IMODE(source.cache_path.stat().st_mode) == 0o600  # personal data

    own_slapd.stop()
    with pytest.raises(LdapError) as err:
        source.refresh()
    assert err.value.key == "directory.ldap.url"

    # The background loop: the failure is logged with the age of the copy kept, counted,
    # and no empty directory is handed to the gateway.
    handed: list[object] = []
    failures_before = metrics.DIRECTORY_REFRESH_FAILURES._value.get()

    async def one_round() -> None:
        source.start(asyncio.get_running_loop(), handed.append)
        for _ in range(200):
            if source.failures:
                break
            await asyncio.sleep(0.05)
        await source.stop()

    with caplog.at_level(logging.INFO, logger="skot-milter"):
        asyncio.run(one_round())
    assert handed == []
    assert metrics.DIRECTORY_REFRESH_FAILURES._value.get() == failures_before + 1
    failed = [r.getMessage() for r in caplog.records if "refresh from ldap failed" in
              r.getMessage()]
    assert failed and "keeping the copy from" in failed[0] and "(age " in failed[0]
    assert "teacher@school.example" not in caplog.text and "Theo" not in caplog.text

    # A restart while the server is still down: the runtime starts with the saved copy.
    runtime = Runtime.load(str(path))
    theo = runtime.directory.lookup("teacher@school.example")
    assert theo is not None and "theo@home.example" in theo.private_addresses
    assert runtime.directory.role_counts()["pupil"] == 1

    # The server is back: the next refresh works again.
    own_slapd.start()
    assert source.refresh().lookup("mia@school.example") is not None


def test_config_check_binds_and_counts_people_per_role(
        slapd: Slapd, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = ldap_config(tmp_path, slapd.url)
    assert main(["config", "check", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "bind ok" in out and "4 people (staff 3, pupil 1, parent 0, other 0)" in out
    assert "media 1" in out


@pytest.mark.parametrize(("change", "key", "says"), [
    ({"password": "wrong"}, "directory.ldap.bind_dn", "refused the bind"),
    ({"base_dns": (STAFF_OU, f"ou=Leerlingenn,{SUFFIX}")}, "directory.ldap.base_dns",
     f"'ou=Leerlingenn,{SUFFIX}': no such entry"),
    ({"media": f"cn=Mediaa,ou=Groepen,{SUFFIX}"}, "directory.groups.media",
     "no such group or OU"),
])
def test_config_check_names_a_bad_bind_or_base_dn(
        slapd: Slapd, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        change: dict[str, Any], key: str, says: str) -> None:
    cfg = ldap_config(tmp_path, slapd.url, **change)
    assert main(["config", "check", "--config", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert f"{cfg}: {key}: " in err and says in err
    assert change.get("password", "\0") not in err  # never the password


def test_config_check_names_an_unreachable_server(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    cfg = ldap_config(tmp_path, f"ldap://127.0.0.1:{free_port()}")
    assert main(["config", "check", "--config", str(cfg)]) == 1
    assert "directory.ldap.url: cannot reach ldap://127.0.0.1:" in capsys.readouterr().err


@pytest.mark.parametrize("scheme", ["starttls", "ldaps"])
def test_tls_to_the_directory_server_verifies_its_certificate(
        slapd: Slapd, tmp_path: Path, scheme: str, capsys: pytest.CaptureFixture[str]) -> None:
    """StartTLS on ldap:// and LDAPS both work against the school's CA (ca_file), and both
    refuse a certificate the gateway cannot verify (here: the system's CAs do not know the
    test CA), naming the key to look at."""
    url = slapd.url if scheme == "starttls" else slapd.ldaps_url
    path = ldap_config(tmp_path, url)
    text = path.read_text().replace('tls = "none"', f'tls = "{scheme}"')
    path.write_text(text.replace('schema = "openldap"',
                                 f'schema = "openldap"\nca_file = "{slapd.ca_file}"'))
    d = DirectorySource(config_mod.load(path)).refresh()
    assert d.lookup("teacher@school.example") is not None

    path.write_text(text)  # no ca_file: the system's CA store
    assert main(["config", "check", "--config", str(path)]) == 1
    err = capsys.readouterr().err
    assert "directory.ldap.ca_file: " in err and "CERTIFICATE_VERIFY_FAILED" in err


def test_the_directory_is_read_again_on_its_interval(own_slapd: Slapd, tmp_path: Path) -> None:
    """No SIGHUP: the background loop reads the server again every refresh interval (here
    shortened; the config's minimum is a minute)."""

    class Quick(DirectorySource):
        @property
        def interval(self) -> float:
            return 0.1

    source = Quick(config_mod.load(ldap_config(tmp_path, own_slapd.url)))
    seen: list[Any] = []

    async def run() -> None:
        source.start(asyncio.get_running_loop(), seen.append)
        for _ in range(100):
            if seen:
                break
            await asyncio.sleep(0.05)
        assert seen and seen[-1].lookup("nina@school.example") is None
        own_slapd.add(*person("nina", "Personeel", "Nina Nieuw", "nina@school.example"))
        for _ in range(100):
            if seen[-1].lookup("nina@school.example") is not None:
                break
            await asyncio.sleep(0.05)
        await source.stop()

    asyncio.run(run())
    assert seen[-1].lookup("nina@school.example") is not None


def test_served_gateway_reads_ldap_in_the_background_and_survives_it_going_down(
        own_slapd: Slapd, tmp_path: Path) -> None:
    """The real ``skot-milter serve``: the directory arrives after start without a saved
    copy, a teacher added in LDAP counts after SIGHUP, the server going down keeps the last
    good copy (logged with its age), and a restart while it is down starts from the copy."""
    from tests.e2e.test_operations import Served

    port = free_port()
    cfg = ldap_config(tmp_path, own_slapd.url, listen=f"127.0.0.1:{port}",
                      internal='["10.99.0.0/16"]')  # loopback clients send inbound mail

    def from_private(sender: str) -> int:
        msg = (f"From: {sender}\r\nTo: pim@leerling.school.example\r\nSubject: hoi\r\n\r\n"
               "Hoi Pim\r\n").encode()
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as c:
            try:
                c.sendmail(sender, ["pim@leerling.school.example"], msg)
            except smtplib.SMTPDataError as exc:
                return exc.smtp_code
        return 250

    proc = Served(cfg)
    try:
        proc.wait_log("directory: refreshed from ldap")
        assert from_private("theo@home.example") == 550
        assert from_private("nina@home.example") == 250
        own_slapd.add(*person("nina", "Personeel", "Nina Nieuw", "nina@school.example",
                              otherMailbox=["nina@home.example"]))
        proc.signal(signal.SIGHUP)
        deadline = time.monotonic() + 15
        while proc.log.read_text().count("directory: refreshed from ldap") < 2:
            assert time.monotonic() < deadline, proc.log.read_text()
            time.sleep(0.05)
        assert from_private("nina@home.example") == 550

        own_slapd.stop()
        proc.signal(signal.SIGHUP)
        proc.wait_log("refresh from ldap failed")
        assert "(age " in proc.log.read_text()
        assert from_private("nina@home.example") == 550
        proc.signal(signal.SIGTERM)
        assert proc.proc.wait(timeout=30) == 0

        proc = Served(cfg)  # restart, the server still down
        assert from_private("nina@home.example") == 550
        proc.wait_log("refresh from ldap failed")
        log = proc.log.read_text()
        assert "keeping the copy from" in log.split("using the saved copy", 1)[1]
        # The directory's own data never reaches the log (only counts do).
        assert "Nina Nieuw" not in log and "nina@school.example" not in log
        assert "from=<nina@home.example>" in log  # what the transaction log always says
    finally:
        if proc.proc.poll() is None:
            proc.proc.kill()
            proc.proc.wait()


def test_a_custom_filter_narrows_who_is_read(slapd: Slapd, tmp_path: Path) -> None:
    path = ldap_config(tmp_path, slapd.url)
    path.write_text(path.read_text().replace(
        'schema = "openldap"',
        'schema = "openldap"\nfilter = "(&(objectClass=inetOrgPerson)(preferredLanguage=nl))"'))
    d = DirectorySource(config_mod.load(path)).refresh()
    assert [p.address for p in d.people.values()] == ["teacher@school.example"]
