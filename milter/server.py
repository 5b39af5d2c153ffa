"""Start the gateway: load the runtime, open the audit store, serve the SMTP front.

SIGTERM/SIGINT stop accepting, let transactions in flight finish (bounded), then exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import ssl
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from milter import config as config_mod
from milter import metrics
from milter.audit.checkpoint import load_signing_key
from milter.audit.store import AuditUnavailable, open_store
from milter.config import ConfigError
from milter.dkimsign import Signer
from milter.dnsauth import configured_authenticator
from milter.gateway import AsyncAudit, Checkpointer, Gateway
from milter.notices import Notifier, RateLimiter
from milter.quarantine import QuarantineStore
from milter.runtime import Authenticator, Runtime
from milter.smtp.auth import load_authenticator
from milter.smtp.proxy import ConnectionLimits, GatewaySMTP, ProxyHandler
from milter.spool import MemoryBudget

log = logging.getLogger("skot-milter")


@dataclass
class Running:
    """A started gateway: what tests and ``run`` need to reach and to stop it."""

    gateway: Gateway
    handler: ProxyHandler
    servers: list[asyncio.AbstractServer]
    port: int                 # the SMTP front's port (0 without one)
    milter_port: int = 0
    extras: list[Any] = field(default_factory=list)

    stopped: bool = False

    async def stop(self, grace: float = 30.0) -> None:
        """Stop accepting; let SMTP transactions in flight finish (at most ``grace`` seconds:
        Python 3.11's ``wait_closed`` does not wait for connections, so the front does);
        then drain notices and close the next-hop sessions and the audit store."""
        if self.stopped:
            return
        self.stopped = True
        for server in self.servers:
            server.close()
        await self.handler.shutdown(grace)
        try:
            await asyncio.wait_for(asyncio.gather(*(s.wait_closed() for s in self.servers)),
                                   timeout=grace)
        except TimeoutError:
            log.warning("stopping with transactions still in flight after %.0fs", grace)
        # After the transactions: the last ones may still queue notices; before the audit
        # store closes, so their outcome is recorded.
        if self.gateway.notifier is not None:
            await self.gateway.notifier.drain()
        await self.handler.pool.close()
        self.gateway.audit.close()


def tls_context(runtime: Runtime) -> ssl.SSLContext | None:
    cfg = runtime.config
    cert, key = cfg.get("gateway", "tls_cert"), cfg.get("gateway", "tls_key")
    if not cert:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(cfg.resolve(cert), cfg.resolve(key) if key else None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(cfg.path, "gateway.tls_cert", f"cannot load certificate: {exc}") from exc
    return ctx


def make_checkpointer(runtime: Runtime) -> Checkpointer | None:
    cfg = runtime.config
    key_path = cfg.optional_path("audit", "checkpoint_key")
    directory = cfg.optional_path("audit", "checkpoint_dir")
    if key_path is None or directory is None:
        return None
    try:
        key = load_signing_key(key_path)
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(cfg.path, "audit.checkpoint_key", f"cannot load key: {exc}") from None
    return Checkpointer(key, directory, cfg.get("audit", "checkpoint_every"),
                        cfg.get("audit", "checkpoint_minutes"))


def make_authenticator(runtime: Runtime) -> Authenticator | None:
    return configured_authenticator(runtime.config)  # shared with `check`


def make_notifier(runtime: Runtime, audit: AsyncAudit) -> Notifier | None:
    cfg = runtime.config
    if not cfg.get("notices", "enabled"):
        return None
    return Notifier(policy=runtime.policy, templates=cfg.notice_templates,
                    school=cfg.get("school", "name"), postmaster=cfg.get("school", "postmaster"),
                    language=cfg.get("school", "language"), hostname=cfg.get("gateway",
                                                                             "hostname"),
                    next_hop=cfg.next_hop, timeout=cfg.get("gateway", "next_hop_timeout"),
                    limiter=RateLimiter(cfg.state_dir / "notices.sqlite3",
                                        cfg.get("notices", "rate_per_hour")),
                    directory=runtime.directory, school_domains=cfg.school_domains,
                    audit=audit, retries=cfg.get("notices", "retries"),
                    retry_delay=cfg.get("notices", "retry_delay"))


async def start(runtime: Runtime, host: str | None = None, port: int | None = None,
                milter_override: str | None = None, reuse_port: bool = False) -> Running:
    """Open the store and listen; raises ConfigError or AuditUnavailable on bad set-up."""
    cfg = runtime.config
    store = open_store(cfg.audit_url, cfg.get("gateway", "node"))
    audit = AsyncAudit(store, make_checkpointer(runtime))
    gateway = Gateway(runtime, audit, QuarantineStore(cfg.quarantine_dir),
                      make_notifier(runtime, audit), make_authenticator(runtime),
                      Signer.from_config(cfg), MemoryBudget(cfg.get("gateway", "message_memory")))
    handler = ProxyHandler(gateway)
    workers = cfg.get("gateway", "workers") if reuse_port else 1
    limits = ConnectionLimits(-(-cfg.get("gateway", "max_connections") // workers),
                              -(-cfg.get("gateway", "max_connections_per_ip") // workers))
    tls = tls_context(runtime)
    authenticator = load_authenticator(cfg)
    listen_host, _, listen_port = cfg.get("gateway", "listen").rpartition(":")
    host = host if host is not None else listen_host.strip("[]")
    port = port if port is not None else int(listen_port or 0)

    def factory() -> GatewaySMTP:
        return GatewaySMTP(handler, limits=limits,
                           data_timeout=cfg.get("gateway", "data_timeout"),
                           greet_pause=cfg.get("gateway", "greet_pause"),
                           spool_dir=cfg.state_dir / "spool",
                           spool_threshold=cfg.get("gateway", "spool_threshold"),
                           data_size_limit=cfg.get("gateway", "max_message_size"),
                           enable_SMTPUTF8=True, decode_data=False,
                           hostname=cfg.get("gateway", "hostname"), ident="skot-milter",
                           tls_context=tls, require_starttls=False,
                           auth_require_tls=True, authenticator=authenticator,
                           auth_exclude_mechanism=[] if authenticator else ["LOGIN", "PLAIN"],
                           timeout=cfg.get("gateway", "session_timeout"),
                           command_call_limit={"NOOP": 20, "RSET": 50, "*": 500},
                           proxy_protocol_timeout=5.0 if cfg.get("gateway",
                                                                 "proxy_protocol_from") else None)

    loop = asyncio.get_running_loop()
    servers: list[asyncio.AbstractServer] = []
    bound = 0
    if cfg.get("gateway", "listen") or port:
        server = await loop.create_server(factory, host=host, port=port,
                                          reuse_port=reuse_port or None)
        servers.append(server)
        bound = server.sockets[0].getsockname()[1]
        log.info("SMTP front on %s:%s, next hop %s, policy %s", host, bound, cfg.next_hop,
                 runtime.policy.path)
    milter_port = 0
    milter_listen = milter_override if milter_override is not None else cfg.get("milter",
                                                                                 "listen")
    if milter_listen:
        from milter.miltr import server as milter_server

        msrv = await milter_server.start(lambda: gateway, milter_listen, reuse_port)
        servers.append(msrv)
        sock = msrv.sockets[0].getsockname()
        milter_port = sock[1] if isinstance(sock, tuple) else 0
        log.info("milter front on %s", milter_listen)
    return Running(gateway, handler, servers, bound, milter_port)


def reload(running: Running, config_path: str | None) -> bool:
    """SIGHUP: load config, policy, directory and templates anew; keep the old on any error.

    Transactions in flight keep the runtime they started with; new ones get the new one."""
    try:
        runtime = Runtime.load(config_path)
        notifier = make_notifier(runtime, running.gateway.audit)
        authenticator = make_authenticator(runtime)
        signer = Signer.from_config(runtime.config)
    except ConfigError as exc:
        log.error("reload refused, keeping the running configuration: %s", exc)
        return False
    gw = running.gateway
    gw.runtime, gw.notifier, gw.authenticator, gw.signer = (runtime, notifier or gw.notifier,
                                                            authenticator, signer)
    log.info("reloaded %s (policy %s)", runtime.config.path, runtime.policy.path)
    return True


async def _serve(config_path: str | None, worker: int = 0, reuse_port: bool = False) -> int:
    runtime = Runtime.load(config_path)
    configure_logging(runtime)
    if runtime.config.get("metrics", "listen") and worker == 0:
        metrics.serve(runtime.config.get("metrics", "listen"))
    running = await start(runtime, reuse_port=reuse_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload, running, config_path)
    print(f"skot-milter: ready (SMTP port {running.port or '-'}, milter port "
          f"{running.milter_port or '-'})", file=sys.stderr, flush=True)
    await stop.wait()
    log.info("stopping: no new connections, finishing transactions in flight")
    await running.stop()
    return 0


class JSONFormatter(logging.Formatter):
    """One JSON object per line; the transaction id gets its own field."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        out = {"ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"), "level": record.levelname,
               "logger": record.name, "msg": message}
        m = re.search(r"\btx=(\S+)", message)
        if m:
            out["txid"] = m.group(1)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def configure_logging(runtime: Runtime) -> None:
    cfg = runtime.config
    handler = logging.StreamHandler(sys.stderr)
    if cfg.get("logging", "format") == "json":
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(cfg.get("logging", "level").upper())
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd logs every command


