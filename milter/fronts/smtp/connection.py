"""The SMTP front's connection: aiosmtpd's SMTP protocol with our limits and DATA reader.

Connection caps (total and per address, with slots kept for the internal networks), the
early-talker pause, bounds on the dialogue before DATA (time and commands, counted anew after
each message, so any number of transactions share a connection), a total deadline for DATA,
raw-argument capture (to refuse addresses aiosmtpd would rewrite), XFORWARD from Postfix, and
cleanup when a client drops mid-transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import ipaddress
import logging
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiosmtpd.smtp
from aiosmtpd.smtp import SMTP

from milter.core.verdict import too_big
from milter.fronts.smtp.datareader import DataReader, DataResult
from milter.fronts.smtp.handler import NetMembership, SMTPHandler
from milter.spool import Spooled

log = logging.getLogger("skot-milter.smtp")

# aiosmtpd's own texts for these carry no enhanced status code; ours do (RFC 3463).
_REPLY_REWRITES = {
    "500 Line too long (see RFC5321 4.5.3.1.6)": "500 5.5.2 Line too long",
}
# aiosmtpd's refusals of a message over the size limit: ours name the limit, in both languages.
_TOO_BIG = ("552 Error: Too much mail data",
            "552 Error: message size exceeds fixed maximum message size")


class _Introspection:
    """``inspect`` for aiosmtpd's SMTP.__init__, at a fraction of the cost, same answers.

    Per connection aiosmtpd builds its AUTH table with ``inspect.getmembers`` of the
    connection and the handler (every attribute read, properties included, then sorted) to
    keep the ``auth_*`` ones, and reads the EHLO hook's signature. Postfix's before-queue
    proxy opens a connection per message: that was a tenth of the proxy path's Python time.
    Here: the ``auth_*`` members only, in name order (all aiosmtpd keeps of them; the class's
    names listed once per class), and each hook's signature read once."""

    _signatures: dict[tuple[object, bool], inspect.Signature] = {}
    _class_names: dict[type, list[str]] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(inspect, name)

    @staticmethod
    def getmembers(obj: object, predicate: Any = None) -> list[tuple[str, Any]]:
        if predicate is not None:
            return inspect.getmembers(obj, predicate)
        cls = type(obj)
        names = _Introspection._class_names.get(cls)
        if names is None:
            names = _Introspection._class_names[cls] = [n for n in dir(cls)
                                                         if n.startswith("auth_")]
        own = [n for n in getattr(obj, "__dict__", ()) if n.startswith("auth_")]
        out = []
        for name in sorted({*names, *own}):
            try:
                out.append((name, getattr(obj, name)))
            except AttributeError:
                continue
        return out

    @classmethod
    def signature(cls, fn: Any) -> inspect.Signature:
        key = (getattr(fn, "__func__", fn), hasattr(fn, "__self__"))
        sig = cls._signatures.get(key)
        if sig is None:
            sig = cls._signatures[key] = inspect.signature(fn)
        return sig


setattr(aiosmtpd.smtp, "inspect", _Introspection())  # noqa: B010 - the module's own name

_HOOK_PREFIXES = ("smtp_", "handle_")
_hook_names: dict[type, list[str]] = {}


def _hook_dir(obj: object) -> list[str]:
    """``dir`` for aiosmtpd's SMTP.__init__, which calls it twice per connection (on the
    connection and the handler: some 240 names, sorted) only to keep the ``smtp_*`` and
    ``handle_*`` ones: those names, the class's listed once per class. A third of the
    connection's set-up, and Postfix's before-queue proxy opens one connection per message."""
    cls = type(obj)
    names = _hook_names.get(cls)
    if names is None:
        names = _hook_names[cls] = [n for n in dir(cls) if n.startswith(_HOOK_PREFIXES)]
    own = getattr(obj, "__dict__", None)
    if own and any(n.startswith(_HOOK_PREFIXES) for n in own):
        return sorted({*names, *(n for n in own if n.startswith(_HOOK_PREFIXES))})
    return names


setattr(aiosmtpd.smtp, "dir", _hook_dir)  # noqa: B010 - shadows the builtin in that module


