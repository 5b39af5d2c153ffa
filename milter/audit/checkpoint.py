"""Signed checkpoints: proof, kept outside the database, of what the chain held and when.

A hash chain alone does not stop whoever owns the database from rewriting it consistently.
Every N records or minutes the gateway signs (Ed25519) its chain head with a key kept outside
the database and exports the checkpoint. Keys have epochs: a checkpoint names its epoch and
must be signed by that epoch's key and dated inside that key's validity, so a key stolen
later cannot re-sign history (the journald CVE-2023-31439 lesson).

Each checkpoint names its kind (``start``, ``periodic``, ``stop`` at a clean shutdown,
``manual``) and the checkpoint before it (``prev``: seq and head), so ``audit verify`` notices
a checkpoint that disappeared, and a head past the ``stop`` checkpoint of a clean shutdown.
Checkpoints are also written to ``[audit] checkpoint_copy`` (another disk, a share the
auditors own): the copy off the box is what a root user on the gateway cannot rewrite.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from milter.audit.store import AuditRecord, canonical
from milter.durable import replace_synced

log = logging.getLogger("skot-milter")


@dataclass(frozen=True)
class SigningKey:
    key_id: str
    epoch: int
    valid_from: str
    private: Ed25519PrivateKey


@dataclass(frozen=True)
class TrustedKey:
    key_id: str
    epoch: int
    valid_from: str
    public: Ed25519PublicKey


def _key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def generate(directory: Path, epoch: int, valid_from: str | None = None) -> tuple[Path, Path]:
    """Write ``epoch-N.key`` (private, mode 600) and ``epoch-N.pub`` (for the auditors)."""
    directory.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pub = key.public_key()
    meta = {"key_id": _key_id(pub), "epoch": epoch, "valid_from": valid_from or _now()}
    seed = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                             serialization.NoEncryption())
    raw_pub = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    priv_path, pub_path = directory / f"epoch-{epoch}.key", directory / f"epoch-{epoch}.pub"
    replace_synced(priv_path, json.dumps({**meta, "private": base64.b64encode(seed).decode()})
                .encode(), 0o600)
    replace_synced(pub_path, json.dumps({**meta, "public": base64.b64encode(raw_pub).decode()})
                .encode())
    return priv_path, pub_path


def load_signing_key(path: Path) -> SigningKey:
    d = json.loads(path.read_text())
    key = Ed25519PrivateKey.from_private_bytes(base64.b64decode(d["private"]))
    if _key_id(key.public_key()) != d["key_id"]:
        raise ValueError(f"{path}: key_id does not match the key")
    return SigningKey(d["key_id"], int(d["epoch"]), d["valid_from"], key)


def load_trusted(directory: Path) -> dict[str, TrustedKey]:
    keys: dict[str, TrustedKey] = {}
    for p in sorted(directory.glob("*.pub")):
        d = json.loads(p.read_text())
        pub = Ed25519PublicKey.from_public_bytes(base64.b64decode(d["public"]))
        if _key_id(pub) != d["key_id"]:
            raise ValueError(f"{p}: key_id does not match the key")
        keys[d["key_id"]] = TrustedKey(d["key_id"], int(d["epoch"]), d["valid_from"], pub)
    return keys


def _body(cp: dict[str, Any]) -> bytes:
    return canonical({k: v for k, v in cp.items() if k != "signature"})


KINDS = ("start", "periodic", "stop", "manual")


def sign(key: SigningKey, chain: str, seq: int, head: str, time: str | None = None,
         kind: str = "manual", prev: dict[str, Any] | None = None) -> dict[str, Any]:
    cp: dict[str, Any] = {"version": 2, "chain": chain, "seq": seq, "head": head,
                          "time": time or _now(), "epoch": key.epoch, "key_id": key.key_id,
                          "kind": kind, "prev": prev}
    cp["signature"] = base64.b64encode(key.private.sign(_body(cp))).decode()
    return cp


def write(cp: dict[str, Any], directory: Path, copies: tuple[Path, ...] = ()) -> Path:
    """Write ``cp`` durably into ``directory``, then into each copy (a copy that cannot be
    written is logged: the checkpoint itself is safe)."""
    name = f"checkpoint-{cp['chain']}-{cp['seq']:012d}" + (
        f"-{cp['kind']}" if cp.get("kind") not in (None, "periodic") else "") + ".json"
    data = json.dumps(cp, sort_keys=True, indent=1).encode()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    replace_synced(path, data)
    for copy in copies:
        try:
            copy.mkdir(parents=True, exist_ok=True)
            replace_synced(copy / name, data)
        except OSError as exc:
            log.error("cannot copy audit checkpoint to %s: %s", copy, exc)
    return path


def newest(directory: Path, chain: str) -> dict[str, Any] | None:
    """The checkpoint of ``chain`` with the highest seq (latest time among equals) in
    ``directory``, unchecked (for ``prev``); None when there is none."""
    best: tuple[int, str] | None = None
    found: dict[str, Any] | None = None
    for p in directory.glob(f"checkpoint-{chain}-*.json"):
        try:
            cp = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if malformed(cp) or cp["chain"] != chain:
            continue
        rank = (cp["seq"], cp["time"])
        if best is None or rank > best:
            best, found = rank, cp
    return found


def ensure_key(directory: Path) -> tuple[Path, bool]:
    """The newest ``epoch-N.key`` in ``directory``; one for epoch 1 is created when there
    is none (tamper evidence by default). Returns the path and whether it was created."""
    keys = sorted(directory.glob("epoch-*.key"),
                  key=lambda p: int(p.stem.split("-")[1]) if p.stem.split("-")[1].isdigit()
                  else -1)
    if keys:
        return keys[-1], False
    priv, _ = generate(directory, 1)
    return priv, True


FIELDS = {"version": int, "chain": str, "seq": int, "head": str, "time": str, "epoch": int,
          "key_id": str, "signature": str}


def parse_time(value: str) -> datetime:
    """An ISO 8601 UTC time; compared as a time, never as a string an attacker chose."""
    t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if t.tzinfo is None:
        raise ValueError(f"time {value!r} has no time zone")
    return t.astimezone(UTC)


def malformed(cp: Any) -> str | None:
    """None if ``cp`` has the shape of a checkpoint, else what is wrong with it."""
    if not isinstance(cp, dict):
        return "not a checkpoint (expected a JSON object)"
    for name, kind in FIELDS.items():
        v = cp.get(name)
        if not isinstance(v, kind) or isinstance(v, bool):
            return f"not a checkpoint: field {name!r} missing or not a {kind.__name__}"
    try:
        parse_time(cp["time"])
    except ValueError:
        return f"not a checkpoint: time {cp['time']!r} is not an ISO 8601 UTC time"
    return None


def check(cp: Any, trusted: dict[str, TrustedKey]) -> str | None:
    """None if the checkpoint is authentic, else why not."""
    bad = malformed(cp)
    if bad:
        return bad
    key = trusted.get(cp["key_id"])
    if key is None:
        return f"signed by unknown key {cp['key_id']!r}"
    try:
        key.public.verify(base64.b64decode(cp["signature"], validate=True), _body(cp))
    except (InvalidSignature, ValueError):
        return "signature does not verify"
    if cp["epoch"] != key.epoch:
        return f"claims epoch {cp['epoch']} but is signed with the epoch-{key.epoch} key"
    later = [parse_time(k.valid_from) for k in trusted.values() if k.epoch > key.epoch]
    until = min(later, default=None)
    when = parse_time(cp["time"])
    if when < parse_time(key.valid_from) or (until is not None and when >= until):
        return (f"dated {cp['time']}, outside the validity of the epoch-{key.epoch} key "
                f"(re-signed with a later key?)")
    return None


class Checkpointer:
    """Signs and exports the chain head at start, every N records or minutes (``[audit]
    checkpoint_*``) and at a clean shutdown; each names the one before it."""

    def __init__(self, key: SigningKey, directory: Path, every: int, minutes: float,
                 copies: tuple[Path, ...] = (),
                 also: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.key, self.directory, self.every, self.seconds = key, directory, every, minutes * 60
        self.copies = copies
        self.count = 0
        self.last = time.monotonic()
        # Where else a checkpoint is kept (the shared PostgreSQL store, issue 20): every
        # node's verification then checks every node's checkpoints.
        self.also = also
        self.prev: dict[str, Any] | None = None

    def _write(self, record: AuditRecord, kind: str) -> bool:
        try:
            cp = sign(self.key, record.chain, record.seq, record.hash, kind=kind,
                      prev=self.prev)
            self._also(cp)
            write(cp, self.directory, self.copies)
        except OSError as exc:  # the records are durable; the next checkpoint covers them
            log.error("cannot write audit checkpoint: %s", exc)
            return False
        self.prev = {"seq": cp["seq"], "head": cp["head"]}
        self.count, self.last = 0, time.monotonic()
        return True

    def start(self, chain: str, head: AuditRecord | None) -> None:
        """At start: link to the newest checkpoint there is, and sign the head as found
        (it covers whatever a crash left after the last checkpoint)."""
        before = newest(self.directory, chain) if self.directory.is_dir() else None
        if before is not None:
            self.prev = {"seq": before["seq"], "head": before["head"]}
        if head is not None:
            self._write(head, "start")

    def due(self, n: int) -> bool:
        """Whether ``seen`` with ``n`` more records would sign: the writer asks on the event
        loop and hands the records over only then (a stale read makes a checkpoint one
        commit early or late, never lost)."""
        return self.prev is None or self.count + n >= self.every or \
            time.monotonic() - self.last >= self.seconds

    def seen(self, record: AuditRecord, n: int) -> None:
        self.count += n
        # The very first records are signed at once: a new trail is never without one.
        if self.prev is None or self.count >= self.every or \
                time.monotonic() - self.last >= self.seconds:
            self._write(record, "periodic")

    def stop(self, head: AuditRecord | None) -> None:
        """At a clean shutdown: the head is signed, so records appended afterwards (or the
        last ones deleted) show in ``audit verify``."""
        if head is not None:
            self._write(head, "stop")

    def _also(self, cp: dict[str, Any]) -> None:
        if self.also is None:
            return
        try:
            self.also(cp)
        except Exception as exc:  # noqa: BLE001 - the exported file is the one that counts
            log.error("cannot keep audit checkpoint seq=%s in the database: %s", cp["seq"], exc)
