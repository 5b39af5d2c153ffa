"""Two gateway nodes on one real PostgreSQL (issue 20): one quarantine, one count of notices,
every node's chain and checkpoints verified together.

Each node is a GatewayThread (its own event loop, audit writer, pools and config with its own
``gateway.node``, state directory and checkpoint directory), the two sharing only the
database, the signing key of the epoch and the next hop (a real SMTP sink). Releases from
"node B" go through the CLI and through ``milter.quarantine.release``, the one function the
CLI and the web view both call (the web view itself is being rewritten in parallel).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from milter import config as config_mod
from milter import quarantine
from milter.audit import checkpoint
from milter.audit.postgres import PostgresStore
from milter.audit.store import AuditEvent, Filters, seal
from milter.cli import main
from milter.notice_limits import PostgresRateLimiter, open_limiter
from milter.quarantine import AlreadyTaken, open_quarantine
from milter.quarantine_pg import PostgresQuarantine
from tests.conftest import write_config
from tests.e2e.conftest import GatewayThread, SinkHandler
from tests.fixtures import files

DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"


def confidential(subject: str = "Verslag") -> bytes:
    return files.mail_with([("verslag.docx", files.docx(["x"], label="Vertrouwelijk"), DOCX)],
                           subject=subject)


def node_config(tmp: Path, name: str, pg_url: str, sink_port: int, extra: str = "") -> Path:
    """A node's own config: its node name and directories, the shared database and key."""
    keys = tmp / "keys"
    if not keys.exists():
        checkpoint.generate(keys, 1, valid_from="2020-01-01T00:00:00Z")
    home = tmp / name
    home.mkdir()
    cfg = write_config(home, next_hop=f"smtp://127.0.0.1:{sink_port}", extra=extra)
    text = cfg.read_text().replace('node = "test"', f'node = "{name}"')
    text = text.replace('url = "sqlite:///audit.sqlite3"',
                        f'url = "{pg_url}"\ncheckpoint_key = "{keys}/epoch-1.key"\n'
                        f'checkpoint_dir = "checkpoints"\ntrusted_keys = "{keys}"\n'
                        "checkpoint_every = 1")
    cfg.write_text(text)
    return cfg


@pytest.fixture
def nodes(tmp_path: Path, pg_url: str, sink: tuple[SinkHandler, int]
          ) -> Iterator[tuple[GatewayThread, GatewayThread]]:
    extra = "[notices]\nrate_per_hour = 2\nretry_delay = 0.1\n"
    a = GatewayThread(node_config(tmp_path, "node-a", pg_url, sink[1], extra))
    b = GatewayThread(node_config(tmp_path, "node-b", pg_url, sink[1], extra))
    yield a, b
    a.stop()
    b.stop()


def delivered(handler: SinkHandler) -> list[Any]:
    return [m for m in handler.messages if b"X-SKOT-Notice:" not in m.content]


def send(node: GatewayThread, raw: bytes) -> tuple[int, bytes]:
    with node.client() as c:
        c.ehlo()
        c.mail("someone@school.example")
        c.rcpt("ouder@example.org")
        code, msg = c.data(raw)
    return int(code), bytes(msg)


def wait_for(pred: Any, timeout: float = 15.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.05)


def listed(node: GatewayThread, capsys: Any) -> list[dict[str, Any]]:
    capsys.readouterr()
    assert main(["quarantine", "list", "--config", str(node.config), "--json"]) == 0
    items: list[dict[str, Any]] = json.loads(capsys.readouterr().out)
    return items


def events(pg_url: str, name: str) -> list[tuple[str, str, str]]:
    store = PostgresStore(pg_url, "reader")
    try:
        return [(r.chain, r.event, r.actor) for r in store.records(Filters(event=name))]
    finally:
        store.close()


def test_held_on_a_released_from_b_once(nodes: tuple[GatewayThread, GatewayThread],
                                        sink: tuple[SinkHandler, int], pg_url: str,
                                        capsys: Any) -> None:
    a, b = nodes
    raw = confidential()
    code, msg = send(a, raw)
    assert code == 250 and b"held for review" in msg
    assert delivered(sink[0]) == []
    # node B's CLI sees node A's held message, and which node held it
    (item,) = listed(b, capsys)
    assert item["node"] == "node-a" and item["envelope"]["rcpt_tos"] == ["ouder@example.org"]
    assert main(["quarantine", "release", "--config", str(b.config), "--actor",
                 "admin@school.example", item["id"]]) == 0
    (got,) = delivered(sink[0])
    assert got.content == raw and got.rcpt_tos == ["ouder@example.org"]
    # gone for both nodes; a second release (from A) delivers nothing and says why
    assert listed(a, capsys) == [] and listed(b, capsys) == []
    assert main(["quarantine", "release", "--config", str(a.config), item["id"]]) == 1
    assert len(delivered(sink[0])) == 1
    assert events(pg_url, "quarantined") == [("node-a", "quarantined", "")]
    assert events(pg_url, "quarantine-release") == [
        ("node-b", "quarantine-release", "admin@school.example")]


