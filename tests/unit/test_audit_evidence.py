"""Signed checkpoints, legal holds, retention purge and the per-person report."""

from __future__ import annotations

import csv
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from milter.audit import checkpoint
from milter.audit.sqlite import SQLiteStore
from milter.audit.store import AuditEvent
from milter.cli import main
from tests.conftest import write_config


def violation(who: str, tx: str, subject: str = "Rapport") -> AuditEvent:
    return AuditEvent(event="quarantined", txid=tx, sender=who, action="quarantine",
                      recipients=("ouder@example.org",), subject=subject,
                      rules=({"id": "A1.confidential-attachment", "article": "A1",
                              "action": "quarantine", "mode": "enforce"},))


@pytest.fixture
def setup(tmp_path: Path) -> dict[str, Any]:
    keys = tmp_path / "keys"
    checkpoint.generate(keys, 1, valid_from="2020-01-01T00:00:00Z")
    (tmp_path / "trusted").mkdir()
    (tmp_path / "trusted" / "epoch-1.pub").write_text((keys / "epoch-1.pub").read_text())
    cfg = write_config(tmp_path, extra="")
    text = cfg.read_text().replace('url = "sqlite:///audit.sqlite3"',
                                   'url = "sqlite:///audit.sqlite3"\n'
                                   'checkpoint_key = "keys/epoch-1.key"\n'
                                   'checkpoint_dir = "checkpoints"\ntrusted_keys = "trusted"\n'
                                   'retention_days = 30')
    cfg.write_text(text)
    store = SQLiteStore(tmp_path / "audit.sqlite3", "test")
    for i in range(4):
        store.append(violation("someone@school.example", f"t{i}"))
    assert main(["audit", "checkpoint", "--config", str(cfg)]) == 0  # as the gateway would
    return {"cfg": str(cfg), "store": store, "tmp": tmp_path, "keys": keys}


def rewrite_consistently(db: Path) -> None:
    """What a database owner could do: rewrite a record and recompute the whole chain."""
    from milter.audit.sql import decode, encode
    from milter.audit.store import GENESIS, AuditEvent, seal

    con = sqlite3.connect(db)
    con.execute("DROP TRIGGER records_no_update")
    rows = con.execute("SELECT * FROM records ORDER BY seq").fetchall()
    prev = GENESIS
    for row in rows:
        rec = decode(row)
        sender = "someone-else@school.example" if rec.seq == 2 else rec.sender
        ev = AuditEvent(**{k: getattr(rec, k) for k in AuditEvent.__dataclass_fields__
                           if k != "sender"}, sender=sender)
        new = seal(ev, rec.chain, rec.seq, prev, rec.ts)
        values = encode(new)
        con.execute(f"UPDATE records SET {', '.join(f'{k} = ?' for k in values)} WHERE id = ?",
                    (*values.values(), rec.id))
        prev = new.hash
    con.commit()
    con.close()


def test_checkpoint_written_and_verified(setup: dict[str, Any], capsys: Any) -> None:
    assert main(["audit", "checkpoint", "--config", setup["cfg"]]) == 0
    assert main(["audit", "verify", "--config", setup["cfg"]]) == 0
    assert "1 checkpoint(s) checked" in capsys.readouterr().out


def test_consistent_rewrite_caught_by_checkpoint(setup: dict[str, Any], capsys: Any) -> None:
    assert main(["audit", "checkpoint", "--config", setup["cfg"]]) == 0
    (cp_file,) = (setup["tmp"] / "checkpoints").iterdir()
    rewrite_consistently(setup["tmp"] / "audit.sqlite3")
    assert setup["store"].verify().ok  # the chain alone cannot tell
    capsys.readouterr()
    assert main(["audit", "verify", "--config", setup["cfg"], "--checkpoint",
                 str(cp_file)]) == 1
    assert "no longer holds chain 'test' up to seq=4" in capsys.readouterr().out


def test_checkpoint_resigned_with_later_epoch_key_rejected(setup: dict[str, Any],
                                                           capsys: Any) -> None:
    keys, tmp = setup["keys"], setup["tmp"]
    checkpoint.generate(keys, 2, valid_from="2030-01-01T00:00:00Z")
    (tmp / "trusted" / "epoch-2.pub").write_text((keys / "epoch-2.pub").read_text())
    later = checkpoint.load_signing_key(keys / "epoch-2.key")
    head = setup["store"].last("test")
    forged = checkpoint.sign(later, "test", head.seq, head.hash, time="2025-06-01T00:00:00Z")
    forged_epoch1 = dict(forged, epoch=1)
    forged_epoch1["signature"] = checkpoint.sign(later, "test", head.seq, head.hash,
                                                 time="2025-06-01T00:00:00Z")["signature"]
    trusted = checkpoint.load_trusted(tmp / "trusted")
    assert "outside the validity" in (checkpoint.check(forged, trusted) or "")
    assert checkpoint.check(forged_epoch1, trusted) is not None
    path = tmp / "forged.json"
    path.write_text(json.dumps(forged))
    assert main(["audit", "verify", "--config", setup["cfg"], "--checkpoint", str(path)]) == 1