class SMTPConnection(SMTP):
    """aiosmtpd's SMTP with connection limits, raw-argument capture and cleanup on drop."""

    def __init__(self, handler: SMTPHandler, *, limits: ConnectionLimits, spool_dir: Path,
                 spool_threshold: int, data_timeout: float = 600.0, greet_pause: float = 0.0,
                 dialogue: DialogueLimits | None = None, **kwargs: Any) -> None:
        self._dialogue = dialogue or DialogueLimits()
        # MAIL, RCPT, DATA, RSET, NOOP and XFORWARD are counted per dialogue here, not per
        # connection by aiosmtpd (whose count made recipient 501 of a connection a 421).
        calls = dict(kwargs.pop("command_call_limit", None) or {})
        calls.update(dict.fromkeys(DIALOGUE_COMMANDS, UNCOUNTED))
        super().__init__(handler, command_call_limit=calls, **kwargs)
        self._said: Counter[str] = Counter()  # commands in this dialogue
        self._dialogue_timer: asyncio.TimerHandle | None = None
        self._in_data = False
        self._spool_dir = spool_dir
        self._spool_threshold = spool_threshold
        self.spooled: Spooled | None = None  # the message in DATA, when it went to disk
        self._limits = limits
        self._counted: str | None = None
        self._data_timeout = data_timeout
        self._greet_pause = greet_pause
        self._in_command = 0  # MAIL/RCPT/DATA/RSET running: not a moment to hang up

    # -- the idle timeout, without a new timer per command --------------------------------

    _deadline = 0.0
    _armed: float | None = None  # when the live timer fires; None once it has

    def _reset_timeout(self, duration: float | None = None) -> None:
        """aiosmtpd cancels its timer and makes a new one at every command (seven per
        message on a before-queue proxy's connection). Here the deadline moves and the timer
        stays: when it fires early it re-arms for the deadline. Same moment of closing."""
        deadline = self.loop.time() + (duration or self._timeout_duration)
        self._deadline = deadline
        if self._armed is not None and self._armed <= deadline:
            return
        if self._timeout_handle is not None:
            self._timeout_handle.cancel()
        self._timeout_handle = self.loop.call_at(deadline, self._timeout_cb)
        self._armed = deadline

    def _timeout_cb(self) -> None:
        self._armed = None
        if self.loop.time() < self._deadline:
            self._timeout_handle = self.loop.call_at(self._deadline, self._timeout_cb)
            self._armed = self._deadline
            return
        super()._timeout_cb()  # type: ignore[no-untyped-call]

    @property
    def task(self) -> asyncio.Task[None] | None:
        return self._handler_coroutine

    @property
    def idle(self) -> bool:
        """Between transactions and not in a command: safe to close at shutdown."""
        handler = self.event_handler
        session = self.session
        return self._in_command == 0 and (session is None or not isinstance(
            handler, SMTPHandler) or not handler.in_transaction(session))

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
        if isinstance(self.event_handler, SMTPHandler):
            self.event_handler.connections.add(self)
        self._new_dialogue()

    # -- the dialogue before DATA: bounded in time and commands ---------------------------

    def _new_dialogue(self) -> None:
        """Start counting anew: at connect and after each message (its DATA answered)."""
        self._said.clear()
        if self._dialogue_timer is not None:
            self._dialogue_timer.cancel()
        self._dialogue_timer = asyncio.get_running_loop().call_later(
            self._dialogue.timeout, self._dialogue_expired)

    def _dialogue_expired(self) -> None:
        """A client that has not reached the end of DATA within ``dialogue_timeout`` (a drip
        of EHLOs or RCPTs, each resetting the idle timer) gives its slot back (HOSTILE-INPUTS,
        issue 13 item 5). DATA itself has its own deadline."""
        self._dialogue_timer = None
        if self._in_data:
            return
        log.warning("%s took longer than %.0fs to reach DATA; closing",
                    self.session.peer if self.session else "?", self._dialogue.timeout)
        self.shut("421 4.4.2 Too slow, closing connection")

    async def _over_limit(self, command: str) -> bool:
        """Count ``command`` in this dialogue; past a limit the client hears 421 and the
        connection closes (as aiosmtpd does for its own per-connection limits)."""
        self._said[command] += 1
        self._said["*"] += 1
        limit = self._dialogue.per_command.get(command)
        if (limit is not None and self._said[command] > limit) or \
                self._said["*"] > self._dialogue.commands:
            log.warning("%s over the dialogue limit at %s",
                        self.session.peer if self.session else "?", command)
            with contextlib.suppress(Exception):
                await super().push(f"421 4.7.0 {command} sent too many times")
            if self.transport is not None:
                self.transport.close()
            return True
        return False

    def connection_lost(self, error: Exception | None) -> None:
        if getattr(self, "_refused", False):
            return
        if self._dialogue_timer is not None:
            self._dialogue_timer.cancel()
            self._dialogue_timer = None
        if self._counted is not None:
            self._limits.release(self._counted)
            self._counted = None
        session = self.session
        handler = self.event_handler
        if isinstance(handler, SMTPHandler):
            handler.connections.discard(self)
            if session is not None:
                handler.close_downstream(session)
        super().connection_lost(error)

    async def push(self, status: Any) -> None:
        if isinstance(status, str):
            status = _REPLY_REWRITES.get(status, status)
            if status in _TOO_BIG:
                at_mail = status == _TOO_BIG[1]  # MAIL ... SIZE= over the limit: no tx yet
                status = too_big(self.data_size_limit or 0)
                handler, session = self.event_handler, self.session
                if at_mail and isinstance(handler, SMTPHandler) and session is not None:
                    await handler.refused_at_mail(session, getattr(self, "skot_last_arg", ""),
                                                  status)
        await super().push(status)

    async def smtp_DATA(self, arg: str) -> None:
        """DATA within a total deadline: a client dripping a line every few seconds would
        otherwise hold a worker for ever (HOSTILE-INPUTS 14)."""
        if await self._over_limit("DATA"):
            return
        self._in_command += 1
        self._in_data = True
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
            self._in_data = False
            if self.transport is not None and not self.transport.is_closing():
                self._new_dialogue()

    async def _data(self, arg: str) -> None:
        """DATA read in large chunks by the sans-I/O ``DataReader`` instead of aiosmtpd's
        loop over every line; bytes pipelined after the final dot stay in the reader for
        the next command."""
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
        data = DataReader(max_size=self.data_size_limit or 0,
                          line_limit=self.line_length_limit,
                          spool_threshold=self._spool_threshold,
                          open_spool=lambda: Spooled(self._spool_dir))
        result: DataResult | None = None
        try:
            while True:
                if buffer:
                    done = data.feed(buffer)
                    buffer.clear()
                    reader._maybe_resume_transport()  # we emptied its buffer
                    if done:
                        buffer[:0] = data.rest  # pipelined commands after the dot
                        break
                if reader.at_eof():
                    return
                await reader._wait_for_data("smtp_DATA")
            result = data.finish()
            if result.reply:
                if result.spool_error is not None:
                    log.error("cannot spool a message to %s: %s", self._spool_dir,
                              result.spool_error)
                self.envelope = self._create_envelope()
                if result.refused and isinstance(self.event_handler, SMTPHandler) and \
                        self.session is not None:
                    await self.event_handler.data_refused(self.session, result.reply,
                                                          result.refused, result.size)
                await self.push(result.reply)
                return
            self.spooled = result.spooled  # the handler reads it when set
            self.envelope.content = result.content
            self.envelope.original_content = result.content
            status = await self._call_handler_hook("DATA")
        finally:
            self.spooled = None
            data.close()
            if result is not None and result.spooled is not None:
                result.spooled.close()
        self.envelope = self._create_envelope()
        await self.push("250 OK" if not isinstance(status, str) else status)

    async def smtp_XFORWARD(self, arg: str | None) -> None:
        """Postfix's XFORWARD: the real client behind a before-queue proxy filter."""
        if await self._over_limit("XFORWARD"):
            return
        handler = self.event_handler
        session = self.session
        if not isinstance(handler, SMTPHandler) or session is None \
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
        if await self._over_limit("MAIL"):
            return
        self.skot_last_arg = arg or ""
        await self._counted_command(super().smtp_MAIL, arg)

    async def smtp_RCPT(self, arg: str | None) -> None:
        if await self._over_limit("RCPT"):
            return
        self.skot_last_arg = arg or ""
        await self._counted_command(super().smtp_RCPT, arg)

    async def smtp_RSET(self, arg: str | None) -> None:
        if await self._over_limit("RSET"):
            return
        await self._counted_command(super().smtp_RSET, arg)

    async def smtp_NOOP(self, arg: str | None) -> None:
        if await self._over_limit("NOOP"):
            return
        await super().smtp_NOOP(arg)


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


