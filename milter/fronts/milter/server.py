"""The milter front: an asyncio server around the sans-I/O codec, for Postfix's smtpd_milters.

It feeds the same core as the SMTP front. Postfix queues the message after our answer, so the
decision is made durable in the audit store *before* we answer; the verdict becomes accept
(plus header changes), a reply code (reject/tempfail with our text), or quarantine (Postfix's
hold queue plus our own copy). A peer that breaks the protocol gets its connection closed;
commands out of order are handled as libmilter does (``codec.ProtocolOrder``). Header bytes
count against ``max_message_size`` as they arrive, and ``[milter] max_connections`` caps the
connections, so that no MTA (or impostor) can exhaust memory or file descriptors.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from milter import metrics
from milter.core.verdict import too_big
from milter.dnsauth import strip_our_results
from milter.fronts.milter import codec
from milter.spool import Spooled
from milter.transaction import LOCAL_PROBLEM, Gateway, Transaction
from milter.warning import milter_changes

log = logging.getLogger("skot-milter.milter")

ACTIONS = (codec.SMFIF_ADDHDRS | codec.SMFIF_CHGHDRS | codec.SMFIF_QUARANTINE
           | codec.SMFIF_CHGBODY)  # body: the banner of a tagging rule (milter.warning)
BAD_SENDER = "553 5.1.7 Invalid sender address: not valid UTF-8"
BAD_RECIPIENT = "553 5.1.3 Invalid recipient address: not valid UTF-8"


def valid_utf8(text: str) -> bool:
    """The codec keeps undecodable bytes as surrogates: such an address can be neither
    relayed as given nor recorded (HOSTILE-INPUTS; issue 13 item 6a)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# The steps we always answer with "continue". An MTA that offers it (milter protocol 6:
# Postfix, Sendmail 8.14) is asked not to wait for those answers, so a message costs one
# round trip (its end) instead of one per command, header and body chunk: the same decisions,
# a fraction of the packets and wake-ups on both sides.
# Not MAIL and RCPT: an address that is not valid UTF-8 is refused there (553).
NO_REPLY = {codec.Connect: codec.SMFIP_NR_CONN, codec.Helo: codec.SMFIP_NR_HELO,
            codec.Data: codec.SMFIP_NR_DATA, codec.Unknown: codec.SMFIP_NR_UNKN,
            codec.Header: codec.SMFIP_NR_HDR, codec.EndOfHeaders: codec.SMFIP_NR_EOH,
            codec.Body: codec.SMFIP_NR_BODY}
NO_REPLY_ALL = sum(NO_REPLY.values())
CONTINUE = codec.encode_continue()

# Steps we do not need at all: Postfix sends neither the packet nor waits (it still sends the
# step's macro packet, always, even an empty one: milter8.c milter8_event).
NO_SEND = codec.SMFIP_NODATA | codec.SMFIP_NOEOH | codec.SMFIP_NOUNKNOWN

# The macros we read, asked for per stage in the option negotiation (protocol 6,
# SMFIF_SETSYMLIST), so that the MTA looks up and sends only these instead of its defaults
# (Postfix: a resolver look-up each for {mail_host}, {rcpt_host}...). The queue id is read at
# the end of the message: Postfix knows it only after the first accepted RCPT
# (smtpd_delay_open_until_valid_rcpt), Sendmail from MAIL on. A stage we need nothing from
# still needs a list: an empty one would mean "your default list" to Postfix (milter.c
# MILTER_MACRO_EVAL), so it names a macro no MTA defines.
NO_MACROS = "{skot_none}"
MACROS = {codec.SMFIM_CONNECT: "{client_addr}", codec.SMFIM_HELO: NO_MACROS,
          codec.SMFIM_ENVFROM: "i {auth_authen}", codec.SMFIM_ENVRCPT: NO_MACROS,
          codec.SMFIM_DATA: NO_MACROS, codec.SMFIM_EOH: NO_MACROS, codec.SMFIM_EOM: "i"}
# Where libmilter keeps each stage's macros, the order smfi_getsymval looks in (latest stage
# first), and which stages a command starts afresh (its own and every later one).
_STAGES = b"ENTRMHC"
SKIP_MACROS = b"LB"  # before each header and body chunk: libmilter drops them too
_CLEARS = {codec.Connect: b"HMRTNE", codec.Helo: b"MRTNE", codec.Mail: b"RTNE",
           codec.Rcpt: b"TNE"}


