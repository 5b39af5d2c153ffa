"""``skot-milter check``: the verdict for one message, with no side effects.

Lets an admin test a message against the policy before going live: nothing is relayed,
stored or audited. Inbound mail is authenticated (SPF, DKIM, DMARC) as ``serve`` does,
through the configured resolver, so a spoofed school sender gets the verdict it would get
live; ``--no-dns`` skips that, and the verdict says it was skipped.
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
from milter.dnsauth import configured_authenticator


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
    p.add_argument("--helo", metavar="NAME", default="", help="the client's HELO name (SPF)")
    p.add_argument("--no-dns", action="store_true",
                   help="skip SPF/DKIM/DMARC (no DNS look-ups); the verdict says so")
    p.add_argument("--json", action="store_true", help="print the verdict as JSON")
    p.add_argument("message", metavar="MESSAGE.eml", help="the message file ('-' for stdin)")
    p.set_defaults(func=run)


def _header_addresses(raw: bytes, names: tuple[str, ...]) -> list[str]:
    head = raw.split(b"\n\n", 1)[0].split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
    from email.parser import HeaderParser

    msg = HeaderParser().parsestr(head + "\n\n")
    values = [v for n in names for v in (msg.get_all(n) or [])]
    return [a for _, a in getaddresses(values) if a]


def _authentication(evaluation: Any, direction: str, no_dns: bool,
                    configured: bool) -> dict[str, Any]:
    """What ``check`` did about SPF/DKIM/DMARC, for the verdict JSON: the results, or why
    they were skipped (the verdict of a spoofed sender then differs from ``serve``'s)."""
    if evaluation.auth is not None:
        return {"checked": True, "results": evaluation.summary.get("authentication", "")}
    if no_dns:
        why = "--no-dns"
    elif not configured:
        why = "[dns] authenticate = false"
    elif direction != "inbound":
        why = "outbound mail is not authenticated"
    else:
        why = "message could not be parsed"
    return {"checked": False, "skipped": why}


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
                        helo=args.helo, auth_user=args.auth_user, txid="check")
    authenticator = None if args.no_dns else configured_authenticator(runtime.config)
    try:
        evaluation = runtime.evaluate(envelope, raw, authenticator=authenticator)
    except RuleCrashed as exc:
        raise CommandError(f"a rule failed: {exc}", code=1) from None
    verdict = evaluation.verdict
    authentication = _authentication(evaluation, verdict.direction, args.no_dns,
                                     authenticator is not None)
    if args.json:
        print_json({**verdict.to_json(), "authentication": authentication})
        return 0
    print(f"verdict:   {verdict.action} ({verdict.direction})")
    print(f"envelope:  from <{mail_from}> to " + ", ".join(f"<{r}>" for r in rcpts))
    print(f"reply:     {verdict.smtp_reply}")
    print("auth:      " + (authentication.get("results") or
                           "skipped: " + authentication.get("skipped", "")))
    if not verdict.rules:
        print("rules:     none fired")
    for r in verdict.rules:
        print(f"rule:      {r.id} [{r.article}] {r.action} ({r.mode}): {r.reason}")
    return 0