def test_two_admins_on_two_nodes_release_at_once_delivered_once(
        nodes: tuple[GatewayThread, GatewayThread], sink: tuple[SinkHandler, int],
        pg_url: str) -> None:
    a, b = nodes
    for i in range(3):
        assert send(a if i % 2 else b, confidential(f"Verslag {i}"))[0] == 250
    cfgs = [config_mod.load(a.config), config_mod.load(b.config)]
    stores = [open_quarantine(cfg) for cfg in cfgs]
    ids = [e.id for e in stores[0].entries()]
    assert len(ids) == 3
    outcomes: list[str] = []
    for qid in ids:
        # both admins opened the page (each node has the entry), then click together
        entries = [store.get(qid) for store in stores]
        assert all(e is not None for e in entries)
        start = threading.Barrier(2)

        def click(i: int, entry: Any, start: threading.Barrier = start) -> None:
            start.wait()
            try:
                quarantine.release(cfgs[i], stores[i], entry, f"admin-{i}")
                outcomes.append("released")
            except AlreadyTaken:
                outcomes.append("taken")

        threads = [threading.Thread(target=click, args=(i, e)) for i, e in enumerate(entries)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    for store in stores:
        store.close()
    assert sorted(outcomes) == ["released"] * 3 + ["taken"] * 3
    assert len(delivered(sink[0])) == 3  # each held message exactly once
    assert len({m.content for m in delivered(sink[0])}) == 3
    assert len(events(pg_url, "quarantine-release")) == 3


def test_a_failed_send_puts_the_message_back_for_any_node(pg_url: str, tmp_path: Path,
                                                          sink: tuple[SinkHandler, int]) -> None:
    cfg = config_mod.load(node_config(tmp_path, "node-a", pg_url, sink[1]))
    store = open_quarantine(cfg)
    qid = store.put("tx1", b"Subject: x\r\n\r\nbody\r\n",
                    {"mail_from": "someone@school.example", "rcpt_tos": ["ouder@example.org"]},
                    {"rules": [], "direction": "outbound"})
    sink[0].data_reply = "451 4.3.0 try later"
    entry = store.get(qid)
    assert entry is not None
    with pytest.raises(quarantine.ActionFailed, match="refused"):
        quarantine.release(cfg, store, entry, "admin")
    other = PostgresQuarantine(pg_url, "node-b")
    back = other.get(qid)
    assert back is not None and back.raw == b"Subject: x\r\n\r\nbody\r\n"
    sink[0].data_reply = "250 2.0.0 Ok"
    assert quarantine.release(cfg, other, back, "admin").startswith("250")
    assert other.get(qid) is None and store.entries() == []
    other.close()
    store.close()


def test_notice_limits_count_across_nodes(nodes: tuple[GatewayThread, GatewayThread],
                                          sink: tuple[SinkHandler, int]) -> None:
    a, b = nodes
    for i in range(6):  # rate_per_hour = 2, messages alternate between the nodes
        assert send(a if i % 2 else b, confidential(f"Verslag {i}"))[0] == 250

    def to_sender() -> list[Any]:
        return [m for m in sink[0].messages if b"X-SKOT-Notice:" in m.content
                and m.rcpt_tos == ["someone@school.example"]]

    wait_for(lambda: len(to_sender()) >= 2)
    time.sleep(1.0)  # the other four would have arrived by now
    assert len(to_sender()) == 2


def test_held_back_notices_are_summarised_by_whichever_node_sends_next(pg_url: str,
                                                                       tmp_path: Path) -> None:
    a = PostgresRateLimiter(pg_url, 2, "node-a", tmp_path / "a.sqlite3")
    b = PostgresRateLimiter(pg_url, 2, "node-b", tmp_path / "b.sqlite3")
    t = 1_000_000.0
    assert a.admit("Someone@school.example", t) == (True, 0)
    assert b.admit("someone@school.example", t + 1) == (True, 0)
    assert a.admit("someone@school.example", t + 2) == (False, 0)   # third in the hour
    assert b.admit("someone@school.example", t + 3) == (False, 0)
    assert a.admit("other@school.example", t + 3) == (True, 0)      # per address
    assert b.admit("someone@school.example", t + 3602) == (True, 2)  # and the two held back
    a.close()
    b.close()


def test_notice_limits_fall_back_to_the_node_when_the_database_is_away(tmp_path: Path) -> None:
    cfg = config_mod.load(node_config(tmp_path, "node-a", "postgresql://nobody@127.0.0.1:1/x",
                                      1, "[notices]\nrate_per_hour = 2\n"))
    limiter = open_limiter(cfg)
    assert isinstance(limiter, PostgresRateLimiter)
    limiter._pool.timeout = 0.5  # noqa: SLF001 - no need to wait the full three seconds here
    assert [limiter.admit("someone@school.example", 10.0)[0] for _ in range(3)] == [
        True, True, False]
    limiter.close()


def _rewrite_chain(pg_url: str, chain: str) -> None:
    """What a database owner could do: change a record and re-seal the rest of the chain
    consistently, heads table included. Only a checkpoint can tell."""
    store = PostgresStore(pg_url, chain)
    recs = [r for r in store.ordered() if r.chain == chain]
    store.close()
    prev = recs[0].prev_hash
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE records DISABLE TRIGGER records_append_only")
        for i, r in enumerate(recs):
            fields = {k: getattr(r, k) for k in AuditEvent.__dataclass_fields__}
            if i == 0:
                fields["sender"] = "someone-else@school.example"
            new = seal(AuditEvent(**fields), chain, r.seq, prev, r.ts)
            conn.execute("UPDATE records SET sender = %s, prev_hash = %s, personal_hash = %s, "
                         "content_hash = %s, hash = %s WHERE id = %s",
                         (new.sender, new.prev_hash, new.personal_hash, new.content_hash,
                          new.hash, r.id))
            prev = new.hash
        conn.execute("UPDATE chain_heads SET hash = %s WHERE chain = %s", (prev, chain))
        conn.execute("ALTER TABLE records ENABLE TRIGGER records_append_only")


def verify_json(node: GatewayThread, capsys: Any) -> tuple[int, dict[str, Any]]:
    capsys.readouterr()
    code = main(["audit", "verify", "--config", str(node.config), "--json"])
    return code, json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("victim", ["node-a", "node-b"])
def test_audit_verify_sees_both_chains_and_checkpoints(
        nodes: tuple[GatewayThread, GatewayThread], pg_url: str, capsys: Any,
        victim: str) -> None:
    a, b = nodes
    assert send(a, confidential("een"))[0] == 250
    assert send(b, confidential("twee"))[0] == 250
    wait_for(lambda: len(events(pg_url, "notice-sent")) >= 2)
    for node in nodes:
        code, result = verify_json(node, capsys)
        assert code == 0 and result["ok"], result
        assert set(result["chains"]) == {"node-a", "node-b"}
        # every node's checkpoints are checked, also those exported on the other node only
        assert result["checkpoints"] >= sum(result["chains"].values())
    # a row of either chain altered: both nodes' verification goes red, naming the chain
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE records DISABLE TRIGGER records_append_only")
        row = conn.execute("SELECT id, recipients FROM records WHERE chain = %s "
                           "ORDER BY seq LIMIT 1", (victim,)).fetchone()
        assert row is not None
        conn.execute("UPDATE records SET recipients = '[\"x@evil.example\"]' WHERE id = %s",
                     (row[0],))
        conn.execute("ALTER TABLE records ENABLE TRIGGER records_append_only")
    for node in nodes:
        code, result = verify_json(node, capsys)
        assert code == 1 and not result["ok"]
        assert any(f"chain {victim!r}" in p for p in result["problems"]), result["problems"]
    with psycopg.connect(pg_url, autocommit=True) as conn:  # put it back: green again
        conn.execute("ALTER TABLE records DISABLE TRIGGER records_append_only")
        conn.execute("UPDATE records SET recipients = %s WHERE id = %s", (row[1], row[0]))
        conn.execute("ALTER TABLE records ENABLE TRIGGER records_append_only")
    assert verify_json(a, capsys)[0] == 0
    # rewritten consistently: the chains still add up, the checkpoints in the database
    # (signed outside it) do not; node A catches node B's chain and the other way round
    _rewrite_chain(pg_url, victim)
    store = PostgresStore(pg_url, "reader")
    assert store.verify().ok
    store.close()
    other = b if victim == "node-a" else a
    code, result = verify_json(other, capsys)
    assert code == 1
    assert any("database checkpoint" in p and repr(victim) in p
               for p in result["checkpoint_problems"]), result


def _block(pg_url: str, allow: bool) -> None:
    """Make the node's database unreachable (or reachable again) without touching others."""
    name = pg_url.rsplit("/", 1)[1]
    admin = pg_url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(allow).lower()}')
        if not allow:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                         "WHERE datname = %s AND pid <> pg_backend_pid()", (name,))


