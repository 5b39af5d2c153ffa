"""The milter floor: a bare Python milter that checks nothing and records nothing.

    python bench/bare_milter.py PORT

What any Python milter pays before it does its job: the same asyncio server shape and the
same sans-I/O codec as skot's milter front (milter.fronts.milter.codec), the same option
negotiation (the steps skipped, the answers Postfix need not wait for, the macros asked for),
the message's headers and body collected as they come; at the end of the message it answers
"continue" (accept). No policy, no MIME parse, no audit record, no header changes.
bench/peers.py runs it as the "bare" path, one process per skot worker sharing one listening
socket, so the table shows how much of skot's milter CPU is the floor of the language and
the protocol and how much is the gateway's own work.
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
    ACTIONS,
    CONTINUE,
    MACROS,
    NO_REPLY,
    NO_REPLY_ALL,
    NO_SEND,
    SKIP_MACROS,
)


async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    decoder = codec.Decoder(skip_macros=SKIP_MACROS)
    no_reply = 0
    headers: list[tuple[str, bytes]] = []
    body = bytearray()
    try:
        while data := await reader.read(65536):
            out = b""
            for event in decoder.feed(data):
                reply = CONTINUE
                if isinstance(event, codec.OptNeg):
                    protocol = NO_SEND & event.protocol
                    no_reply = NO_REPLY_ALL & event.protocol
                    reply = codec.encode_optneg(
                        min(event.version, codec.VERSION),
                        (ACTIONS & event.actions) | codec.SMFIF_SETSYMLIST,
                        protocol | no_reply, MACROS)
                elif isinstance(event, (codec.Macro, codec.Abort, codec.Quit)):
                    reply = b""
                elif isinstance(event, codec.Header):
                    headers.append((event.name, event.value))
                elif isinstance(event, codec.Body):
                    body += event.chunk
                elif isinstance(event, codec.EndOfMessage):
                    body += event.chunk
                    headers, body = [], bytearray()
                if reply == CONTINUE and no_reply & NO_REPLY.get(type(event), 0):
                    reply = b""
                out += reply
            if out:
                writer.write(out)
    except (codec.ProtocolError, ConnectionError):
        pass
    finally:
        writer.close()


async def main(sock: socket.socket) -> None:
    server = await asyncio.start_server(serve, sock=sock)
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
