"""The web view on a large store: every search and the dashboard, timed through HTTP.

    python bench/web_bench.py [--records 1000000] [--store PATH] [--rounds 3] [--postgres]

Fills an audit store with ``--records`` records shaped like a school's year of mail (about
half a million messages: intents and outcomes, one in four with a rule fired, notices, a few
releases and deletes, 2 000 staff with private addresses, times spread over twelve months),
then starts the web view on loopback, logs in and times each page (best and median of
``--rounds``, server time as the browser sees it). ``--store`` keeps the SQLite file between
runs (filling a million records takes minutes); ``--postgres`` fills a database of its own on
the local server, dropped afterwards. Prints figures; asserts nothing. Goal: < 500 ms.
"""

from __future__ import annotations

import argparse
import http.client
import random
import statistics
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from unittest import mock

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from milter.audit.store import AuditEvent  # noqa: E402

ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
STAFF = 2000
RULES = [("B1.sender-domain", "B1", "reject"), ("B1.private-address", "B1", "reject"),
         ("A1.confidential-attachment", "A1", "quarantine"), ("A5.media-external", "A5",
                                                              "tag"),
         ("FWD.auto-external", "B1", "reject"), ("FWD.manual-external", "A1", "tag")]
FIRST = ["Anna", "Bram", "Carla", "Daan", "Eva", "Fleur", "Gijs", "Hanna", "Ivo", "Jet"]
LAST = ["de Vries", "Jansen", "Bakker", "Visser", "Smit", "Meijer", "de Boer", "Mulder"]


def staff_csv(path: Path) -> None:
    lines = ["address;role;name;private_addresses;supervisor"]
    for i in range(STAFF):
        lines.append(f"staff{i}@school.example;staff;{FIRST[i % 10]} {LAST[i % 8]} {i};"
                     f"staff{i}.home@gmail.example;")
    path.write_text("\n".join(lines) + "\n")


def events(n: int, seed: int = 7) -> Iterator[tuple[str, AuditEvent]]:
    """(timestamp, event) pairs in time order, ``n`` in all."""
    rnd = random.Random(seed)
    start = datetime.now(UTC) - timedelta(days=365)
    step = timedelta(days=365) / n
    made = 0
    k = 0
    while made < n:
        k += 1
        ts = start + step * made
        stamp = ts.isoformat(timespec="microseconds").replace("+00:00", "Z")
        sender_i = rnd.randrange(STAFF)
        sender = f"staff{sender_i}@school.example"
        ref = f"b{k:09d}"
        rcpts = tuple(f"ouder{rnd.randrange(50000)}@example.org"
                      for _ in range(rnd.choice((1, 1, 1, 2, 3))))
        subject = f"Bericht {rnd.randrange(100000)} over groep {rnd.randrange(8) + 1}"
        roll = rnd.random()
        rules: tuple[dict[str, Any], ...] = ()
        if roll < 0.25:
            rid, art, act = rnd.choice(RULES)
            ev: dict[str, Any] = {"problems": ["from-external"]}
            if rid == "B1.private-address":
                sender = f"staff{sender_i}.home@gmail.example"
                ev = {"staff_member": f"staff{sender_i}@school.example"}
            elif rid.startswith("A1"):
                ev = {"items": [{"name": "leerlingen.xlsx", "pupil_rows": rnd.randrange(10, 40),
                                 "sha256": "0" * 64, "size": 9000}]}
            rules = ({"id": rid, "article": art, "action": act, "mode": "enforce",
                      "reason": "…", "evidence": ev},)
            outcome = {"reject": "rejected", "quarantine": "quarantined",
                       "tag": "delivered"}[act]
            action = act
        else:
            outcome, action = "delivered", "accept"
        common = dict(txid=ref, sender=sender, recipients=rcpts, direction="outbound",
                      rules=rules, action=action, subject=subject, client="10.0.0.5",
                      message_id=f"<{ref}@school.example>",
                      evidence={"size": rnd.randrange(2000, 90000), "sha256": "0" * 64,
                                "attachments": []})
        batch = []
        if outcome == "delivered":
            batch.append(AuditEvent(event="intent", **common))
        batch.append(AuditEvent(event=outcome, reply="250 ok", **common))
        if rules and rnd.random() < 0.6:
            batch.append(AuditEvent(event="notice-sent", txid=ref, sender="postmaster@school."
                                    "example", recipients=(f"staff{sender_i}@school.example",),
                                    action="notice-sent", evidence={"kind": "sender"}))
        if outcome == "quarantined" and rnd.random() < 0.5:
            act2 = rnd.choice(("quarantine-release", "quarantine-delete"))
            batch.append(AuditEvent(event=act2, txid=ref, sender=sender, recipients=rcpts,
                                    action=act2, actor="web:bert",
                                    evidence={"quarantine_id": ref, "reason": "bench"}))
        for e in batch:
            if made >= n:
                return
            made += 1
            yield stamp, e


