"""``skot-milter privacy``: the DPIA / works-council annex, and access request exports."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from typing import Any

from milter.commands import CommandError, add_config, load_runtime


def register(sub: Any) -> None:
    p = sub.add_parser("privacy", help="privacy report (DPIA annex) and access requests")
    psub = p.add_subparsers(dest="privacy_command", metavar="SUBCOMMAND", required=True)
    rep = psub.add_parser("report", help="what the gateway processes, where, how long, who "
                                         "sees it: generated from the running config")
    add_config(rep)
    rep.add_argument("--format", choices=("md", "html"), default="md",
                     help="Markdown (default) or a printable HTML page")
    rep.add_argument("--lang", choices=("nl", "en"), default=None,
                     help="language (default: school.language)")
    rep.add_argument("--output", metavar="FILE", default="-", help="write here (default: stdout)")
    rep.set_defaults(func=run_report)
    exp = psub.add_parser("export", help="everything kept about one person (AVG art. 15), "
                                         "including every view of it; the export is audited")
    add_config(exp)
    exp.add_argument("--person", required=True, metavar="ADDRESS",
                     help="the person's school address (their private addresses are added "
                          "from the directory)")
    exp.add_argument("--format", choices=("html", "json"), default="html",
                     help="printable HTML page (default) or JSON")
    exp.add_argument("--lang", choices=("nl", "en"), default=None,
                     help="language of the HTML page (default: school.language)")
    exp.add_argument("--actor", default="", help="who asks (default: the OS user)")
    exp.add_argument("--output", metavar="FILE", default="-", help="write here (default: stdout)")
    exp.set_defaults(func=run_export)


def _write(path: str, text: str) -> None:
    if path == "-":
        sys.stdout.write(text)
    else:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)


def run_report(args: argparse.Namespace) -> int:
    from milter import privacy
    from milter.web import users

    runtime = load_runtime(args)
    cfg = runtime.config
    lang = args.lang or cfg.school.language
    try:
        web_users = users.read(cfg.resolve(cfg.web.users))
    except OSError:
        web_users = {}
    sections = privacy.report(cfg, runtime.policy, web_users, lang)
    title = privacy.T[lang]["title"]
    note = (f"{privacy.T[lang]['generated']}: {cfg.path}, {runtime.policy.path} "
            f"({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)")
    _write(args.output, privacy.render_md(title, sections, note) if args.format == "md"
           else privacy.render_html(title, sections, note, lang))
    return 0


def run_export(args: argparse.Namespace) -> int:
    from milter import privacy
    from milter.audit.store import AuditEvent, AuditUnavailable, open_store
    from milter.commands.quarantine import actor_name
    from milter.quarantine import QuarantineError, open_quarantine

    runtime = load_runtime(args)
    cfg = runtime.config
    person = args.person.strip().lower()
    found = runtime.directory.lookup(person) or runtime.directory.owner_of_private(person)
    if found is not None:
        person = found.address
    linked = found.private_addresses + found.aliases if found is not None else ()
    try:
        store = open_store(cfg.audit_url, cfg.gateway.node)
    except AuditUnavailable as exc:
        raise CommandError(str(exc)) from None
    held = open_quarantine(cfg)
    try:
        export = privacy.access_export(store, held, person, linked)
        store.append(AuditEvent(event="exported", action="exported",
                                actor=actor_name(args.actor),
                                evidence={"command": "privacy export", "person": person,
                                          "records": len(export.records)}))
    except AuditUnavailable as exc:
        raise CommandError(f"audit store unavailable: {exc}") from None
    except QuarantineError as exc:
        raise CommandError(str(exc)) from None
    finally:
        store.close()
        held.close()
    if args.format == "json":
        _write(args.output, json.dumps(export.to_json(), ensure_ascii=False, indent=2,
                                       default=str) + "\n")
    else:
        _write(args.output, privacy.export_html(export, args.lang or cfg.school.language))
    return 0
