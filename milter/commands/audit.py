"""``skot-milter audit``: list, show, export and verify the audit store."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from typing import Any

from milter import config as config_mod
from milter.audit.store import AuditRecord, AuditStore, AuditUnavailable, Filters, open_store
from milter.commands import CommandError, add_config, print_json

CSV_FIELDS = ("id", "chain", "seq", "ts", "event", "txid", "message_id", "client", "direction",
              "sender", "recipients", "auth_user", "rules", "action", "reply", "evidence",
              "subject", "actor", "prev_hash", "content_hash", "hash")


def register(sub: Any) -> None:
    p = sub.add_parser("audit", help="read and verify the audit store")
    asub = p.add_subparsers(dest="audit_command", metavar="SUBCOMMAND", required=True)

    def filters(q: argparse.ArgumentParser) -> None:
        q.add_argument("--since", default="", help="from this UTC date/time (inclusive)")
        q.add_argument("--until", default="", help="up to this UTC date/time (exclusive)")
        q.add_argument("--rule", default="", help="rule id, e.g. B1.sender-domain")
        q.add_argument("--sender", default="", help="envelope sender address")
        q.add_argument("--person", default="", help="sender, authenticated user or recipient")
        q.add_argument("--event", default="", help="intent, delivered, rejected, ...")

    ls = asub.add_parser("list", help="list records")
    add_config(ls)
    filters(ls)
    ls.add_argument("--limit", type=int, default=0)
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=run_list)

    show = asub.add_parser("show", help="show one record (by id) or a transaction (by ref)")
    add_config(show)
    show.add_argument("id", help="record id, or a transaction ref from a reply text")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=run_show)

    export = asub.add_parser("export", help="export records as JSON lines or CSV")
    add_config(export)
    filters(export)
    export.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    export.add_argument("--output", "-o", default="-", help="file (default: stdout)")
    export.set_defaults(func=run_export)

    verify = asub.add_parser("verify", help="recompute the hash chains; exit 1 on tampering")
    add_config(verify)
    verify.add_argument("--json", action="store_true")
    verify.set_defaults(func=run_verify)


def open_from_args(args: argparse.Namespace) -> AuditStore:
    try:
        cfg = config_mod.load(args.config)
        return open_store(cfg.audit_url, cfg.get("gateway", "node"))
    except config_mod.ConfigError as exc:
        raise CommandError(str(exc)) from None
    except AuditUnavailable as exc:
        raise CommandError(str(exc)) from None


def _filters(args: argparse.Namespace) -> Filters:
    return Filters(since=args.since, until=args.until, rule=args.rule, sender=args.sender,
                   person=args.person, event=args.event, limit=getattr(args, "limit", 0))


def _line(r: AuditRecord) -> str:
    rules = ",".join(f"{x.get('id')}{'(monitor)' if x.get('mode') == 'monitor' else ''}"
                     for x in r.rules) or "-"
    return (f"{r.id:>6}  {r.ts[:19]}  {r.event:<12} {r.action or '-':<10} "
            f"{r.sender or '<>':<32} {rules}  ref={r.txid}")


def run_list(args: argparse.Namespace) -> int:
    store = open_from_args(args)
    rows = list(store.records(_filters(args)))
    if args.json:
        print_json([r.to_json() for r in rows])
    else:
        for r in rows:
            print(_line(r))
    return 0


def run_show(args: argparse.Namespace) -> int:
    store = open_from_args(args)
    if args.id.isdigit():
        rec = store.get(int(args.id))
        rows = [rec] if rec else []
    else:
        rows = list(store.records(Filters(txid=args.id)))
    if not rows:
        raise CommandError(f"no audit record {args.id}", code=1)
    if args.json:
        print_json([r.to_json() for r in rows] if len(rows) > 1 else rows[0].to_json())
        return 0
    for r in rows:
        for k, v in r.to_json().items():
            if v in ("", [], {}):
                continue
            print(f"{k:>13}: {json.dumps(v, ensure_ascii=False) if not isinstance(v, str) else v}")
        print()
    return 0


def run_export(args: argparse.Namespace) -> int:
    store = open_from_args(args)
    if args.output == "-":
        _export(store, args, sys.stdout)
    else:
        with open(args.output, "w", newline="", encoding="utf-8") as fh:
            _export(store, args, fh)
    return 0


def _export(store: AuditStore, args: argparse.Namespace, out: Any) -> None:
    if args.format == "jsonl":
        for r in store.records(_filters(args)):
            out.write(json.dumps(r.to_json(), ensure_ascii=False, sort_keys=True) + "\n")
    else:
        w = csv.DictWriter(out, fieldnames=CSV_FIELDS)
        w.writeheader()
        for r in store.records(_filters(args)):
            row = r.to_json()
            w.writerow({k: row[k] if isinstance(row[k], str | int)
                        else json.dumps(row[k], ensure_ascii=False) for k in CSV_FIELDS})


def run_verify(args: argparse.Namespace) -> int:
    store = open_from_args(args)
    result = store.verify()
    if args.json:
        print_json(result.to_json())
    else:
        chains = ", ".join(f"{c}: {n}" for c, n in sorted(result.chains.items())) or "none"
        print(f"{'intact' if result.ok else 'BROKEN'}: {result.records} records (chains {chains})")
        for p in result.problems:
            print(f"first broken record: {p}")
    return 0 if result.ok else 1
