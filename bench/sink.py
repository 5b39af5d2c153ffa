"""The next hop for the benchmark: an aiosmtpd sink that accepts and discards."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from aiosmtpd.smtp import SMTP


class Discard:
    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return "250 2.0.0 Ok: discarded"


async def main(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(Discard(), data_size_limit=64 * 2**20, hostname="sink", ident="sink"),
        "127.0.0.1", port)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    import logging

    logging.getLogger("mail.log").setLevel(logging.WARNING)
    asyncio.run(main(int(sys.argv[1])))
