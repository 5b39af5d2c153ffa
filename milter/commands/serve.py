"""``skot-milter serve``: run the gateway."""

from __future__ import annotations

import argparse
from typing import Any

from milter.commands import add_config


def register(sub: Any) -> None:
    p = sub.add_parser("serve", help="run the gateway (SMTP proxy front)")
    add_config(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import milter.server as server

    code: int = server.run(args.config)
    return code
