"""The quarantine: held messages, durable before the client hears 250.

One directory per message (``<id>/message.eml`` and ``<id>/meta.json``), written to a
temporary name, fsynced, then renamed and the parent fsynced: a power cut leaves either the
whole entry or none. Entries are never modified in place; release and delete are audited by
the caller.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from milter.durable import fsync_dir, write_synced

ID_CHARS = set("0123456789abcdefghijklmnopqrstuvwxyz-")


class QuarantineError(Exception):
    pass


@dataclass(frozen=True)
class Entry:
    id: str
    meta: dict[str, Any]
    path: Path

    @property
    def raw(self) -> bytes:
        return (self.path / "message.eml").read_bytes()

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, **self.meta}


class QuarantineStore:
    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def put(self, txid: str, raw: bytes, envelope_json: dict[str, Any],
            verdict_json: dict[str, Any]) -> str:
        """Store durably; return the quarantine id. Raises QuarantineError on any I/O fault."""
        qid = f"{time.strftime('%Y%m%d')}-{(txid or uuid.uuid4().hex[:12]).lower()}"
        qid = "".join(c for c in qid if c in ID_CHARS)
        meta = {"txid": txid, "stored_at": time.time(), "size": len(raw),
                "envelope": envelope_json, "verdict": verdict_json}
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            tmp = self.directory / f".tmp-{qid}-{uuid.uuid4().hex[:6]}"
            tmp.mkdir()
            write_synced(tmp / "message.eml", raw)
            write_synced(tmp / "meta.json", json.dumps(meta, sort_keys=True).encode())
            fsync_dir(tmp)
            final = self.directory / qid
            if final.exists():
                final = self.directory / f"{qid}-{uuid.uuid4().hex[:6]}"
            tmp.rename(final)
            fsync_dir(self.directory)
        except OSError as exc:
            raise QuarantineError(f"cannot store quarantined message: {exc}") from exc
        return final.name

    def get(self, qid: str) -> Entry | None:
        if not qid or not set(qid) <= ID_CHARS:
            return None
        path = self.directory / qid
        try:
            meta = json.loads((path / "meta.json").read_text())
        except (OSError, ValueError):
            return None
        return Entry(qid, meta, path)

    def entries(self) -> list[Entry]:
        if not self.directory.is_dir():
            return []
        out = []
        for child in sorted(self.directory.iterdir()):
            if child.name.startswith("."):
                continue
            entry = self.get(child.name)
            if entry is not None:
                out.append(entry)
        return out

    def delete(self, qid: str) -> bool:
        entry = self.get(qid)
        if entry is None:
            return False
        trash = self.directory / f".del-{qid}-{uuid.uuid4().hex[:6]}"
        entry.path.rename(trash)
        fsync_dir(self.directory)
        shutil.rmtree(trash, ignore_errors=True)
        return True

    def older_than(self, seconds: float, now: float | None = None) -> list[Entry]:
        cutoff = (now if now is not None else time.time()) - seconds
        return [e for e in self.entries() if float(e.meta.get("stored_at", 0)) < cutoff]
