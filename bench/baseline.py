"""The baseline: a bare aiosmtpd pass-through proxy that parses nothing.

Same before-queue semantics as the gateway: it answers 250 only after the sink said 250 for
the same bytes (one next-hop session per transaction, as the gateway opens one per MAIL).
The port is bound with SO_REUSEPORT, so bench/run.py can start as many baseline processes on
one port as the gateway has workers (the kernel spreads the connections over them, as it does
over the gateway's workers).
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import aiosmtplib
from aiosmtpd.smtp import SMTP


class PassThrough:
    def __init__(self, next_port: int) -> None:
        self.next_port = next_port

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        try:
            errors, reply = await aiosmtplib.send(
                envelope.original_content, sender=envelope.mail_from,
                recipients=envelope.rcpt_tos, hostname="127.0.0.1", port=self.next_port,
                timeout=60)
        except aiosmtplib.SMTPResponseException as exc:
            return f"{exc.code} {exc.message}"
        except (aiosmtplib.SMTPException, OSError):
            return "451 4.4.1 next hop unavailable"
        return "250 2.0.0 Ok" if not errors else "451 4.4.1 partly refused"


async def main(port: int, next_port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(PassThrough(next_port), data_size_limit=64 * 2**20, hostname="base",
                     ident="baseline"), "127.0.0.1", port, reuse_port=True)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    import logging

    logging.getLogger("mail.log").setLevel(logging.WARNING)
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