def fill(store: Any, n: int) -> None:
    started = time.perf_counter()
    stamps: list[str] = []
    chunk: list[AuditEvent] = []

    def flush() -> None:
        it = iter(stamps)
        with mock.patch("milter.audit.sql.now_iso", lambda: next(it)):
            store.append_many(chunk)
        stamps.clear()
        chunk.clear()

    for i, (stamp, ev) in enumerate(events(n)):
        stamps.append(stamp)
        chunk.append(ev)
        if len(chunk) == 2000:  # PostgreSQL takes at most 65 535 parameters a statement
            flush()
            if (i + 1) % 100000 == 0:
                print(f"  {i + 1:,} records ({time.perf_counter() - started:.0f} s)",
                      file=sys.stderr)
    if chunk:
        flush()
    print(f"filled {n:,} records in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    if hasattr(store, "catch_up"):  # SQLite indexes in batches: not inside the first search
        started = time.perf_counter()
        store.catch_up()
        print(f"indexed in {time.perf_counter() - started:.0f} s", file=sys.stderr)


def config(tmp: Path, url: str) -> Any:
    from milter import config as config_mod
    from milter.web import users

    staff_csv(tmp / "staff.csv")
    (tmp / "skot-milter.toml").write_text(f"""
[gateway]
listen = "127.0.0.1:0"
next_hop = "maildir:maildir"
node = "bench"
policy = "{ROOT / 'policies' / 'skot.toml'}"
[school]
domains = ["school.example"]
postmaster = "postmaster@school.example"
[directory]
csv = "staff.csv"
[audit]
url = "{url}"
[web]
secure_cookies = false
""")
    users.add(tmp / "web-users.txt", "anna", "auditor", "auditor-pass-1")
    return config_mod.load(tmp / "skot-milter.toml")


PAGES = [
    ("newest messages", "/messages"),
    ("older page (keyset)", "/messages?before=500000"),
    ("by reference", "/messages?ref=b000123456"),
    ("by part of a name", "/messages?person=fleur+visser+15"),
    ("by part of an address", "/messages?person=staff1234"),
    ("by private address", "/messages?person=staff77.home"),
    ("by rule", "/messages?rule=A1.confidential-attachment"),
    ("by article", "/messages?article=A5"),
    ("by Dutch action", "/messages?action=weigeren"),
    ("by direction", "/messages?direction=uitgaand"),
    ("by outcome", "/messages?outcome=vastgehouden"),
    ("by Dutch date (one day)", "/messages?since={day}&until={day}"),
    ("by month + rule + action", "/messages?since={month}&until={day}&rule=B1.sender-domain"
                                 "&action=weigeren"),
    ("by subject text (one day)", "/messages?subject=groep+3&since={day}&until={day}"),
    ("by subject text (all)", "/messages?subject=bericht+4242+"),
    ("by name + rule", "/messages?person=staff1234&rule=B1.sender-domain"),
    ("nothing found (explained)", "/messages?ref=zzz&action=weigeren"),
    ("message page", "/messages/b000123456"),
    ("dashboard (30 days)", "/dashboard"),
    ("dashboard (365 days)", "/dashboard?days=365"),
    ("monthly summary", "/summary"),
    ("monthly summary CSV", "/summary?format=csv"),
    ("person report", "/report?person=staff42%40school.example"),
]


def measure(cfg: Any, rounds: int) -> None:
    from milter.commands.web import build_app
    from milter.web.app import make_server

    server = make_server(build_app(cfg), "127.0.0.1", 0)
    port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()

    def get(path: str, cookie: str = "") -> tuple[int, bytes, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        conn.request("GET", path, headers={"Cookie": cookie} if cookie else {})
        resp = conn.getresponse()
        return resp.status, resp.read(), resp

    page = get("/login")[1].decode()
    token = page.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", "/login", urllib.parse.urlencode(
        {"csrf": token, "user": "anna", "password": "auditor-pass-1"}),
        {"Content-Type": "application/x-www-form-urlencoded"})
    cookie = conn.getresponse().getheader("Set-Cookie", "").split(";", 1)[0]
    today = datetime.now(UTC) - timedelta(days=40)
    fmt = {"day": today.strftime("%d-%m-%Y"),
           "month": today.replace(day=1).strftime("%d-%m-%Y")}
    print(f"{'page':32} {'best ms':>8} {'median':>8}  result")
    for name, path in PAGES:
        url = path.format(**fmt)
        times = []
        body = b""
        status = 0
        for _ in range(rounds):
            t = time.perf_counter()
            status, body, _ = get(url, cookie)
            times.append((time.perf_counter() - t) * 1000)
        text = body.decode("utf-8", "replace")
        found = ""
        if 'id="totals"' in text:
            found = text.split('id="totals">', 1)[1].split("<", 1)[0].strip()[:60]
        print(f"{name:32} {min(times):8.0f} {statistics.median(times):8.0f}  "
              f"{status} {found}")
    server.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--store", default="", help="SQLite file to keep (filled when missing)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--postgres", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if args.postgres:
            import psycopg

            from milter.audit.postgres import PostgresStore

            name = f"skot_webbench_{uuid.uuid4().hex[:8]}"
            with psycopg.connect(ADMIN, autocommit=True) as admin:
                admin.execute(f"CREATE DATABASE {name}")
            url = f"postgresql://postgres@127.0.0.1:5432/{name}"
            try:
                pg = PostgresStore(url, "bench")
                fill(pg, args.records)
                pg.close()
                with psycopg.connect(url, autocommit=True) as conn:
                    conn.execute("VACUUM ANALYZE")  # what autovacuum does after a big load
                measure(config(tmp, url), args.rounds)
            finally:
                with psycopg.connect(ADMIN, autocommit=True) as admin:
                    admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            return
        from milter.audit.sqlite import SQLiteStore

        path = Path(args.store) if args.store else tmp / "audit.sqlite3"
        if not path.exists():
            store = SQLiteStore(path, "bench")
            fill(store, args.records)
            store._db.execute("ANALYZE")  # what `audit migrate` leaves behind
            store.close()
        measure(config(tmp, f"sqlite:///{path.resolve()}"), args.rounds)


if __name__ == "__main__":
    main()
