"""The milter front: an asyncio server around the sans-I/O codec, for Postfix's smtpd_milters.

It feeds the same core as the SMTP front. Postfix queues the message after our answer, so the
decision is made durable in the audit store *before* we answer; the verdict becomes accept
(plus header changes), a reply code (reject/tempfail with our text), or quarantine (Postfix's
hold queue plus our own copy). A peer that breaks the protocol gets its connection closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

from milter import metrics
from milter.audit.store import AuditUnavailable
from milter.core.context import Envelope
from milter.core.engine import RuleCrashed
from milter.dnsauth import strip_our_results
from milter.gateway import Gateway, QuarantineError, new_txid, policy_headers
from milter.miltr import codec
from milter.runtime import Evaluation
from milter.spool import Spooled
from milter.warning import milter_changes

log = logging.getLogger("skot-milter.milter")

ACTIONS = (codec.SMFIF_ADDHDRS | codec.SMFIF_CHGHDRS | codec.SMFIF_QUARANTINE
           | codec.SMFIF_CHGBODY)  # body: the banner of a tagging rule (milter.warning)


@dataclass
class Transaction:
    txid: str = field(default_factory=new_txid)
    mail_from: str = ""
    rcpts: list[str] = field(default_factory=list)
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)
    spool: Spooled | None = None  # the whole message, once it passed gateway.spool_threshold
    size: int = 0
    too_big: bool = False
    spool_error: str = ""  # the spool could not be written: the MTA hears 451

    def close(self) -> None:
        if self.spool is not None:
            self.spool.close()
            self.spool = None


class MilterSession:
    """One connection from the MTA. ``handle`` turns an event into the bytes to answer."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.macros: dict[str, str] = {}
        self.client_ip = ""
        self.helo = ""
        self.actions = ACTIONS  # what the MTA allowed us (option negotiation)
        self.tx = Transaction()

    def _reset(self) -> None:
        self.tx.close()
        self.tx = Transaction()

    async def handle(self, event: codec.Event) -> bytes:
        tx = self.tx
        if isinstance(event, codec.OptNeg):
            if event.version < 2:
                raise codec.ProtocolError(f"milter version {event.version} too old")
            # We take every step (protocol flags 0) and ask only for the actions we use.
            self.actions = ACTIONS & event.actions
            return codec.encode_optneg(min(event.version, codec.VERSION), self.actions, 0)
        if isinstance(event, codec.Macro):
            self.macros.update(event.macros)
            return b""
        if isinstance(event, codec.Connect):
            self.client_ip = event.address if event.family in ("4", "6") else "127.0.0.1"
            self.client_ip = self.client_ip.removeprefix("IPv6:")
            return codec.encode_continue()
        if isinstance(event, codec.Helo):
            self.helo = event.name
            return codec.encode_continue()
        if isinstance(event, codec.Mail):
            self._reset()
            self.tx.mail_from = event.address
            return codec.encode_continue()
        if isinstance(event, codec.Rcpt):
            tx.rcpts.append(event.address)
            return codec.encode_continue()
        if isinstance(event, codec.Header):
            if not tx.too_big:
                tx.headers.append((event.name, event.value))
            return codec.encode_continue()
        if isinstance(event, codec.Body):
            self._add_body(event.chunk)
            return codec.encode_continue()
        if isinstance(event, codec.EndOfMessage):
            self._add_body(event.chunk)
            try:
                return await self._end_of_message()
            finally:
                self._reset()
        if isinstance(event, codec.Abort):
            self._reset()
            return b""
        if isinstance(event, codec.Quit):
            if event.new_connection:
                self._reset()
                self.macros.clear()
            return b""
        return codec.encode_continue()  # EOH, DATA, unknown SMTP commands

    def _add_body(self, chunk: bytes) -> None:
        tx = self.tx
        cfg = self.gateway.runtime.config
        if tx.too_big or tx.spool_error:
            return
        if not tx.size:
            tx.size = len(self._head())
        tx.size += len(chunk)
        if tx.size > cfg.get("gateway", "max_message_size"):
            tx.too_big = True
            tx.close()
            tx.body = bytearray()  # never hold more than the limit
            return
        try:
            if tx.spool is None and tx.size > cfg.get("gateway", "spool_threshold"):
                # Past the threshold the whole message goes to disk, as the SMTP front does.
                tx.spool = Spooled(cfg.state_dir / "spool")
                tx.spool.write(self._head())
                tx.spool.write(tx.body)
                tx.body = bytearray()
            if tx.spool is not None:
                tx.spool.write(chunk)
            else:
                tx.body += chunk
        except OSError as exc:
            log.error("tx=%s cannot spool the message: %s", tx.txid, exc)
            tx.spool_error = str(exc)
            tx.close()
            tx.body = bytearray()

    def _head(self) -> bytes:
        lines = [f"{name}:".encode() + (b"" if value.startswith((b" ", b"\t")) else b" ")
                 + value.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") + b"\r\n"
                 for name, value in self.tx.headers]
        return b"".join(lines) + b"\r\n"

    def _raw(self) -> bytes:
        if self.tx.spool is not None:
            return self.tx.spool.read()
        return self._head() + bytes(self.tx.body)

    async def _end_of_message(self) -> bytes:
        tx = self.tx
        if tx.too_big:
            return codec.encode_replycode(f"552 5.3.4 Message too big ref={tx.txid}")
        if tx.spool_error:
            return codec.encode_replycode(f"451 4.3.0 Temporary local problem ref={tx.txid}")
        if tx.spool is None:
            return await self._decide()
        # read back only when the process has memory for it (see milter.spool)
        async with self.gateway.memory.hold_message(tx.spool.size):
            return await self._decide()

    async def _decide(self) -> bytes:
        gw, tx = self.gateway, self.tx
        auth_user = self.macros.get("{auth_authen}", "")
        env = Envelope(mail_from=tx.mail_from, rcpt_tos=tuple(tx.rcpts),
                       client_ip=self.macros.get("{client_addr}", self.client_ip),
                       helo=self.helo, auth_user=auth_user, txid=tx.txid)
        common: dict[str, Any] = {"txid": tx.txid, "client": env.client_ip,
                                  "sender": tx.mail_from, "recipients": tx.rcpts,
                                  "auth_user": auth_user,
                                  "extra": {"front": "milter",
                                            "queue_id": self.macros.get("i", "")}}
        raw = self._raw()
        try:
            evaluation = await gw.evaluate(env, raw)
        except RuleCrashed as exc:
            log.error("tx=%s policy evaluation failed: %s", tx.txid, exc)
            return codec.encode_replycode(f"451 4.3.0 Temporary policy failure ref={tx.txid}")
        verdict = evaluation.verdict
        metrics.record_verdict("milter", verdict.direction, verdict.action,
                               [(r.id, r.mode) for r in verdict.rules])
        log.info("tx=%s milter from=<%s> rcpts=%d action=%s rules=%s", tx.txid, tx.mail_from,
                 len(tx.rcpts), verdict.action, ",".join(r.id for r in verdict.rules) or "-")
        out = b""
        event = {"reject": "rejected", "tempfail": "tempfailed",
                 "quarantine": "quarantined"}.get(verdict.action, "delivered")
        extra = dict(common.pop("extra"))
        if verdict.action == "quarantine":
            try:
                extra["quarantine_id"] = await gw.hold(evaluation, tx.txid, {
                    "mail_from": tx.mail_from, "rcpt_tos": tx.rcpts, "client_ip": env.client_ip,
                    "auth_user": auth_user})
            except QuarantineError as exc:
                log.error("tx=%s quarantine failed: %s", tx.txid, exc)
                return codec.encode_replycode(f"451 4.3.0 Temporary storage failure "
                                              f"ref={tx.txid}")
        reply = verdict.smtp_reply if verdict.action in ("reject", "tempfail") else ""
        try:
            await gw.audit.append(gw.event(evaluation, event, reply=reply, extra=extra,
                                           **common))
        except AuditUnavailable as exc:
            log.error("tx=%s audit unavailable: %s", tx.txid, exc)
            return codec.encode_replycode(f"451 4.3.0 Audit store unavailable ref={tx.txid}")
        gw.notify(evaluation, tx.txid, tx.mail_from, tx.rcpts)
        if verdict.action in ("reject", "tempfail"):
            return codec.encode_replycode(verdict.smtp_reply)
        if verdict.action == "quarantine":
            out += codec.encode_quarantine(f"skot-milter {','.join(r.id for r in verdict.rules)}"
                                           f" ref={tx.txid}")
        out += self._header_changes(evaluation, raw)
        return out + codec.encode_continue()

    def _header_changes(self, evaluation: Evaluation, raw: bytes) -> bytes:
        """Delete forged results with our id, add ours and the policy tags, then sign."""
        gw = self.gateway
        hostname = gw.runtime.config.get("gateway", "hostname")
        out = b""
        if evaluation.auth is not None:
            seen = 0
            for name, value in self.tx.headers:
                if name.lower() != "authentication-results":
                    continue
                seen += 1
                probe = f"{name}: ".encode() + value.strip() + b"\r\n\r\n"
                if strip_our_results(probe, hostname) != probe:
                    out += codec.encode_chgheader(seen, name, "")
        for added in policy_headers(evaluation, hostname).decode("ascii").splitlines():
            added_name, _, added_value = added.partition(": ")
            out += codec.encode_addheader(added_name, added_value)
        out += self._warning_changes(evaluation)
        if gw.signer is not None:
            head, _body = gw.outgoing(evaluation)
            for field_line in _unfold(head):
                if field_line.lower().startswith(b"dkim-signature:"):
                    sig = field_line.split(b":", 1)[1].strip().decode("ascii")
                    out += codec.encode_insheader(0, "DKIM-Signature", sig)
        return out

    def _warning_changes(self, evaluation: Evaluation) -> bytes:
        """The recipient's warning (``milter.warning``) as the MTA's edits: the SMTP front
        relays the same bytes whole. Without body changes allowed, the subject prefix."""
        new = self.gateway.delivered(evaluation,
                                     banner=bool(self.actions & codec.SMFIF_CHGBODY))
        if new is evaluation.raw:
            return b""
        subject, body = milter_changes(evaluation.raw, new)
        out = b""
        if subject is not None:
            if any(name.lower() == "subject" for name, _ in self.tx.headers):
                out += codec.encode_chgheader(1, "Subject", subject)
            else:
                out += codec.encode_addheader("Subject", subject.decode("ascii", "replace"))
        if body is not None:
            out += codec.encode_replbody(body)
        return out


