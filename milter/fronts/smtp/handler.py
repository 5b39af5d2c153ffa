"""The SMTP front's aiosmtpd hooks: protocol in, transactions (``milter.transaction``) out.

The next-hop session opens at MAIL FROM; each RCPT gets the next hop's own answer; at the end
of DATA the transaction decides, and for a message to deliver the intent record is made durable
while the message goes downstream; only then does the final dot follow. The client hears 250
only after the next hop said 250 for the same bytes, like Postfix's ``smtpd_proxy_filter``.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from weakref import WeakKeyDictionary

from aiosmtpd.smtp import SMTP
from aiosmtpd.smtp import Envelope as SMTPEnvelope
from aiosmtpd.smtp import Session as ClientSession
from email_validator import EmailNotValidError, validate_email

from milter import metrics
from milter.audit.store import AuditUnavailable
from milter.core.context import Envelope, domain_in
from milter.core.verdict import reply_line
from milter.nexthop import NextHopError, Reply, Session, SessionPool, open_session
from milter.spool import Spooled
from milter.transaction import (
    AUDIT_DOWN,
    NEXT_HOP_DOWN,
    Decision,
    Gateway,
    Transaction,
    client_line,
    render_fields,
)

if TYPE_CHECKING:
    from milter.fronts.smtp.connection import SMTPConnection

log = logging.getLogger("skot-milter.smtp")

_CTL = re.compile(r"[\x00-\x1f\x7f]")
NEEDS_SMTPUTF8 = "553 5.6.7 Non-ASCII address without SMTPUTF8 (RFC 6531)"


@dataclass
class Pending:
    """The SMTP front's side of a transaction, kept on the aiosmtpd session."""

    tx: Transaction
    downstream: Session | None = None
    next_hop: str = ""
    sending: bool = False  # the final dot is on its way downstream: the send task owns it
    smtputf8: bool = False  # MAIL carried SMTPUTF8: non-ASCII addresses are allowed
    mail_options: tuple[str, ...] = ()  # to replay MAIL on a fresh next-hop session


@functools.lru_cache(maxsize=4096)
def check_address(address: str, *, allow_empty: bool) -> str | None:
    """None if the address may be relayed exactly as given, else the reason it may not.
    (Cached: the same addresses come back all day, and the validator is not cheap.)"""
    if _CTL.search(address):
        return "control characters in address"
    if not address:
        return None if allow_empty else "empty address"
    try:
        validate_email(address, check_deliverability=False, allow_smtputf8=True,
                       allow_quoted_local=True, allow_domain_literal=True)
    except EmailNotValidError as exc:
        return str(exc)
    return None


class NetMembership:
    """Is an address in these networks? Asked at every connection (Postfix's before-queue
    proxy opens one per message) for the same few peers: each answer is kept (bounded), an
    address parse and a network walk once per peer."""

    def __init__(self, networks: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]
                 ) -> None:
        self.networks = tuple(networks)
        self._known: dict[str, bool] = {}

    def __call__(self, ip: str) -> bool:
        known = self._known.get(ip)
        if known is None:
            try:
                addr = ipaddress.ip_address(ip)
            except ValueError:
                known = False
            else:
                known = any(addr in n for n in self.networks)
            if len(self._known) >= 4096:
                self._known.clear()
            self._known[ip] = known
        return known



