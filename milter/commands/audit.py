"""``skot-milter audit``: read, export, report, verify, checkpoint and purge the audit store.

Reading is itself audited: every list, show, export and report adds a record naming who
looked at which records (the protocol's files are about people).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import sys
from pathlib import Path
from typing import Any

from milter import config as config_mod
from milter import csvcells
from milter.audit.report import REPORT_FIELDS, violations
from milter.audit.sql import COLUMNS
from milter.audit.store import (
    AuditEvent,
    AuditRecord,
    AuditStore,
    AuditUnavailable,
    Filters,
    open_store,
)
from milter.audit.verify import UnusableKeys, Verification, verify
from milter.commands import CommandError, add_config, load_config, load_runtime, print_json
from milter.dates import FORMATS, parse_when

CSV_FIELDS = COLUMNS


def register(sub: Any) -> None:
    p = sub.add_parser("audit", help="read and verify the audit store")
    asub = p.add_subparsers(dest="audit_command", metavar="SUBCOMMAND", required=True)

    def filters(q: argparse.ArgumentParser) -> None:
        dates(q)
        q.add_argument("--rule", default="", help="rule id, e.g. B1.sender-domain")
        q.add_argument("--sender", default="", help="envelope sender address")
        q.add_argument("--person", default="", help="sender, authenticated user or recipient")
        q.add_argument("--event", default="", help="intent, delivered, rejected, ...")

    ls = asub.add_parser("list", help="list records")
    add_config(ls)
    filters(ls)
    ls.add_argument("--limit", type=int, default=0, metavar="N",
                    help="show at most N records, oldest first (default: all)")
    ls.add_argument("--json", action="store_true", help="one JSON document instead of lines")
    ls.set_defaults(func=run_list)

    show = asub.add_parser("show", help="show one record (by id) or a transaction (by ref)")
    add_config(show)
    show.add_argument("id", help="record id, or a transaction ref from a reply text")
    show.add_argument("--json", action="store_true", help="JSON instead of text")
    show.set_defaults(func=run_show)

    export = asub.add_parser("export", help="export records as JSON lines or CSV")
    add_config(export)
    filters(export)
    export.add_argument("--format", choices=("jsonl", "csv"), default="jsonl",
                        help="jsonl (one JSON record a line, default) or csv")
    export.add_argument("--output", "-o", default="-", metavar="FILE",
                        help="file (default: stdout)")
    export.set_defaults(func=run_export)

    verify = asub.add_parser("verify", help="recompute the hash chains; exit 1 on tampering")
    add_config(verify)
    verify.add_argument("--json", action="store_true", help="the result as JSON")
    verify.add_argument("--checkpoint", metavar="FILE", action="append", default=[],
                        help="also prove the store still holds everything up to this exported "
                             "checkpoint (repeatable)")
    verify.set_defaults(func=run_verify)

    report = asub.add_parser("report", help="one person's violations, for a personnel file")
    add_config(report)
    report.add_argument("--person", required=True, help="the staff member's address")
    dates(report)
    report.add_argument("--format", choices=("html", "csv"), default="html",
                        help="html (to print for the personnel file, default) or csv")
    report.add_argument("--output", "-o", default="-", metavar="FILE",
                        help="file (default: stdout)")
    report.set_defaults(func=run_report)

    migrate = asub.add_parser("migrate", help="create or upgrade the store's schema")
    add_config(migrate)
    migrate.set_defaults(func=run_migrate)

    cp = asub.add_parser("checkpoint", help="sign and export the chain head now")
    add_config(cp)
    cp.set_defaults(func=run_checkpoint)

    kg = asub.add_parser("keygen", help="a new Ed25519 checkpoint key for an epoch")
    add_config(kg)
    kg.add_argument("--epoch", type=int, required=True, metavar="N",
                    help="the key's epoch: 1 for the first key, one more for each new key "
                         "(the old public key stays trusted for the records it signed)")
    kg.add_argument("--dir", required=True, help="where to write epoch-N.key and epoch-N.pub "
                    "(as root: the key is left root:skot-milter 0640, readable by the service)")
    kg.set_defaults(func=run_keygen)

    purge = asub.add_parser("purge", help="remove personal fields past audit.retention_days")
    add_config(purge)
    purge.add_argument("--before", default="", type=_when, metavar="DATE",
                       help="purge records before this UTC date instead of the retention "
                            f"period ({FORMATS})")
    purge.set_defaults(func=run_purge)

    hold = asub.add_parser("hold", help="a legal hold on a person or record (purge skips it)")
    add_config(hold)
    target = hold.add_mutually_exclusive_group(required=True)
    target.add_argument("--person", default="", metavar="ADDRESS",
                        help="hold every record of this person (sender, user or recipient)")
    target.add_argument("--record", type=int, default=0, metavar="ID",
                        help="hold this one record (its id from audit list)")
    hold.add_argument("--release", action="store_true", help="lift the hold")
    hold.add_argument("--reason", default="",
                      help="why (a case number, a request by ...), kept in the audit")
    hold.set_defaults(func=run_hold)

    for q in (ls, show, export, report, purge, hold):
        q.add_argument("--actor", default="", help="who does this (default: the OS user)")



def _when(text: str) -> str:
    """argparse type: a date as ``milter.dates`` reads it; anything else is exit 2."""
    if not text:  # the default: no bound
        return ""
    try:
        return parse_when(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def dates(q: argparse.ArgumentParser) -> None:
    q.add_argument("--since", default="", type=_when, metavar="DATE",
                   help=f"from this UTC date/time, inclusive ({FORMATS})")
    q.add_argument("--until", default="", type=_when, metavar="DATE",
                   help="up to this UTC date/time, exclusive (same forms)")


def actor(args: argparse.Namespace) -> str:
    import getpass

    return getattr(args, "actor", "") or f"cli:{getpass.getuser()}"


def audit_view(store: AuditStore, args: argparse.Namespace, event: str,
               what: dict[str, Any]) -> None:
    """Record that someone looked at or exported records (who, what, when)."""
    try:
        store.append(AuditEvent(event=event, action=event, actor=actor(args),
                                evidence={k: v for k, v in what.items() if v}))
    except AuditUnavailable as exc:
        raise CommandError(f"cannot record this {event} in the audit store: {exc}") from None


def open_from_args(args: argparse.Namespace) -> AuditStore:
    cfg = load_config(args)
    try:
        return open_store(cfg.audit_url, cfg.gateway.node)
    except AuditUnavailable as exc:
        raise CommandError(str(exc)) from None


def _filters(args: argparse.Namespace) -> Filters:
    return Filters(since=args.since, until=args.until, rule=args.rule, sender=args.sender,
                   person=args.person, event=args.event, limit=getattr(args, "limit", 0))


def _filters_json(args: argparse.Namespace) -> dict[str, Any]:
    return {k: getattr(args, k, "") for k in ("since", "until", "rule", "sender", "person",
                                               "event")}


def _line(r: AuditRecord) -> str:
    rules = ",".join(f"{x.get('id')}{'(monitor)' if x.get('mode') == 'monitor' else ''}"
                     for x in r.rules) or "-"
    return (f"{r.id:>6}  {r.ts[:19]}  {r.event:<12} {r.action or '-':<10} "
            f"{r.sender or '<>':<32} {rules}  ref={r.txid}")


def run_list(args: argparse.Namespace) -> int:
    store = open_from_args(args)
    rows = list(store.records(_filters(args)))
    audit_view(store, args, "viewed", {"command": "list", "records": len(rows),
                                       **_filters_json(args)})
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
    audit_view(store, args, "viewed", {"command": "show", "ids": [r.id for r in rows]})
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
    audit_view(store, args, "exported", {"command": "export", "format": args.format,
                                         **_filters_json(args)})
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
            w.writerow(csvcells.record({k: row[k] if isinstance(row[k], str | int)
                                        else json.dumps(row[k], ensure_ascii=False)
                                        for k in CSV_FIELDS}))


def run_verify(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    store = open_from_args(args)
    try:
        result = _verify(store, cfg, [Path(f) for f in args.checkpoint])
    finally:
        store.close()  # (a PostgreSQL pool left open outlives the command's threads)
    chains = result.chains
    if args.json:
        print_json(result.to_json())
    else:
        names = ", ".join(f"{c}: {n}" for c, n in sorted(chains.chains.items())) or "none"
        print(f"{'intact' if result.ok else 'BROKEN'}: {chains.records} records "
              f"(chains {names})"
              + (f"; {result.checkpoints} checkpoint(s) checked" if result.checkpoints else ""))
        for p in chains.problems:
            print(f"first broken record: {p}")
        for p in result.checkpoint_problems:
            print(f"checkpoint: {p}")
        for w in chains.warnings:
            print(f"warning: {w}")
    return 0 if result.ok else 1


def _verify(store: AuditStore, cfg: config_mod.Config, files: list[Path]) -> Verification:
    try:
        return verify(store, cfg, files)
    except UnusableKeys as exc:
        raise CommandError(str(exc)) from None


def run_migrate(args: argparse.Namespace) -> int:
    store = open_from_args(args)  # opening creates or upgrades the schema
    print(f"schema up to date ({type(store).__name__}, version "
          f"{getattr(store, 'version', 1)})")
    catch_up = getattr(store, "catch_up", None)  # SQLite: copy older records into the
    if catch_up is not None:                     # search indexes now, not at the first search
        print(f"search indexes up to date ({catch_up()} records indexed)")
    store.close()
    return 0


def run_checkpoint(args: argparse.Namespace) -> int:
    from milter.audit import checkpoint

    cfg = load_config(args)
    key_path = cfg.optional_path(cfg.audit.checkpoint_key)
    if key_path is None:
        key_path, _ = checkpoint.ensure_key(cfg.audit_key_dir)
    key = checkpoint.load_signing_key(key_path)
    directory = cfg.checkpoint_dir
    store = open_from_args(args)
    node = cfg.gateway.node
    last = store.last(node)
    if last is None:
        raise CommandError(f"chain {node!r} has no records yet", code=1)
    before = checkpoint.newest(directory, node) if directory.is_dir() else None
    prev = {"seq": before["seq"], "head": before["head"]} if before is not None else None
    cp = checkpoint.sign(key, node, last.seq, last.hash, prev=prev)
    path = checkpoint.write(cp, directory, cfg.checkpoint_copies)
    keep = getattr(store, "save_checkpoint", None)  # PostgreSQL: beside every node's
    if keep is not None:
        try:
            keep(cp)
        except AuditUnavailable as exc:
            print(f"warning: checkpoint not kept in the database: {exc}", file=sys.stderr)
    print(f"checkpoint {path} (chain {node}, seq {last.seq})")
    return 0


def run_keygen(args: argparse.Namespace) -> int:
    from milter.audit import checkpoint
    from milter.service_user import hand_over

    priv, pub = checkpoint.generate(Path(args.dir), args.epoch)
    print(f"private key: {hand_over(priv)} (keep it off the database server)\n"
          f"public key:  {pub} "
          f"(give it to the auditors; put it in audit.trusted_keys)")
    return 0


def run_hold(args: argparse.Namespace) -> int:
    store = open_from_args(args)
    event = "legal-hold-release" if args.release else "legal-hold"
    target = {"person": args.person.lower()} if args.person else {"record": args.record}
    rec = store.append(AuditEvent(event=event, action=event, actor=actor(args),
                                  evidence={**target, "reason": args.reason}))
    print(f"{event} recorded as audit record {rec.id}")
    return 0


def run_purge(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from milter import retention

    cfg = load_config(args)
    store = open_from_args(args)
    if args.before:
        before = args.before
    else:
        days = cfg.audit.retention_days
        if not days:
            raise CommandError("audit.retention_days is 0 (keep forever); use --before DATE")
        before = retention.cutoff(days, datetime.now(UTC))
    count, people, records = retention.purge_audit(store, before, actor(args),
                                                   load_runtime(args).directory)
    print(f"purged personal fields of {count} record(s) before {before}; "
          f"{people} person(s) and {records} record(s) on legal hold")
    return 0


def run_report(args: argparse.Namespace) -> int:
    import html as html_mod

    cfg = load_config(args)
    store = open_from_args(args)
    person = load_runtime(args).directory.lookup(args.person)
    lines = violations(store, args.person, args.since, args.until,
                       person.private_addresses if person is not None else ())
    result = _verify(store, cfg, [])
    audit_view(store, args, "exported", {"command": "report", "person": args.person,
                                         "format": args.format, "records": len(lines)})
    status = result.status()
    fields = list(REPORT_FIELDS)
    target = (contextlib.nullcontext(sys.stdout) if args.output == "-"
              else open(args.output, "w", encoding="utf-8", newline=""))  # noqa: SIM115
    with target as out:
        if args.format == "csv":
            w = csv.DictWriter(out, fieldnames=fields)
            w.writeheader()
            w.writerows(csvcells.record(line) for line in lines)
            out.write(f"# chain verification at {_stamp()}: {status}\n")
        else:
            e = html_mod.escape
            body = "".join("<tr>" + "".join(f"<td>{e(line[f])}</td>" for f in fields)
                           + "</tr>\n" for line in lines)
            out.write(f"""<!DOCTYPE html><html lang="nl"><head><meta charset="utf-8">
<title>Overtredingen / violations: {e(args.person)}</title>
<style>body{{font-family:sans-serif}}table{{border-collapse:collapse}}
td,th{{border:1px solid #999;padding:2px 6px;text-align:left}}</style></head><body>
<h1>Overtredingen van het protocol / protocol violations</h1>
<p>Medewerker / staff member: <strong>{e(args.person)}</strong><br>
Periode / period: {e(args.since or "-")} .. {e(args.until or "-")}<br>
Opgesteld / made: {e(_stamp())}<br>
Controle audit-keten / audit chain verification: <strong>{e(status)}</strong></p>
<table><tr>{"".join(f"<th>{e(f)}</th>" for f in fields)}</tr>
{body}</table></body></html>
""")
    return 0


def _stamp() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
