"""The milter floor: a bare Python milter that checks nothing and records nothing.

    python bench/bare_milter.py PORT [WORKERS]

What any Python milter pays before it does its job: the shape of skot's milter front (an
asyncio Protocol answering in ``data_received``, one write per read), the same sans-I/O
codec, skot's own option negotiation (the steps skipped, the answers Postfix need not wait
for, the macros asked for), the headers and body collected as they come, "continue" at the
end of the message. No policy, no MIME parse, no audit record, no header changes.
bench/peers.py runs it as the "bare" path, one process per skot worker sharing one
listening socket: the table shows how much of skot's milter CPU is the floor of the
language and the protocol, and how much is the gateway's own work.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from milter.fronts.milter import codec  # noqa: E402
from milter.fronts.milter.server import (  # noqa: E402
    CONTINUE,
    NO_REPLY,
    SKIP_MACROS,
    MilterConnection,
)


class Bare(asyncio.Protocol):
    """The shape of skot's front (``MilterProtocol``): packets answered in ``data_received``,
    one write per read; the option negotiation is skot's own (``MilterConnection``)."""

    def __init__(self) -> None:
        self.decoder = codec.Decoder(skip_macros=SKIP_MACROS)
        self.negotiation = MilterConnection(None)  # type: ignore[arg-type]  # OptNeg only
        self.headers: list[tuple[str, bytes]] = []
        self.body = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        out = []
        try:
            events = self.decoder.feed(data)
        except codec.ProtocolError:
            self.transport.close()
            return
        for event in events:
            reply = CONTINUE
            if isinstance(event, codec.OptNeg):
                reply = self.negotiation.handle_now(event)
            elif isinstance(event, (codec.Macro, codec.Abort, codec.Quit)):
                reply = b""
            elif isinstance(event, codec.Header):
                self.headers.append((event.name, event.value))
            elif isinstance(event, codec.Body):
                self.body += event.chunk
            elif isinstance(event, codec.EndOfMessage):
                self.headers, self.body = [], bytearray()
            if reply == CONTINUE and self.negotiation.no_reply & NO_REPLY.get(type(event), 0):
                reply = b""
            if reply:
                out.append(reply)
        if out:
            self.transport.write(b"".join(out))


async def main(sock: socket.socket) -> None:
    server = await asyncio.get_running_loop().create_server(Bare, sock=sock)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    port, workers = int(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 1
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(256)
    for _ in range(workers - 1):  # the workers share the listening socket, as skot's do
        if os.fork() == 0:
            break
    asyncio.run(main(s))
