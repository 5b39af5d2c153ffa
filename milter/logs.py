"""Logging for the daemon: plain text or one JSON object per line (``[logging] format``)."""

from __future__ import annotations

import json
import logging
import re
import sys

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
