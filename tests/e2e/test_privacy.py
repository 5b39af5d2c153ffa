"""Privacy by design: the DPIA annex follows the running config, an access request finds
everything about a person (also through their private address, and who looked at it), and the
running gateway purges by itself what is past its retention, except under a legal hold."""

from __future__ import annotations

import json
import smtplib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from milter.audit.sqlite import SQLiteStore
from milter.cli import main
from milter.web import users
from tests.conftest import POLICY, make_message, write_config
from tests.e2e.conftest import GatewayThread
from tests.e2e.test_smtp_proxy import _set_internal
from tests.fixtures import files

DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"


def report(cfg: Path, capsys: Any, *extra: str) -> str:
    assert main(["privacy", "report", "--config", str(cfg), *extra]) == 0
    return str(capsys.readouterr().out)


def test_privacy_report_follows_the_running_config(tmp_path: Path, capsys: Any) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY.read_text())
    (tmp_path / "notices").symlink_to(POLICY.parent / "notices")
    cfg = write_config(tmp_path, policy=policy)
    before = report(cfg, capsys)
    assert "| B1.sender-domain | B1 | handhaven | weigeren |" in before
    assert "730 dagen; daarna gewist door de gateway zelf" in before
    assert "Onderwerpregels worden bewaard" in before
    # The school switches a rule to monitor, shortens retention, stops keeping subjects and
    # gives an auditor access: the report says so, with no code change.
    policy.write_text(POLICY.read_text()
                      .replace('[rules."B1.sender-domain"]\n',
                               '[rules."B1.sender-domain"]\nmode = "monitor"\n', 1)
                      .replace("keep_subjects = true", "keep_subjects = false"))
    cfg.write_text(cfg.read_text().replace('[audit]\n', '[audit]\nretention_days = 365\n'))
    users.add(tmp_path / "web-users.txt", "a.auditor", "auditor", "lang-en-geheim")
    after = report(cfg, capsys)
    assert "| B1.sender-domain | B1 | alleen registreren | weigeren |" in after
    assert "365 dagen" in after and "730 dagen" not in after
    assert "Onderwerpregels worden niet bewaard" in after
    assert "| a.auditor | auditor |" in after
    english = report(cfg, capsys, "--lang", "en", "--format", "html")
    assert "<td>B1.sender-domain</td><td>B1</td><td>record only</td>" in english
    assert "SQLite" in english and str(tmp_path / "audit.sqlite3") in english


def test_config_check_warns_when_retention_is_off(tmp_path: Path, capsys: Any) -> None:
    cfg = write_config(tmp_path, extra="")
    cfg.write_text(cfg.read_text().replace('[audit]\n', '[audit]\nretention_days = 0\n'))
    assert main(["config", "check", "--config", str(cfg)]) == 0
    assert "audit.retention_days = 0 keeps personal data in the audit store forever" in \
        capsys.readouterr().out


