"""Quarantine over SMTP: held durably (client 250, next hop nothing), listed, released
unchanged, deleted, purged; every step in the audit store."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from milter.audit.sqlite import SQLiteStore
from milter.cli import main
from tests.e2e.conftest import GatewayThread
from tests.fixtures import files

DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"


def confidential() -> bytes:
    return files.mail_with([("verslag.docx", files.docx(["x"], label="Vertrouwelijk"), DOCX)])


def audit_events(tmp_path: Path) -> list[tuple[str, str]]:
    store = SQLiteStore(tmp_path / "audit.sqlite3", "test")
    out = [(r.event, r.actor) for r in store.records() if not r.event.startswith("notice-")]
    store.close()
    return out


def delivered(sink: Any) -> list[Any]:
    """What reached the next hop, leaving out the notices to staff (tested elsewhere)."""
    return [m for m in sink[0].messages if b"X-SKOT-Notice:" not in m.content]


def held(gateway: GatewayThread, capsys: Any) -> list[dict[str, Any]]:
    capsys.readouterr()
    assert main(["quarantine", "list", "--config", str(gateway.config), "--json"]) == 0
    items: list[dict[str, Any]] = json.loads(capsys.readouterr().out)
    return items


def test_quarantine_hold_list_release(gateway: GatewayThread, sink: Any, tmp_path: Path,
                                      capsys: Any) -> None:
    raw = confidential()
    with gateway.client() as c:
        c.ehlo()
        c.mail("someone@school.example")
        c.rcpt("ouder@example.org")
        code, msg = c.data(raw)
    assert code == 250 and b"held for review" in msg
    assert delivered(sink) == []
    items = held(gateway, capsys)
    assert len(items) == 1 and items[0]["envelope"]["rcpt_tos"] == ["ouder@example.org"]
    assert items[0]["verdict"]["rules"][0]["id"] == "A1.confidential-attachment"
    qid = items[0]["id"]
    assert main(["quarantine", "show", "--config", str(gateway.config), qid]) == 0
    assert "verslag.docx" in capsys.readouterr().out
    assert main(["quarantine", "release", "--config", str(gateway.config), "--actor",
                 "admin@school.example", qid]) == 0
    (got,) = delivered(sink)
    assert got.content == raw  # the original bytes, unchanged
    assert got.mail_from == "someone@school.example" and got.rcpt_tos == ["ouder@example.org"]
    assert held(gateway, capsys) == []
    assert audit_events(tmp_path) == [("quarantined", ""),
                                      ("quarantine-release", "admin@school.example")]
    assert main(["audit", "verify", "--config", str(gateway.config)]) == 0


def test_quarantine_delete_and_purge_audited(gateway: GatewayThread, sink: Any, tmp_path: Path,
                                             capsys: Any) -> None:
    with gateway.client() as c:
        for _ in range(2):
            c.sendmail("someone@school.example", ["ouder@example.org"], confidential())
    first, second = (i["id"] for i in held(gateway, capsys))
    assert main(["quarantine", "delete", "--config", str(gateway.config), "--actor", "it",
                 first]) == 0
    # age the other one past the retention period
    meta = Path(gateway.running.gateway.quarantine.directory) / second / "meta.json"
    data = json.loads(meta.read_text())
    data["stored_at"] = time.time() - 31 * 86400
    meta.write_text(json.dumps(data))
    os.sync()
    assert main(["quarantine", "purge", "--config", str(gateway.config)]) == 0
    assert held(gateway, capsys) == []
    assert [e for e in audit_events(tmp_path) if e[0] != "quarantined"] == [
        ("quarantine-delete", "it"), ("quarantine-delete", "retention")]
    assert delivered(sink) == []


def test_quarantine_store_failure_gives_451(gateway: GatewayThread, sink: Any) -> None:
    qdir = Path(gateway.running.gateway.quarantine.directory)
    qdir.parent.mkdir(parents=True, exist_ok=True)
    qdir.write_text("not a directory")  # the store cannot write
    with gateway.client() as c:
        c.ehlo()
        c.mail("someone@school.example")
        c.rcpt("ouder@example.org")
        code, msg = c.data(confidential())
    assert code == 451 and msg.startswith(b"4.3.0")
    assert delivered(sink) == []


def test_a_message_not_on_record_is_not_kept_twice(gateway: GatewayThread, sink: Any,
                                                   tmp_path: Path) -> None:
    """Held, but the audit store refused the record: the client hears 451 and retries, so
    the copy is not kept (else every retry would leave one more held message)."""
    import sqlite3

    con = sqlite3.connect(tmp_path / "audit.sqlite3")
    con.execute("CREATE TRIGGER deny BEFORE INSERT ON records "
                "BEGIN SELECT RAISE(ABORT, 'disk full'); END")
    con.commit()
    raw = confidential()
    with gateway.client() as c:
        c.ehlo()
        c.mail("someone@school.example")
        c.rcpt("ouder@example.org")
        code, msg = c.data(raw)
    assert code == 451 and b"Audit store unavailable" in msg
    assert gateway.running.gateway.quarantine.entries() == []
    con.execute("DROP TRIGGER deny")
    con.commit()
    con.close()
    with gateway.client() as c:
        c.ehlo()
        c.mail("someone@school.example")
        c.rcpt("ouder@example.org")
        code, msg = c.data(raw)
    assert code == 250
    assert len(gateway.running.gateway.quarantine.entries()) == 1
