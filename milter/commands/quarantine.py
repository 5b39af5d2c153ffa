"""``skot-milter quarantine``: list, show, release, delete and purge held messages.

Every release and delete is an audit record naming who did it. With a PostgreSQL audit store
the quarantine is shared: any node's CLI sees and acts on every node's held messages.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from typing import Any

from milter import quarantine
from milter.commands import CommandError, add_config, load_config, print_json
from milter.quarantine import Entry, Quarantine, QuarantineError, open_quarantine

QID_HELP = "the quarantine id (the first column of skot-milter quarantine list)"


def register(sub: Any) -> None:
    p = sub.add_parser("quarantine", help="held messages")
    qsub = p.add_subparsers(dest="quarantine_command", metavar="SUBCOMMAND", required=True)
    ls = qsub.add_parser("list", help="list held messages")
    add_config(ls)
    ls.add_argument("--json", action="store_true", help="JSON instead of lines")
    ls.set_defaults(func=run_list)
    show = qsub.add_parser("show", help="verdict, envelope and attachments of one message")
    add_config(show)
    show.add_argument("id", help=QID_HELP)
    show.add_argument("--json", action="store_true", help="JSON instead of text")
    show.add_argument("--raw", action="store_true", help="print the message itself")
    show.set_defaults(func=run_show)
    release = qsub.add_parser("release", help="deliver a held message unchanged (audited)")
    add_config(release)
    release.add_argument("id", help=QID_HELP)
    release.add_argument("--actor", default="", help="who releases it (default: the OS user)")
    release.set_defaults(func=run_release)
    purge = qsub.add_parser("purge", help="delete held messages past quarantine.retention_days")
    add_config(purge)
    purge.set_defaults(func=run_purge)
    delete = qsub.add_parser("delete", help="delete a held message (audited)")
    add_config(delete)
    delete.add_argument("id", help=QID_HELP)
    delete.add_argument("--actor", default="", help="who deletes it (default: the OS user)")
    delete.set_defaults(func=run_delete)



def _store(args: argparse.Namespace) -> Quarantine:
    return open_quarantine(load_config(args))


def _entry(store: Quarantine, qid: str) -> Entry:
    entry = store.get(qid)
    if entry is None:
        raise CommandError(f"no quarantined message {qid}", code=1)
    return entry


def actor_name(given: str) -> str:
    import getpass

    return given or f"cli:{getpass.getuser()}"


def run_list(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        entries = store.entries()
    except QuarantineError as exc:
        raise CommandError(str(exc)) from None
    finally:
        store.close()
    if args.json:
        print_json([e.to_json() for e in entries])
        return 0
    for e in entries:
        env = e.meta.get("envelope", {})
        rules = ",".join(r.get("id", "") for r in e.meta.get("verdict", {}).get("rules", []))
        when = datetime.fromtimestamp(float(e.meta.get("stored_at", 0)), UTC)
        node = f"  [{e.meta['node']}]" if e.meta.get("node") else ""  # shared: who held it
        print(f"{e.id}  {when:%Y-%m-%d %H:%M}{node}  {env.get('mail_from', '')}  "
              f"-> {','.join(env.get('rcpt_tos', []))}  {rules}")
    return 0


def run_show(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        entry = _entry(store, args.id)
        if args.raw:
            sys.stdout.buffer.write(entry.raw)
            return 0
        print_json(entry.to_json())
    except QuarantineError as exc:
        raise CommandError(str(exc)) from None
    finally:
        store.close()
    return 0


def run_delete(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    store = open_quarantine(cfg)
    try:
        entry = _entry(store, args.id)
        quarantine.delete(cfg, store, entry, actor_name(args.actor))
    except (quarantine.ActionFailed, QuarantineError) as exc:
        raise CommandError(str(exc), code=1) from None
    finally:
        store.close()
    print(f"deleted {entry.id}")
    return 0


def run_release(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    store = open_quarantine(cfg)
    try:
        entry = _entry(store, args.id)
        line = quarantine.release(cfg, store, entry, actor_name(args.actor))
    except (quarantine.ActionFailed, QuarantineError) as exc:
        raise CommandError(str(exc), code=1) from None
    finally:
        store.close()
    print(f"released {entry.id}: {line}")
    return 0


def run_purge(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    days = cfg.quarantine.retention_days
    store = open_quarantine(cfg)
    try:
        n = quarantine.purge(cfg, store)
    except (quarantine.ActionFailed, QuarantineError) as exc:
        raise CommandError(str(exc), code=1) from None
    finally:
        store.close()
    print(f"purged {n} message(s) older than {days} days")
    return 0