def test_tampered_checkpoint_signature_rejected(setup: dict[str, Any]) -> None:
    key = checkpoint.load_signing_key(setup["keys"] / "epoch-1.key")
    cp = checkpoint.sign(key, "test", 4, "0" * 64)
    cp["seq"] = 3
    trusted = checkpoint.load_trusted(setup["tmp"] / "trusted")
    assert checkpoint.check(cp, trusted) == "signature does not verify"


@pytest.mark.parametrize("content", [
    "[1, 2]", '"x"', "{}", '{"chain": "test", "seq": "4"}',
    '{"version": 1, "chain": "test", "seq": 4, "head": "00", "time": "yesterday", "epoch": 1,'
    ' "key_id": "k", "signature": "AA=="}',
])
def test_malformed_checkpoint_named_not_crashing(setup: dict[str, Any], capsys: Any,
                                                 content: str) -> None:
    path = setup["tmp"] / "odd.json"
    path.write_text(content)
    assert main(["audit", "verify", "--config", setup["cfg"], "--checkpoint", str(path)]) == 1
    assert f"checkpoint: {path}: not a checkpoint" in capsys.readouterr().out


def sign_at(setup: dict[str, Any], seq: int, time: str) -> Path:
    key = checkpoint.load_signing_key(setup["keys"] / "epoch-1.key")
    rec = setup["store"].at("test", seq)
    return checkpoint.write(checkpoint.sign(key, "test", seq, rec.hash, time=time),
                            setup["tmp"] / "exported")


def test_checkpoints_checked_in_chain_order_whatever_the_argument_order(
        setup: dict[str, Any], capsys: Any) -> None:
    first = sign_at(setup, 2, "2099-01-01T00:00:00Z")
    second = sign_at(setup, 4, "2099-01-02T00:00:00Z")
    assert main(["audit", "verify", "--config", setup["cfg"], "--checkpoint", str(second),
                 "--checkpoint", str(first)]) == 0
    assert "2 checkpoint(s) checked" in capsys.readouterr().out


def test_redated_checkpoint_breaks_continuity(setup: dict[str, Any], capsys: Any) -> None:
    first = sign_at(setup, 2, "2099-01-02T00:00:00Z")
    second = sign_at(setup, 4, "2099-01-01T00:00:00Z")  # covers more, claims to be older
    assert main(["audit", "verify", "--config", setup["cfg"], "--checkpoint", str(first),
                 "--checkpoint", str(second)]) == 1
    assert f"checkpoint: {second}: dated 2099-01-01T00:00:00Z, before {first}" in (
        capsys.readouterr().out)


def test_checkpoint_dated_before_its_record_rejected(setup: dict[str, Any],
                                                     capsys: Any) -> None:
    early = sign_at(setup, 4, "2021-01-01T00:00:00Z")  # inside the key's epoch, before seq 4
    assert main(["audit", "verify", "--config", setup["cfg"], "--checkpoint", str(early)]) == 1
    assert "before record seq=4 it vouches for was written" in capsys.readouterr().out


def test_gateway_checkpointer_exports_every_n_records(tmp_path: Path) -> None:
    from milter.audit.checkpoint import Checkpointer

    checkpoint.generate(tmp_path / "k", 1, valid_from="2020-01-01T00:00:00Z")
    cp = Checkpointer(checkpoint.load_signing_key(tmp_path / "k" / "epoch-1.key"),
                      tmp_path / "out", every=3, minutes=60)
    store = SQLiteStore(tmp_path / "a.sqlite3", "n")
    for i in range(7):
        rec = store.append(violation("a@school.example", f"x{i}"))
        cp.seen(rec, 1)
    # the first record at once (a new trail is never without a checkpoint), then every 3
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "checkpoint-n-000000000001.json", "checkpoint-n-000000000004.json",
        "checkpoint-n-000000000007.json"]


