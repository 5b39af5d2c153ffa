"""``skot-milter notice preview RULE-ID``: what staff will read, rendered with example data."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any

from milter.commands import CommandError, add_config, load_runtime
from milter.core.verdict import FiredRule, Verdict
from milter.notices import NoticeRequest, render


def register(sub: Any) -> None:
    p = sub.add_parser("notice", help="notices to staff")
    nsub = p.add_subparsers(dest="notice_command", metavar="SUBCOMMAND", required=True)
    prev = nsub.add_parser("preview", help="render a rule's notice with example data")
    add_config(prev)
    prev.add_argument("rule_id", metavar="RULE-ID",
                      help="the rule whose notice to show, e.g. B1.private-address")
    prev.add_argument("--lang", choices=("nl", "en"), default=None,
                      help="the notice's language (default: [school] language)")
    prev.add_argument("--html", action="store_true", help="print the HTML part")
    prev.set_defaults(func=run_preview)


def run_preview(args: argparse.Namespace) -> int:
    runtime = load_runtime(args)
    rp = runtime.policy.rules.get(args.rule_id)
    if rp is None:
        raise CommandError(f"no rule {args.rule_id} in {runtime.policy.path}; known: "
                           + ", ".join(sorted(runtime.policy.rules)))
    cfg = runtime.config
    lang = args.lang or cfg.school.language
    action = rp.action if rp.action != "accept" else "tag"
    verdict = Verdict(action, "outbound", "", (FiredRule(rp.id, rp.article, action, "enforce",
                                                         "example"),), "01example0ref")
    req = NoticeRequest(txid="01example0ref", verdict=verdict,
                        mail_from="j.jansen@" + cfg.school_domains[0],
                        rcpt_tos=("ouder@example.org",), subject="Verslag oudergesprek groep 5",
                        message_id="<example@school.example>",
                        received=datetime(2026, 11, 24, 8, 30, tzinfo=UTC), rules=(rp,))
    subject, text, body_html = render(req, lang, name="Jan Jansen",
                                      school=cfg.school.name,
                                      postmaster=cfg.school.postmaster,
                                      templates=cfg.notice_templates, rule=rp)
    print(f"Subject: {subject}\n")
    print(body_html if args.html else text)
    return 0