@dataclass
class Message:
    """The message of the transaction in progress, as the MTA sends it."""

    headers: list[tuple[str, bytes]] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)
    spool: Spooled | None = None  # the whole message, once it passed gateway.spool_threshold
    size: int = 0
    header_bytes: int = 0  # counted as the headers come, against max_message_size
    too_big: bool = False
    spool_error: str = ""  # the spool could not be written: the MTA hears 451

    def close(self) -> None:
        if self.spool is not None:
            self.spool.close()
            self.spool = None

    def head(self) -> bytes:
        lines = [f"{name}:".encode() + (b"" if value.startswith((b" ", b"\t")) else b" ")
                 + value.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") + b"\r\n"
                 for name, value in self.headers]
        return b"".join(lines) + b"\r\n"


class MilterConnection:
    """One connection from the MTA. ``handle`` turns an event into the bytes to answer."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.macros: dict[int, dict[str, str]] = {}  # per stage (command byte), as libmilter
        self.client_ip = ""
        self.helo = ""
        self.actions = ACTIONS  # what the MTA allowed us (option negotiation)
        self.no_reply = 0       # the steps the MTA agreed not to wait for (NO_REPLY)
        self.tx: Transaction | None = None
        self.message = Message()
        self.order = codec.ProtocolOrder()

    def _reset(self) -> None:
        self.message.close()
        self.message = Message()
        self.tx = None

    def _admitted(self, event: codec.Event) -> bool:
        """libmilter's command order: an abort starts afresh; a command out of order is
        ignored (False)."""
        take, aborted = self.order.admit(event)
        if aborted:
            self._reset()
        if not take:
            log.info("milter command %s out of order, ignored", type(event).__name__)
        return take

    async def handle(self, event: codec.Event) -> bytes:
        """The reply to ``event`` (b"" for none), in libmilter's command order."""
        if not isinstance(event, codec.EndOfMessage):
            return self.handle_now(event)
        if not self._admitted(event):
            return b""
        self._add_body(event.chunk)
        try:
            reply = await self._end_of_message()
        finally:
            self._reset()
        self.order.replied(event, reply)
        return reply

    def handle_now(self, event: codec.Event) -> bytes:
        """``handle`` for every event but the end of the message: those are answered
        without waiting for anything, so without a coroutine per packet (a message is some
        thirty packets: macros, headers, body chunks)."""
        if not self._admitted(event):
            return b""
        reply = self._handle(event)
        self.order.replied(event, reply)
        if self.no_reply & NO_REPLY.get(type(event), 0) and reply == CONTINUE:
            return b""  # the MTA does not wait for it
        return reply

    def symval(self, name: str, default: str = "") -> str:
        """A macro's value as libmilter's smfi_getsymval finds it: the latest stage first."""
        for stage in _STAGES:
            value = self.macros.get(stage, {}).get(name)
            if value is not None:
                return value
        return default

    def _handle(self, event: codec.Event) -> bytes:
        clears = _CLEARS.get(type(event))
        if clears is not None:
            for stage in clears:
                self.macros.pop(stage, None)
        if isinstance(event, codec.OptNeg):
            if event.version < 2:
                raise codec.ProtocolError(f"milter version {event.version} too old")
            # We ask only for the actions we use, skip the steps we do not need (if offered),
            # and with protocol 6 for the macros we read.
            self.actions = ACTIONS & event.actions
            protocol = NO_SEND & event.protocol
            macros = None
            if event.version >= 6:
                self.no_reply = NO_REPLY_ALL & event.protocol
                protocol |= self.no_reply
                if event.actions & codec.SMFIF_SETSYMLIST:
                    macros = MACROS
            self.order.skip(protocol)
            return codec.encode_optneg(min(event.version, codec.VERSION),
                                       self.actions | (codec.SMFIF_SETSYMLIST if macros else 0),
                                       protocol, macros)
        if isinstance(event, codec.Macro):
            self.macros[event.for_command[0] if event.for_command else 0] = event.macros
            return b""
        if isinstance(event, codec.Connect):
            self.client_ip = event.address if event.family in ("4", "6") else "127.0.0.1"
            self.client_ip = self.client_ip.removeprefix("IPv6:")
            return CONTINUE
        if isinstance(event, codec.Helo):
            self.helo = event.name
            return CONTINUE
        if isinstance(event, codec.Mail):
            self._reset()
            if not valid_utf8(event.address):
                return codec.encode_replycode(BAD_SENDER)
            self.tx = self.gateway.begin(
                "milter", sender=event.address,
                client=self.symval("{client_addr}", self.client_ip), helo=self.helo,
                auth_user=self.symval("{auth_authen}"),
                extra={"front": "milter", "queue_id": self.symval("i")})
            return CONTINUE
        if isinstance(event, codec.Rcpt):
            if not valid_utf8(event.address):
                return codec.encode_replycode(BAD_RECIPIENT)
            if self.tx is not None:
                self.tx.recipients.append(event.address)
            return CONTINUE
        if isinstance(event, codec.Header):
            self._add_header(event.name, event.value)
            return CONTINUE
        if isinstance(event, codec.Body):
            self._add_body(event.chunk)
            return CONTINUE
        if isinstance(event, codec.Abort):
            self._reset()
            return b""
        if isinstance(event, codec.Quit):
            if event.new_connection:
                self._reset()
                self.macros.clear()
            return b""
        return CONTINUE  # EOH, DATA, unknown SMTP commands

    def _add_header(self, name: str, value: bytes) -> None:
        """Headers count against the size limit as they come (not only at the first body
        chunk): 150 header packets of 1 MB were once all held (issue 13 item 6b)."""
        msg = self.message
        if msg.too_big or msg.spool_error:
            return
        cfg = (self.tx.runtime if self.tx is not None else self.gateway.runtime).config
        msg.header_bytes += len(name) + len(value) + 4
        if msg.header_bytes > cfg.gateway.max_message_size:
            msg.too_big = True
            msg.headers = []  # never hold more than the limit
            return
        msg.headers.append((name, value))

    def _add_body(self, chunk: bytes) -> None:
        msg = self.message
        cfg = (self.tx.runtime if self.tx is not None else self.gateway.runtime).config
        if msg.too_big or msg.spool_error:
            return
        if not msg.size:
            msg.size = len(msg.head())
        msg.size += len(chunk)
        if msg.size > cfg.gateway.max_message_size:
            msg.too_big = True
            msg.close()
            msg.body = bytearray()  # never hold more than the limit
            return
        try:
            if msg.spool is None and msg.size > cfg.gateway.spool_threshold:
                # Past the threshold the whole message goes to disk, as the SMTP front does.
                msg.spool = Spooled(cfg.state_dir / "spool")
                msg.spool.write(msg.head())
                msg.spool.write(msg.body)
                msg.body = bytearray()
            if msg.spool is not None:
                msg.spool.write(chunk)
            else:
                msg.body += chunk
        except OSError as exc:
            log.error("cannot spool the message: %s", exc)
            msg.spool_error = str(exc)
            msg.close()
            msg.body = bytearray()

    async def _end_of_message(self) -> bytes:
        msg, tx = self.message, self.tx
        if tx is None:
            raise codec.ProtocolError("end of message without MAIL")
        # Postfix knows the queue id only once a recipient was accepted: the end of the
        # message has it (and a MAIL-time value from another message would be wrong).
        tx.extra["queue_id"] = self.symval("i")
        if msg.too_big:
            reply = f"{too_big(tx.runtime.config.gateway.max_message_size)} ref={tx.txid}"
            await tx.refused(reply, "too-big", {"size": msg.size})
            return codec.encode_replycode(reply)
        if msg.spool_error:
            return codec.encode_replycode(tx.reply(LOCAL_PROBLEM))
        source: bytes | Spooled = msg.spool if msg.spool is not None \
            else msg.head() + bytes(msg.body)
        async with self.gateway.message_bytes(source) as raw:
            decision = await tx.decide(raw)
            if not decision.deliver:
                if decision.consumed:  # a release request: answered, goes nowhere
                    return codec.encode_discard()
                if decision.quarantine_id and decision.evaluation is not None:
                    # the MTA's hold queue as well as our own copy
                    rules = ",".join(r.id for r in decision.evaluation.verdict.rules)
                    return (codec.encode_quarantine(f"skot-milter {rules} ref={tx.txid}")
                            + self._header_changes(tx) + codec.encode_continue())
                return codec.encode_replycode(decision.reply)
            refused = await tx.handed_over()
            if refused:
                return codec.encode_replycode(refused)
            return self._header_changes(tx) + codec.encode_continue()

    def _header_changes(self, tx: Transaction) -> bytes:
        """Delete forged results with our id, add ours and the policy tags, the recipient's
        warning (``milter.warning``) as the MTA's edits, and a DKIM signature at the top
        over the message as it will be delivered (the SMTP front relays the same bytes)."""
        evaluation = tx.evaluation
        assert evaluation is not None
        hostname = tx.runtime.config.gateway.hostname
        out = b""
        if evaluation.auth is not None:
            seen = 0
            for name, value in self.message.headers:
                if name.lower() != "authentication-results":
                    continue
                seen += 1
                probe = f"{name}: ".encode() + value.strip() + b"\r\n\r\n"
                if strip_our_results(probe, hostname) != probe:
                    out += codec.encode_chgheader(seen, name, "")
        delivered = self.gateway.delivered(tx, banner=bool(self.actions & codec.SMFIF_CHGBODY))
        warning = self._warning_changes(evaluation.raw, delivered)
        for field_name, field_value in self.gateway.added_fields(evaluation, hostname,
                                                                 delivered):
            if field_name == "DKIM-Signature":
                warning += codec.encode_insheader(0, field_name, field_value)
            else:
                out += codec.encode_addheader(field_name, field_value)
        return out + warning

    def _warning_changes(self, raw: bytes, delivered: bytes) -> bytes:
        """The warning as a Subject change (or addition) and a body replacement; without
        body changes allowed, ``delivered`` carries the subject prefix only."""
        if delivered is raw:
            return b""
        subject, body = milter_changes(raw, delivered)
        out = b""
        if subject is not None:
            if any(name.lower() == "subject" for name, _ in self.message.headers):
                out += codec.encode_chgheader(1, "Subject", subject)
            else:
                out += codec.encode_addheader("Subject", subject.decode("ascii", "replace"))
        if body is not None:
            out += codec.encode_replbody(body)
        return out


