"""Config, policy and directory errors name the file, the key and what is allowed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from milter import config, directory
from milter.cli import main
from tests.conftest import POLICY, write_config


def test_bundled_default_config_is_valid() -> None:
    cfg = config.load(None)
    assert cfg.school_domains == ("school.example",)
    assert cfg.gateway.listen == "127.0.0.1:10025"
    assert cfg.next_hop.startswith("maildir:/")
    assert cfg.audit_url.startswith("sqlite:////") or cfg.audit_url.startswith("sqlite:///")


def test_relative_paths_resolve_against_config_file(tmp_path: Path) -> None:
    cfg = config.load(write_config(tmp_path))
    assert cfg.audit_url == f"sqlite:///{tmp_path}/audit.sqlite3"
    assert cfg.next_hop == f"maildir:{tmp_path}/maildir"
    assert cfg.directory_path == tmp_path / "staff.csv"


def test_absolute_sqlite_url(tmp_path: Path) -> None:
    cfg_path = write_config(tmp_path)
    cfg_path.write_text(cfg_path.read_text().replace("sqlite:///audit.sqlite3",
                                                     "sqlite:////var/tmp/x.sqlite3"))
    assert config.load(cfg_path).audit_url == "sqlite:////var/tmp/x.sqlite3"


@pytest.mark.parametrize("old,new,key,allowed", [
    ('node = "test"', 'node = "test"\nlisten_port = 25', "gateway.listen_port", "allowed:"),
    ('next_hop = "maildir:maildir"', 'next_hop = "ftp://x"', "gateway.next_hop", "smtp://"),
    ('domains = ["school.example"]', "domains = []", "school.domains", "at least one"),
    ('internal_networks = ["127.0.0.0/8", "::1/128"]', 'internal_networks = ["10.0.0.0/33"]',
     "gateway.internal_networks", "CIDR"),
    ('url = "sqlite:///audit.sqlite3"', 'url = "mysql://x"', "audit.url", "postgresql://"),
    ('[directory]', '[dirs]', "dirs", "unknown section"),
    ('node = "test"', 'node = "test"\nworkers = -1', "gateway.workers", ">= 0"),
    ('node = "test"', 'node = "test"\nspool_threshold = 100', "gateway.spool_threshold",
     ">= 4096"),
    ('[dns]', '[notices]\ntimezone = "Europe/Amsterdamm"\n[dns]', "notices.timezone",
     "Europe/Amsterdam"),
    ('[dns]', '[notices]\nregister_nl = "jij"\n[dns]', "notices.register_nl", '"je", "u"'),
])
def test_config_errors_name_file_key_and_allowed(tmp_path: Path, old: str, new: str, key: str,
                                                  allowed: str) -> None:
    cfg = write_config(tmp_path)
    cfg.write_text(cfg.read_text().replace(old, new))
    with pytest.raises(config.ConfigError) as err:
        config.load(cfg)
    msg = str(err.value)
    assert str(cfg) in msg and key in msg and allowed in msg


def test_workers_zero_means_one_per_core(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, gateway_extra="workers = 0")
    assert config.load(cfg).gateway.workers == (os.cpu_count() or 1)
    cfg = write_config(tmp_path, gateway_extra="workers = 3")
    assert config.load(cfg).gateway.workers == 3


def test_missing_required_key(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    cfg.write_text(cfg.read_text().replace('postmaster = "postmaster@school.example"', ""))
    with pytest.raises(config.ConfigError, match="school.postmaster: required"):
        config.load(cfg)


def test_config_check_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path)
    assert main(["config", "check", "--config", str(cfg)]) == 0
    cfg.write_text(cfg.read_text().replace('node = "test"', 'node = "test"\nbogus = 1'))
    assert main(["config", "check", "--config", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert "gateway.bogus: unknown key" in err
    # any other command meeting a bad config exits 2 with the same one-line reason
    eml = tmp_path / "m.eml"
    eml.write_bytes(b"From: a@school.example\r\n\r\nx\r\n")
    assert main(["check", "--config", str(cfg), str(eml)]) == 2
    assert "gateway.bogus: unknown key" in capsys.readouterr().err


def test_policy_errors_are_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pol = tmp_path / "policy.toml"
    pol.write_text(POLICY.read_text().replace('action = "reject"', 'action = "explode"', 1)
                   + '\n[rules."Z9.nope"]\narticle = "Z9"\naction = "tag"\n'
                   'reason_nl = "x"\nreason_en = "x"\n')
    cfg = write_config(tmp_path, policy=pol)
    assert main(["config", "check", "--config", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert 'rules."B1.sender-domain".action: expected one of accept, tag, quarantine, reject' in err
    assert 'rules."Z9.nope": no such rule' in err


def test_directory_semicolons_and_commas() -> None:
    semi = directory.parse_csv("address;role;name;private_addresses;supervisor\n"
                               "a@s.example;staff;A;p1@x.example p2@y.example;b@s.example\n")
    comma = directory.parse_csv("address,role,name,private_addresses,supervisor\n"
                                "a@s.example,staff,A,p1@x.example p2@y.example,b@s.example\n")
    for d in (semi, comma):
        person = d.lookup("A@S.example")
        assert person is not None and person.private_addresses == ("p1@x.example", "p2@y.example")
        assert d.owner_of_private("P2@y.example") == person


@pytest.mark.parametrize("row,column", [
    ("a@s.example;teacher;A;;", "role"),
    ("nobody;staff;A;;", "address"),
    ("a@s.example;staff;A;not-an-address;", "private_addresses"),
])
def test_directory_errors_name_line_and_column(row: str, column: str) -> None:
    with pytest.raises(directory.DirectoryError) as err:
        directory.parse_csv("address;role;name;private_addresses;supervisor\n" + row + "\n",
                            "staff.csv")
    assert err.value.line == 2 and err.value.column == column
    assert "staff.csv: line 2" in str(err.value)
