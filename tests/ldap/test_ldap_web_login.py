"""Staff sign in to the web view with their own school account (``[web] staff_ldap_login``):
the school address and the directory password, checked by a bind as them against a real
slapd (conftest.py). The gateway holds a teacher's message over SMTP, its notice links to the
web view, and the teacher releases it signed in with the directory password alone: no
users-file account. Every refusal is on record with its reason, in Dutch (or English) on the
page, and no directory entry ever becomes more than staff."""

from __future__ import annotations

import dataclasses
import http.client
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from milter import config as config_mod
from milter import directory_ldap, directory_source
from milter.commands.web import build_app
from milter.config import ConfigError
from milter.directory_source import DirectorySource
from milter.web import users
from milter.web.app import make_server
from tests.e2e.conftest import GatewayThread, SinkHandler, free_port
from tests.e2e.test_self_release import MARKED
from tests.ldap.conftest import SUFFIX, Slapd, person
from tests.ldap.test_ldap_directory import ldap_config
from tests.web.conftest import request
from tests.web.test_self_release_link import events, form_csrf, hold, post_reason, to_parent

SAM_PW = "Zomer-2026-klas7"          # her directory password; she has no web account
PIM_PW = "leerling-wachtwoord-1"
NOMAIL_PW = "geen-adres-wachtwoord"
DANA_PW = "directie-ldap-pw-1"
BAD_LOGIN = "Onbekende gebruiker of onjuist wachtwoord."
DOWN = "de accountserver van de school is niet bereikbaar"


@pytest.fixture(scope="module")
def school(slapd: Slapd) -> Slapd:
    """The conftest's school, with passwords: Sam (staff, sends the held message; Dana is her
    manager), Pim (a pupil), an account without a mail attribute."""
    slapd.add(*person("sam", "Personeel", "Sam Someone", "someone@school.example",
                      manager=f"uid=dana,ou=Personeel,{SUFFIX}", userPassword=SAM_PW))
    dn, classes, attrs = person("nomail", "Personeel", "Nora Nomail", "x@school.example",
                                userPassword=NOMAIL_PW)
    del attrs["mail"]
    slapd.add(dn, classes, attrs)
    with slapd.admin() as conn:
        import ldap3

        for uid, ou, pw in (("pim", "Leerlingen", PIM_PW), ("dana", "Personeel", DANA_PW)):
            conn.modify(f"uid={uid},ou={ou},{SUFFIX}",
                        {"userPassword": [(ldap3.MODIFY_REPLACE, [pw])]})
    return slapd


def web_config(tmp: Path, url: str, port: int, sink_port: int, ldap_extra: str = "") -> Path:
    cfg = ldap_config(tmp, url, next_hop=f"smtp://127.0.0.1:{sink_port}",
                      extra=f'[web]\nsecure_cookies = false\npublic_url = '
                            f'"http://127.0.0.1:{port}"\nstaff_ldap_login = true\n')
    if ldap_extra:
        cfg.write_text(cfg.read_text().replace("base_dns = [", ldap_extra + "\nbase_dns = ["))
    return cfg


def serve_web(cfg: Path, port: int) -> tuple[Any, Any]:
    app = build_app(config_mod.load(cfg))
    server = make_server(app, "127.0.0.1", port)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return app, server


@pytest.fixture
def linked(school: Slapd, tmp_path: Path,
           sink: tuple[SinkHandler, int]) -> Iterator[dict[str, Any]]:
    """The gateway and the web view on one config whose directory is the slapd; the users
    file holds an admin and an auditor only (and Dana as an admin, by her school address)."""
    port = free_port()
    cfg = web_config(tmp_path, school.url, port, sink[1])
    DirectorySource(config_mod.load(cfg)).refresh()   # the saved copy both start from
    people = tmp_path / "web-users.txt"
    users.add(people, "bert", "admin", "admin-pass-12")
    users.add(people, "director@school.example", "admin", "admin-file-pass-1")
    gw = GatewayThread(cfg)
    app, server = serve_web(cfg, port)
    yield {"gw": gw, "sink": sink[0], "base": f"http://127.0.0.1:{port}", "port": port,
           "tmp": tmp_path, "app": app}
    server.shutdown()
    server.server_close()
    gw.stop()


def attempt(site: dict[str, Any], user: str, password: str, after: str = "",
            lang: str = "") -> tuple[int, str, str, str]:
    """Post the login form as a browser would: (status, Location, session cookie, page)."""
    q = "?" + urllib.parse.urlencode({k: v for k, v in (("next", after), ("lang", lang)) if v})
    page = request(site, "GET", "/login" + q.rstrip("?")).read().decode()
    form = {"csrf": form_csrf(page), "user": user, "password": password}
    if after:
        form["next"] = after
    resp = request(site, "POST", "/login" + (f"?lang={lang}" if lang else ""),
                   urllib.parse.urlencode(form))
    cookie = resp.getheader("Set-Cookie", "") or ""
    return (resp.status, resp.getheader("Location", "") or "",
            cookie.split(";", 1)[0] if cookie.startswith("skot_session=") else "",
            resp.read().decode())


