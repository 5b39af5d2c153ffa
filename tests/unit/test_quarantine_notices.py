"""An admin releases or deletes a held message (CLI and web call ``milter.quarantine``): the
sender hears about it, in their language, and the notice is on record. A purge by the
retention period is not announced again (the quarantine notice gave its date)."""

from __future__ import annotations

from email import message_from_bytes
from email import policy as email_policy
from pathlib import Path
from typing import Any

import pytest

from milter import config as config_mod
from milter import quarantine
from milter.audit.sqlite import SQLiteStore
from milter.quarantine import QuarantineStore
from tests.conftest import make_message, write_config


def held(tmp_path: Path,
         sender: str = "someone@school.example") -> tuple[Any, QuarantineStore, Any]:
    cfg = config_mod.load(write_config(tmp_path))
    store = QuarantineStore(cfg.quarantine_dir)
    qid = store.put("01held", make_message(subject="Verslag groep 5"),
                    {"mail_from": sender, "rcpt_tos": ["ouder@example.org"]},
                    {"rules": [{"id": "A1.confidential-attachment"}], "direction": "outbound"})
    entry = store.get(qid)
    assert entry is not None
    return cfg, store, entry


def delivered(tmp_path: Path) -> list[Any]:
    new = tmp_path / "maildir" / "new"
    return [message_from_bytes(p.read_bytes(), policy=email_policy.default)
            for p in sorted(new.iterdir())] if new.is_dir() else []


def notices(tmp_path: Path) -> list[Any]:
    return [m for m in delivered(tmp_path) if m["X-SKOT-Notice"]]


def events(tmp_path: Path) -> list[tuple[str, str, tuple[str, ...]]]:
    return [(r.event, r.txid, r.recipients)
            for r in SQLiteStore(tmp_path / "audit.sqlite3", "test").records()]


def test_release_tells_the_sender_and_is_on_record(tmp_path: Path) -> None:
    cfg, store, entry = held(tmp_path)
    quarantine.release(cfg, store, entry, "cli:admin")
    (notice,) = notices(tmp_path)
    assert notice["To"] == "someone@school.example"
    assert notice["Subject"] == "[Mailcontrole] Je bericht is alsnog verstuurd: Verslag groep 5"
    text = notice.get_body(("plain",)).get_content()
    assert text.startswith("Beste Sam Someone,")
    assert "De beheerder heeft je tegengehouden bericht bekeken en vrijgegeven." in text
    assert "Referentie: 01held" in text and "ouder@example.org" in text
    assert events(tmp_path) == [
        ("quarantine-release", "01held", ("ouder@example.org",)),
        ("notice-sent", "01held", ("someone@school.example",))]


def test_delete_tells_the_sender(tmp_path: Path) -> None:
    cfg, store, entry = held(tmp_path)
    quarantine.delete(cfg, store, entry, "web:bert")
    (notice,) = notices(tmp_path)
    assert notice["Subject"] == ("[Mailcontrole] Je tegengehouden bericht is verwijderd: "
                                 "Verslag groep 5")
    text = notice.get_body(("plain",)).get_content()
    assert "De beheerder heeft je tegengehouden bericht bekeken en verwijderd." in text
    assert "Het is niet verstuurd." in text
    assert [e[0] for e in events(tmp_path)] == ["quarantine-delete", "notice-sent"]
    assert store.get(entry.id) is None


def test_purge_by_retention_sends_nothing_new(tmp_path: Path) -> None:
    cfg, store, entry = held(tmp_path)
    assert quarantine.purge(cfg, store) == 0  # not old yet
    old = store.older_than(-1)
    for e in old:
        quarantine.delete(cfg, store, e, "retention", "retention period passed", notify=False)
    assert notices(tmp_path) == []
    assert [e[0] for e in events(tmp_path)] == ["quarantine-delete"]


@pytest.mark.parametrize("sender", ["someone@gmail.example", ""])
def test_no_notice_outside_the_school_or_for_bounces(tmp_path: Path, sender: str) -> None:
    cfg, store, entry = held(tmp_path, sender=sender)
    quarantine.delete(cfg, store, entry, "cli:admin")
    assert notices(tmp_path) == []
    assert [e[0] for e in events(tmp_path)] == ["quarantine-delete"]


def test_a_notice_that_fails_is_on_record_and_the_action_stands(tmp_path: Path) -> None:
    cfg, store, entry = held(tmp_path)
    (tmp_path / "maildir").mkdir(exist_ok=True)
    (tmp_path / "maildir" / "tmp").write_text("not a directory")  # the maildir is broken
    quarantine.delete(cfg, store, entry, "cli:admin")
    assert store.get(entry.id) is None
    assert [e[0] for e in events(tmp_path)] == ["quarantine-delete", "notice-failed"]
