"""``skot-milter notice preview``: what staff will read, rendered with example data.

Without a rule id it shows every variant: each rule to an outside and to an inside
recipient, the supervisor's copy, the forwarding-mailbox notice, the summary of notices held
back and the release and delete notices, in every language (Dutch in the configured
register).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from milter.commands import CommandError, add_config, load_runtime
from milter.core.verdict import FiredRule, Verdict
from milter.notices import (
    HeldItem,
    NoticeRequest,
    Style,
    render,
    render_outcome,
    render_summary,
)
from milter.policy import Policy, RulePolicy

EXAMPLE_TIME = datetime(2026, 11, 24, 13, 30, tzinfo=UTC)
OUTSIDE, INSIDE = ("ouder@example.org",), ("collega@{domain}",)
# Which recipients a rule can fire for: content rules judge mail to colleagues too (and tag
# it at most), the forwarding and media rules only mail to outside, the inbound rules only
# mail to the school.
WHERE: dict[str, tuple[bool, ...]] = {
    "A5.media-external": (False,), "FWD.auto-external": (False,),
    "FWD.manual-external": (False,), "B1.private-address": (True,),
    "B1.spoofed-school-domain": (True,),
}
PRIVATE = "jan.jansen@gmail.example"

# Evidence as the rules record it (names and counts), per rule id.
EXAMPLE_EVIDENCE: dict[str, dict[str, Any]] = {
    "A1.confidential-attachment": {"items": [
        {"name": "leerlingenlijst groep 5.xlsx", "type": "xlsx", "pupil_rows": 15, "bsn": 1},
        {"name": "verslag.docx", "type": "docx", "labels": ["Vertrouwelijk"]}]},
    "A1.uninspectable": {"items": [
        {"name": "dossier.zip", "type": "zip", "reason": "encrypted archive member 'a.pdf'"}]},
    "A5.media-external": {"items": [{"name": "schoolreis.jpg", "type": "image"},
                                    {"name": "musical.mp4", "type": "video"}]},
    "FWD.auto-external": {"signals": ["auto-submitted-auto-forwarded"],
                          "original_author": "ouder@example.org",
                          "forwarding_mailbox": "j.jansen@{domain}",
                          "external_recipients": ["jan.jansen@gmail.example"]},
    "FWD.manual-external": {"original_authors": ["directie@{domain}"],
                            "external_recipients": ["ouder@example.org"]},
    "B1.private-address": {"staff_member": "j.jansen@{domain}"},
}


def register(sub: Any) -> None:
    p = sub.add_parser("notice", help="notices to staff")
    nsub = p.add_subparsers(dest="notice_command", metavar="SUBCOMMAND", required=True)
    prev = nsub.add_parser("preview", help="render notices with example data (all variants "
                                           "without RULE-ID)")
    add_config(prev)
    prev.add_argument("rule_id", metavar="RULE-ID", nargs="?", default="",
                      help="the rule whose notice to show, e.g. B1.private-address "
                           "(default: every variant)")
    prev.add_argument("--lang", choices=("nl", "en"), default=None,
                      help="the notice's language (default: every language)")
    prev.add_argument("--internal", action="store_true",
                      help="the message went to colleagues only")
    prev.add_argument("--kind", choices=("sender", "supervisor", "forward", "summary",
                                         "released", "deleted"), default="",
                      help="which notice: to the sender, the supervisor, the owner of a "
                           "forwarding mailbox, the hourly summary, or after a release or "
                           "delete (default: every kind)")
    prev.add_argument("--register", choices=("je", "u"), default=None,
                      help="Dutch: address staff as je or u (default: notices.register_nl)")
    prev.add_argument("--html", action="store_true", help="print the HTML part")
    prev.set_defaults(func=run_preview)


def _fill(value: Any, domain: str) -> Any:
    if isinstance(value, str):
        return value.replace("{domain}", domain)
    if isinstance(value, list | tuple):
        return type(value)(_fill(v, domain) for v in value)
    if isinstance(value, dict):
        return {k: _fill(v, domain) for k, v in value.items()}
    return value


def example_request(rp: RulePolicy, domain: str, internal: bool = False) -> NoticeRequest:
    """A request as the gateway would make it for this rule, with example evidence."""
    action = rp.action if rp.action != "accept" else "tag"
    if internal and rp.action == "quarantine":
        action = "tag"  # content to colleagues only is tagged at most
    evidence = _fill(EXAMPLE_EVIDENCE.get(rp.id, {}), domain)
    rcpts = _fill(INSIDE, domain) if internal else OUTSIDE
    if rp.id == "FWD.auto-external":
        rcpts = tuple(evidence["external_recipients"])
    verdict = Verdict(action, "outbound", "", (FiredRule(rp.id, rp.article, action, "enforce",
                                                         "example", evidence),), "01example0ref")
    sender = PRIVATE if rp.id == "B1.private-address" else f"j.jansen@{domain}"
    return NoticeRequest(txid="01example0ref", verdict=verdict, mail_from=sender,
                         rcpt_tos=tuple(rcpts), subject="Verslag oudergesprek groep 5",
                         message_id=f"<example@{domain}>", received=EXAMPLE_TIME, rules=(rp,))


def variants(policy: Policy, style: Style, domain: str, *, rule_id: str = "",
             langs: tuple[str, ...] = ("nl", "en"), kind: str = "",
             internal: bool | None = None) -> Iterator[tuple[str, tuple[str, str, str]]]:
    """(label, (subject, text, html)) of every notice variant asked for."""
    rules = [policy.rules[rule_id]] if rule_id else sorted(policy.rules.values(),
                                                           key=lambda r: r.id)
    for lang in langs:
        for rp in rules:
            for inside in (WHERE.get(rp.id, (False, True)) if internal is None
                           else (internal,)):
                req = example_request(rp, domain, inside)
                where = "to colleagues only" if inside else "to outside"
                if kind in ("", "sender", "forward"):
                    k = "forward" if rp.id == "FWD.auto-external" else "sender"
                    yield (f"{rp.id}, {where}, {lang}, {k}",
                           render(req, style, lang=lang, name="Jan Jansen", kind=k,
                                  supervisor="Bea Baas"))
                if kind in ("", "supervisor"):
                    yield (f"{rp.id}, {where}, {lang}, supervisor",
                           render(req, style, lang=lang, name="Bea Baas", kind="supervisor",
                                  sender_name="Jan Jansen"))
        if rule_id and kind not in ("summary", "released", "deleted"):
            continue
        if kind in ("", "summary"):
            items = [HeldItem(f"01example{i}ref", EXAMPLE_TIME.timestamp() + 60 * i,
                              f"Rapport groep {i + 3}", "quarantine",
                              ("A1.confidential-attachment",)) for i in range(5)]
            yield (f"summary, {lang}", render_summary(items, style, policy, lang=lang,
                                                      name="Jan Jansen", supervisor="Bea Baas"))
        for outcome in ("released", "deleted"):
            if kind in ("", outcome):
                yield (f"{outcome}, {lang}", render_outcome(
                    outcome, style, lang=lang, name="Jan Jansen",
                    subject="Verslag oudergesprek groep 5", recipients=OUTSIDE,
                    received=EXAMPLE_TIME, ref="01example0ref"))


def run_preview(args: argparse.Namespace) -> int:
    runtime = load_runtime(args)
    policy = runtime.policy
    if args.rule_id and args.rule_id not in policy.rules:
        raise CommandError(f"no rule {args.rule_id} in {policy.path}; known: "
                           + ", ".join(sorted(policy.rules)))
    cfg = runtime.config
    style = Style.from_config(cfg)
    if not style.school:
        style = replace(style, school="De Regenboog")
    if args.register:
        style = replace(style, register_nl=args.register)
    langs = (args.lang,) if args.lang else (
        (cfg.school.language,) if args.rule_id else ("nl", "en"))
    one = bool(args.rule_id) and not args.kind
    internal = args.internal if (args.rule_id or args.internal) else None
    shown = list(variants(policy, style, cfg.school_domains[0], rule_id=args.rule_id,
                          langs=langs, kind=args.kind or ("sender" if one else ""),
                          internal=internal))
    for i, (label, (subject, text, body_html)) in enumerate(shown):
        if len(shown) > 1:
            print(("\n" if i else "") + f"===== {label} " + "=" * max(3, 60 - len(label)))
        print(f"Subject: {subject}\n")
        print(body_html if args.html else text)
    return 0