def test_access_export_finds_private_address_records_and_who_viewed_them(
        make_gateway: Any, sink: Any, tmp_path: Path, capsys: Any) -> None:
    gw: GatewayThread = make_gateway(f"smtp://127.0.0.1:{sink[1]}")
    gw.call(_set_internal(gw, []))  # loopback is an outside MTA here
    with gw.client() as c, pytest.raises(smtplib.SMTPDataError):
        c.sendmail("theo@home.example", ["pupil1@leerling.school.example"],
                   make_message(frm="Theo <theo@home.example>",
                                to="pupil1@leerling.school.example"))
    cfg = str(gw.config)
    (rec,) = [r for r in SQLiteStore(tmp_path / "audit.sqlite3", "test").records()
              if r.event == "rejected"]
    assert rec.sender == "theo@home.example"
    gw.call(gw.running.gateway.notifier.drain())  # type: ignore[union-attr]
    # An auditor looks at that record.
    assert main(["audit", "show", str(rec.id), "--config", cfg]) == 0
    # Legal holds on that one record and on his private address are part of what is kept.
    assert main(["audit", "hold", "--record", str(rec.id), "--reason", "klacht 12",
                 "--config", cfg]) == 0
    assert main(["audit", "hold", "--person", "theo@home.example", "--reason", "klacht 12",
                 "--config", cfg]) == 0
    capsys.readouterr()
    out = tmp_path / "export.json"
    assert main(["privacy", "export", "--person", "teacher@school.example", "--format",
                 "json", "--output", str(out), "--config", cfg, "--actor", "privacy-officer"]) \
        == 0
    data = json.loads(out.read_text())
    assert set(data["addresses"]) == {"teacher@school.example", "theo@home.example",
                                      "t.teacher@mail.example"}
    events = {r["event"]: r for r in data["records"]}
    assert set(events) == {"rejected", "notice-sent"}  # the decision, and the notice he got
    assert events["rejected"]["id"] == rec.id
    assert events["rejected"]["rules"][0]["id"] == "B1.private-address"
    assert events["notice-sent"]["recipients"] == ["teacher@school.example"]
    (view,) = data["views"]
    assert len(data["legal_holds"]) == 2  # each once: the record's and the person's
    assert view["event"] == "viewed" and view["what"]["ids"] == [rec.id]
    # The export is on record itself, and the HTML page is printable.
    exported = [r for r in SQLiteStore(tmp_path / "audit.sqlite3", "test").records()
                if r.event == "exported"]
    assert exported[-1].actor == "privacy-officer"
    assert main(["privacy", "export", "--person", "theo@home.example", "--config", cfg]) == 0
    page = capsys.readouterr().out
    assert "Inzageverzoek (AVG art. 15): teacher@school.example" in page
    assert "B1.private-address" in page and "@media print" in page


def test_the_running_gateway_purges_past_retention_except_legal_holds(
        make_gateway: Any, sink: Any, tmp_path: Path, capsys: Any) -> None:
    gw: GatewayThread = make_gateway(f"smtp://127.0.0.1:{sink[1]}")
    cfg = str(gw.config)
    with gw.client() as c:
        c.sendmail("someone@school.example", ["ouder@example.org"], make_message())
        c.sendmail("director@school.example", ["ouder@example.org"],
                   make_message(frm="director@school.example"))
        c.sendmail("someone@school.example", ["ouder@example.org"], files.mail_with(
            [("verslag.docx", files.docx(["x"], label="Vertrouwelijk"), DOCX)]))
    assert len(gw.running.gateway.quarantine.entries()) == 1
    assert main(["audit", "hold", "--person", "director@school.example", "--reason",
                 "arbeidsconflict", "--config", cfg]) == 0
    schedule = gw.running.retention
    assert schedule is not None
    # 29 days on: nothing is due yet.
    schedule.clock = lambda: datetime.now(UTC) + timedelta(days=29)
    assert schedule.run_now().audit_purged == 0
    # 800 days on (past the default 730 and the quarantine's 30).
    schedule.clock = lambda: datetime.now(UTC) + timedelta(days=800)
    result = schedule.run_now()
    assert result.errors == [] and result.quarantine_deleted == 1
    assert gw.running.gateway.quarantine.entries() == []
    records = list(SQLiteStore(tmp_path / "audit.sqlite3", "test").records())
    decisions = [r for r in records if r.event in ("intent", "delivered", "quarantined")]
    kept = [r for r in decisions if r.sender]
    assert kept and all(r.sender == "director@school.example" for r in kept)
    assert len(decisions) - len(kept) == 3  # someone's intent, delivered and quarantined
    assert any(r.event == "quarantine-delete" and r.actor == "retention" for r in records)
    capsys.readouterr()
    assert main(["audit", "verify", "--config", cfg]) == 0
    assert "intact" in capsys.readouterr().out


def test_purge_schedule_is_configurable(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    cfg.write_text(cfg.read_text().replace('[audit]\n', '[audit]\npurge_every_hours = 0\n'))
    gw = GatewayThread(cfg)
    try:
        assert gw.running.retention is not None and gw.running.retention.interval == 0
    finally:
        gw.stop()