def test_a_teacher_signs_in_with_the_school_password_and_releases_her_message(
        linked: dict[str, Any]) -> None:
    site = linked
    assert "someone@school.example" not in users.read(site["tmp"] / "web-users.txt")
    link = hold(site)
    resp = request(site, "GET", link)
    assert resp.status == 303 and resp.getheader("Location") == \
        "/login?" + urllib.parse.urlencode({"next": link})
    page = request(site, "GET", resp.getheader("Location")).read().decode()
    assert "Gebruik je e-mailadres van school en het wachtwoord van je schoolaccount." in page
    # as people type it: capitals; the session is named after the address in lower case
    status, location, cookie, _ = attempt(site, "Someone@School.example", SAM_PW, after=link)
    assert (status, location) == (303, link) and cookie
    (login,) = events(site["tmp"], "login")
    assert login.actor == "web:someone@school.example"
    assert login.evidence["role"] == "staff" and login.evidence["via"] == "directory"
    status, page = post_reason(site, link, cookie, "De ouders vroegen om het verslag.")
    assert status == 200 and "Je bericht is vrijgegeven en verstuurd" in page
    (delivered,) = to_parent(site["sink"])
    assert delivered.content == MARKED
    (release,) = events(site["tmp"], "quarantine-release")
    assert release.actor == "self:someone@school.example"
    # the supervisor from the directory (Dana, manager) gets the copy with the reason
    assert any(m.rcpt_tos == ["director@school.example"] for m in site["sink"].messages)
    # staff and nothing more: no admin or auditor page opens, each refusal on record
    for path in ("/messages", "/quarantine", "/records", "/report", "/dashboard",
                 "/verify", "/export"):
        resp = request(site, "GET", path, cookie=cookie)
        assert resp.status == 403, path
    denied = events(site["tmp"], "denied")
    assert len(denied) == 7 and all(r.actor == "web:someone@school.example" for r in denied)


@pytest.mark.parametrize("user,password,why", [
    ("someone@school.example", "Zomer-2026-klas8", "wrong password"),
    ("someone@school.example", "", "empty password"),
    ("nobody@school.example", SAM_PW, "not in the directory (no entry with this address)"),
    ("*@school.example", SAM_PW, "not in the directory (no entry with this address)"),
    ("x@school.example", NOMAIL_PW, "not in the directory (no entry with this address)"),
    ("nomail", NOMAIL_PW, ""),   # a uid is no address: a users-file name, and not there
    ("pim@leerling.school.example", PIM_PW, "role pupil in the directory, not staff"),
    # a users-file account is checked there only, even by its school address: the
    # directory password never opens it (Dana is an admin in the file)
    ("director@school.example", DANA_PW, ""),
    (" Director@school.example", DANA_PW, ""),
])
def test_refused_with_the_same_words_and_on_record_with_the_reason(
        linked: dict[str, Any], user: str, password: str, why: str) -> None:
    site = linked
    status, _, cookie, page = attempt(site, user, password)
    assert status == 401 and cookie == "" and BAD_LOGIN in page
    (failed,) = events(site["tmp"], "login-failed")
    assert failed.actor == f"web:{user}" and failed.evidence["address"] == "127.0.0.1"
    assert failed.evidence.get("reason", "") == why
    assert failed.evidence.get("via", "") == ("directory" if why else "")
    assert events(site["tmp"], "login") == []


def post_from(site: dict[str, Any], source: str, user: str, password: str) -> int:
    """A login posted from another loopback address (another client to the throttle)."""
    token = form_csrf(request(site, "GET", "/login").read().decode())
    conn = http.client.HTTPConnection("127.0.0.1", site["port"], timeout=10,
                                      source_address=(source, 0))
    conn.request("POST", "/login", urllib.parse.urlencode(
        {"csrf": token, "user": user, "password": password}),
        {"Content-Type": "application/x-www-form-urlencoded"})
    return conn.getresponse().status


def test_the_directory_password_is_throttled_like_any_other(linked: dict[str, Any]) -> None:
    """Five wrong passwords for one person, from five clients and however the address is
    typed: the sixth attempt waits, even with the right password."""
    site = linked
    for i, guess in enumerate(("someone@school.example", "Someone@school.example ",
                               " SOMEONE@school.example", "someone@School.Example",
                               "someone@school.example\t")):
        assert post_from(site, f"127.0.0.{i + 2}", guess, "geraden-wachtwoord") == 401
    assert post_from(site, "127.0.0.9", "someone@school.example", SAM_PW) == 429
    (throttled,) = events(site["tmp"], "login-throttled")
    assert throttled.evidence["address"] == "127.0.0.9"
    assert events(site["tmp"], "login") == []