def test_database_briefly_away_451_then_caught_up(nodes: tuple[GatewayThread, GatewayThread],
                                                  sink: tuple[SinkHandler, int], pg_url: str,
                                                  capsys: Any) -> None:
    a, _ = nodes
    raw = confidential("tijdens storing")
    _block(pg_url, allow=False)
    try:
        code, msg = send(a, raw)
        assert code == 451 and msg.startswith(b"4.3.0")  # the client keeps it and retries
    finally:
        _block(pg_url, allow=True)
    for _ in range(20):  # the client's retries; the pools reconnect by themselves
        code, msg = send(a, raw)
        if code == 250:
            break
        time.sleep(0.5)
    assert code == 250 and b"held for review" in msg
    (item,) = listed(a, capsys)
    assert item["node"] == "node-a"
    assert delivered(sink[0]) == []


def test_a_release_that_died_midway_is_listed_and_releasable_again(pg_url: str) -> None:
    a, b = PostgresQuarantine(pg_url, "node-a"), PostgresQuarantine(pg_url, "node-b")
    qid = a.put("tx9", b"Subject: x\r\n\r\nhallo\r\n", {"rcpt_tos": ["o@example.org"]}, {})
    dead = a.claim(qid, "admin-a")  # ... and its process is killed before finishing
    assert dead is not None
    assert b.claim(qid, "admin-b") is None and b.entries() == []  # a live claim holds
    assert [e.id for e in b.in_progress()] == [qid]   # every node sees it being released
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE quarantine SET claimed_at = claimed_at - 3601")
    assert [e.id for e in b.entries()] == [qid] and b.in_progress() == []
    taken = b.claim(qid, "admin-b")
    assert taken is not None
    a.finish(dead)    # the old claim no longer counts: it removes nothing
    assert b.claim(qid, "admin-c") is None
    b.finish(taken)
    assert b.entries() == [] and a.get(qid) is None and a.in_progress() == []
    a.close()
    b.close()