class SMTPHandler:
    """aiosmtpd handler hooks. Holds a reference to the gateway (its runtime swapped on reload)."""

    def __init__(self, gateway: Gateway, pool: SessionPool | None = None) -> None:
        self.gateway = gateway
        self.pool = pool or SessionPool()
        self._pending: WeakKeyDictionary[ClientSession, Pending] = WeakKeyDictionary()
        # Postfix's smtpd_proxy_filter tells us the real client with XFORWARD (trusted peers).
        self.xforward: WeakKeyDictionary[ClientSession, dict[str, str]] = WeakKeyDictionary()
        self.connections: set[SMTPConnection] = set()
        self._direction_of: object = None  # the runtime ``_directions`` was computed with
        self._directions: dict[tuple[str, str], bool] = {}
        self._xforward_of: object = None  # likewise for ``_xforward_peers``
        self._xforward_peers = NetMembership(())
        # Sends past the final dot and next-hop closes: they outlive a vanished client, and
        # shutdown waits for them.
        self.background: set[asyncio.Task[Any]] = set()

    # -- helpers -------------------------------------------------------------------------

    def in_transaction(self, session: ClientSession) -> bool:
        return session in self._pending

    def detach(self, session: ClientSession) -> Pending | None:
        return self._pending.pop(session, None)

    async def _drop(self, session: ClientSession) -> None:
        """End the transaction's next-hop session: back to the pool for the next one."""
        pending = self.detach(session)
        if pending is not None:
            await self._release(pending)

    async def _release(self, pending: Pending) -> None:
        if pending.downstream is not None:
            downstream, pending.downstream = pending.downstream, None
            await self.pool.release(pending.next_hop, downstream)

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)
        return task

    def close_downstream(self, session: ClientSession) -> None:
        """The client went away between commands: close its next-hop session (one in DATA
        is released by DATA itself)."""
        pending = self.detach(session)
        if pending is not None and pending.downstream is not None:
            self._spawn(pending.downstream.close())

    async def shutdown(self, grace: float) -> None:
        """Stop serving: close idle connections with 421 at once, let transactions in flight
        finish until ``grace`` runs out, then close the rest. A message whose final dot went
        downstream is waited for (bounded by the next-hop timeout), so its outcome is
        recorded and its next-hop session is not cut mid-reply."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while True:
            tasks = [c.task for c in self.connections if c.task is not None and not c.task.done()]
            if not tasks or loop.time() >= deadline:
                break
            for conn in list(self.connections):
                if conn.idle:
                    conn.shut()
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            conn.shut()
        pending = set(tasks) | self.background
        if pending:
            timeout = self.gateway.runtime.config.gateway.next_hop_timeout + 1.0
            _, late = await asyncio.wait(pending, timeout=timeout)
            if late:
                log.warning("stopping with %d transactions unfinished", len(late))
        await self.pool.close()

    @staticmethod
    def peer_ip(session: ClientSession) -> str:
        peer = session.peer
        return str(peer[0]) if isinstance(peer, tuple) else str(peer or "")

    def _client(self, session: ClientSession) -> str:
        return self.xforward.get(session, {}).get("ADDR") or self.peer_ip(session)

    def trusts_xforward(self, session: ClientSession) -> bool:
        """Asked at EHLO and XFORWARD of every connection (Postfix's before-queue proxy opens
        one per message): the answer is kept per runtime and peer."""
        runtime = self.gateway.runtime
        if runtime is not self._xforward_of:
            self._xforward_of = runtime
            self._xforward_peers = NetMembership(runtime.config.gateway.xforward_from)
        return self._xforward_peers(self.peer_ip(session))

    def _auth_user(self, session: ClientSession) -> str:
        login = self.xforward.get(session, {}).get("LOGIN", "")
        if login:
            return login
        if not session.authenticated:
            return ""
        data = session.auth_data
        if isinstance(data, bytes):
            return data.decode("utf-8", "replace")
        return str(getattr(data, "login", data) or "")

    def _outbound(self, session: ClientSession) -> bool:
        """Asked at every RCPT, for the same few clients all day: the answer is kept per
        runtime (a reload may change the internal networks)."""
        runtime = self.gateway.runtime
        if runtime is not self._direction_of:
            self._direction_of, self._directions = runtime, {}
        key = (self._client(session), self._auth_user(session))
        outbound = self._directions.get(key)
        if outbound is None:
            if len(self._directions) >= 4096:
                self._directions.clear()
            ctx = runtime.context(Envelope("", (), key[0], auth_user=key[1]))
            outbound = self._directions[key] = ctx.direction == "outbound"
        return outbound

    async def data_refused(self, session: ClientSession, reply: str, why: str,
                           size: int) -> None:
        """The DATA reader refused the message (too big, a line too long): on record."""
        pending = self._pending.get(session)
        if pending is not None:
            await pending.tx.refused(reply, why, {"size": size})

    async def refused_at_mail(self, session: ClientSession, arg: str, reply: str) -> None:
        """MAIL with a SIZE= over the limit, refused before any transaction: on record."""
        m = re.match(r"\s*FROM:\s*<([^>]*)>(.*)", arg, re.I | re.S)
        sender = m.group(1) if m else ""
        size = re.search(r"\bSIZE=(\d+)", arg, re.I)
        tx = self.gateway.begin("smtp", sender=sender, client=self._client(session),
                                auth_user=self._auth_user(session))
        await tx.refused(reply, "too-big", {"size": int(size.group(1)) if size else 0,
                                            "stage": "MAIL"})

    # -- hooks ---------------------------------------------------------------------------

    async def handle_PROXY(self, server: SMTP, session: ClientSession, envelope: SMTPEnvelope,
                           proxy_data: Any) -> bool:
        """HAProxy PROXY v1/v2: the real client, believed only from configured balancers."""
        nets = self.gateway.runtime.config.gateway.proxy_protocol_from
        try:
            peer = ipaddress.ip_address(self.peer_ip(session))
        except ValueError:
            return False
        if not any(peer in n for n in nets):
            log.warning("PROXY header from untrusted %s refused", peer)
            return False
        src = getattr(proxy_data, "src_addr", None)
        if src is not None:
            self.xforward.setdefault(session, {})["ADDR"] = str(src)
        return True

    async def handle_EHLO(self, server: SMTP, session: ClientSession, envelope: SMTPEnvelope,
                          hostname: str, responses: list[str]) -> list[str]:
        session.host_name = hostname
        if self.trusts_xforward(session):
            responses.insert(len(responses) - 1, "250-XFORWARD NAME ADDR PORT PROTO HELO "
                                                 "IDENT SOURCE LOGIN")
        return responses

    async def handle_MAIL(self, server: SMTP, session: ClientSession, envelope: SMTPEnvelope,
                          address: str, mail_options: list[str]) -> str:
        raw_arg = getattr(server, "skot_last_arg", "")
        if _CTL.search(raw_arg):
            return "501 5.5.4 Control characters in MAIL command"
        # aiosmtpd hands over the null sender as "<>"; it is kept so for its own state checks
        sender = "" if address == "<>" else address
        problem = check_address(sender, allow_empty=True)
        if problem is not None:
            return reply_line("501 5.1.7", f"Invalid sender address: {problem}")
        if sender and raw_arg and f"<{sender}>" not in raw_arg and sender not in raw_arg:
            return "553 5.1.7 Sender address would be rewritten; send it in plain form"
        smtputf8 = "SMTPUTF8" in mail_options
        if not sender.isascii() and not smtputf8:
            return NEEDS_SMTPUTF8
        await self._drop(session)
        tx = self.gateway.begin(
            "smtp", sender=sender, client=self._client(session),
            helo=self.xforward.get(session, {}).get("HELO") or str(session.host_name or ""),
            auth_user=self._auth_user(session))
        cfg = tx.runtime.config
        pending = Pending(tx, next_hop=cfg.next_hop, smtputf8=smtputf8,
                          mail_options=tuple(mail_options))
        helo, timeout = cfg.gateway.hostname, cfg.gateway.next_hop_timeout
        try:
            pending.downstream, reused = await self.pool.get(cfg.next_hop, helo, timeout)
            try:
                reply = await pending.downstream.mail(sender, mail_options)
            except NextHopError:
                if not reused:
                    raise
                await pending.downstream.close()  # a kept session died meanwhile: a fresh one
                pending.downstream = await open_session(cfg.next_hop, helo, timeout)
                reply = await pending.downstream.mail(sender, mail_options)
        except NextHopError as exc:
            log.warning("tx=%s next hop unavailable at MAIL: %s", tx.txid, exc)
            if pending.downstream is not None:
                await pending.downstream.close()
            answer = tx.reply(NEXT_HOP_DOWN)
            await tx.next_hop_failed(answer, "MAIL", exc, pending.next_hop)
            return answer
        if not reply.ok:
            await self._release(pending)
            return client_line(reply)
        self._pending[session] = pending
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(self, server: SMTP, session: ClientSession, envelope: SMTPEnvelope,
                          address: str, rcpt_options: list[str]) -> str:
        raw_arg = getattr(server, "skot_last_arg", "")
        if _CTL.search(raw_arg):
            return "501 5.5.4 Control characters in RCPT command"
        problem = check_address(address, allow_empty=False)
        if problem is not None:
            return reply_line("501 5.1.3", f"Invalid recipient address: {problem}")
        if raw_arg and f"<{address}>" not in raw_arg and address not in raw_arg:
            return "553 5.1.3 Recipient address would be rewritten; send it in plain form"
        pending = self._pending.get(session)
        if pending is None or pending.downstream is None:
            return "503 5.5.1 Need MAIL command"
        if not address.isascii() and not pending.smtputf8:
            return NEEDS_SMTPUTF8
        tx = pending.tx
        cfg = tx.runtime.config
        if len(tx.recipients) >= cfg.gateway.max_recipients:
            return "452 4.5.3 Too many recipients"
        if not self._outbound(session) and not domain_in(address.rpartition("@")[2],
                                                         cfg.school_domains):
            return "554 5.7.1 Relay access denied"
        release = tx.release_token(address) is not None
        if tx.recipients and release != (tx.release_token(tx.recipients[0]) is not None):
            return "550 5.5.1 A release request goes to its release address alone"
        if release:  # ours, not the next hop's: the transaction answers it at DATA
            tx.recipients.append(address)
            envelope.rcpt_tos.append(address)
            return "250 2.1.5 Ok"
        try:
            reply = await pending.downstream.rcpt(address)
        except NextHopError as exc:
            log.warning("tx=%s next hop failed at RCPT: %s", tx.txid, exc)
            reply = Reply(421, tx.reply(NEXT_HOP_DOWN).split(" ", 1)[1])
            failure: Exception | str = exc
        else:
            failure = reply.line
        if reply.code == 421:
            # The next-hop session is gone: so is the transaction. The client starts
            # again with MAIL (without RSET, aiosmtpd would call that a nested MAIL).
            await self._drop(session)
            await tx.next_hop_failed(client_line(reply), "RCPT", failure, pending.next_hop)
            envelope.mail_from = None
            envelope.mail_options.clear()
            envelope.rcpt_tos.clear()
            return client_line(reply)
        if reply.ok:
            tx.recipients.append(address)
            envelope.rcpt_tos.append(address)
        return reply.line

    async def handle_RSET(self, server: SMTP, session: ClientSession,
                          envelope: SMTPEnvelope) -> str:
        await self._drop(session)
        return "250 2.0.0 Ok"

    async def handle_QUIT(self, server: SMTP, session: ClientSession,
                          envelope: SMTPEnvelope) -> str:
        await self._drop(session)
        return "221 2.0.0 Bye"

    async def handle_DATA(self, server: SMTP, session: ClientSession,
                          envelope: SMTPEnvelope) -> str:
        pending = self.detach(session)  # from here on DATA owns the next-hop session
        if pending is None or pending.downstream is None:
            return "503 5.5.1 Need MAIL command"
        started = time.perf_counter()
        spooled = getattr(server, "spooled", None)
        source: bytes | Spooled = spooled if isinstance(spooled, Spooled) else (
            envelope.content if isinstance(envelope.content, bytes) else b"")
        try:
            # a large message is held in memory until it is relayed
            async with self.gateway.message_bytes(source) as content:
                decision = await pending.tx.decide(content)
                if not decision.deliver:
                    return decision.reply
                return await self._relay(pending, decision)
        finally:
            metrics.LATENCY_SECONDS.observe(time.perf_counter() - started)
            if not pending.sending:  # else the send task releases it when the next hop answered
                await self._release(pending)

    async def _relay(self, pending: Pending, decision: Decision) -> str:
        """The intent becomes durable while the message goes downstream, all but the final
        dot; the dot follows once the intent record is committed. A failed intent drops the
        next-hop connection before the dot: nothing is delivered."""
        tx, evaluation = pending.tx, decision.evaluation
        assert pending.downstream is not None and evaluation is not None
        intent = tx.intent()
        self.background.add(intent)
        intent.add_done_callback(self.background.discard)
        before_dot: Reply | NextHopError | None = None
        body = self.gateway.delivered(tx)
        head = render_fields(self.gateway.added_fields(
            evaluation, tx.runtime.config.gateway.hostname, body))
        try:
            try:
                before_dot = await self._start_data(pending, head, body)
            except NextHopError as exc:
                before_dot = exc
            await asyncio.shield(intent)
        except AuditUnavailable as exc:
            if pending.downstream is not None:
                pending.downstream.abort()
            log.error("tx=%s audit intent failed, nothing relayed: %s", tx.txid, exc)
            return tx.reply(AUDIT_DOWN)
        except asyncio.CancelledError:
            # The client vanished before the dot went downstream: nothing is relayed, and
            # the intent (written regardless) gets its outcome.
            if pending.downstream is not None:
                pending.downstream.abort()
            await tx.abandoned("client disconnected")
            raise
        # Past this point the next hop may accept the message at any moment: the send runs
        # in its own task so that a client hanging up cannot leave a delivery unrecorded.
        pending.sending = True
        return await asyncio.shield(self._spawn(self._send(pending, before_dot)))

    async def _start_data(self, pending: Pending, *pieces: bytes) -> Reply | None:
        """DATA and the message on the session opened at MAIL. A next hop that closes idle
        sessions may have dropped it while a slow client uploaded (issue 13 item 3): then a
        fresh session, MAIL and every accepted RCPT again, and DATA there. Before the final
        dot the next hop delivers nothing, so this cannot deliver twice. A recipient the
        fresh session refuses makes it a 4xx for the whole message (the client was told 250
        for it): retried, never lost."""
        downstream = pending.downstream
        assert downstream is not None
        try:
            reply = await downstream.start_data(*pieces)
            if reply is None or reply.code != 421:
                return reply
            failure = reply.line
        except NextHopError as exc:
            failure = str(exc)
        tx = pending.tx
        cfg = tx.runtime.config
        log.info("tx=%s next-hop session lost before DATA (%s); replaying MAIL and %d RCPT "
                 "on a fresh one", tx.txid, failure, len(tx.recipients))
        downstream.abort()
        pending.downstream = None
        fresh = await open_session(pending.next_hop, cfg.gateway.hostname,
                                   cfg.gateway.next_hop_timeout)
        pending.downstream = fresh
        reply = await fresh.mail(tx.sender, list(pending.mail_options))
        if not reply.ok:
            raise NextHopError(f"next hop refused MAIL on replay: {reply.line}")
        for rcpt in tx.recipients:
            reply = await fresh.rcpt(rcpt)
            if not reply.ok:
                raise NextHopError(f"next hop refused RCPT on replay: {reply.line}")
        return await fresh.start_data(*pieces)

    async def _send(self, pending: Pending, before_dot: Reply | NextHopError | None) -> str:
        downstream = pending.downstream  # None when a replay could not open a session
        after_dot = False
        try:
            try:
                if isinstance(before_dot, NextHopError):
                    raise before_dot
                assert downstream is not None
                after_dot = before_dot is None  # the dot goes now: delivery may happen
                result: Reply | NextHopError = before_dot or await downstream.finish_data()
            except NextHopError as exc:
                if downstream is not None:  # state unknown mid-DATA: never reuse it
                    await downstream.close()
                pending.downstream = None
                result = exc
            return await pending.tx.outcome(result, after_dot)
        finally:
            await self._release(pending)