def _supervise(config_path: str | None, workers: int) -> int:
    """Fork ``workers`` processes that share the ports; forward signals; replace a worker that
    dies unexpectedly; exit when all have stopped after SIGTERM."""
    children: dict[int, int] = {}
    stopping = False

    def spawn(index: int) -> None:
        pid = os.fork()
        if pid == 0:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(sig, signal.SIG_DFL)
            code = 1
            try:
                code = asyncio.run(_serve(config_path, worker=index, reuse_port=True))
            except BaseException:  # os._exit below would swallow the traceback
                log.exception("worker %d failed", index)
            finally:
                os._exit(code)
        children[pid] = index

    def forward(sig: int, _frame: object) -> None:
        nonlocal stopping
        if sig in (signal.SIGTERM, signal.SIGINT):
            stopping = True
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    for i in range(workers):
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
        if index is not None and not stopping:
            log.error("worker %d exited with %d; starting a new one", index, code)
            time.sleep(0.5)
            if not stopping:  # a SIGTERM during the pause: no new worker to outlive it
                spawn(index)
        else:
            worst = max(worst, code if code > 0 else 0)
    return worst


def run(config_path: str | None) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        workers = config_mod.load(config_path).get("gateway", "workers")
        if workers > 1:
            return _supervise(config_path, workers)
        return asyncio.run(_serve(config_path))
    except ConfigError as exc:
        print(f"skot-milter: {exc}", file=sys.stderr)
        return 2
    except AuditUnavailable as exc:
        print(f"skot-milter: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"skot-milter: cannot listen: {exc}", file=sys.stderr)
        return 2
