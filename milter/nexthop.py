"""The next hop: a real SMTP client session (aiosmtplib) or a Maildir.

The SMTP session is opened at MAIL FROM and driven command by command, so each RCPT gets the
next hop's own answer (no backscatter) and our 250 follows the next hop's 250 for the same
bytes. Envelope commands are sent as raw bytes: a client library that "helpfully" re-quotes an
address would relay a different address than the one we audited.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiosmtplib

from milter.durable import fsync_dir, write_synced


@dataclass(frozen=True)
class Reply:
    code: int
    text: str

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 300

    @property
    def line(self) -> str:
        text = " ".join(self.text.split())
        return f"{self.code} {text}" if text else str(self.code)


class NextHopError(Exception):
    """The next hop could not be reached or did not answer in time (client gets 451)."""


class Session(Protocol):
    async def mail(self, address: str, params: list[str]) -> Reply: ...

    async def rcpt(self, address: str) -> Reply: ...

    async def data(self, *pieces: bytes) -> Reply: ...

    async def start_data(self, *pieces: bytes) -> Reply | None: ...

    async def finish_data(self) -> Reply: ...

    def abort(self) -> None: ...

    async def reset(self) -> None: ...

    async def close(self) -> None: ...


class SMTPNextHop:
    """One downstream SMTP session, driven in step with the client's."""

    def __init__(self, host: str, port: int, helo: str, timeout: float) -> None:
        self._smtp = aiosmtplib.SMTP(hostname=host, port=port, timeout=timeout,
                                     local_hostname=helo, start_tls=False, use_tls=False)
        self._timeout = timeout
        self.esmtp: set[str] = set()
        # No transaction open at the next hop: after the greeting, and after the reply to
        # the end of data, whatever it was (RFC 5321 4.1.1.4). Then no RSET is needed.
        self.between = True

    async def connect(self) -> None:
        try:
            await self._smtp.connect()
            resp = await self._smtp.ehlo()
            if resp.code != 250:
                await self._smtp.helo()
            self.esmtp = {k.upper() for k in self._smtp.esmtp_extensions}
        except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
            await self.close()
            raise NextHopError(f"next hop unavailable: {exc}") from exc

    async def _command(self, *args: bytes) -> Reply:
        try:
            resp = await self._smtp.execute_command(*args)
        except aiosmtplib.SMTPResponseException as exc:
            return Reply(exc.code, exc.message)
        except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
            raise NextHopError(f"next hop failed: {exc}") from exc
        return Reply(resp.code, resp.message)

    def _unsendable(self, address: str) -> Reply | None:
        """A non-ASCII address to a next hop without SMTPUTF8 would be mangled or refused
        there: refuse it here, as RFC 6531 3.2 asks, instead of sending it anyway."""
        if address.isascii() or "SMTPUTF8" in self.esmtp:
            return None
        return Reply(553, "5.6.7 Next hop does not accept internationalised addresses")

    async def mail(self, address: str, params: list[str]) -> Reply:
        refused = self._unsendable(address)
        if refused is not None:
            return refused
        keep = [p for p in params if p.split("=")[0].upper() in self.esmtp
                or (p.upper().startswith("BODY=") and "8BITMIME" in self.esmtp)]
        args = [b"MAIL", f"FROM:<{address}>".encode()] + [p.encode() for p in keep]
        self.between = False
        return await self._command(*args)

    async def rcpt(self, address: str) -> Reply:
        refused = self._unsendable(address)
        if refused is not None:
            return refused
        return await self._command(b"RCPT", f"TO:<{address}>".encode())

    async def data(self, *pieces: bytes) -> Reply:
        """DATA, the message and the final dot; the next hop's answer."""
        refused = await self.start_data(*pieces)
        return refused if refused is not None else await self.finish_data()

    async def start_data(self, *pieces: bytes) -> Reply | None:
        """DATA and the message (``pieces`` of whole lines), all but the final dot: None
        when the next hop waits for the dot, else its refusal of DATA.

        The message goes dot-stuffed in line-aligned chunks with flow control. (aiosmtplib's
        own ``data`` rewrites the line ends and stuffs dots with two regex passes over the
        whole message and hands it to the transport in one piece: three copies of a 10 MB
        message at once. Ours is CRLF already, normalised at ingress.)"""
        protocol = self._protocol()
        try:
            protocol._response_pending = True
            protocol.write(b"DATA\r\n")
            start = await protocol.read_response(timeout=self._timeout)
            if start.code != 354:
                return Reply(start.code, start.message)
            for chunk in stuffed_chunks(*pieces):
                protocol.write(chunk)
                await protocol._drain_helper()
        except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
            self._smtp.close()
            raise NextHopError(f"next hop failed during DATA: {exc}") from exc
        return None

    async def finish_data(self) -> Reply:
        """The final dot: from here on the next hop may accept the message."""
        protocol = self._protocol()
        try:
            protocol._response_pending = True
            protocol.write(b".\r\n")
            resp = await protocol.read_response(timeout=self._timeout)
        except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
            self._smtp.close()
            raise NextHopError(f"next hop failed after the final dot: {exc}") from exc
        self.between = True
        return Reply(resp.code, resp.message)

    def abort(self) -> None:
        """Drop the connection mid-DATA: without the final dot the next hop delivers
        nothing (and a QUIT now would be read as message text)."""
        self._smtp.close()

    def _protocol(self) -> Any:
        protocol = self._smtp.protocol
        if protocol is None or not self._smtp.is_connected:
            raise NextHopError("next hop failed during DATA: connection lost")
        return protocol

    @property
    def alive(self) -> bool:
        return bool(self._smtp.is_connected)

    async def rset(self) -> bool:
        """RSET; True when the session is ready for another transaction."""
        try:
            resp = await self._smtp.execute_command(b"RSET")
        except (TimeoutError, aiosmtplib.SMTPException, OSError):
            await self.close()
            return False
        self.between = resp.code == 250
        return self.between

    async def reset(self) -> None:
        await self.rset()

    async def close(self) -> None:
        try:
            if self._smtp.is_connected:
                await asyncio.wait_for(self._smtp.quit(), timeout=2)
        except (TimeoutError, aiosmtplib.SMTPException, OSError):
            pass
        finally:
            self._smtp.close()