def test_intent_without_outcome_is_flagged(setup: dict[str, Any], capsys: Any) -> None:
    setup["store"].append(AuditEvent(event="intent", txid="lost"))
    assert main(["audit", "verify", "--config", setup["cfg"]]) == 0
    assert "intent for ref=lost has no outcome" in capsys.readouterr().out


def test_purge_respects_legal_hold_and_chain_verifies(setup: dict[str, Any],
                                                      capsys: Any) -> None:
    store = setup["store"]
    store.append(violation("held@school.example", "h1"))
    assert main(["audit", "hold", "--config", setup["cfg"], "--person", "held@school.example",
                 "--reason", "klacht 2026-17"]) == 0
    assert main(["audit", "purge", "--config", setup["cfg"], "--before",
                 "2999-01-01"]) == 0
    assert "purged personal fields of 4 record(s)" in capsys.readouterr().out
    rows = list(store.records())
    assert [r.sender for r in rows if r.event == "quarantined"] == ["", "", "", "",
                                                                   "held@school.example"]
    assert rows[-1].event == "purge" and rows[-1].evidence["records"] == 4
    assert main(["audit", "verify", "--config", setup["cfg"]]) == 0


def test_purge_by_hand_without_purge_record_is_caught(setup: dict[str, Any]) -> None:
    con = sqlite3.connect(setup["tmp"] / "audit.sqlite3")
    con.execute("UPDATE records SET sender='', recipients='[]', subject='', rules='[]', "
                "purged=1 WHERE seq=2")  # the trigger allows a purge-shaped update...
    con.commit()
    con.close()
    result = setup["store"].verify()
    assert not result.ok  # ...but no purge record covers it
    assert "without a purge covering it" in result.problems[0]


def test_failed_purge_leaves_nothing_half_done(setup: dict[str, Any], monkeypatch: Any) -> None:
    from milter.audit import sql

    def broken_seal(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("disk full while sealing the purge record")

    monkeypatch.setattr(sql, "seal", broken_seal)
    with pytest.raises(RuntimeError, match="disk full"):
        setup["store"].purge("2999-01-01", set(), set(), "retention")
    monkeypatch.undo()
    assert [r.sender for r in setup["store"].records()] == ["someone@school.example"] * 4
    assert setup["store"].verify().ok


def test_report_html_and_csv(setup: dict[str, Any], tmp_path: Path, capsys: Any) -> None:
    store = setup["store"]
    store.append(violation("other@school.example", "o1"))
    out = tmp_path / "report.html"
    assert main(["audit", "report", "--config", setup["cfg"], "--person",
                 "someone@school.example", "--format", "html", "-o", str(out)]) == 0
    page = out.read_text()
    assert page.count("A1.confidential-attachment") == 4 and "o1" not in page
    assert "intact" in page and "someone@school.example" in page
    assert main(["audit", "report", "--config", setup["cfg"], "--person",
                 "someone@school.example", "--format", "csv"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("date,rule,article,mode,action,outcome,recipients,subject")
    assert len([x for x in lines if "A1.confidential-attachment" in x]) == 4
    assert lines[-1].startswith("# chain verification") and "intact" in lines[-1]
    assert "1 signed checkpoint(s) hold" in lines[-1]  # the one the fixture signed
    assert any(r.event == "exported" and r.evidence.get("command") == "report"
               for r in store.records())


def test_report_holds_only_what_the_person_is_answerable_for(setup: dict[str, Any],
                                                              capsys: Any) -> None:
    store = setup["store"]
    spoof = {"id": "B1.spoofed-school-domain", "article": "B1", "action": "reject",
             "mode": "enforce"}
    store.append(AuditEvent(event="rejected", txid="spoof1", sender="boef@evil.example",
                            recipients=("someone@school.example",), rules=(spoof,),
                            action="reject", direction="inbound"))
    private = {"id": "B1.private-address", "article": "B1", "action": "reject",
               "mode": "enforce", "evidence": {"staff_member": "someone@school.example"}}
    store.append(AuditEvent(event="rejected", txid="priv1", sender="sam.someone@gmail.example",
                            recipients=("pupil1@leerling.school.example",), rules=(private,),
                            action="reject", direction="inbound"))
    assert main(["audit", "checkpoint", "--config", setup["cfg"]]) == 0
    capsys.readouterr()
    assert main(["audit", "report", "--config", setup["cfg"], "--person",
                 "Someone@School.example", "--format", "csv"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    refs = [row["reference"] for row in csv.DictReader(lines[:-1])]
    assert refs == ["t0", "t1", "t2", "t3", "priv1"]  # not the spoofed mail sent to them
    assert "intact" in lines[-1] and "2 signed checkpoint(s) hold" in lines[-1]
