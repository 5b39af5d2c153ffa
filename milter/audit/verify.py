"""Is the audit trail intact? One answer for the CLI, the reports and the web view.

The hash chains are recomputed (``AuditStore.verify``) and the signed checkpoints exported
outside the database are checked against them: a chain rewritten consistently by whoever owns
the database still fails against the last checkpoint it cannot re-sign.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from milter.audit import checkpoint
from milter.audit.store import AuditStore, VerifyResult
from milter.config import Config


class UnusableKeys(Exception):
    """A trusted public key cannot be read: nothing can be checked against it."""


@dataclass(frozen=True)
class Verification:
    chains: VerifyResult
    checkpoint_problems: list[str] = field(default_factory=list)
    checkpoints: int = 0  # checkpoints checked

    @property
    def ok(self) -> bool:
        return self.chains.ok and not self.checkpoint_problems

    @property
    def problems(self) -> list[str]:
        return self.chains.problems + self.checkpoint_problems

    def to_json(self) -> dict[str, Any]:
        return {**self.chains.to_json(), "ok": self.ok, "checkpoints": self.checkpoints,
                "checkpoint_problems": self.checkpoint_problems}

    def status(self) -> str:
        """One line for reports."""
        if self.ok:
            return f"intact ({self.chains.records} records" + (
                f"; {self.checkpoints} signed checkpoint(s) hold)" if self.checkpoints else
                "; no signed checkpoints to check against)")
        return "BROKEN: " + "; ".join(self.problems)


def verify(store: AuditStore, config: Config, files: Sequence[Path] = ()) -> Verification:
    """Chains and checkpoints, as configured (``[audit] checkpoint_dir``, ``trusted_keys``)."""
    chains = store.verify()
    problems, count = checkpoint_problems(store, config.optional_path(config.audit.checkpoint_dir),
                                          config.optional_path(config.audit.trusted_keys), files)
    return Verification(chains, problems, count)


def checkpoint_problems(store: AuditStore, checkpoint_dir: Path | None,
                        trusted_dir: Path | None,
                        files: Sequence[Path] = ()) -> tuple[list[str], int]:
    """Check exported checkpoints (``files``, else those in ``checkpoint_dir``): authentic,
    and still held by the store. Raises UnusableKeys for a trusted key that cannot be read."""
    paths = list(files)
    if not paths and checkpoint_dir is not None and checkpoint_dir.is_dir():
        paths = sorted(checkpoint_dir.glob("checkpoint-*.json"))
    stored = stored_checkpoints(store, paths)
    if not paths and not stored:
        return [], 0
    if trusted_dir is None:
        return ["audit.trusted_keys is not configured: cannot check checkpoint signatures"], 0
    try:
        trusted = checkpoint.load_trusted(trusted_dir)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UnusableKeys(f"audit.trusted_keys: unusable public key: {exc}") from None
    problems: list[str] = []
    good: list[tuple[Path | str, dict[str, Any]]] = []
    items: list[tuple[Path | str, Any]] = []
    for path in paths:
        try:
            items.append((path, json.loads(path.read_text())))
        except (OSError, ValueError) as exc:
            problems.append(f"{path}: unreadable checkpoint: {exc}")
    items += stored
    for where, cp in items:
        why = checkpoint.check(cp, trusted)
        if why:
            problems.append(f"{where}: {why}")
            continue
        good.append((where, cp))
    # Continuity: along one chain, a later head is never dated before an earlier one, and no
    # checkpoint is dated before the record it vouches for.
    good.sort(key=lambda item: (item[1]["chain"], item[1]["seq"]))
    previous: dict[str, tuple[Path | str, dict[str, Any]]] = {}
    for p, cp in good:  # p: the file, or where in the database
        rec = store.at(cp["chain"], cp["seq"])
        if rec is None or rec.hash != cp["head"]:
            problems.append(f"{p}: the store no longer holds chain {cp['chain']!r} up to "
                            f"seq={cp['seq']} as signed at {cp['time']} (rewritten or removed)")
        elif (checkpoint.parse_time(rec.ts).replace(microsecond=0)  # checkpoints: seconds
              > checkpoint.parse_time(cp["time"])):
            problems.append(f"{p}: dated {cp['time']}, before record seq={cp['seq']} it "
                            f"vouches for was written ({rec.ts})")
        before = previous.get(cp["chain"])
        if before is not None and (checkpoint.parse_time(cp["time"])
                                   < checkpoint.parse_time(before[1]["time"])):
            problems.append(f"{p}: dated {cp['time']}, before {before[0]} which covers less "
                            f"of chain {cp['chain']!r} (seq={before[1]['seq']}, "
                            f"{before[1]['time']}): re-dated?")
        previous[cp["chain"]] = (p, cp)
    return problems, len(paths) + len(stored)


def stored_checkpoints(store: AuditStore, files: Sequence[Path] = ()
                       ) -> list[tuple[str, Any]]:
    """Checkpoints the store keeps itself (PostgreSQL: every node's, issue 20), labelled for
    the report; those also among ``files`` are checked once, as the file."""
    keep = getattr(store, "checkpoints", None)
    if keep is None:
        return []
    seen = set()
    for p in files:
        try:
            seen.add(json.loads(p.read_text()).get("signature"))
        except (OSError, ValueError, AttributeError):
            continue
    out: list[tuple[str, Any]] = []
    for cp in keep():
        if isinstance(cp, dict) and cp.get("signature") in seen:
            continue
        where = (f"database checkpoint chain {cp.get('chain')!r} seq={cp.get('seq')}"
                 if isinstance(cp, dict) else "database checkpoint")
        out.append((where, cp))
    return out
