"""The directory from what schools have: Entra ID / Google Workspace user exports (CSV files
in the exports' own columns, tests/fixtures/directory/), Active Directory-shaped LDAP entries,
and the ``[directory]`` config keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from milter import config as config_mod
from milter.directory import RoleMap, export_format, load, parse_csv
from milter.directory_ldap import SettingError, bind_refusal, build, parse_settings
from milter.runtime import Runtime
from tests.conftest import write_config

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "directory"
ENTRA, GOOGLE = FIXTURES / "entra-users.csv", FIXTURES / "google-users.csv"


def test_the_export_format_is_told_by_the_header() -> None:
    assert export_format(ENTRA.read_text(encoding="utf-8-sig").splitlines()[0]
                         .replace('"', "").split(",")) == "entra"
    assert export_format(GOOGLE.read_text().splitlines()[0].split(",")) == "google"
    assert export_format(["address", "role", "name"]) == "skot"


def test_entra_id_download_users_csv() -> None:
    d = load(ENTRA, RoleMap(roles={"staff": ("Onderwijs", "Directie", "Communicatie")},
                            groups={"media": ("Communicatie",)}))
    theo = d.lookup("theo.teacher@school.example")
    assert theo is not None and theo.role == "staff" and theo.name == "Theo Teacher"
    assert d.owner_of_private("theo@home.example") == theo   # alternateEmailAddress
    # Minors are pupils (ageGroup), and a pupil's alternate address (a parent's) is no
    # private address of theirs.
    pim = d.lookup("pim.pupil@leerling.school.example")
    assert pim is not None and pim.role == "pupil"
    assert d.owner_of_private("ouder.pim@home.example") is None
    # mail empty: the user principal name is the address.
    mia = d.lookup("mia.media@school.example")
    assert mia is not None and mia.groups == ("media",) and theo.groups == ()
    # A disabled account (a leaver) and a guest are not school people.
    assert d.lookup("old.teacher@school.example") is None
    assert d.owner_of_private("olga@home.example") is None
    assert d.lookup("gert@partner.example") is None
    assert d.role_counts() == {"staff": 3, "pupil": 1, "parent": 0, "other": 0}


def test_entra_id_export_without_a_role_map_makes_adults_staff() -> None:
    d = load(ENTRA)
    assert {p.address: p.role for p in d.people.values()} == {
        "theo.teacher@school.example": "staff", "dana.director@school.example": "staff",
        "mia.media@school.example": "staff", "pim.pupil@leerling.school.example": "pupil"}


def test_google_workspace_download_users_csv() -> None:
    d = load(GOOGLE, RoleMap(roles={"staff": ("/Personeel",), "pupil": ("/Leerlingen",)},
                             groups={"media": ("/Personeel/Media",)}))
    theo = d.lookup("theo.teacher@school.example")
    assert theo is not None and theo.role == "staff" and theo.name == "Theo Teacher"
    assert theo.supervisor == "dana.director@school.example"        # Manager Email
    assert theo.private_addresses == ("theo@home.example",)         # Home Secondary Email
    assert d.owner_of_private("theo.recovery@mail.example") is None  # not the recovery one
    pim = d.lookup("pim.pupil@leerling.school.example")
    assert pim is not None and pim.role == "pupil" and pim.private_addresses == ()
    mia = d.lookup("mia.media@school.example")
    assert mia is not None and mia.groups == ("media",) and theo.groups == ()
    assert d.lookup("old.teacher@school.example") is None   # suspended
    assert d.lookup("kiosk@school.example") is None         # an org unit in no role
    assert d.role_counts() == {"staff": 3, "pupil": 1, "parent": 0, "other": 0}


def test_google_export_private_column_can_be_named() -> None:
    d = load(GOOGLE, RoleMap(private="Recovery Email [optional]"))
    assert d.owner_of_private("theo.recovery@mail.example") is not None
    assert d.owner_of_private("theo@home.example") is None


def test_an_export_with_a_bad_address_names_its_line() -> None:
    text = ENTRA.read_text(encoding="utf-8-sig").replace("dana.director@school.example",
                                                         "dana.director")
    with pytest.raises(Exception, match=r"line 3: address: not an email address"):
        parse_csv(text, "entra.csv")


def test_export_through_the_config(tmp_path: Path) -> None:
    """The gateway's own loading path: ``[directory] csv`` names the Entra file, ``roles``
    and ``groups`` map departments."""
    cfg = write_config(tmp_path)
    (tmp_path / "entra.csv").write_bytes(ENTRA.read_bytes())
    cfg.write_text(cfg.read_text().replace('csv = "staff.csv"', '''csv = "entra.csv"
roles = { staff = ["Onderwijs", "Directie", "Communicatie"] }
groups = { media = "Communicatie" }'''))
    d = Runtime.load(str(cfg)).directory
    mia = d.lookup("mia.media@school.example")
    assert mia is not None and mia.groups == ("media",)
    assert d.lookup("old.teacher@school.example") is None


AD = "DC=school,DC=example"


def ad_entry(cn: str, mail: str, ou: str = "Personeel", **attrs: list[str]
             ) -> tuple[str, dict[str, list[str]]]:
    return (f"CN={cn},OU={ou},{AD}", {"mail": [mail], "displayName": [cn], **attrs})


def test_active_directory_entries() -> None:
    """proxyAddresses give aliases (smtp:, not X500:), memberOf gives roles and the media
    group, manager DNs become the supervisor's address, preferredLanguage nl-NL is nl."""
    settings = parse_settings({"url": "ldaps://dc1.school.example",
                               "base_dns": [f"OU=Scholen,{AD}"]})
    assert settings.tls == "ldaps" and settings.attribute_map["aliases"] == "proxyAddresses"
    entries = [
        ad_entry("Theo Teacher", "Theo.Teacher@school.example",
                 proxyAddresses=["SMTP:theo.teacher@school.example",
                                 "smtp:t.teacher@school.example", "X500:/o=School/cn=theo"],
                 memberOf=[f"CN=Leerkrachten,OU=Groepen,{AD}"],
                 manager=[f"CN=Dana Director,OU=Personeel,{AD}"],
                 preferredLanguage=["nl-NL"], otherMailbox=["theo@home.example"]),
        ad_entry("Dana Director", "dana@school.example", preferredLanguage=["en-US"],
                 # a long membership list comes in ranges (member;range=0-1499, ...)
                 **{"memberOf;range=0-0": [f"CN=Directie,OU=Groepen,{AD}"],
                    "memberOf;range=1-*": [f"CN=Media,OU=Groepen,{AD}"]}),
        ad_entry("Pim Pupil", "pim@leerling.school.example", ou="Leerlingen",
                 otherMailbox=["ouder@home.example"]),
        ad_entry("Printer", "scan@school.example", ou="Apparaten"),
    ]
    mapping = RoleMap(roles={"staff": (f"cn=leerkrachten, ou=groepen, {AD.lower()}",
                                       f"CN=Directie,OU=Groepen,{AD}"),
                             "pupil": (f"OU=Leerlingen,{AD}",)},
                      groups={"media": (f"CN=Media,OU=Groepen,{AD}",)},
                      private="otherMailbox")
    d = build(entries, settings, mapping, {})
    theo = d.lookup("t.teacher@school.example")
    assert theo is not None and theo.address == "theo.teacher@school.example"
    assert theo.aliases == ("t.teacher@school.example",)
    assert theo.supervisor == "dana@school.example" and theo.language == "nl"
    assert d.owner_of_private("theo@home.example") == theo
    dana = d.lookup("dana@school.example")
    assert dana is not None and dana.groups == ("media",) and dana.language == "en"
    pim = d.lookup("pim@leerling.school.example")
    assert pim is not None and pim.role == "pupil" and pim.private_addresses == ()
    assert d.lookup("scan@school.example") is None
    assert d.role_counts()["staff"] == 2  # aliases count once


