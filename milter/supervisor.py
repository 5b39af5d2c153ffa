"""Worker processes sharing the listening ports (``gateway.workers``): fork, forward signals,
replace a worker that dies, exit when all have stopped after SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import time

from milter import metrics
from milter.audit.store import AuditUnavailable
from milter.config import Config, ConfigError
from milter.daemon import serve

log = logging.getLogger("skot-milter")
# A worker that exits with this found a configuration error (a file changed after the
# preflight, say): another worker would fail the same way, so all stop and serve exits 2 once.
CONFIG_EXIT = 2


def _die_with_parent(parent: int) -> None:
    """Linux: a worker gets SIGTERM when the supervisor dies (killed with SIGKILL, say), so
    no orphan keeps serving the port with nobody to stop it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the service manager's cgroup does it
        pass
    if os.getppid() != parent:  # the supervisor died between fork and prctl
        os._exit(0)


def supervise(config: Config) -> int:
    """Fork ``workers`` processes that share the ports; forward signals; replace a worker that
    dies unexpectedly; exit when all have stopped after SIGTERM."""
    children: dict[int, int] = {}
    stopping = False

    def spawn(index: int) -> None:
        # A signal between fork and the child's own handlers would run the supervisor's
        # handler in the child (and the child would live on, unstopped): hold them until then.
        held = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        signal.pthread_sigmask(signal.SIG_BLOCK, held)
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            for sig in held:
                signal.signal(sig, signal.SIG_DFL)
            _die_with_parent(parent)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, held)
            code = 1
            try:
                code = asyncio.run(serve(config, worker=index, reuse_port=True))
            except ConfigError as exc:  # one line, and the supervisor stops: see CONFIG_EXIT
                log.error("worker %d: configuration error: %s", index, exc)
                code = CONFIG_EXIT
            except AuditUnavailable as exc:
                log.error("worker %d: %s", index, exc)
            except BaseException:  # os._exit below would swallow the traceback
                log.exception("worker %d failed", index)
            finally:
                os._exit(code)
        children[pid] = index
        signal.pthread_sigmask(signal.SIG_UNBLOCK, held)

    def forward(sig: int, _frame: object) -> None:
        nonlocal stopping
        if sig in (signal.SIGTERM, signal.SIGINT):
            stopping = True
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    for i in range(config.gateway.workers):
        spawn(i)
    worst = 0
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        index = children.pop(pid, None)
        metrics.worker_gone(pid)
        code = os.waitstatus_to_exitcode(status)
        if index is not None and code == CONFIG_EXIT and not stopping:
            log.error("worker %d exited with a configuration error; stopping all workers",
                      index)
            forward(signal.SIGTERM, None)
            worst = CONFIG_EXIT
        elif index is not None and not stopping:
            log.error("worker %d exited with %d; starting a new one", index, code)
            time.sleep(0.5)
            if not stopping:  # a SIGTERM during the pause: no new worker to outlive it
                spawn(index)
        else:
            worst = max(worst, code if code > 0 else 0)
    return worst
