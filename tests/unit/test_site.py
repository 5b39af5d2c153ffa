"""The admin's path (issue 16): `init` writes a site, `config check` names every broken file
with its key or line and the fix, the config is found where admins expect it, dates and help
are what an admin types and reads, and a site policy overrides only what the school changes."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from milter import policy as policy_mod
from milter import service_user
from milter.cli import build_parser, main
from milter.config import BUNDLED_POLICY
from milter.dates import parse_when
from tests.conftest import ROOT

EXAMPLE = ROOT / "deploy" / "example"


def init_site(tmp_path: Path, capsys: Any) -> Path:
    site = tmp_path / "etc"
    assert main(["init", str(site), "--domain", "school.example", "--domain",
                 "leerling.school.example", "--state-dir", str(tmp_path / "state")]) == 0
    shutil.copy(EXAMPLE / "staff.csv", site / "staff.csv")
    capsys.readouterr()
    return site / "skot-milter.toml"


@pytest.fixture
def open_tmp() -> Any:
    """A folder other users can enter (pytest's own tmp is root's alone)."""
    base = Path(tempfile.mkdtemp(prefix="skot-site-"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def check(cfg: Path, capsys: Any, *extra: str) -> tuple[int, str]:
    code = main(["config", "check", "--config", str(cfg), *extra])
    out = capsys.readouterr()
    return code, out.out + out.err


# --- config check: each broken config of the issue, named with file, key/line and the fix --

def test_example_config_copied_without_its_key_is_named_with_the_keygen_fix(
        tmp_path: Path, capsys: Any) -> None:
    """The crash loop of the issue: the example names keys/epoch-1.key, nothing wrote it."""
    cfg = init_site(tmp_path, capsys)
    shutil.rmtree(cfg.parent / "keys")
    code, out = check(cfg, capsys)
    assert code == 1
    assert (f"{cfg}: audit.checkpoint_key: {cfg.parent}/keys/epoch-1.key: not found; fix: "
            f"skot-milter audit keygen --epoch 1 --dir {cfg.parent}/keys") in out
    assert "config ok" not in out


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to write a file another user "
                    "cannot read")
def test_a_key_only_root_can_read_is_named_when_checked_as_the_service_user(
        open_tmp: Path, capsys: Any) -> None:
    cfg = init_site(open_tmp, capsys)
    (open_tmp / "state").chmod(0o777)
    key = cfg.parent / "keys" / "epoch-1.key"
    (cfg.parent / "keys").chmod(0o755)
    os.chown(key, 0, 0)
    key.chmod(0o600)  # what `audit keygen` as root used to leave
    # as its own process, as an admin runs it: nothing it needs is imported yet when it drops
    # to the user (who may not read this Python's library folder)
    proc = subprocess.run([sys.executable, "-m", "milter.cli", "config", "check", "--config",
                           str(cfg), "--user", "nobody"], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    code, out = proc.returncode, proc.stdout + proc.stderr
    assert code == 1, out
    assert (f"{cfg}: audit.checkpoint_key: {key}: permission denied for nobody "
            f"(owner root:root, mode 600); fix: chgrp skot-milter {key} && chmod 0640 {key}"
            ) in out
    assert "files checked as user nobody" in out


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a folder another user "
                    "cannot write")
def test_folders_the_gateway_writes_are_named_when_the_service_user_cannot(
        open_tmp: Path, capsys: Any) -> None:
    cfg = init_site(open_tmp, capsys)
    state = open_tmp / "state"
    os.chown(state, 0, 0)
    state.chmod(0o755)  # root's; the service cannot write its spool, audit or quarantine
    for path in (cfg, cfg.parent / "staff.csv", cfg.parent / "keys" / "epoch-1.key"):
        path.chmod(0o644)
    (cfg.parent / "keys").chmod(0o755)
    code, out = check(cfg, capsys, "--user", "nobody")
    assert code == 1
    said = {ln.split(": ")[1]: ln for ln in out.splitlines() if ln.startswith(f"{cfg}: ")}
    assert set(said) == {"gateway.state_dir", "audit.url", "audit.checkpoint_dir",
                         "quarantine.directory"}
    for key in ("gateway.state_dir", "audit.url"):
        assert said[key] == (f"{cfg}: {key}: {state}: cannot be written by nobody (owner "
                             f"root:root, mode 755); fix: chown nobody {state}")
    for key, sub in (("quarantine.directory", "quarantine"),
                     ("audit.checkpoint_dir", "checkpoints")):
        assert said[key] == (f"{cfg}: {key}: {state}/{sub}: cannot be created in {state} by "
                             f"nobody (owner root:root, mode 755); fix: mkdir -p {state}/{sub} "
                             f"&& chown nobody {state}/{sub}")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to hand a key to another user")
def test_keys_written_by_root_are_readable_by_the_service_user(
        open_tmp: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service_user, "SERVICE_USER", "nobody")  # the account that exists here
    tmp_path = open_tmp
    cfg = init_site(tmp_path, capsys)
    key = cfg.parent / "keys" / "epoch-1.key"
    assert key.stat().st_mode & 0o777 == 0o640 and key.stat().st_uid == 0
    assert key.stat().st_gid == service_user.account("nobody").pw_gid  # type: ignore[union-attr]
    os.chown(tmp_path / "state", service_user.account("nobody").pw_uid, -1)  # type: ignore
    for path in (cfg, cfg.parent / "policy.toml", cfg.parent / "staff.csv"):
        path.chmod(0o644)
    code, out = check(cfg, capsys, "--user", "nobody")
    assert code == 0, out
    assert main(["audit", "keygen", "--epoch", "2", "--dir", str(cfg.parent / "keys")]) == 0
    key2 = cfg.parent / "keys" / "epoch-2.key"
    assert key2.stat().st_mode & 0o777 == 0o640 and key2.stat().st_gid == key.stat().st_gid
    assert "root:nogroup" in capsys.readouterr().out


def test_every_problem_of_a_broken_staff_csv_is_named_by_line(tmp_path: Path,
                                                               capsys: Any) -> None:
    cfg = init_site(tmp_path, capsys)
    csv = cfg.parent / "staff.csv"
    csv.write_text(
        "address;role;name;private_addresses;supervisor\n"
        "director@school.example;staff;Dana Director;;\n"
        "teacher@school.example;staff;Theo;theo@home.example, t.teacher@mail.example;"
        "director@school.example\n"
        "pupil1 @leerling.school.example;pupil;Pim Pupil;;\n"
        "parent1@home;parent;Paula Parent;;\n"
        "x@school.example;staff;X;;director school.example\n"
        "teacher@school.example;staff;Theo again;;\n"
        "y@school.example;staff;Y;priv@home;\n")
    code, out = check(cfg, capsys)
    assert code == 1
    lines = [ln for ln in out.splitlines() if ln.startswith(f"{csv}: line")]
    assert [ln.split(": ")[1:3] for ln in lines] == [
        ["line 4", "address"], ["line 5", "address"], ["line 6", "supervisor"],
        ["line 7", "address"], ["line 8", "private_addresses"]]
    assert "'pupil1 @leerling.school.example'" in lines[0] and "SPACE" in lines[0]
    assert "'parent1@home'" in lines[1] and "period" in lines[1]
    assert "already on line 3" in lines[3]
    assert "5 problem(s) found" in out


def test_private_addresses_separated_by_commas_semicolons_or_spaces(tmp_path: Path,
                                                                    capsys: Any) -> None:
    from milter.directory import parse_csv

    d = parse_csv('address,role,name,private_addresses,supervisor\n'
                  'a@school.example,staff,A,"p1@x.example, p2@y.example;p3@z.example p4@w.example",'
                  '\n# a comment line\nb@school.example,staff,B,,a@school.example\n')
    person = d.lookup("a@school.example")
    assert person is not None and person.private_addresses == (
        "p1@x.example", "p2@y.example", "p3@z.example", "p4@w.example")
    assert d.owner_of_private("p3@z.example") == person


def test_an_unquoted_comma_in_a_comma_separated_file_is_named(tmp_path: Path) -> None:
    from milter.directory import DirectoryError, parse_csv

    with pytest.raises(DirectoryError) as err:
        parse_csv("address,role,name,private_addresses,supervisor\n"
                  "a@school.example,staff,A,p1@x.example,p2@y.example,\n")
    assert err.value.line == 2 and "6 fields, the header has 5" in str(err.value)


def test_a_bad_site_policy_names_the_site_file_and_key(tmp_path: Path, capsys: Any) -> None:
    cfg = init_site(tmp_path, capsys)
    site_policy = cfg.parent / "policy.toml"
    site_policy.write_text('[policy]\nextends = "skot"\ndefault_mode = "monitr"\n\n'
                           '[rules."B1.sender-domian"]\nmode = "monitor"\n'
                           '[rules."A5.media-external".params]\nbogus = 1\n')
    code, out = check(cfg, capsys)
    assert code == 1
    assert f'{site_policy}: policy.default_mode: expected "enforce" or "monitor"' in out
    assert f'{site_policy}: rules."B1.sender-domian": no such rule' in out
    assert f'{site_policy}: rules."A5.media-external".params.bogus: unknown param' in out


# --- the site policy overrides the bundled one ------------------------------------------

def test_default_mode_monitor_switches_every_rule_without_its_own_mode(tmp_path: Path) -> None:
    site = tmp_path / "policy.toml"
    site.write_text('[policy]\nextends = "skot"\ndefault_mode = "monitor"\n\n'
                    '[rules."B1.sender-domain"]\nmode = "enforce"\n\n'
                    '[rules."FWD.auto-external"]\nparams = { allowed = ["lijst@club.example"] }\n')
    bundled = policy_mod.load(BUNDLED_POLICY)
    pol = policy_mod.load(site)
    assert set(pol.rules) == set(bundled.rules) and len(pol.rules) >= 5
    assert {rid: r.mode for rid, r in pol.rules.items() if r.mode == "enforce"} == {
        "B1.sender-domain": "enforce"}
    pinned = {rid for rid, spec in tomllib.loads(BUNDLED_POLICY.read_text())["rules"].items()
              if "mode" in spec}  # the newest rules ship pinned to monitor
    assert all(r.mode == "enforce" for rid, r in bundled.rules.items() if rid not in pinned)
    assert {rid: r.mode for rid, r in pol.rules.items() if rid in pinned} == {
        rid: "monitor" for rid in pinned}
    fwd, bundled_fwd = pol.rules["FWD.auto-external"], bundled.rules["FWD.auto-external"]
    assert fwd.params["allowed"] == ["lijst@club.example"]
    # only the named parameter changed: the rest, the action and the texts are the board's
    assert {k: v for k, v in fwd.params.items() if k != "allowed"} == {
        k: v for k, v in bundled_fwd.params.items() if k != "allowed"}
    assert (fwd.action, fwd.texts) == (bundled_fwd.action, bundled_fwd.texts)


def test_policy_show_prints_the_modes_in_force(tmp_path: Path, capsys: Any) -> None:
    cfg = init_site(tmp_path, capsys)
    (cfg.parent / "policy.toml").write_text('[policy]\nextends = "skot"\ndefault_mode = '
                                            '"monitor"\n[rules."B1.sender-domain"]\n'
                                            'mode = "enforce"\n')
    assert main(["policy", "show", "--config", str(cfg)]) == 0
    rows = {ln.split()[0]: ln.split()[2] for ln in capsys.readouterr().out.splitlines()
            if not ln.startswith("#")}
    assert rows["B1.sender-domain"] == "enforce"
    assert set(rows.values()) == {"enforce", "monitor"} and list(rows.values()).count(
        "enforce") == 1


def test_no_bundled_rule_pins_enforce() -> None:
    """A bundled rule with mode = "enforce" would ignore the school's default_mode =
    "monitor" (the issue: every rule said enforce, so monitor did nothing). A rule the board
    wants tried first may pin "monitor"; a site enforces it with its own mode."""
    import tomllib

    rules = tomllib.loads(BUNDLED_POLICY.read_text())["rules"]
    assert [rid for rid, spec in rules.items() if spec.get("mode") == "enforce"] == []


def test_a_bundled_update_reaches_the_site_without_touching_its_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    newer = tmp_path / "skot.toml"
    newer.write_text(BUNDLED_POLICY.read_text().replace(
        "werkmail alleen vanaf een schooladres", "nieuwe tekst van het bestuur"))
    monkeypatch.setitem(policy_mod.BASES, "skot", newer)
    site = tmp_path / "policy.toml"
    site.write_text('[policy]\nextends = "skot"\ndefault_mode = "monitor"\n')
    before = site.read_bytes()
    pol = policy_mod.load(site)
    assert pol.rules["B1.sender-domain"].text("reason") == "nieuwe tekst van het bestuur"
    assert site.read_bytes() == before


def test_init_keeps_the_schools_files(tmp_path: Path, capsys: Any) -> None:
    cfg = init_site(tmp_path, capsys)
    (cfg.parent / "policy.toml").write_text("# ours\n")
    key = (cfg.parent / "keys" / "epoch-1.key").read_bytes()
    assert main(["init", str(cfg.parent), "--state-dir", str(tmp_path / "state")]) == 0
    out = capsys.readouterr().out
    assert (cfg.parent / "policy.toml").read_text() == "# ours\n"
    assert (cfg.parent / "keys" / "epoch-1.key").read_bytes() == key
    assert out.count("kept") == 4 and "wrote" not in out


# --- where the config comes from ---------------------------------------------------------

def test_config_from_env_and_before_the_subcommand_said_on_stderr(
        tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = init_site(tmp_path, capsys)
    monkeypatch.setenv("SKOT_MILTER_CONFIG", str(cfg))
    assert main(["quarantine", "list"]) == 0
    assert f"config {cfg} (SKOT_MILTER_CONFIG)" in capsys.readouterr().err
    monkeypatch.delenv("SKOT_MILTER_CONFIG")
    assert main(["--config", str(cfg), "quarantine", "list"]) == 0
    assert f"config {cfg} (--config)" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)
    assert main(["quarantine", "list"]) == 0
    assert "(bundled defaults)" in capsys.readouterr().err
    # an installed site (/etc/skot-milter/skot-milter.toml) comes before the bundled defaults
    from milter import config

    monkeypatch.setattr(config, "SITE_CONFIG", cfg)
    assert main(["quarantine", "list"]) == 0
    assert f"config {cfg} ({cfg.parent}/)" in capsys.readouterr().err


# --- dates and help ----------------------------------------------------------------------

NOW = datetime(2026, 11, 27, 15, 45, tzinfo=UTC)


@pytest.mark.parametrize("text,expected", [
    ("2026-11-27", "2026-11-27"), ("27-11-2026", "2026-11-27"), ("1-2-2026", "2026-02-01"),
    ("27/11/2026", "2026-11-27"), ("yesterday", "2026-11-26"), ("gisteren", "2026-11-26"),
    ("vandaag", "2026-11-27"), ("7d", "2026-11-20T15:45:00.000000Z"),
    ("24h", "2026-11-26T15:45:00.000000Z"), ("2026-11-27T10:00", "2026-11-27T10:00:00.000000Z"),
    ("2026-11-27T11:00+01:00", "2026-11-27T10:00:00.000000Z"),
])
def test_dates_admins_type(text: str, expected: str) -> None:
    assert parse_when(text, NOW) == expected


@pytest.mark.parametrize("text", ["lastweek", "31-02-2026", "11/27/2026", "2026-13-01", "7"])
def test_other_dates_are_refused_with_exit_2(text: str, capsys: Any) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["audit", "list", "--since", text])
    assert exit_.value.code == 2
    assert "--since" in capsys.readouterr().err


def test_every_option_and_positional_has_help() -> None:
    missing = []

    def walk(parser: argparse.ArgumentParser, path: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, f"{path} {name}")
            elif not isinstance(action, argparse._HelpAction) and not action.help:
                missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")

    walk(build_parser(), "skot-milter")
    assert missing == []
