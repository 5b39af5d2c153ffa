"""The SMTP front caches aiosmtpd's reading of MAIL/RCPT arguments: same answers."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from aiosmtpd.smtp import SMTP

from milter.fronts.smtp.connection import _getaddr


def test_cached_address_reading_is_aiosmtpds() -> None:
    args = ["<a@school.example>", "<a@school.example> SIZE=100 BODY=8BITMIME", "a@b.example",
            '<"x y"@school.example>', "<a(comment)@school.example>", "<a@[127.0.0.1]>", "<>",
            "<a@b", "", "<@relay.example:a@b.example>", "<" + "x" * 80 + "@b.example>",
            "<a\r@b.example>", "<ö@école.example> SMTPUTF8"]
    for limit in (0, 64):
        holder: Any = SimpleNamespace(local_part_limit=limit)
        for arg in args:
            assert _getaddr(arg, limit) == SMTP._getaddr(holder, arg)
            assert _getaddr(arg, limit) == SMTP._getaddr(holder, arg)  # and from the cache