@pytest.mark.parametrize(("table", "key"), [
    ({"url": "dc1.school.example", "base_dns": [AD]}, "url"),
    ({"url": "ldap://dc1", "tls": "ldaps", "base_dns": [AD]}, "tls"),
    ({"url": "ldap://dc1", "base_dns": []}, "base_dns"),
    ({"url": "ldap://dc1", "base_dns": [AD], "schema": "novell"}, "schema"),
    ({"url": "ldap://dc1", "base_dns": [AD], "bind_dn": "CN=svc"}, "bind_password_file"),
    ({"url": "ldap://dc1", "base_dns": [AD], "attributes": {"phone": "mobile"}},
     "attributes"),
    ({"url": "ldap://dc1", "base_dns": [AD], "password": "hunter2"}, "password"),
])
def test_ldap_settings_errors_name_the_key(table: dict[str, object], key: str) -> None:
    with pytest.raises(SettingError) as err:
        parse_settings(table)
    assert err.value.key == key


def test_config_errors_name_the_key_and_never_echo_the_table(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    cfg.write_text(cfg.read_text().replace('csv = "staff.csv"', '''source = "ldap"
roles = { teacher = ["OU=Personeel,DC=school,DC=example"] }

[directory.ldap]
url = "ldaps://dc1.school.example"
base_dns = ["OU=Personeel,DC=school,DC=example"]
bind_dn = "CN=skot-milter,OU=Service,DC=school,DC=example"
bind_password_file = "ldap-password"
bind_password = "hunter2"'''))
    errors = [str(e) for e in config_mod.iter_errors(config_mod.read_toml(cfg), cfg)]
    assert any("directory.roles: 'teacher' is not a role; allowed: staff" in e
               for e in errors)
    assert any("directory.ldap.bind_password: unknown key" in e for e in errors)
    assert not any("hunter2" in e for e in errors)


def test_source_ldap_needs_its_table(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    cfg.write_text(cfg.read_text().replace('csv = "staff.csv"', 'source = "ldap"'))
    with pytest.raises(config_mod.ConfigError, match=r"directory\.ldap: source = \"ldap\""):
        config_mod.load(cfg)


def test_a_refused_directory_sign_in_says_why_on_record() -> None:
    """Active Directory's reason (its diagnostic "data NNN") becomes words an admin reads in
    the login-failed record; OpenLDAP says invalidCredentials only."""
    ad = ("80090308: LdapErr: DSID-0C09044E, comment: AcceptSecurityContext error, "
          "data {}, v4563")
    assert bind_refusal({"description": "invalidCredentials",
                         "message": ad.format("775")}) == "account locked"
    assert bind_refusal({"description": "invalidCredentials",
                         "message": ad.format("773")}) == "must change the password first"
    assert bind_refusal({"description": "invalidCredentials",
                         "message": ad.format("52e")}) == "wrong password"
    assert bind_refusal({"description": "invalidCredentials", "message": ""}) == \
        "wrong password"
    assert bind_refusal({"description": "unwillingToPerform", "message": "x"}) == \
        "the directory refused the bind: unwillingToPerform"
