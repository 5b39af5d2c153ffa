"""The gateway's SQLite audit store, in a child process of its own.

SQLite keeps a WAL database's index in ``<db>-shm``, mapped into memory. When that file
becomes unwritable underneath a running gateway (``chattr +i``, a remount read-only), the next
write to the mapping is SIGBUS: no exception, the process dies, and with it every SMTP and
milter session (issue 13 item 4). ``SQLiteStore`` checks the files before each access, but a
check cannot close the race with a change made a moment later. So the gateway's connection
lives in a child process: if that one dies, the caller hears ``AuditUnavailable`` (451 for the
client), and the next call starts a fresh child, which works again once the files do. The
children come from a fork server (cheap to start, never forked from the threaded gateway).

The child also brings the web view's search indexes up to date (``SQLiteStore.catch_up``),
never between an append and its answer: once its pipe has been idle for ``IDLE_SECONDS``,
or before the next call once more than ``CATCH_UP_AFTER`` records wait.
"""

from __future__ import annotations

import asyncio
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

IDLE_SECONDS = 0.05   # a pipe this long without a call: time to index
CATCH_UP_AFTER = 500  # records appended since the last catch-up that are worth a pause


def _serve(conn: Connection, path: str, chain: str) -> None:
    """The child: one SQLiteStore, calls in, results (or the exception) out."""
    from milter.audit.sqlite import CATCH_UP_BATCH, SQLiteStore

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
    appended = 0  # records since the last catch-up
    while True:
        if appended and (appended > CATCH_UP_AFTER or not conn.poll(IDLE_SECONDS)):
            # one batch, then the pipe again: a long backlog (an older store's records)
            # is indexed between calls, never holding one up for more than a batch
            appended = 1 if _catch_up(store) >= CATCH_UP_BATCH else 0
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
        else:
            if name == "append_many":
                appended += len(result)
            elif name == "append":
                appended += 1
    if appended:
        _catch_up(store)
    store.close()


def _catch_up(store: Any) -> int:
    """Index one batch of what was appended; a failure is only a delay (the next read or
    idle time catches up from the same watermark)."""
    try:
        n: int = store.catch_up(batches=1)
    except Exception as exc:  # noqa: BLE001 - derived data; the records are durable
        log.debug("audit search indexes not brought up to date: %s", exc)
        return 0
    return n


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
        # an append sent from the event loop whose answer is not read yet
        self._async: tuple[asyncio.Future[Any], asyncio.AbstractEventLoop,
                           Connection] | None = None
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
            self._finish_async()  # the pipe is ours once an answer in flight is read
            if self._conn is None:
                self._start()  # after a death: a fresh child (raises if it cannot start)
            conn = self._conn
            assert conn is not None
            try:
                conn.send((name, args))
                kind, value = conn.recv()
            except (EOFError, OSError) as exc:
                raise self._died(conn) from exc
        if kind == "err":
            raise value
        return value

    def _died(self, conn: Connection) -> AuditUnavailable:
        """The child is gone (lock held): forget it; the next call starts a new one."""
        proc, self._proc, self._conn = self._proc, None, None
        conn.close()
        proc.join(timeout=5)
        log.error("audit store process died (%s); the next write starts a new one",
                  _how(proc.exitcode))
        return AuditUnavailable(f"audit store process died ({_how(proc.exitcode)})")

    # -- appends from the event loop, without a thread -----------------------------------
    # The request is written to the child's pipe and the loop watches the pipe for the
    # answer: two thread hand-overs (and their wake-ups) fewer per commit than a call from
    # the writer thread. The lock is not held while the answer is awaited; whoever takes the
    # pipe next (the loop's reader callback, or a call from any thread, the loop's own
    # included) first reads that answer and hands it to its waiter.

    def append_many_soon(self, events: list[AuditEvent]
                         ) -> asyncio.Future[list[AuditRecord]] | None:
        """Send ``append_many`` now; the future gets the records (or the exception). None
        when the pipe is taken or the child must be started first: call ``append_many`` on
        a thread then."""
        if not self._lock.acquire(blocking=False):
            return None
        try:
            self._finish_async()
            conn = self._conn
            if conn is None:
                return None
            loop = asyncio.get_running_loop()
            fut: asyncio.Future[list[AuditRecord]] = loop.create_future()
            try:
                conn.send(("append_many", (events,)))
            except (EOFError, OSError):
                fut.set_exception(self._died(conn))
                return fut
            self._async = (fut, loop, conn)
            loop.add_reader(conn.fileno(), self._readable)
            return fut
        finally:
            self._lock.release()

    def _readable(self) -> None:
        """The loop's reader callback: the answer (or the child's end) is there."""
        with self._lock:
            self._finish_async()

    def _finish_async(self) -> None:
        """Read the answer of the append in flight, if any, and resolve its future (lock
        held; any thread)."""
        pending, self._async = self._async, None
        if pending is None:
            return
        fut, loop, conn = pending
        on_loop = _running_loop() is loop
        if on_loop:
            loop.remove_reader(conn.fileno())
        else:
            loop.call_soon_threadsafe(loop.remove_reader, conn.fileno())
        outcome: tuple[str, Any]
        try:
            outcome = conn.recv()
        except (EOFError, OSError):
            outcome = ("err", self._died(conn))
        if on_loop:
            _resolve(fut, outcome)
        else:
            loop.call_soon_threadsafe(_resolve, fut, outcome)

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
            self._finish_async()
            conn, proc, self._conn, self._proc = self._conn, self._proc, None, None
        if conn is None:
            return
        with contextlib.suppress(OSError):
            conn.send(("close", ()))
        conn.close()
        proc.join(timeout=10)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _resolve(fut: asyncio.Future[Any], outcome: tuple[str, Any]) -> None:
    if fut.done():  # its waiter was cancelled
        return
    kind, value = outcome
    if kind == "err":
        fut.set_exception(value)
    else:
        fut.set_result(value)


def _how(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit {exitcode}"
