"""The SMTP front's cheaper ``inspect`` for aiosmtpd (milter/fronts/smtp/connection.py) must
give aiosmtpd exactly what the real one gives: the same AUTH mechanisms (built in or ours)
and the same EHLO hook form."""

from __future__ import annotations

import asyncio
import inspect
from pathlib import Path
from typing import Any

import aiosmtpd.smtp
import pytest

from milter.fronts.smtp.connection import ConnectionLimits, SMTPConnection
from milter.fronts.smtp.handler import SMTPHandler


def connection(authenticator: Any) -> SMTPConnection:
    handler = SMTPHandler.__new__(SMTPHandler)  # no gateway needed to build the tables
    return SMTPConnection(handler, limits=ConnectionLimits(10, 10), spool_dir=Path("/tmp"),
                          spool_threshold=4096, authenticator=authenticator)


def tables(conn: SMTPConnection) -> tuple[Any, ...]:
    auth = {name: (getattr(m.method, "__func__", m.method), m.is_builtin)
            for name, m in conn._auth_methods.items()}
    return auth, conn._ehlo_hook_ver, sorted(conn._handle_hooks), sorted(conn._smtp_methods)


@pytest.mark.parametrize("authenticator", [None, lambda *a: None], ids=["no-auth", "auth"])
def test_same_tables_as_with_the_real_inspect(authenticator: Any,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    async def build() -> tuple[Any, Any]:
        fast = tables(connection(authenticator))
        monkeypatch.setattr(aiosmtpd.smtp, "inspect", inspect)
        return fast, tables(connection(authenticator))

    fast, real = asyncio.run(build())
    assert fast == real
    assert fast[0]  # there is something to compare: aiosmtpd's LOGIN/PLAIN at least