def test_the_admin_of_the_users_file_still_signs_in(linked: dict[str, Any]) -> None:
    status, location, cookie, _ = attempt(linked, "bert", "admin-pass-12")
    assert (status, location) == (303, "/messages") and cookie
    assert request(linked, "GET", "/quarantine", cookie=cookie).status == 200
    (login,) = events(linked["tmp"], "login")
    assert login.evidence["role"] == "admin" and "via" not in login.evidence


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port that accepts connections and never answers (a hung directory server)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield sock.getsockname()[1]
    sock.close()


@pytest.mark.parametrize("down", ["refused", "silent"])
def test_directory_down_says_so_in_dutch_and_english_and_is_on_record(
        tmp_path: Path, sink: tuple[SinkHandler, int], silent_server: int,
        down: str) -> None:
    """Nothing listens (connection refused), or the server hangs (the configured timeout):
    the page says the account server cannot be reached, the attempt is on record with the
    reason, and it is not counted as a wrong password; the users file still works."""
    port = free_port()
    url = f"ldap://127.0.0.1:{free_port() if down == 'refused' else silent_server}"
    cfg = web_config(tmp_path, url, port, sink[1], ldap_extra="timeout = 1")
    users.add(tmp_path / "web-users.txt", "bert", "admin", "admin-pass-12")
    app, server = serve_web(cfg, port)
    site = {"port": port}
    try:
        started = time.monotonic()
        status, _, cookie, page = attempt(site, "someone@school.example", SAM_PW,
                                          after="/vrijgeven/" + "a" * 24)
        assert time.monotonic() - started < 15   # the timeout holds; nothing waits forever
        assert status == 503 and cookie == "" and DOWN in page
        assert 'name="next" value="/vrijgeven/' + "a" * 24 in page   # try again: same way
        status, _, _, page = attempt(site, "someone@school.example", SAM_PW, lang="en")
        assert status == 503 and "account server cannot be reached" in page
        failed = events(tmp_path, "login-failed")
        assert len(failed) == 2
        reason = failed[0].evidence["reason"]
        assert reason.startswith("directory unavailable: directory.ldap.url")
        assert ("Connection refused" if down == "refused" else "timed out") in reason, reason
        for _ in range(4):   # not a guess, no 429; the gate is free again after each
            status, _, _, page = attempt(site, "someone@school.example", SAM_PW)
            assert status == 503 and DOWN in page
        # an empty password is refused before the directory is asked
        status, _, _, page = attempt(site, "someone@school.example", "")
        assert status == 401 and BAD_LOGIN in page
        assert events(tmp_path, "login-failed")[-1].evidence["reason"] == "empty password"
        # the admins' own accounts do not depend on the directory
        assert attempt(site, "bert", "admin-pass-12")[0] == 303
    finally:
        server.shutdown()
        server.server_close()


# -- the directory check itself: TLS as configured, never a password in clear text ---------

def settings(tmp: Path, school: Slapd, url: str, tls: str) -> directory_ldap.LdapSettings:
    cfg = web_config(tmp, url, free_port(), free_port(),
                     ldap_extra=f'ca_file = "{school.ca_file}"')
    text = cfg.read_text().replace('tls = "none"', f'tls = "{tls}"')
    cfg.write_text(text)
    return directory_source.ldap_settings(config_mod.load(cfg))


@pytest.mark.parametrize("tls", ["starttls", "ldaps"])
def test_the_bind_goes_over_starttls_or_ldaps_as_configured(
        school: Slapd, tmp_path: Path, tls: str) -> None:
    url = school.ldaps_url if tls == "ldaps" else school.url
    s = settings(tmp_path, school, url, tls)
    cfg = config_mod.load(tmp_path / "skot-milter.toml")
    mapping = directory_source.role_map(cfg)
    sam = directory_ldap.login(s, mapping, "someone@school.example", SAM_PW)
    assert sam.address == "someone@school.example" and sam.role == "staff"
    with pytest.raises(directory_ldap.LoginRefused, match="wrong password"):
        directory_ldap.login(s, mapping, "someone@school.example", "fout")
    # a certificate from another CA: the directory is not trusted, and not asked
    import dataclasses

    with pytest.raises(directory_ldap.LdapError) as err:
        directory_ldap.login(dataclasses.replace(s, ca_file="/etc/ssl/certs/ca-certificates"
                                                 ".crt"), mapping, "someone@school.example",
                             SAM_PW)
    assert err.value.key in ("directory.ldap.ca_file", "directory.ldap.tls")


