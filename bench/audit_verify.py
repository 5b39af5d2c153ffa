"""Audit verification at scale: time and peak RSS of ``verify`` over N records.

    python bench/audit_verify.py [--records 200000] [--postgres]

SQLite in a temporary directory, or (``--postgres``) a database of its own on the local server
(postgresql://postgres@127.0.0.1:5432), created and dropped here. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from milter.audit.store import AuditEvent  # noqa: E402

ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
EVENT = AuditEvent(event="rejected", txid="x", sender="someone@school.example",
                   recipients=("ouder@example.org",) * 3, action="reject", subject="Rapport",
                   rules=({"id": "B1.sender-domain", "article": "B1", "action": "reject",
                           "mode": "enforce", "evidence": {"problems": ["from-external"]}},),
                   evidence={"attachments": [{"name": "a.pdf", "size": 1000, "sha256": "0" * 64}]})


def measure(store: object, n: int) -> None:
    for i in range(0, n, 2000):
        store.append_many([EVENT] * min(2000, n - i))  # type: ignore[attr-defined]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    started = time.perf_counter()
    result = store.verify()  # type: ignore[attr-defined]
    took = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    print(f"{type(store).__name__}: {result.records} records, ok={result.ok}, "
          f"verify {took:.1f} s ({result.records / took:,.0f} records/s), "
          f"peak RSS {peak} MB (before verify {before} MB)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=200000)
    ap.add_argument("--postgres", action="store_true")
    args = ap.parse_args()
    if not args.postgres:
        from milter.audit.sqlite import SQLiteStore

        with tempfile.TemporaryDirectory() as tmp:
            measure(SQLiteStore(Path(tmp) / "audit.sqlite3", "bench"), args.records)
        return
    import psycopg

    from milter.audit.postgres import PostgresStore

    name = f"skot_bench_{uuid.uuid4().hex[:8]}"
    admin = psycopg.connect(ADMIN, autocommit=True)
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        store = PostgresStore(ADMIN.rsplit("/", 1)[0] + f"/{name}", "bench")
        measure(store, args.records)
        store.close()
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


if __name__ == "__main__":
    main()
