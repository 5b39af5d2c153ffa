"""Logging for the daemon: plain text or one JSON object per line (``[logging] format``)."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import re
import sys
import time
from typing import Any

from milter.runtime import Runtime


class JSONFormatter(logging.Formatter):
    """One JSON object per line; the transaction id gets its own field."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        out = {"ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"), "level": record.levelname,
               "logger": record.name, "msg": message}
        m = re.search(r"\btx=(\S+)", message)
        if m:
            out["txid"] = m.group(1)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def configure_logging(runtime: Runtime) -> None:
    cfg = runtime.config
    handler = logging.StreamHandler(sys.stderr)
    if cfg.logging.format == "json":
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(cfg.logging.level.upper())
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd logs every command


_OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


def quiet_resource_errors(loop: asyncio.AbstractEventLoop, every: float = 60.0) -> None:
    """Out of file descriptors, asyncio logs each failed ``accept()`` with a traceback,
    every second for every listener (38,000 lines in one incident, issue 13 item 6c): say
    it once, then how often it happened, at most once a minute. The listener itself
    retries on its own; the caps (``max_connections``) and ``LimitNOFILE`` keep it rare."""
    log = logging.getLogger("skot-milter")
    previous = loop.get_exception_handler()
    state = {"said": -every, "since": 0}

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if isinstance(exc, OSError) and exc.errno in _OUT_OF_RESOURCES:
            state["since"] += 1
            now = time.monotonic()
            if now - state["said"] >= every:
                log.error("cannot accept connections: %s (%d time(s) since last said); "
                          "check LimitNOFILE and the max_connections caps", exc.strerror,
                          state["since"])
                state["said"], state["since"] = now, 0
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)