# Commands counted per dialogue (see ``DialogueLimits``), not by aiosmtpd per connection.
# (Postfix's smtpd_proxy_filter sends XFORWARD before every MAIL: it is counted the same way.)
DIALOGUE_COMMANDS = ("MAIL", "RCPT", "DATA", "RSET", "NOOP", "XFORWARD")
UNCOUNTED = 2**62


@dataclass(frozen=True)
class DialogueLimits:
    """What one dialogue (connect or the end of a message, to the end of the next DATA) may
    take: seconds, commands in all, and NOOPs / RSETs."""

    timeout: float = 180.0
    commands: int = 2000
    per_command: dict[str, int] = field(default_factory=lambda: {"NOOP": 20, "RSET": 50})


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ConnectionLimits:
    """Caps on concurrent connections, in total and per client address. The last
    ``reserved`` slots (at most half of them) are for the internal networks (the school's own
    Postfix and staff): strangers filling the gateway cannot lock them out."""

    def __init__(self, total: int, per_ip: int, reserved: int = 0,
                 internal: Sequence[Network] = ()) -> None:
        self.total, self.per_ip = total, per_ip
        self.reserved = min(reserved, total // 2)
        self.internal = tuple(internal)
        self.by_ip: Counter[str] = Counter()
        self.count = 0
        self.is_internal = NetMembership(self.internal)

    def admit(self, ip: str) -> str | None:
        cap = self.total if self.is_internal(ip) else self.total - self.reserved
        if self.count >= cap:
            return "421 4.7.0 Too many connections, try again later"
        if self.by_ip[ip] >= self.per_ip:
            return "421 4.7.0 Too many connections from your address, try again later"
        self.by_ip[ip] += 1
        self.count += 1
        return None

    def release(self, ip: str) -> None:
        self.by_ip[ip] -= 1
        self.count -= 1
        if self.by_ip[ip] <= 0:
            del self.by_ip[ip]
