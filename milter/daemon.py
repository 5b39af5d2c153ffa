"""The daemon: wires config, audit store, quarantine, notifier and the fronts together.

This is the only module that imports the fronts. SIGTERM/SIGINT stop accepting, let
transactions in flight finish (bounded), then exit; SIGHUP reloads.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from milter import config as config_mod
from milter import directory_source, metrics
from milter.audit.checkpoint import Checkpointer, ensure_key, load_signing_key
from milter.audit.isolated import IsolatedSQLiteStore
from milter.audit.store import AuditStore, AuditUnavailable, open_store
from milter.audit.writer import AuditWriter
from milter.config import Config, ConfigError
from milter.dkimsign import Signer
from milter.dnsauth import configured_authenticator
from milter.fronts.milter import server as milter_server
from milter.fronts.smtp.auth import load_authenticator
from milter.fronts.smtp.connection import ConnectionLimits, DialogueLimits, SMTPConnection
from milter.fronts.smtp.handler import SMTPHandler
from milter.logs import configure_logging, quiet_resource_errors
from milter.nexthop import SessionPool
from milter.notice_limits import open_limiter
from milter.notices import Notifier, RateLimiter, Style
from milter.quarantine import open_quarantine
from milter.retention import RetentionSchedule
from milter.runtime import Authenticator, Runtime
from milter.spool import MemoryBudget
from milter.transaction import Gateway

log = logging.getLogger("skot-milter")


@dataclass
class Daemon:
    """A started gateway: what tests and ``run`` need to reach and to stop it."""

    gateway: Gateway
    handler: SMTPHandler
    servers: list[asyncio.AbstractServer]
    port: int                 # the SMTP front's port (0 without one)
    milter_port: int = 0
    retention: RetentionSchedule | None = None  # started by the first worker only
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
        if self.retention is not None:
            await asyncio.to_thread(self.retention.stop)
        self.gateway.inspectors.shutdown(wait=False, cancel_futures=True)
        self.gateway.audit.close()
        self.gateway.quarantine.close()
        if self.gateway.notifier is not None:
            self.gateway.notifier.limiter.close()


def tls_context(runtime: Runtime) -> ssl.SSLContext | None:
    cfg = runtime.config
    cert, key = cfg.gateway.tls_cert, cfg.gateway.tls_key
    if not cert:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(cfg.resolve(cert), cfg.resolve(key) if key else None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(cfg.path, "gateway.tls_cert", f"cannot load certificate: {exc}") from exc
    return ctx


def signing_key_path(cfg: Config) -> Path:
    """``[audit] checkpoint_key``, else the key in ``<state_dir>/audit-keys``, created at
    first start (``config check`` says where). Called once before workers start, so that
    they do not each create one."""
    key_path = cfg.optional_path(cfg.audit.checkpoint_key)
    if key_path is not None:
        return key_path
    try:
        key_path, created = ensure_key(cfg.audit_key_dir)
    except OSError as exc:
        raise ConfigError(cfg.path, "audit.checkpoint_key",
                          f"cannot create a signing key in {cfg.audit_key_dir}: {exc}") from None
    if created:
        log.warning("created the audit signing key %s; give %s to the auditors "
                    "(audit.trusted_keys on their side)", key_path, key_path.with_suffix(".pub"))
    return key_path


def make_checkpointer(runtime: Runtime, store: AuditStore | None = None) -> Checkpointer:
    """Checkpoints are always on (tamper evidence by default, issue 13 item 9)."""
    cfg = runtime.config
    key_path = signing_key_path(cfg)
    try:
        key = load_signing_key(key_path)
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(cfg.path, "audit.checkpoint_key", f"cannot load key: {exc}") from None
    return Checkpointer(key, cfg.checkpoint_dir, cfg.audit.checkpoint_every,
                        cfg.audit.checkpoint_minutes, cfg.checkpoint_copies,
                        also=getattr(store, "save_checkpoint", None))  # PostgreSQL: shared


def open_gateway_store(cfg: Config) -> AuditStore:
    """The audit store the gateway writes to. SQLite runs in a child process (a SIGBUS
    from an unwritable -shm must not take the gateway with it: milter.audit.isolated)."""
    url = cfg.audit_url
    if url.startswith("sqlite:///"):
        return IsolatedSQLiteStore(url[len("sqlite:///"):], cfg.gateway.node)
    return open_store(url, cfg.gateway.node)


def make_authenticator(runtime: Runtime) -> Authenticator | None:
    return configured_authenticator(runtime.config)  # shared with `check`


def make_notifier(runtime: Runtime, audit: AuditWriter,
                  limiter: RateLimiter | None = None) -> Notifier | None:
    """The notifier; on reload it keeps the running ``limiter`` (its counts and its database
    pool: the audit store, and so where the counts live, changes only with a restart)."""
    cfg = runtime.config
    if not cfg.notices.enabled:
        return None
    if limiter is not None:
        limiter.per_hour = cfg.notices.rate_per_hour
    return Notifier(policy=runtime.policy, style=Style.from_config(cfg),
                    hostname=cfg.gateway.hostname,
                    next_hop=cfg.next_hop, timeout=cfg.gateway.next_hop_timeout,
                    limiter=limiter or open_limiter(cfg),
                    directory=runtime.directory, audit=audit, retries=cfg.notices.retries,
                    retry_delay=cfg.notices.retry_delay)


async def start(runtime: Runtime, host: str | None = None, port: int | None = None,
                milter_override: str | None = None, reuse_port: bool = False) -> Daemon:
    """Open the store and listen; raises ConfigError or AuditUnavailable on bad set-up."""
    cfg = runtime.config
    store = open_gateway_store(cfg)
    checkpointer = make_checkpointer(runtime, store)
    try:
        checkpointer.start(cfg.gateway.node, store.last(cfg.gateway.node))
    except AuditUnavailable as exc:
        log.error("no start checkpoint: %s", exc)
    audit = AuditWriter(store, checkpointer, cfg.gateway.node)
    quarantine = open_quarantine(cfg)
    sweep = getattr(quarantine, "sweep", None)
    if sweep is not None and sweep():
        log.warning("removed half-written quarantine entries left by a crash in %s",
                    cfg.quarantine_dir)
    gateway = Gateway(runtime, audit, quarantine,
                      make_notifier(runtime, audit), make_authenticator(runtime),
                      Signer.from_config(cfg), MemoryBudget(cfg.gateway.message_memory))
    handler = SMTPHandler(gateway, SessionPool(cfg.gateway.next_hop_pool_size,
                                               cfg.gateway.next_hop_pool_idle))
    workers = cfg.gateway.workers if reuse_port else 1
    limits = ConnectionLimits(-(-cfg.gateway.max_connections // workers),
                              -(-cfg.gateway.max_connections_per_ip // workers),
                              -(-cfg.gateway.reserved_connections // workers),
                              cfg.internal_networks)
    dialogue = DialogueLimits(cfg.gateway.dialogue_timeout, cfg.gateway.dialogue_commands,
                              {"NOOP": cfg.gateway.noop_limit, "RSET": cfg.gateway.rset_limit})
    tls = tls_context(runtime)
    authenticator = load_authenticator(cfg)
    listen_host, _, listen_port = cfg.gateway.listen.rpartition(":")
    host = host if host is not None else listen_host.strip("[]")
    port = port if port is not None else int(listen_port or 0)

    spool_dir = cfg.state_dir / "spool"  # once, not per connection (a Path costs)
    # handed to each connection: else aiosmtpd looks the loop up per connection, under a
    # warnings.catch_warnings() (Postfix's before-queue proxy connects once per message)
    running = asyncio.get_running_loop()

    def factory() -> SMTPConnection:
        return SMTPConnection(handler, limits=limits,
                           data_timeout=cfg.gateway.data_timeout,
                           greet_pause=cfg.gateway.greet_pause, dialogue=dialogue,
                           spool_dir=spool_dir,
                           spool_threshold=cfg.gateway.spool_threshold,
                           data_size_limit=cfg.gateway.max_message_size,
                           enable_SMTPUTF8=True, decode_data=False,
                           hostname=cfg.gateway.hostname, ident="skot-milter",
                           tls_context=tls, require_starttls=False,
                           auth_require_tls=True, authenticator=authenticator,
                           auth_exclude_mechanism=[] if authenticator else ["LOGIN", "PLAIN"],
                           timeout=cfg.gateway.session_timeout,
                           command_call_limit={"*": cfg.gateway.command_limit},
                           proxy_protocol_timeout=(cfg.gateway.proxy_protocol_timeout
                                                   if cfg.gateway.proxy_protocol_from else None),
                           loop=running)

    loop = asyncio.get_running_loop()
    servers: list[asyncio.AbstractServer] = []
    bound = 0
    if cfg.gateway.listen or port:
        server = await loop.create_server(factory, host=host, port=port,
                                          reuse_port=reuse_port or None)
        servers.append(server)
        bound = server.sockets[0].getsockname()[1]
        log.info("SMTP front on %s:%s, next hop %s, policy %s", host, bound, cfg.next_hop,
                 runtime.policy.path)
    milter_port = 0
    milter_listen = milter_override if milter_override is not None else cfg.milter.listen
    if milter_listen:
        msrv = await milter_server.start(gateway, milter_listen, reuse_port)
        servers.append(msrv)
        sock = msrv.sockets[0].getsockname()
        milter_port = sock[1] if isinstance(sock, tuple) else 0
        log.info("milter front on %s", milter_listen)
    if gateway.notifier is not None:
        gateway.notifier.start()  # summaries held back before a restart
    retention = RetentionSchedule(cfg, lambda: open_gateway_store(cfg),
                                  directory=lambda: gateway.runtime.directory)
    return Daemon(gateway, handler, servers, bound, milter_port, retention)


def reload(running: Daemon, config_path: str | None) -> bool:
    """SIGHUP: load config, policy, directory and templates anew; keep the old on any error.

    Transactions in flight keep the runtime they started with; new ones get the new one."""
    try:
        runtime = Runtime.load(config_path)
        old = running.gateway.notifier
        notifier = make_notifier(runtime, running.gateway.audit,
                                 old.limiter if old is not None else None)
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


async def serve(config: Config, worker: int = 0, reuse_port: bool = False) -> int:
    """Run one worker until SIGTERM. ``config`` was read once by ``run``; SIGHUP reads the
    file again."""
    config_path = str(config.path)
    runtime = Runtime.from_config(config)
    configure_logging(runtime)
    if runtime.config.metrics.listen and worker == 0:
        metrics.serve(runtime.config.metrics.listen)
    loop = asyncio.get_running_loop()
    quiet_resource_errors(loop)
    running = await start(runtime, reuse_port=reuse_port)
    if worker == 0 and running.retention is not None:
        running.retention.start()  # one worker purges for all
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    directory = directory_source.serve(running, loop)  # issue 21: LDAP refresh in background
    loop.add_signal_handler(signal.SIGHUP, directory.on_sighup, reload, running, config_path)
    print(f"skot-milter: ready (SMTP port {running.port or '-'}, milter port "
          f"{running.milter_port or '-'})", file=sys.stderr, flush=True)
    await stop.wait()
    log.info("stopping: no new connections, finishing transactions in flight")
    await directory.source.stop()
    await running.stop(runtime.config.gateway.shutdown_grace)
    return 0


def preflight(cfg: Config) -> list[str]:
    """Everything a worker would fail on at start, found once before any worker exists:
    every file the config names, the policy, the directory, certificates and keys."""
    from milter.preflight import file_problems

    problems = file_problems(cfg)
    if problems:
        return problems
    runtime = Runtime.from_config(cfg)
    tls_context(runtime)
    make_checkpointer(runtime)
    load_authenticator(cfg)
    Signer.from_config(cfg)
    return []


def run(config: Config | str | None) -> int:
    """``skot-milter serve``: one process, or a supervisor of ``gateway.workers`` of them.
    Configuration problems at start are exit 2, said once on stderr, whatever the number
    of workers (the systemd unit does not restart on 2: a restart cannot fix a config).
    An audit store that cannot be reached is exit 1: systemd tries again."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = config if isinstance(config, Config) else config_mod.load(config)
        problems = preflight(cfg)
        if problems:
            for problem in problems:
                print(f"skot-milter: {problem}", file=sys.stderr)
            print(f"skot-milter: {len(problems)} configuration problem(s); not starting "
                  "(skot-milter config check lists them too)", file=sys.stderr)
            return 2
        signing_key_path(cfg)
        if cfg.gateway.workers > 1:
            from milter.supervisor import supervise

            return supervise(cfg)
        return asyncio.run(serve(cfg))
    except ConfigError as exc:
        print(f"skot-milter: {exc}", file=sys.stderr)
        return 2
    except AuditUnavailable as exc:
        print(f"skot-milter: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"skot-milter: cannot listen: {exc}", file=sys.stderr)
        return 2
