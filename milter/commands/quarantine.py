"""``skot-milter quarantine``: list, show, release, delete and purge held messages.

Every release and delete is an audit record naming who did it.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from typing import Any

from milter import config as config_mod
from milter.audit.store import AuditEvent, AuditUnavailable, open_store
from milter.commands import CommandError, add_config, load_config, print_json
from milter.quarantine import Entry, QuarantineStore


def register(sub: Any) -> None:
    p = sub.add_parser("quarantine", help="held messages")
    qsub = p.add_subparsers(dest="quarantine_command", metavar="SUBCOMMAND", required=True)
    ls = qsub.add_parser("list", help="list held messages")
    add_config(ls)
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=run_list)
    show = qsub.add_parser("show", help="verdict, envelope and attachments of one message")
    add_config(show)
    show.add_argument("id")
    show.add_argument("--json", action="store_true")
    show.add_argument("--raw", action="store_true", help="print the message itself")
    show.set_defaults(func=run_show)
    release = qsub.add_parser("release", help="deliver a held message unchanged (audited)")
    add_config(release)
    release.add_argument("id")
    release.add_argument("--actor", default="", help="who releases it (default: the OS user)")
    release.set_defaults(func=run_release)
    purge = qsub.add_parser("purge", help="delete held messages past quarantine.retention_days")
    add_config(purge)
    purge.set_defaults(func=run_purge)
    delete = qsub.add_parser("delete", help="delete a held message (audited)")
    add_config(delete)
    delete.add_argument("id")
    delete.add_argument("--actor", default="", help="who deletes it (default: the OS user)")
    delete.set_defaults(func=run_delete)



def _entry(store: QuarantineStore, qid: str) -> Entry:
    entry = store.get(qid)
    if entry is None:
        raise CommandError(f"no quarantined message {qid}", code=1)
    return entry


def actor_name(given: str) -> str:
    import getpass

    return given or f"cli:{getpass.getuser()}"


def run_list(args: argparse.Namespace) -> int:
    entries = QuarantineStore(load_config(args).quarantine_dir).entries()
    if args.json:
        print_json([e.to_json() for e in entries])
        return 0
    for e in entries:
        env = e.meta.get("envelope", {})
        rules = ",".join(r.get("id", "") for r in e.meta.get("verdict", {}).get("rules", []))
        when = datetime.fromtimestamp(float(e.meta.get("stored_at", 0)), UTC)
        print(f"{e.id}  {when:%Y-%m-%d %H:%M}  {env.get('mail_from', '')}  "
              f"-> {','.join(env.get('rcpt_tos', []))}  {rules}")
    return 0


def run_show(args: argparse.Namespace) -> int:
    entry = _entry(QuarantineStore(load_config(args).quarantine_dir), args.id)
    if args.raw:
        sys.stdout.buffer.write(entry.raw)
        return 0
    print_json(entry.to_json())
    return 0


def audit_act(cfg: config_mod.Config, event: str, entry: Entry, actor: str,
              reply: str = "", reason: str = "") -> None:
    env = entry.meta.get("envelope", {})
    try:
        store = open_store(cfg.audit_url, cfg.get("gateway", "node"))
        store.append(AuditEvent(event=event, txid=str(entry.meta.get("txid", "")),
                                sender=env.get("mail_from", ""),
                                recipients=tuple(env.get("rcpt_tos", [])),
                                direction=entry.meta.get("verdict", {}).get("direction", ""),
                                action=event, reply=reply, actor=actor,
                                evidence={"quarantine_id": entry.id,
                                          **({"reason": reason} if reason else {})}))
        store.close()
    except AuditUnavailable as exc:
        raise CommandError(f"audit store unavailable, nothing changed: {exc}", code=1) from None


def run_delete(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    store = QuarantineStore(cfg.quarantine_dir)
    entry = _entry(store, args.id)
    audit_act(cfg, "quarantine-delete", entry, actor_name(args.actor))
    store.delete(entry.id)
    print(f"deleted {entry.id}")
    return 0


def release_entry(cfg: config_mod.Config, entry: Entry, actor: str, reason: str = "") -> str:
    """Relay the original bytes with the original envelope; audit; remove from quarantine.

    Raises CommandError when the next hop does not accept it (nothing changes then)."""
    import asyncio

    from milter.smtp.relay import NextHopError, send_message

    env = entry.meta.get("envelope", {})
    try:
        reply = asyncio.run(send_message(cfg.next_hop, cfg.get("gateway", "hostname"),
                                         cfg.get("gateway", "next_hop_timeout"),
                                         env.get("mail_from", ""), list(env.get("rcpt_tos", [])),
                                         entry.raw))
    except NextHopError as exc:
        raise CommandError(f"next hop unavailable, nothing released: {exc}", code=1) from None
    if not reply.ok:
        raise CommandError(f"next hop refused the message: {reply.line}", code=1)
    audit_act(cfg, "quarantine-release", entry, actor, reply=reply.line, reason=reason)
    QuarantineStore(cfg.quarantine_dir).delete(entry.id)
    return reply.line


def run_release(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    entry = _entry(QuarantineStore(cfg.quarantine_dir), args.id)
    line = release_entry(cfg, entry, actor_name(args.actor))
    print(f"released {entry.id}: {line}")
    return 0


def run_purge(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    store = QuarantineStore(cfg.quarantine_dir)
    days = cfg.get("quarantine", "retention_days")
    old = store.older_than(days * 86400)
    for entry in old:
        audit_act(cfg, "quarantine-delete", entry, "retention",
                  reply=f"retention period of {days} days passed")
        store.delete(entry.id)
    print(f"purged {len(old)} message(s) older than {days} days")
    return 0