class MilterProtocol(asyncio.Protocol):
    """One MTA connection. Packets are decoded and answered in ``data_received``: a message
    is some twenty reads (Postfix writes each packet, and waits for none of the answers we
    declined), and a StreamReader costs a buffer copy, a future and a task wake-up per read,
    plus a timeout object. Only the end of a message (policy and audit) runs as a task;
    reading pauses until it is answered, and what came meanwhile is handled after it, in
    order, as libmilter does. Each transaction pins the runtime current at its MAIL.

    The idle timeout is one timer, moved only when it fires (``last`` is the time of the
    last read): it counts while we wait for the MTA, not while we decide or while the MTA
    does not read our answers (the transport's write buffer is full: reading pauses, as
    ``drain`` did)."""

    def __init__(self, gateway: Gateway, cap: ConnectionCap) -> None:
        self.gateway = gateway
        self.cap = cap
        self.session = MilterConnection(gateway)
        self.decoder = codec.Decoder(skip_macros=SKIP_MACROS)
        self.counted = 0  # packets counted in the metric so far
        self.loop = asyncio.get_running_loop()
        self.idle_timeout = gateway.runtime.config.milter.idle_timeout
        self.last = self.loop.time()
        self.timer: asyncio.TimerHandle | None = None
        self.transport: asyncio.Transport | None = None
        self.backlog: list[codec.Event] = []  # decoded, not yet handled (after an end)
        self.ending: asyncio.Task[None] | None = None  # an end of message being decided
        self.write_paused = False  # the MTA does not read our answers
        self.admitted = False
        self.closed = False

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if not self.cap.admit():
            self.closed = True
            transport.close()
            return
        self.admitted = True
        self.timer = self.loop.call_at(self.last + self.idle_timeout, self._idle_check)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self.last = self.loop.time()
        try:
            events = self.decoder.feed(data)
        except codec.ProtocolError as exc:
            self._broken(exc)
            return
        if self.backlog:
            self.backlog += events
        else:
            self.backlog = events
        if self.ending is None:
            self._run()

    def eof_received(self) -> bool | None:
        return None  # the transport closes (after writing what it holds)

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self._resume()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if exc is not None:
            log.info("milter connection ended: %s", type(exc).__name__)
        if self.admitted:
            self.admitted = False
            self.cap.open -= 1
        self._count()

    # -- the work ------------------------------------------------------------------------------

    def _run(self) -> None:
        """Handle the events decoded so far, in order; an end of message hands the rest
        to its task."""
        transport = self.transport
        assert transport is not None
        events, self.backlog = self.backlog, []
        out: list[bytes] = []
        session = self.session
        broken: codec.ProtocolError | None = None
        try:
            for i, event in enumerate(events):
                if isinstance(event, codec.EndOfMessage):
                    self.backlog = events[i + 1:]
                    transport.pause_reading()
                    self.ending = self.loop.create_task(self._end(event))
                    break
                if isinstance(event, codec.Quit) and not event.new_connection:
                    self.closed = True
                    break
                reply = session.handle_now(event)
                if reply:
                    out.append(reply)
        except codec.ProtocolError as exc:
            broken = exc
        if out:  # the answers so far, in one write
            transport.write(b"".join(out))
        if broken is not None:
            self._broken(broken)
        elif self.closed:
            transport.close()

    async def _end(self, event: codec.EndOfMessage) -> None:
        try:
            reply = await self.session.handle(event)
        except codec.ProtocolError as exc:
            self.ending = None
            self._broken(exc)
            return
        except Exception:
            self.ending = None
            log.exception("milter end of message failed, closing the connection")
            self._close()
            return
        except BaseException:  # cancelled: the gateway stops
            self.ending = None
            self._close()
            raise
        self.ending = None
        self._count()
        if self.closed:
            return
        assert self.transport is not None
        if reply:
            self.transport.write(reply)
        self.last = self.loop.time()
        self._run()
        self._resume()

    def _resume(self) -> None:
        """Read again, unless an end of message is being decided or the MTA does not read."""
        if self.ending is None and not self.write_paused and not self.closed \
                and self.transport is not None:
            self.last = self.loop.time()
            self.transport.resume_reading()

    def _idle_check(self) -> None:
        self.timer = None
        if self.closed:
            return
        now = self.loop.time()
        if self.ending is not None or self.write_paused:
            self.last = now  # not waiting for the MTA: the idle time starts when we read
        due = self.last + self.idle_timeout
        if now < due:
            self.timer = self.loop.call_at(due, self._idle_check)
            return
        log.info("milter connection ended: %s", "TimeoutError")
        self._close()

    def _broken(self, exc: codec.ProtocolError) -> None:
        log.warning("milter peer broke the protocol, closing: %s", exc)
        self._close()

    def _close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _count(self) -> None:
        metrics.MILTER_PACKETS.inc(self.decoder.packets - self.counted)
        self.counted = self.decoder.packets


class ConnectionCap:
    """At most ``[milter] max_connections`` at once (read at each connection, so a reload
    changes it); past it a connection is closed at once, logged once a minute."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.open = 0
        self.refused = 0
        self._logged = -1e9

    def admit(self) -> bool:
        cap = self.gateway.runtime.config.milter.max_connections
        if self.open < cap:
            self.open += 1
            return True
        self.refused += 1
        now = time.monotonic()
        if now - self._logged >= 60:
            self._logged = now
            log.warning("milter: %d connections open, the cap; refused %d so far", self.open,
                        self.refused)
        return False


async def start(gateway: Gateway, listen: str, reuse_port: bool = False) -> asyncio.Server:
    cap = ConnectionCap(gateway)
    loop = asyncio.get_running_loop()

    def factory() -> MilterProtocol:
        return MilterProtocol(gateway, cap)

    if listen.startswith("unix:"):
        return await loop.create_unix_server(factory, path=listen[len("unix:"):])
    host, _, port = listen.rpartition(":")
    return await loop.create_server(factory, host.strip("[]"), int(port),
                                    reuse_port=reuse_port or None)
