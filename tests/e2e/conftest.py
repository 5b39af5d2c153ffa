"""End-to-end fixtures: a real aiosmtpd sink as next hop and the gateway on real sockets."""

from __future__ import annotations

import asyncio
import smtplib
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from milter.daemon import Daemon, start
from milter.runtime import Runtime
from tests.conftest import write_config


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    content: bytes


@dataclass
class SinkHandler:
    """Records what it accepts; answers are scriptable per recipient and at end of data."""

    messages: list[Received] = field(default_factory=list)
    rcpt_replies: dict[str, str] = field(default_factory=dict)
    data_reply: str = "250 2.0.0 Ok: queued at sink"
    data_delay: float = 0.0  # seconds the sink takes before answering end of data
    sessions: int = 0
    greetings: int = 0  # EHLOs seen: one per next-hop connection
    resets: int = 0     # RSETs seen

    async def handle_RSET(self, server: Any, session: Any, envelope: Any) -> str:
        self.resets += 1
        return "250 OK"

    async def handle_EHLO(self, server: Any, session: Any, envelope: Any, hostname: str,
                          responses: list[str]) -> list[str]:
        self.greetings += 1
        session.host_name = hostname
        return responses

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str,
                          options: list[str]) -> str:
        self.sessions += 1
        envelope.mail_from = address
        return "250 2.1.0 Ok"

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          options: list[str]) -> str:
        reply = self.rcpt_replies.get(address)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.data_delay:
            await asyncio.sleep(self.data_delay)
        if self.data_reply.startswith("250"):
            sender = "" if envelope.mail_from == "<>" else envelope.mail_from
            self.messages.append(Received(sender, list(envelope.rcpt_tos),
                                          envelope.original_content))
        return self.data_reply


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def sink() -> Iterator[tuple[SinkHandler, int]]:
    handler = SinkHandler()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    yield handler, port
    controller.stop()


class GatewayThread:
    """The gateway's asyncio server on its own loop in a thread; tests talk to it over TCP."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        runtime = Runtime.load(str(config))
        self.running: Daemon = self.call(start(runtime, "127.0.0.1", 0))
        self.port = self.running.port

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    def client(self) -> smtplib.SMTP:
        return smtplib.SMTP("127.0.0.1", self.port, timeout=10)

    def stop(self) -> None:
        if not self.loop.is_running():  # stopped already (by the test itself)
            return
        self.call(self.running.stop(grace=5))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)


@pytest.fixture
def make_gateway(tmp_path: Path) -> Iterator[Any]:
    started: list[GatewayThread] = []

    def make(next_hop: str, **kwargs: Any) -> GatewayThread:
        gw = GatewayThread(write_config(tmp_path, next_hop=next_hop, **kwargs))
        started.append(gw)
        return gw

    yield make
    for gw in started:
        gw.stop()


@pytest.fixture
def gateway(sink: tuple[SinkHandler, int], make_gateway: Any) -> GatewayThread:
    return make_gateway(f"smtp://127.0.0.1:{sink[1]}")  # type: ignore[no-any-return]
