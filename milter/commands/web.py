"""``skot-milter web``: the auditors' view; ``web adduser`` manages its users."""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import Any

from milter import config as config_mod
from milter.commands import CommandError, add_config, load_config


def register(sub: Any) -> None:
    p = sub.add_parser("web", help="the auditors' web view")
    add_config(p)
    p.add_argument("--listen", default="", help="HOST:PORT (default: web.listen)")
    p.set_defaults(func=run_web)
    wsub = p.add_subparsers(dest="web_command", metavar="SUBCOMMAND")
    add = wsub.add_parser("adduser", help="add or change a web user")
    add_config(add)
    add.add_argument("name", help="the login name (no ':'); for staff their school address")
    add.add_argument("--role", choices=("auditor", "admin", "statistics", "staff"),
                     required=True,
                     help="auditor: reads the audit; admin: also releases and deletes "
                          "quarantined mail; statistics: the dashboard and the monthly "
                          "summary only, without names; staff: a teacher who releases "
                          "their own held message by the notice's link (web.public_url)")
    add.add_argument("--password-stdin", action="store_true",
                     help="read the password from standard input instead of a prompt")
    add.set_defaults(func=run_adduser)
    rm = wsub.add_parser("deluser", help="remove a web user (their sessions end at once)")
    add_config(rm)
    rm.add_argument("name", help="the login name")
    rm.set_defaults(func=run_deluser)
    pw = wsub.add_parser("passwd", help="set a web user's password (their sessions end)")
    add_config(pw)
    pw.add_argument("name", help="the login name")
    pw.add_argument("--password-stdin", action="store_true",
                    help="read the password from standard input instead of a prompt")
    pw.set_defaults(func=run_passwd)



def run_adduser(args: argparse.Namespace) -> int:
    from milter.service_user import hand_over
    from milter.web import users

    cfg = load_config(args)
    domain = args.name.rpartition("@")[2].lower()
    if args.role == "staff" and domain not in cfg.school_domains:
        raise CommandError(f"a staff account is a school address (in "
                           f"{', '.join(cfg.school_domains)}), not {args.name!r}")
    password = (sys.stdin.readline().rstrip("\n") if args.password_stdin
                else getpass.getpass("password: "))
    try:
        users.add(cfg.resolve(cfg.web.users), args.name, args.role, password)
        hand_over(cfg.resolve(cfg.web.users))  # root writes it; the web view reads it
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    _audit_user_change(cfg, "web-user-saved", args.name, {"role": args.role})
    print(f"user {args.name} ({args.role}) saved")
    return 0


def run_deluser(args: argparse.Namespace) -> int:
    from milter.web import users

    cfg = load_config(args)
    try:
        users.remove(cfg.resolve(cfg.web.users), args.name)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    _audit_user_change(cfg, "web-user-removed", args.name, {})
    print(f"user {args.name} removed")
    return 0


def run_passwd(args: argparse.Namespace) -> int:
    from milter.web import users

    cfg = load_config(args)
    password = (sys.stdin.readline().rstrip("\n") if args.password_stdin
                else getpass.getpass("password: "))
    try:
        users.set_password(cfg.resolve(cfg.web.users), args.name, password)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    _audit_user_change(cfg, "web-user-password", args.name, {})
    print(f"password of {args.name} set")
    return 0


def _audit_user_change(cfg: config_mod.Config, event: str, name: str,
                       what: dict[str, str]) -> None:
    """Who may see the audit is itself on record: every user change, with who made it."""
    from milter.audit.store import AuditEvent, AuditUnavailable, open_store
    from milter.commands.quarantine import actor_name

    try:
        store = open_store(cfg.audit_url, cfg.gateway.node)
        try:
            store.append(AuditEvent(event=event, action=event, actor=actor_name(""),
                                    evidence={"user": name, **what}))
        finally:
            store.close()
    except AuditUnavailable as exc:
        print(f"warning: the change is made but not on record: {exc}", file=sys.stderr)


def build_app(cfg: config_mod.Config) -> Any:
    from milter import directory_source, policy
    from milter.audit.store import AuditUnavailable, open_store
    from milter.directory import DirectoryError
    from milter.quarantine import open_quarantine
    from milter.web.actions import QuarantineActions
    from milter.web.base import WebApp

    try:
        store = open_store(cfg.audit_url, cfg.gateway.node)
    except AuditUnavailable as exc:
        raise CommandError(str(exc)) from None
    try:
        people = directory_source.DirectorySource(cfg).initial()
    except DirectoryError as exc:
        raise CommandError(str(exc)) from None
    loaded = policy.load(cfg.policy_path)
    quarantine = open_quarantine(cfg)
    return WebApp(cfg, store, quarantine, cfg.resolve(cfg.web.users),
                  QuarantineActions(cfg, quarantine, loaded, people),
                  rule_ids=tuple(sorted(loaded.rules)), directory=people)


def run_web(args: argparse.Namespace) -> int:
    from milter.web.app import make_server

    cfg = load_config(args)
    listen = args.listen or cfg.web.listen
    host, _, port = listen.rpartition(":")
    server = make_server(build_app(cfg), host.strip("[]"), int(port))
    print(f"skot-milter web on http://{listen}/", file=sys.stderr)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