CHUNK = 256 * 1024


def stuffed_chunks(*pieces: bytes, size: int = CHUNK) -> Iterator[bytes]:
    """The message (``pieces`` of whole lines, CRLF line ends) as DATA: line-aligned chunks
    of about ``size`` bytes, every line that starts with a dot given a second one (RFC 5321
    4.5.2), ending in CRLF."""
    last = b""
    for content in pieces:
        pos, end = 0, len(content)
        while pos < end:
            cut = content.find(b"\r\n", pos + size) if end - pos > size else -1
            cut = end if cut < 0 else cut + 2
            piece = content[pos:cut] if pos or cut < end else content
            if b"\r\n." in piece:
                piece = piece.replace(b"\r\n.", b"\r\n..")
            if piece.startswith(b"."):
                piece = b"." + piece
            yield piece
            last, pos = piece, cut
    if last and not last.endswith(b"\r\n"):
        yield b"\r\n"  # an empty message is just the dot


def maildir_deliver(root: Path, *pieces: bytes) -> str:
    """Write one message durably into a Maildir (tmp/, fsync, rename into new/, fsync dir)."""
    for sub in ("tmp", "new", "cur"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    name = f"{time.time_ns()}.{uuid.uuid4().hex[:12]}.{socket.gethostname()}"
    tmp = root / "tmp" / name
    write_synced(tmp, pieces, 0o600)
    os.rename(tmp, root / "new" / name)
    fsync_dir(root / "new")
    return name


class MaildirNextHop:
    """A next hop that is a local Maildir (trials and demos): accepts everyone."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._pieces: tuple[bytes, ...] = ()

    async def mail(self, address: str, params: list[str]) -> Reply:
        return Reply(250, "2.1.0 Ok")

    async def rcpt(self, address: str) -> Reply:
        return Reply(250, "2.1.5 Ok")

    async def data(self, *pieces: bytes) -> Reply:
        try:
            name = await asyncio.to_thread(maildir_deliver, self.root, *pieces)
        except OSError as exc:
            raise NextHopError(f"maildir delivery failed: {exc}") from exc
        return Reply(250, f"2.0.0 Ok: delivered as {name}")

    async def start_data(self, *pieces: bytes) -> Reply | None:
        self._pieces = pieces
        return None

    async def finish_data(self) -> Reply:
        pieces, self._pieces = self._pieces, ()
        return await self.data(*pieces)

    def abort(self) -> None:
        self._pieces = ()

    async def reset(self) -> None:
        return None

    async def close(self) -> None:
        return None


async def open_session(next_hop: str, helo: str, timeout: float) -> Session:
    """Open a session to ``smtp://host:port`` or ``maildir:/abs/path``."""
    if next_hop.startswith("maildir:"):
        return MaildirNextHop(Path(next_hop[len("maildir:"):]))
    hostport = next_hop[len("smtp://"):]
    host, _, port = hostport.rpartition(":")
    session = SMTPNextHop(host.strip("[]"), int(port), helo, timeout)
    await session.connect()
    return session


async def send_message(next_hop: str, helo: str, timeout: float, mail_from: str,
                       rcpts: list[str], content: bytes) -> Reply:
    """One whole transaction (for releases and notices); returns the first failing reply."""
    session = await open_session(next_hop, helo, timeout)
    try:
        reply = await session.mail(mail_from, [])
        if not reply.ok:
            return reply
        accepted = 0
        last = reply
        for r in rcpts:
            last = await session.rcpt(r)
            accepted += last.ok
        if not accepted:
            return last
        return await session.data(content)
    finally:
        await session.close()


class SessionPool:
    """Open next-hop SMTP sessions kept for the next transaction (RSET between them).

    Connecting and greeting once per message costs the next hop and us more than most of
    the policy; a reused session that turns out dead is replaced once, transparently."""

    def __init__(self, max_idle: int = 32, idle_seconds: float = 30.0) -> None:
        self.max_idle = max_idle
        self.idle_seconds = idle_seconds
        self._idle: dict[str, list[tuple[float, SMTPNextHop]]] = {}

    async def get(self, next_hop: str, helo: str, timeout: float) -> tuple[Session, bool]:
        """A session and whether it was reused (a reused one may have died meanwhile)."""
        idle = self._idle.get(next_hop, [])
        now = time.monotonic()
        while idle:
            since, session = idle.pop()
            if now - since < self.idle_seconds and session.alive:
                return session, True
            await session.close()
        return await open_session(next_hop, helo, timeout), False

    async def release(self, next_hop: str, session: Session) -> None:
        """Keep a session whose transaction ended cleanly; close anything else."""
        if not isinstance(session, SMTPNextHop) or not session.alive:
            await session.close()
            return
        idle = self._idle.setdefault(next_hop, [])
        if len(idle) >= self.max_idle or not (session.between or await session.rset()):
            await session.close()
            return
        idle.append((time.monotonic(), session))

    async def close(self) -> None:
        for idle in self._idle.values():
            for _, session in idle:
                await session.close()
        self._idle.clear()
