"""The directory quarantine is exactly-once too: a release or delete claims the entry with
one rename, so of several at once only one goes ahead; a failed send puts it back."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from milter import config as config_mod
from milter import quarantine
from milter.quarantine import STALE_CLAIM_SECONDS, AlreadyTaken, QuarantineStore
from tests.conftest import write_config


def held(tmp_path: Path) -> tuple[QuarantineStore, str]:
    store = QuarantineStore(tmp_path / "q")
    qid = store.put("tx1", b"Subject: x\r\n\r\nhallo\r\n",
                    {"mail_from": "someone@school.example", "rcpt_tos": ["ouder@example.org"]},
                    {"rules": [], "direction": "outbound"})
    return store, qid


def test_only_one_of_many_concurrent_claims_wins(tmp_path: Path) -> None:
    store, qid = held(tmp_path)
    start = threading.Barrier(16)
    won: list[str] = []

    def claim(i: int) -> None:
        other = QuarantineStore(tmp_path / "q")  # as another process would see it
        start.wait()
        if other.claim(qid, f"admin-{i}") is not None:
            won.append(f"admin-{i}")

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(won) == 1
    assert store.get(qid) is None and store.entries() == []  # no longer held
    assert store.claim(qid, "late") is None


def test_unclaim_and_finish(tmp_path: Path) -> None:
    store, qid = held(tmp_path)
    entry = store.claim(qid, "admin")
    assert entry is not None and entry.raw.endswith(b"hallo\r\n")
    store.unclaim(entry)
    again = store.get(qid)
    assert again is not None and [e.id for e in store.entries()] == [qid]
    claimed = store.claim(qid, "admin")
    assert claimed is not None
    store.finish(claimed)
    assert store.get(qid) is None and list((tmp_path / "q").iterdir()) == []


def test_a_claim_left_by_a_dead_process_can_be_taken_again(tmp_path: Path) -> None:
    store, qid = held(tmp_path)
    assert store.claim(qid, "crashed") is not None
    claim_file = tmp_path / "q" / f".claim-{qid}" / "claim.json"
    assert store.claim(qid, "admin") is None  # a live claim is respected
    assert [e.id for e in store.in_progress()] == [qid] and store.entries() == []
    claim_file.write_text(json.dumps({"actor": "crashed",
                                      "at": time.time() - STALE_CLAIM_SECONDS - 1}))
    assert store.in_progress() == []
    assert [e.id for e in store.entries()] == [qid]  # listed (and purgeable) again
    entry = store.claim(qid, "admin")
    assert entry is not None and entry.id == qid


def test_release_that_fails_puts_it_back_and_a_second_release_is_refused(
        tmp_path: Path) -> None:
    cfg = config_mod.load(write_config(tmp_path, next_hop="smtp://127.0.0.1:1"))
    store = QuarantineStore(cfg.quarantine_dir)
    qid = store.put("tx1", b"Subject: x\r\n\r\nhallo\r\n",
                    {"mail_from": "someone@school.example", "rcpt_tos": ["ouder@example.org"]},
                    {"rules": [], "direction": "outbound"})
    entry = store.get(qid)
    assert entry is not None
    with pytest.raises(quarantine.ActionFailed, match="nothing released"):
        quarantine.release(cfg, store, entry, "admin")
    assert store.get(qid) is not None  # still held, releasable later
    quarantine.delete(cfg, store, entry, "admin")
    with pytest.raises(AlreadyTaken):
        quarantine.delete(cfg, store, entry, "admin")
    assert not any(p.name.startswith(".claim-") for p in cfg.quarantine_dir.iterdir())