def test_a_reload_keeps_the_shared_limiter(nodes: tuple[GatewayThread, GatewayThread]) -> None:
    """SIGHUP builds a new notifier; the counts and the pool stay (a new pool per reload
    would leak its threads and connections), the new rate applies."""
    from milter.daemon import reload

    a, _ = nodes
    before = a.running.gateway.notifier
    assert before is not None and isinstance(before.limiter, PostgresRateLimiter)
    a.config.write_text(a.config.read_text().replace("rate_per_hour = 2", "rate_per_hour = 7"))
    assert a.call(_async(reload, a.running, str(a.config)))
    after = a.running.gateway.notifier
    assert after is not None and after is not before
    assert after.limiter is before.limiter and after.limiter.per_hour == 7


async def _async(fn: Any, *args: Any) -> Any:
    return fn(*args)


def test_held_on_a_released_from_b_web_view_once(
        nodes: tuple[GatewayThread, GatewayThread], sink: tuple[SinkHandler, int],
        pg_url: str, capsys: Any) -> None:
    """The admin uses node B's web view (its own config: node B) for a message node A held;
    a second click (or node A's view) finds it gone and delivers nothing."""
    import threading
    import urllib.parse

    from milter import config as config_mod
    from milter.commands.web import build_app
    from milter.web import users
    from milter.web.app import make_server
    from tests.e2e.conftest import free_port
    from tests.web.conftest import csrf_of, login_cookie, request

    a, b = nodes
    raw = confidential()
    assert send(a, raw)[0] == 250
    (item,) = listed(b, capsys)
    cfg_b = config_mod.load(b.config)
    users.add(cfg_b.resolve(cfg_b.web.users), "bert", "admin", "admin-pass-12")
    port = free_port()
    server = make_server(build_app(cfg_b), "127.0.0.1", port)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    site = {"port": port}
    try:
        cookie = login_cookie(site, "bert", "admin-pass-12")
        body = urllib.parse.urlencode({"csrf": csrf_of(site, cookie), "reason": "akkoord"})
        first = request(site, "POST", f"/quarantine/{item['id']}/release", body, cookie)
        assert first.status == 200 and "vrijgegeven" in first.read().decode().lower()
        again = request(site, "POST", f"/quarantine/{item['id']}/release", body, cookie)
        assert again.status in (404, 409, 502)
    finally:
        server.shutdown()
    (got,) = delivered(sink[0])
    assert got.content == raw
    released = [e for e in events(pg_url, "quarantine-release")]
    assert released == [("node-b", "quarantine-release", "web:bert")]
