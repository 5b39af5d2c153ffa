"""The gateway's SQLite audit store, in a child process of its own.

SQLite keeps a WAL database's index in ``<db>-shm``, mapped into memory. When that file
becomes unwritable underneath a running gateway (``chattr +i``, a remount read-only), the next
write to the mapping is SIGBUS: no exception, the process dies, and with it every SMTP and
milter session (issue 13 item 4). ``SQLiteStore`` checks the files before each access, but a
check cannot close the race with a change made a moment later. So the gateway's connection
lives in a child process: if that one dies, the caller hears ``AuditUnavailable`` (451 for the
client), and the next call starts a fresh child, which works again once the files do. The
children come from a fork server (cheap to start, never forked from the threaded gateway).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import signal
import threading
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from milter.audit.store import AuditEvent, AuditRecord, AuditUnavailable, Filters, VerifyResult

log = logging.getLogger("skot-milter")


def _serve(conn: Connection, path: str, chain: str) -> None:
    """The child: one SQLiteStore, calls in, results (or the exception) out."""
    from milter.audit.sqlite import SQLiteStore

    # A stop (systemd signals the whole group) is the gateway's to handle: this child ends
    # when the gateway closes the pipe, after the last records are written.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        store = SQLiteStore(path, chain)
    except AuditUnavailable as exc:
        conn.send(("err", exc))
        return
    conn.send(("ok", None))
    while True:
        try:
            name, args = conn.recv()
        except EOFError:
            break
        if name == "close":
            break
        try:
            result = getattr(store, name)(*args)
            if name == "records":
                result = list(result)
            conn.send(("ok", result))
        except Exception as exc:  # noqa: BLE001 - the parent raises it in the caller
            conn.send(("err", exc if _picklable(exc) else AuditUnavailable(str(exc))))
    store.close()


def _picklable(exc: Exception) -> bool:
    import pickle

    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:  # noqa: BLE001 - anything that does not survive the pipe
        return False
    return True


class IsolatedSQLiteStore:
    """``SQLiteStore``'s calls, served by a child process (see the module docstring)."""

    def __init__(self, path: str | Path, chain: str) -> None:
        self.path = Path(path)
        self.chain = chain
        self._lock = threading.Lock()
        self._ctx = multiprocessing.get_context("forkserver")
        # the fork server loads the store's modules, not the gateway's __main__
        self._ctx.set_forkserver_preload(["milter.audit.isolated", "milter.audit.sqlite"])
        self._proc: Any = None
        self._conn: Connection | None = None
        with self._lock:
            self._start()

    def _start(self) -> None:
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(target=_serve, args=(child, str(self.path), self.chain),
                                 daemon=True, name="skot-milter-audit")
        proc.start()
        child.close()
        try:
            kind, value = parent.recv()
        except (EOFError, OSError) as exc:
            proc.join(timeout=5)
            parent.close()
            raise AuditUnavailable(f"audit store process for {self.path} ended at start "
                                   f"({_how(proc.exitcode)})") from exc
        if kind == "err":
            proc.join(timeout=5)
            parent.close()
            raise value
        self._proc, self._conn = proc, parent

    def _call(self, name: str, *args: Any) -> Any:
        with self._lock:
            if self._conn is None:
                self._start()  # after a death: a fresh child (raises if it cannot start)
            conn = self._conn
            assert conn is not None
            try:
                conn.send((name, args))
                kind, value = conn.recv()
            except (EOFError, OSError) as exc:
                proc, self._proc, self._conn = self._proc, None, None
                conn.close()
                proc.join(timeout=5)
                log.error("audit store process died (%s); the next write starts a new one",
                          _how(proc.exitcode))
                raise AuditUnavailable(f"audit store process died ({_how(proc.exitcode)})"
                                       ) from exc
        if kind == "err":
            raise value
        return value

    def append(self, event: AuditEvent) -> AuditRecord:
        result: AuditRecord = self._call("append", event)
        return result

    def append_many(self, events: list[AuditEvent]) -> list[AuditRecord]:
        result: list[AuditRecord] = self._call("append_many", events)
        return result

    def records(self, filters: Filters | None = None) -> Iterator[AuditRecord]:
        return iter(self._call("records", filters))

    def get(self, record_id: int) -> AuditRecord | None:
        result: AuditRecord | None = self._call("get", record_id)
        return result

    def at(self, chain: str, seq: int) -> AuditRecord | None:
        result: AuditRecord | None = self._call("at", chain, seq)
        return result

    def last(self, chain: str) -> AuditRecord | None:
        result: AuditRecord | None = self._call("last", chain)
        return result

    def verify(self) -> VerifyResult:
        result: VerifyResult = self._call("verify")
        return result

    def purge(self, cutoff: str, held_people: set[str], held_records: set[int],
              actor: str) -> int:
        result: int = self._call("purge", cutoff, held_people, held_records, actor)
        return result

    def close(self) -> None:
        with self._lock:
            conn, proc, self._conn, self._proc = self._conn, self._proc, None, None
        if conn is None:
            return
        with contextlib.suppress(OSError):
            conn.send(("close", ()))
        conn.close()
        proc.join(timeout=10)


def _how(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit {exitcode}"