def _unfold(head: bytes) -> list[bytes]:
    lines: list[bytes] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and lines:
            lines[-1] += b"\r\n" + line
        elif line:
            lines.append(line)
    return lines


async def serve_connection(gateway_ref: Any, reader: asyncio.StreamReader,
                           writer: asyncio.StreamWriter, idle_timeout: float = 300.0) -> None:
    """Drive one MTA connection; ``gateway_ref()`` gives the current gateway (reloads)."""
    session = MilterSession(gateway_ref())
    decoder = codec.Decoder()
    try:
        while True:
            data = await asyncio.wait_for(reader.read(65536), timeout=idle_timeout)
            if not data:
                return
            for event in decoder.feed(data):
                if isinstance(event, codec.Quit) and not event.new_connection:
                    return
                if isinstance(event, codec.Mail):
                    session.gateway = gateway_ref()  # a new message: the current policy
                reply = await session.handle(event)
                if reply:
                    writer.write(reply)
            await writer.drain()
    except codec.ProtocolError as exc:
        log.warning("milter peer broke the protocol, closing: %s", exc)
    except (TimeoutError, ConnectionError) as exc:
        log.info("milter connection ended: %s", type(exc).__name__)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()


async def start(gateway_ref: Any, listen: str, reuse_port: bool = False) -> asyncio.Server:
    def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> Any:
        return serve_connection(gateway_ref, r, w)

    if listen.startswith("unix:"):
        return await asyncio.start_unix_server(handler, path=listen[len("unix:"):])
    host, _, port = listen.rpartition(":")
    return await asyncio.start_server(handler, host.strip("[]"), int(port),
                                      reuse_port=reuse_port or None)
