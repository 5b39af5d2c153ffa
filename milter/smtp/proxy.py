"""The SMTP front: a before-queue proxy on aiosmtpd.

The next-hop session opens at MAIL FROM; each RCPT gets the next hop's own answer; at the end
of DATA the policy runs, the decision is made durable in the audit store, and only then does
the final dot go downstream. The client hears 250 only after the next hop said 250 for the
same bytes, like Postfix's ``smtpd_proxy_filter``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from weakref import WeakKeyDictionary

from aiosmtpd.smtp import SMTP
from aiosmtpd.smtp import Envelope as SMTPEnvelope
from aiosmtpd.smtp import Session as SMTPSession
from email_validator import EmailNotValidError, validate_email

from milter import metrics
from milter.audit.store import AuditUnavailable
from milter.core.context import Envelope, domain_in
from milter.core.engine import RuleCrashed
from milter.core.verdict import reply_line
from milter.gateway import Gateway, QuarantineError, new_txid
from milter.runtime import Evaluation
from milter.smtp.relay import NextHopError, Reply, Session, SessionPool, open_session
from milter.spool import Spooled

log = logging.getLogger("skot-milter.smtp")

_CTL = re.compile(r"[\x00-\x1f\x7f]")
NEEDS_SMTPUTF8 = "553 5.6.7 Non-ASCII address without SMTPUTF8 (RFC 6531)"


@dataclass
class Transaction:
    """Per-transaction state kept on the aiosmtpd session."""

    txid: str
    downstream: Session | None = None
    rcpt_tos: list[str] = field(default_factory=list)
    runtime: Any = None  # the policy the transaction started with (a reload waits for it)
    next_hop: str = ""
    sending: bool = False  # the final dot is on its way downstream: the send task owns it
    smtputf8: bool = False  # MAIL carried SMTPUTF8: non-ASCII addresses are allowed


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


class ProxyHandler:
    """aiosmtpd handler hooks. Holds a reference to the gateway (swapped on reload)."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.pool = SessionPool()
        self._txs: WeakKeyDictionary[SMTPSession, Transaction] = WeakKeyDictionary()
        # Postfix's smtpd_proxy_filter tells us the real client with XFORWARD (trusted peers).
        self.xforward: WeakKeyDictionary[SMTPSession, dict[str, str]] = WeakKeyDictionary()
        self.connections: set[GatewaySMTP] = set()
        # Sends past the final dot and next-hop closes: they outlive a vanished client, and
        # shutdown waits for them.
        self.background: set[asyncio.Task[Any]] = set()

    # -- helpers -------------------------------------------------------------------------

    def _tx(self, session: SMTPSession) -> Transaction | None:
        return self._txs.get(session)

    def detach(self, session: SMTPSession) -> Transaction | None:
        return self._txs.pop(session, None)

    async def _drop(self, session: SMTPSession) -> None:
        """End the transaction's next-hop session: back to the pool for the next one."""
        tx = self.detach(session)
        if tx is not None:
            await self._release(tx)

    async def _release(self, tx: Transaction) -> None:
        if tx.downstream is not None:
            downstream, tx.downstream = tx.downstream, None
            await self.pool.release(tx.next_hop, downstream)

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
            timeout = self.gateway.runtime.config.get("gateway", "next_hop_timeout") + 1.0
            _, late = await asyncio.wait(pending, timeout=timeout)
            if late:
                log.warning("stopping with %d transactions unfinished", len(late))

    @staticmethod
    def peer_ip(session: SMTPSession) -> str:
        peer = session.peer
        return str(peer[0]) if isinstance(peer, tuple) else str(peer or "")

    def _client(self, session: SMTPSession) -> str:
        return self.xforward.get(session, {}).get("ADDR") or self.peer_ip(session)

    def trusts_xforward(self, session: SMTPSession) -> bool:
        nets = self.gateway.runtime.config.get("gateway", "xforward_from")
        try:
            ip = ipaddress.ip_address(self.peer_ip(session))
        except ValueError:
            return False
        return any(ip in n for n in nets)

    def _auth_user(self, session: SMTPSession) -> str:
        login = self.xforward.get(session, {}).get("LOGIN", "")
        if login:
            return login
        if not session.authenticated:
            return ""
        data = session.auth_data
        if isinstance(data, bytes):
            return data.decode("utf-8", "replace")
        return str(getattr(data, "login", data) or "")

    def _outbound(self, session: SMTPSession) -> bool:
        ctx = self.gateway.runtime.context(Envelope("", (), self._client(session),
                                                    auth_user=self._auth_user(session)))
        return ctx.direction == "outbound"

    # -- hooks ---------------------------------------------------------------------------

    async def handle_PROXY(self, server: SMTP, session: SMTPSession, envelope: SMTPEnvelope,
                           proxy_data: Any) -> bool:
        """HAProxy PROXY v1/v2: the real client, believed only from configured balancers."""
        nets = self.gateway.runtime.config.get("gateway", "proxy_protocol_from")
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

    async def handle_EHLO(self, server: SMTP, session: SMTPSession, envelope: SMTPEnvelope,
                          hostname: str, responses: list[str]) -> list[str]:
        session.host_name = hostname
        if self.trusts_xforward(session):
            responses.insert(len(responses) - 1, "250-XFORWARD NAME ADDR PORT PROTO HELO "
                                                 "IDENT SOURCE LOGIN")
        return responses

    async def handle_MAIL(self, server: SMTP, session: SMTPSession, envelope: SMTPEnvelope,
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
        cfg = self.gateway.runtime.config
        tx = Transaction(new_txid(), runtime=self.gateway.runtime, next_hop=cfg.next_hop,
                         smtputf8=smtputf8)
        helo, timeout = cfg.get("gateway", "hostname"), cfg.get("gateway", "next_hop_timeout")
        try:
            tx.downstream, reused = await self.pool.get(cfg.next_hop, helo, timeout)
            try:
                reply = await tx.downstream.mail(sender, mail_options)
            except NextHopError:
                if not reused:
                    raise
                await tx.downstream.close()  # a kept session died meanwhile: a fresh one
                tx.downstream = await open_session(cfg.next_hop, helo, timeout)
                reply = await tx.downstream.mail(sender, mail_options)
        except NextHopError as exc:
            metrics.NEXT_HOP_ERRORS.labels("mail").inc()
            log.warning("tx=%s next hop unavailable at MAIL: %s", tx.txid, exc)
            if tx.downstream is not None:
                await tx.downstream.close()
            answer = f"451 4.4.1 Next hop unavailable, try again later ref={tx.txid}"
            await self._next_hop_failed(session, tx, sender, answer, "MAIL", exc)
            return answer
        if not reply.ok:
            await self._release(tx)
            return client_line(reply)
        self._txs[session] = tx
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(self, server: SMTP, session: SMTPSession, envelope: SMTPEnvelope,
                          address: str, rcpt_options: list[str]) -> str:
        raw_arg = getattr(server, "skot_last_arg", "")
        if _CTL.search(raw_arg):
            return "501 5.5.4 Control characters in RCPT command"
        problem = check_address(address, allow_empty=False)
        if problem is not None:
            return reply_line("501 5.1.3", f"Invalid recipient address: {problem}")
        if raw_arg and f"<{address}>" not in raw_arg and address not in raw_arg:
            return "553 5.1.3 Recipient address would be rewritten; send it in plain form"
        tx = self._tx(session)
        if tx is None or tx.downstream is None:
            return "503 5.5.1 Need MAIL command"
        if not address.isascii() and not tx.smtputf8:
            return NEEDS_SMTPUTF8
        cfg = self.gateway.runtime.config
        if len(tx.rcpt_tos) >= cfg.get("gateway", "max_recipients"):
            return "452 4.5.3 Too many recipients"
        if not self._outbound(session) and not domain_in(address.rpartition("@")[2],
                                                         cfg.school_domains):
            return "554 5.7.1 Relay access denied"
        try:
            reply = await tx.downstream.rcpt(address)
        except NextHopError as exc:
            metrics.NEXT_HOP_ERRORS.labels("rcpt").inc()
            log.warning("tx=%s next hop failed at RCPT: %s", tx.txid, exc)
            reply = Reply(421, f"4.4.1 Next hop unavailable, try again later ref={tx.txid}")
            failure: Exception | str = exc
        else:
            failure = reply.line
        if reply.code == 421:
            # The next-hop session is gone: so is the transaction. The client starts
            # again with MAIL (without RSET, aiosmtpd would call that a nested MAIL).
            await self._drop(session)
            sender = "" if envelope.mail_from in (None, "<>") else str(envelope.mail_from)
            await self._next_hop_failed(session, tx, sender, client_line(reply), "RCPT",
                                        failure)
            envelope.mail_from = None
            envelope.mail_options.clear()
            envelope.rcpt_tos.clear()
            return client_line(reply)
        if reply.ok:
            tx.rcpt_tos.append(address)
            envelope.rcpt_tos.append(address)
        return reply.line

    async def handle_RSET(self, server: SMTP, session: SMTPSession,
                          envelope: SMTPEnvelope) -> str:
        await self._drop(session)
        return "250 2.0.0 Ok"

    async def handle_QUIT(self, server: SMTP, session: SMTPSession,
                          envelope: SMTPEnvelope) -> str:
        await self._drop(session)
        return "221 2.0.0 Bye"

    async def handle_DATA(self, server: SMTP, session: SMTPSession,
                          envelope: SMTPEnvelope) -> str:
        tx = self.detach(session)  # from here on DATA owns the next-hop session
        if tx is None or tx.downstream is None:
            return "503 5.5.1 Need MAIL command"
        started = time.perf_counter()
        try:
            spooled = getattr(server, "spooled", None)
            if not isinstance(spooled, Spooled):
                content = envelope.content if isinstance(envelope.content, bytes) else b""
                return await self._finish(session, envelope, tx, content)
            # A large message is read back only when the process has memory for it, and
            # holds it until it is relayed.
            async with self.gateway.memory.hold_message(spooled.size):
                return await self._finish(session, envelope, tx, spooled.read())
        finally:
            metrics.LATENCY_SECONDS.observe(time.perf_counter() - started)
            if not tx.sending:  # else the send task releases it when the next hop answered
                await self._release(tx)

    async def _finish(self, session: SMTPSession, envelope: SMTPEnvelope,
                      tx: Transaction, content: bytes) -> str:
        gw = self.gateway
        assert tx.downstream is not None
        client = self._client(session)
        sender = "" if envelope.mail_from in (None, "<>") else str(envelope.mail_from)
        auth_user = self._auth_user(session)
        env = Envelope(mail_from=sender, rcpt_tos=tuple(tx.rcpt_tos), client_ip=client,
                       helo=self.xforward.get(session, {}).get("HELO")
                       or str(session.host_name or ""), auth_user=auth_user, txid=tx.txid)
        common: dict[str, Any] = {"txid": tx.txid, "client": client, "sender": sender,
                                  "recipients": tx.rcpt_tos, "auth_user": auth_user}
        try:
            evaluation = await gw.evaluate(env, content, tx.runtime)
        except RuleCrashed as exc:
            log.error("tx=%s policy evaluation failed: %s", tx.txid, exc)
            reply = f"451 4.3.0 Temporary policy failure, try again later ref={tx.txid}"
            await self._audit_best_effort(None, "tempfailed", reply, common,
                                          {"error": str(exc)})
            return reply
        verdict = evaluation.verdict
        metrics.record_verdict("smtp", verdict.direction, verdict.action,
                               [(r.id, r.mode) for r in verdict.rules])
        log.info("tx=%s from=<%s> rcpts=%d action=%s rules=%s", tx.txid, sender,
                 len(tx.rcpt_tos), verdict.action, ",".join(r.id for r in verdict.rules) or "-")
        if verdict.action == "reject":
            return await self._decided(evaluation, "rejected", verdict.smtp_reply, common)
        if verdict.action == "tempfail":
            return await self._decided(evaluation, "tempfailed", verdict.smtp_reply, common)
        if verdict.action == "quarantine":
            try:
                qid = await gw.hold(evaluation, tx.txid, {"mail_from": sender,
                                                          "rcpt_tos": tx.rcpt_tos,
                                                          "client_ip": client,
                                                          "auth_user": auth_user})
            except QuarantineError as exc:
                log.error("tx=%s quarantine failed: %s", tx.txid, exc)
                return f"451 4.3.0 Temporary storage failure, try again later ref={tx.txid}"
            return await self._decided(evaluation, "quarantined", verdict.smtp_reply, common,
                                       {"quarantine_id": qid})
        return await self._relay(evaluation, tx, common)

    async def _decided(self, evaluation: Evaluation, event: str, reply: str,
                       common: dict[str, Any], extra: dict[str, Any] | None = None) -> str:
        """Record a decision that delivers nothing; the client hears it only once durable."""
        try:
            await self.gateway.audit.append(self.gateway.event(evaluation, event, reply=reply,
                                                               extra=extra, **common))
        except AuditUnavailable as exc:
            log.error("tx=%s audit unavailable: %s", common["txid"], exc)
            return f"451 4.3.0 Audit store unavailable, try again later ref={common['txid']}"
        self.gateway.notify(evaluation, common["txid"], common["sender"], common["recipients"])
        return reply

    async def _relay(self, evaluation: Evaluation, tx: Transaction,
                     common: dict[str, Any]) -> str:
        """The decision becomes durable while the message goes downstream, all but the final
        dot; the dot follows once the intent record is committed. A failed intent drops the
        next-hop connection before the dot: nothing is delivered."""
        gw = self.gateway
        assert tx.downstream is not None
        loop = asyncio.get_running_loop()
        intent = loop.create_task(gw.audit.append(gw.event(evaluation, "intent", **common)))
        self.background.add(intent)
        intent.add_done_callback(self.background.discard)
        before_dot: Reply | NextHopError | None = None
        try:
            try:
                before_dot = await tx.downstream.start_data(*gw.outgoing(evaluation))
            except NextHopError as exc:
                before_dot = exc
            await asyncio.shield(intent)
        except AuditUnavailable as exc:
            tx.downstream.abort()
            log.error("tx=%s audit intent failed, nothing relayed: %s", tx.txid, exc)
            return f"451 4.3.0 Audit store unavailable, try again later ref={tx.txid}"
        except asyncio.CancelledError:
            # The client vanished before the dot went downstream: nothing is relayed, and
            # the intent (written regardless) gets its outcome.
            tx.downstream.abort()
            await self._audit_best_effort(evaluation, "tempfailed", "client disconnected",
                                          common, {})
            raise
        # Past this point the next hop may accept the message at any moment: the send runs
        # in its own task so that a client hanging up cannot leave a delivery unrecorded.
        tx.sending = True
        task = loop.create_task(self._send(evaluation, tx, common, before_dot))
        self.background.add(task)
        task.add_done_callback(self.background.discard)
        return await asyncio.shield(task)

    async def _send(self, evaluation: Evaluation, tx: Transaction, common: dict[str, Any],
                    before_dot: Reply | NextHopError | None) -> str:
        try:
            return await self._send_and_record(evaluation, tx, common, before_dot)
        finally:
            await self._release(tx)

    async def _send_and_record(self, evaluation: Evaluation, tx: Transaction,
                               common: dict[str, Any],
                               before_dot: Reply | NextHopError | None) -> str:
        gw = self.gateway
        assert tx.downstream is not None
        try:
            if isinstance(before_dot, NextHopError):
                raise before_dot
            reply = before_dot or await tx.downstream.finish_data()
        except NextHopError as exc:
            await tx.downstream.close()  # state unknown mid-DATA: never reuse this session
            metrics.NEXT_HOP_ERRORS.labels("data").inc()
            log.warning("tx=%s next hop failed at DATA: %s", tx.txid, exc)
            reply = Reply(451, f"4.4.2 Next hop failed, try again later ref={tx.txid}")
        if reply.ok:
            event, answer = "delivered", f"250 2.0.0 Ok: queued ref={tx.txid}"
        elif 400 <= reply.code < 500:
            event, answer = "tempfailed", client_line(reply)
        else:
            event, answer = "rejected", reply.line
        try:
            await gw.audit.append(gw.event(evaluation, event, reply=answer,
                                           extra={"next_hop_reply": reply.line}, **common))
        except AuditUnavailable as exc:
            # The next hop already has it: a 4xx now would only cause a duplicate. The
            # durable intent record is the audit of the decision; the store writes this one
            # when it takes writes again.
            log.error("tx=%s outcome record failed after relay: %s", tx.txid, exc)
        if reply.ok:
            gw.notify(evaluation, tx.txid, common["sender"], tx.rcpt_tos)
        return answer

    async def _next_hop_failed(self, session: SMTPSession, tx: Transaction, sender: str,
                               answer: str, stage: str, failure: Exception | str) -> None:
        """The audit shows a next hop that failed before any policy ran (HOSTILE-INPUTS 33):
        which transaction, at which command, what the client was told."""
        common: dict[str, Any] = {"txid": tx.txid, "client": self._client(session),
                                  "sender": sender, "recipients": tx.rcpt_tos,
                                  "auth_user": self._auth_user(session)}
        await self._audit_best_effort(None, "tempfailed", answer, common,
                                      {"next_hop": tx.next_hop, "stage": stage,
                                       "next_hop_error": str(failure)})

    async def _audit_best_effort(self, evaluation: Evaluation | None, event: str, reply: str,
                                 common: dict[str, Any], extra: dict[str, Any]) -> None:
        try:
            await self.gateway.audit.append(self.gateway.event(evaluation, event, reply=reply,
                                                               extra=extra, **common))
        except AuditUnavailable as exc:
            log.error("tx=%s audit unavailable: %s", common["txid"], exc)


def client_line(reply: Reply) -> str:
    """The next hop's reply as ours to the client. Its 421 means *its* session is closing,
    not ours: the client hears 451 with the next hop's text, and the connection stays."""
    if reply.code == 421:
        return Reply(451, reply.text or "4.4.2 Next hop closed the connection").line
    return reply.line


# aiosmtpd's own texts for these carry no enhanced status code; ours do (RFC 3463).
_REPLY_REWRITES = {
    "552 Error: Too much mail data": "552 5.3.4 Message too big",
    "552 Error: message size exceeds fixed maximum message size": "552 5.3.4 Message too big",
    "500 Line too long (see RFC5321 4.5.3.1.6)": "500 5.5.2 Line too long",
}


class GatewaySMTP(SMTP):
    """aiosmtpd's SMTP with connection limits, raw-argument capture and cleanup on drop."""

    def __init__(self, handler: ProxyHandler, *, limits: ConnectionLimits, spool_dir: Path,
                 spool_threshold: int, data_timeout: float = 600.0, greet_pause: float = 0.0,
                 **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._spool_dir = spool_dir
        self._spool_threshold = spool_threshold
        self.spooled: Spooled | None = None  # the message in DATA, when it went to disk
        self._limits = limits
        self._counted: str | None = None
        self._data_timeout = data_timeout
        self._greet_pause = greet_pause
        self._in_command = 0  # MAIL/RCPT/DATA/RSET running: not a moment to hang up

    @property
    def task(self) -> asyncio.Task[None] | None:
        return self._handler_coroutine

    @property
    def idle(self) -> bool:
        """Between transactions and not in a command: safe to close at shutdown."""
        handler = self.event_handler
        session = self.session
        return self._in_command == 0 and (session is None or not isinstance(
            handler, ProxyHandler) or handler._tx(session) is None)

    def shut(self, reply: str = "421 4.3.2 Service shutting down, try again later") -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            with contextlib.suppress(Exception):
                transport.write(reply.encode() + b"\r\n")  # type: ignore[attr-defined]
            transport.close()

    async def _counted_command(self, command: Any, arg: str | None) -> None:
        self._in_command += 1
        try:
            await command(arg)
        finally:
            self._in_command -= 1

    async def _handle_client(self) -> None:
        """With ``gateway.greet_pause`` set, a client that talks before our greeting is an
        early talker (HOSTILE-INPUTS 9): 554 and disconnect. Without it, early talkers are
        tolerated: every command is still answered in order."""
        if self._greet_pause > 0 and self._proxy_timeout is None:
            await asyncio.sleep(self._greet_pause)
            if getattr(self._reader, "_buffer", b""):
                log.warning("early talker %s refused", self.session.peer if self.session
                            else "?")
                with contextlib.suppress(Exception):
                    await super().push("554 5.5.0 Protocol error: talking before the greeting")
                if self.transport is not None:
                    self.transport.close()
                return
        await super()._handle_client()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        ip = str(peer[0]) if isinstance(peer, tuple) else ""
        if self._counted is None and getattr(self, "_original_transport", None) is None:
            refusal = self._limits.admit(ip)
            if refusal:
                transport.write(refusal.encode() + b"\r\n")  # type: ignore[attr-defined]
                transport.close()
                self._refused = True
                return
            self._counted = ip
        super().connection_made(transport)
        if isinstance(self.event_handler, ProxyHandler):
            self.event_handler.connections.add(self)

    def connection_lost(self, error: Exception | None) -> None:
        if getattr(self, "_refused", False):
            return
        if self._counted is not None:
            self._limits.release(self._counted)
            self._counted = None
        session = self.session
        handler = self.event_handler
        if isinstance(handler, ProxyHandler):
            handler.connections.discard(self)
            # A transaction between commands; one in DATA is released by DATA itself.
            tx = handler.detach(session) if session is not None else None
            if tx is not None and tx.downstream is not None:
                task = asyncio.get_running_loop().create_task(tx.downstream.close())
                handler.background.add(task)
                task.add_done_callback(handler.background.discard)
        super().connection_lost(error)

    async def push(self, status: Any) -> None:
        if isinstance(status, str):
            status = _REPLY_REWRITES.get(status, status)
        await super().push(status)

    async def smtp_DATA(self, arg: str) -> None:
        """DATA within a total deadline: a client dripping a line every few seconds would
        otherwise hold a worker for ever (HOSTILE-INPUTS 14)."""
        self._in_command += 1
        try:
            await asyncio.wait_for(self._data(arg), timeout=self._data_timeout)
        except TimeoutError:
            log.warning("DATA from %s exceeded %.0fs; closing", self.session.peer
                        if self.session else "?", self._data_timeout)
            with contextlib.suppress(Exception):
                await super().push("421 4.4.2 DATA took too long, closing connection")
            if self.transport is not None:
                self.transport.close()
        finally:
            self._in_command -= 1

    async def _data(self, arg: str) -> None:
        """DATA read in large chunks instead of aiosmtpd's loop over every line.

        Same answers as aiosmtpd: only CRLF.CRLF ends the data (a bare LF or CR before the
        dot does not: no smuggling); a line over 1000 octets is 500 and a message over the
        size limit 552, both after the data is drained; leading dots are unstuffed. Bytes the
        client pipelined after the final dot stay in the reader for the next command."""
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 5.5.1 Error: need RCPT command")
            return
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        reader: Any = self._reader  # its buffer: aiosmtpd itself works on it (STARTTLS)
        buffer: bytearray = reader._buffer
        limit = self.data_size_limit or 0
        kept = bytearray(b"\r\n")  # the data starts at a line start
        size, scan_from, too_much, too_long = 0, 0, False, False
        spool: Spooled | None = None
        spool_error: OSError | None = None  # disk full or not writable: 451, drained
        try:
            while True:
                if buffer:
                    kept += buffer
                    size += len(buffer)
                    buffer.clear()
                    reader._maybe_resume_transport()  # we emptied its buffer
                    end = kept.find(b"\r\n.\r\n", scan_from)
                    if end >= 0:
                        rest = bytes(kept[end + 5:])
                        del kept[end + 2:]
                        buffer[:0] = rest  # pipelined commands after the dot
                        size -= len(rest)
                        break
                    scan_from = max(0, len(kept) - 4)
                    if limit and size > limit + 5:
                        too_much = True
                        del kept[:-4]  # drain without holding it: keep only a possible prefix
                        scan_from = 0
                    elif len(kept) > self._spool_threshold:  # to disk, in pieces of this size
                        try:
                            if spool_error is not None:
                                raise spool_error
                            if spool is None:
                                spool = Spooled(self._spool_dir)
                            too_long = self._spill(kept, spool, too_long)
                        except OSError as exc:
                            spool_error = exc
                            del kept[:-4]  # drain, keeping only a possible terminator prefix
                        scan_from = 0
                if reader.at_eof():
                    return
                await reader._wait_for_data("smtp_DATA")
            # ``size`` counts the data and the ".\r\n" of the terminator
            if too_much or (limit and size - 3 > limit):
                self.envelope = self._create_envelope()
                await self.push("552 5.3.4 Message too big")
                return
            if spool_error is None and spool is not None:
                try:
                    too_long = self._spill(kept, spool, too_long, last=True)
                except OSError as exc:
                    spool_error = exc
            if spool_error is not None:
                log.error("cannot spool a message to %s: %s", self._spool_dir, spool_error)
                self.envelope = self._create_envelope()
                await self.push("451 4.3.0 Temporary local problem, try again later")
                return
            if too_long or (spool is None and self._line_too_long(kept)):
                self.envelope = self._create_envelope()
                await self.push("500 5.5.2 Line too long")
                return
            if spool is None:
                # unstuff only when a line starts with a dot; else no extra copy of the message
                content = (_UNSTUFF.sub(b"\\1", kept)[2:] if b"\r\n." in kept
                           else bytes(kept[2:]))
            else:
                content = b""  # the handler reads ``self.spooled``
                self.spooled = spool
            self.envelope.content = content
            self.envelope.original_content = content
            status = await self._call_handler_hook("DATA")
        finally:
            self.spooled = None
            if spool is not None:
                spool.close()
        self.envelope = self._create_envelope()
        await self.push("250 OK" if not isinstance(status, str) else status)

    def _spill(self, kept: bytearray, spool: Spooled, too_long: bool, last: bool = False) -> bool:
        """Move the complete lines at the front of ``kept`` to the spool file, unstuffed;
        ``kept`` keeps a CRLF and what follows (the partial line, a possible terminator).
        Returns whether a line over the limit was seen (then nothing more is written)."""
        cut = len(kept) if last else kept.rfind(b"\r\n", 0, len(kept) - 4)
        if cut <= 0:
            # no line end in the whole window: that line is over any limit; drop it
            del kept[:-4]
            return True
        segment = kept[:cut]
        del kept[:cut]
        if too_long or max(map(len, segment.split(b"\r\n"))) > self.line_length_limit - 2:
            return True
        if b"\r\n." in segment:
            segment = bytearray(_UNSTUFF.sub(b"\\1", segment))
        spool.write(segment if spool.started else memoryview(segment)[2:])
        return False

    def _line_too_long(self, kept: bytearray) -> bool:
        """A line (up to CRLF) over 1000 octets. One split in C; a regex that tries every
        start position took seconds on a 10 MB message."""
        return max(map(len, kept.split(b"\r\n"))) > self.line_length_limit - 2

    async def smtp_XFORWARD(self, arg: str | None) -> None:
        """Postfix's XFORWARD: the real client behind a before-queue proxy filter."""
        handler = self.event_handler
        session = self.session
        if not isinstance(handler, ProxyHandler) or session is None \
                or not handler.trusts_xforward(session):
            await self.push("550 5.7.0 XFORWARD not allowed from your address")
            return
        if self.envelope is not None and self.envelope.mail_from:
            await self.push("503 5.5.1 XFORWARD not allowed inside a transaction")
            return
        attrs = handler.xforward.setdefault(session, {})
        for item in (arg or "").split():
            name, sep, value = item.partition("=")
            name = name.upper()
            if not sep or name not in XFORWARD_ATTRS:
                await self.push(f"501 5.5.4 Bad XFORWARD attribute {name[:20]}")
                return
            value = _xtext_decode(value)
            if value in ("[UNAVAILABLE]", "[TEMPUNAVAIL]"):
                attrs.pop(name, None)
            else:
                attrs[name] = value.removeprefix("IPV6:").removeprefix("IPv6:")
        await self.push("250 2.0.0 Ok")

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """aiosmtpd reads each MAIL/RCPT address with the email header parser (a tenth of a
        millisecond each); the same arguments come back all day, so the answer is cached."""
        return _getaddr(arg, self.local_part_limit)

    async def smtp_MAIL(self, arg: str | None) -> None:
        self.skot_last_arg = arg or ""
        await self._counted_command(super().smtp_MAIL, arg)

    async def smtp_RCPT(self, arg: str | None) -> None:
        self.skot_last_arg = arg or ""
        await self._counted_command(super().smtp_RCPT, arg)

    async def smtp_RSET(self, arg: str | None) -> None:
        await self._counted_command(super().smtp_RSET, arg)


_UNSTUFF = re.compile(rb"(\r\n)\.")  # RFC 5321 4.5.2: drop the first dot of a line

@functools.lru_cache(maxsize=4096)
def _getaddr(arg: str, local_part_limit: int) -> tuple[str | None, str | None]:
    # aiosmtpd's own parser, unchanged: of ``self`` it reads only local_part_limit
    holder: Any = SimpleNamespace(local_part_limit=local_part_limit)
    result: tuple[str | None, str | None] = SMTP._getaddr(holder, arg)
    return result


XFORWARD_ATTRS = frozenset({"NAME", "ADDR", "PORT", "PROTO", "HELO", "IDENT", "SOURCE",
                            "LOGIN"})


def _xtext_decode(value: str) -> str:
    return re.sub(r"\+([0-9A-Fa-f]{2})", lambda m: chr(int(m.group(1), 16)), value)


class ConnectionLimits:
    """Caps on concurrent connections, in total and per client address."""

    def __init__(self, total: int, per_ip: int) -> None:
        self.total, self.per_ip = total, per_ip
        self.by_ip: Counter[str] = Counter()

    def admit(self, ip: str) -> str | None:
        if sum(self.by_ip.values()) >= self.total:
            return "421 4.7.0 Too many connections, try again later"
        if self.by_ip[ip] >= self.per_ip:
            return "421 4.7.0 Too many connections from your address, try again later"
        self.by_ip[ip] += 1
        return None

    def release(self, ip: str) -> None:
        self.by_ip[ip] -= 1
        if self.by_ip[ip] <= 0:
            del self.by_ip[ip]
