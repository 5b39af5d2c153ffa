"""Issue 13 item 9: with the bundled defaults, truncation, forged appends, a deleted middle
row re-chained, and removed checkpoints all make ``audit verify`` fail (exit 1, naming what
is missing). Before: "intact" for each, since checkpoints were off by default."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from milter.audit.sql import decode, encode
from milter.audit.store import GENESIS, AuditEvent, seal
from milter.cli import main
from tests.conftest import make_message, write_config
from tests.e2e.conftest import GatewayThread


def run_gateway(tmp_path: Path, audit: str = "", messages: int = 5) -> Path:
    """A gateway with the bundled audit defaults (no key, no checkpoint settings) unless
    ``audit`` adds to [audit], some messages, then a clean stop."""
    cfg = write_config(tmp_path)
    cfg.write_text(cfg.read_text().replace('url = "sqlite:///audit.sqlite3"',
                                           'url = "sqlite:///audit.sqlite3"\n' + audit))
    gw = GatewayThread(cfg)
    try:
        with gw.client() as c:
            for _ in range(messages):
                c.sendmail("someone@school.example", ["ouder@example.org"], make_message())
    finally:
        gw.stop()
    return cfg


def verify(cfg: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["audit", "verify", "--config", str(cfg)])
    return code, capsys.readouterr().out


def rechain(db: Path, change: Callable[[list[Any]], list[Any]]) -> None:
    """What the owner of the database can do without the key: change the rows, then
    recompute every hash so that the chain itself verifies."""
    con = sqlite3.connect(db)
    con.execute("DROP TRIGGER records_no_update")
    con.execute("DROP TRIGGER records_no_delete")
    recs = change([decode(r) for r in con.execute(
        "SELECT * FROM records ORDER BY seq").fetchall()])
    con.execute("DELETE FROM records")
    prev = GENESIS
    for seq, rec in enumerate(recs, start=1):
        ev = AuditEvent(**{k: getattr(rec, k) for k in AuditEvent.__dataclass_fields__})
        new = seal(ev, rec.chain, seq, prev, rec.ts)
        values = encode(new)
        con.execute(f"INSERT INTO records ({', '.join(values)}) VALUES "
                    f"({', '.join('?' * len(values))})", tuple(values.values()))
        prev = new.hash
    con.commit()
    con.close()


def test_defaults_sign_and_verify_says_intact(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    cfg = run_gateway(tmp_path)
    assert (tmp_path / "audit-keys" / "epoch-1.key").exists()
    kinds = sorted(p.name.rsplit("-", 1)[-1] for p in (tmp_path / "checkpoints").iterdir())
    assert "stop.json" in kinds
    code, out = verify(cfg, capsys)
    assert code == 0 and out.startswith("intact: 10 records"), out


@pytest.mark.parametrize("attack", ["truncate", "forge", "delete-middle"])
def test_rewrites_after_a_clean_stop_fail(tmp_path: Path, attack: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    cfg = run_gateway(tmp_path)
    db = tmp_path / "audit.sqlite3"
    if attack == "truncate":      # the last two rows deleted
        rechain(db, lambda recs: recs[:-2])
    elif attack == "forge":       # a delivery that never happened, hash recomputed
        rechain(db, lambda recs: recs + [recs[-1]])
    else:                         # a middle row gone, the rest re-chained
        rechain(db, lambda recs: recs[:4] + recs[5:])
    code, out = verify(cfg, capsys)
    assert code == 1, out
    assert out.startswith("BROKEN")
    assert "no longer holds" in out or "stopped cleanly" in out, out


def test_records_after_a_clean_stop_fail(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """Appended through the store's own code (valid chain), after the gateway stopped."""
    from milter.audit.sqlite import SQLiteStore

    cfg = run_gateway(tmp_path)
    store = SQLiteStore(tmp_path / "audit.sqlite3", "test")
    store.append(AuditEvent(event="delivered", txid="forged", sender="x@school.example"))
    store.close()
    code, out = verify(cfg, capsys)
    assert code == 1 and "1 record(s) after seq=10, where the gateway stopped cleanly" in out


def test_removed_checkpoints_fail(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = run_gateway(tmp_path, audit="checkpoint_every = 2")
    cps = sorted((tmp_path / "checkpoints").iterdir())
    assert len(cps) >= 4
    cps[1].unlink()                       # one in the middle
    code, out = verify(cfg, capsys)
    assert code == 1 and "that is missing (removed?)" in out, out
    for p in (tmp_path / "checkpoints").iterdir():
        p.unlink()                        # all of them
    code, out = verify(cfg, capsys)
    assert code == 1 and "no signed checkpoint: completeness cannot be proven" in out, out


def test_the_copy_off_the_box_shows_what_was_removed_here(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """With [audit] checkpoint_copy, every checkpoint is also written there (the auditors'
    share); removing the newest ones here (and the rows they cover) is caught by the copy."""
    copy = tmp_path / "auditors"
    cfg = run_gateway(tmp_path, audit=f'checkpoint_copy = "{copy}"', messages=1)
    assert sorted(p.name for p in copy.iterdir()) == sorted(
        p.name for p in (tmp_path / "checkpoints").iterdir())
    for p in (tmp_path / "checkpoints").iterdir():
        p.unlink()
    code, out = verify(cfg, capsys)
    assert code == 1 and "missing from" in out, out


def test_config_check_says_where_the_key_is(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path)
    assert main(["config", "check", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert str(tmp_path / "audit-keys") in out and "auditors" in out
