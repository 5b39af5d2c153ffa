"""``skot-milter check``: the verdict for one message, with no side effects.

Lets an admin test a message against the policy before going live: nothing is relayed,
stored or audited.
"""

from __future__ import annotations

import argparse
import sys
from email.utils import getaddresses
from pathlib import Path
from typing import Any

from milter.commands import CommandError, add_config, load_runtime, print_json
from milter.core.context import Envelope
from milter.core.engine import RuleCrashed


def register(sub: Any) -> None:
    p = sub.add_parser("check", help="show the verdict for one message (no side effects)")
    add_config(p)
    p.add_argument("--mail-from", metavar="ADDR", default=None,
                   help="envelope sender (default: the From: address)")
    p.add_argument("--rcpt", metavar="ADDR", action="append", default=[],
                   help="envelope recipient, repeatable (default: To/Cc addresses)")
    p.add_argument("--client-ip", metavar="IP", default="127.0.0.1",
                   help="client address (default 127.0.0.1: an internal client)")
    p.add_argument("--auth-user", metavar="USER", default="", help="SMTP AUTH login")
    p.add_argument("--json", action="store_true", help="print the verdict as JSON")
    p.add_argument("message", metavar="MESSAGE.eml", help="the message file ('-' for stdin)")
    p.set_defaults(func=run)


def _header_addresses(raw: bytes, names: tuple[str, ...]) -> list[str]:
    head = raw.split(b"\n\n", 1)[0].split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
    from email.parser import HeaderParser

    msg = HeaderParser().parsestr(head + "\n\n")
    values = [v for n in names for v in (msg.get_all(n) or [])]
    return [a for _, a in getaddresses(values) if a]


def run(args: argparse.Namespace) -> int:
    runtime = load_runtime(args)
    try:
        raw = sys.stdin.buffer.read() if args.message == "-" else Path(args.message).read_bytes()
    except OSError as exc:
        raise CommandError(f"{args.message}: cannot read: {exc.strerror}") from None
    mail_from = args.mail_from
    if mail_from is None:
        authors = _header_addresses(raw, ("From",))
        mail_from = authors[0] if authors else ""
    rcpts = tuple(args.rcpt) or tuple(_header_addresses(raw, ("To", "Cc")))
    envelope = Envelope(mail_from=mail_from, rcpt_tos=rcpts, client_ip=args.client_ip,
                        auth_user=args.auth_user, txid="check")
    try:
        evaluation = runtime.evaluate(envelope, raw)
    except RuleCrashed as exc:
        raise CommandError(f"a rule failed: {exc}", code=1) from None
    verdict = evaluation.verdict
    if args.json:
        print_json(verdict.to_json())
        return 0
    print(f"verdict:   {verdict.action} ({verdict.direction})")
    print(f"envelope:  from <{mail_from}> to " + ", ".join(f"<{r}>" for r in rcpts))
    print(f"reply:     {verdict.smtp_reply}")
    if not verdict.rules:
        print("rules:     none fired")
    for r in verdict.rules:
        print(f"rule:      {r.id} [{r.article}] {r.action} ({r.mode}): {r.reason}")
    return 0