def test_a_password_is_never_sent_in_clear_text_beyond_loopback(tmp_path: Path) -> None:
    cfg = web_config(tmp_path, "ldap://dc1.school.example", free_port(), free_port())
    with pytest.raises(ConfigError) as err:
        config_mod.load(cfg)
    assert err.value.key == "directory.ldap.tls" and "clear text" in str(err.value)
    # read-only directory access in clear text stays the admin's choice, as before
    cfg.write_text(cfg.read_text().replace("staff_ldap_login = true", ""))
    config_mod.load(cfg)
    # and the check itself refuses, whatever the config said
    s = directory_ldap.LdapSettings(urls=("ldap://dc1.school.example",), tls="none",
                                    base_dns=("dc=school,dc=example",))
    with pytest.raises(directory_ldap.LdapError, match="clear text"):
        directory_ldap.login(s, directory_source.role_map(config_mod.load(cfg)),
                             "someone@school.example", SAM_PW)


def test_directory_sign_in_needs_the_ldap_directory(tmp_path: Path) -> None:
    from tests.conftest import write_config

    cfg = write_config(tmp_path, extra="[web]\nstaff_ldap_login = true\n")
    with pytest.raises(ConfigError) as err:
        config_mod.load(cfg)
    assert err.value.key == "web.staff_ldap_login" and 'source = "ldap"' in str(err.value)


def test_a_teacher_who_left_since_she_signed_in_releases_nothing(
        linked: dict[str, Any], school: Slapd) -> None:
    """A directory session is asked of the directory again before it releases: the school
    moves Sam out of staff while her session is open; her release is refused (in Dutch, on
    record with why), she is signed out, nothing is sent and the message stays held. Back in
    staff, she signs in again and releases it."""
    site = linked
    link = hold(site)
    status, location, cookie, _ = attempt(site, "someone@school.example", SAM_PW, after=link)
    assert (status, location) == (303, link) and cookie
    csrf = form_csrf(request(site, "GET", link, cookie=cookie).read().decode())
    with school.admin() as conn:  # she left: her account moves out of the staff OU
        assert conn.modify_dn(f"uid=sam,ou=Personeel,{SUFFIX}", "uid=sam",
                              new_superior=f"ou=Service,{SUFFIX}")
    try:
        resp = request(site, "POST", link, urllib.parse.urlencode(
            {"csrf": csrf, "reason": "De ouders vroegen erom."}), cookie=cookie)
        page = resp.read().decode()
        assert resp.status == 403 and "geen recht meer om berichten zelf" in page
        assert "Je bent afgemeld; het bericht blijft tegengehouden" in page
        assert to_parent(site["sink"]) == []
        (refused,) = events(site["tmp"], "self-release-refused")
        assert refused.evidence["why"] == "not in the directory (no entry with this address)"
        assert refused.sender == "someone@school.example" and refused.txid
        assert events(site["tmp"], "quarantine-release") == []
        resp = request(site, "GET", link, cookie=cookie)   # the session is gone
        assert resp.status == 303 and resp.getheader("Location", "").startswith("/login")
        assert attempt(site, "someone@school.example", SAM_PW)[0] == 401
    finally:
        with school.admin() as conn:
            assert conn.modify_dn(f"uid=sam,ou=Service,{SUFFIX}", "uid=sam",
                                  new_superior=f"ou=Personeel,{SUFFIX}")
    status, location, cookie, _ = attempt(site, "someone@school.example", SAM_PW, after=link)
    assert (status, location) == (303, link) and cookie
    status, page = post_reason(site, link, cookie, "De ouders vroegen erom.")
    assert status == 200 and "Je bericht is vrijgegeven en verstuurd" in page
    assert len(to_parent(site["sink"])) == 1


def test_a_directory_that_cannot_answer_at_release_releases_nothing(
        linked: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """Asked again before the release and the directory is down: refused with the directory
    words (503), on record, nothing sent; the session stays (nobody's fault)."""
    site = linked
    link = hold(site)
    _, _, cookie, _ = attempt(site, "someone@school.example", SAM_PW, after=link)
    login = site["app"].staff_directory
    down = dataclasses.replace(login, settings=dataclasses.replace(
        login.settings, urls=(f"ldap://127.0.0.1:{free_port()}",), timeout=1))
    monkeypatch.setattr(site["app"], "staff_directory", down)
    status, page = post_reason(site, link, cookie, "De ouders vroegen erom.")
    assert status == 503 and DOWN in page
    assert to_parent(site["sink"]) == []
    (refused,) = events(site["tmp"], "self-release-refused")
    assert refused.evidence["why"].startswith("directory unavailable: directory.ldap.url")
    assert request(site, "GET", link, cookie=cookie).status == 200   # still signed in
