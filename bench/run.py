"""Benchmark: the gateway against a bare aiosmtpd pass-through proxy, side by side.

    python bench/run.py [--seconds 4] [--rounds 2] [--postgres] [--quick]

Starts, on loopback only: a sink (bench/sink.py), the baseline (bench/baseline.py), the gateway
(`skot-milter serve` with policies/skot.toml and a SQLite audit store; with --postgres a
PostgreSQL one as well), and drives each with the same load (bench/loadgen.py) over the same
message mix, interleaving baseline and gateway runs so the ratio holds on a noisy machine.
Prints messages/s, p50/p99 latency, peak RSS and gateway/baseline ratios; asserts nothing.
Needs the test extras (the attachments are made with python-docx, reportlab and Pillow).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from loadgen import Message, Result, run  # noqa: E402

from tests.fixtures import files  # noqa: E402

DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 20) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"port {port} did not open")


def mixes() -> dict[str, list[Message]]:
    rng_text = "Beste ouders, hierbij de informatie over de activiteiten van deze week. " * 24
    small = files.mail_with([], body=rng_text)  # ~2 KB
    para = ["Verslag van de vergadering over het rooster en de activiteiten. " * 8] * 120
    medium = files.mail_with([("verslag.docx", files.docx(para), DOCX)])  # ~50 KB
    large = files.mail_with([("brief.pdf", files.pdf(["Regel tekst"] * 40), "application/pdf"),
                             ("foto.jpg", files.photo(700, 450), "image/jpeg")])  # ~1 MB
    bad = [("me@gmail.example", files.mail_with([], frm="me@gmail.example", body=rng_text))]

    def mix(good: list[bytes]) -> list[Message]:
        # 10 % violations (B1: another domain), the rest from the school address
        return [("someone@school.example", good[i % len(good)]) for i in range(9)] + bad

    return {"2KB": mix([small]), "50KB": mix([medium]), "1MB": mix([large]),
            "mix": mix([small, small, medium, large])}


def rss_kib(pids: list[int]) -> int:
    """Peak RSS (VmHWM) summed over the processes and their children."""
    total = 0
    seen: set[int] = set()
    todo = list(pids)
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            todo += [int(c) for c in children]
        except OSError:
            continue
    return total


def tree(pid: int) -> list[int]:
    """The process and its descendants (the gateway's supervisor and its workers)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            todo += [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
        except OSError:
            continue
    return out


def pss_kib(pid: int) -> int:
    """Proportional set size of the tree now: shared pages counted once, not per process."""
    total = 0
    for p in tree(pid):
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


class PeakSampler:
    """Samples a process tree's PSS every 50 ms in a thread; ``peak`` is the highest sum."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, pss_kib(self.pid))

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def smtp_source(tool: str, port: int, sessions: int, count: int, size: int) -> Result:
    """Postfix's C load generator: ``count`` messages of ``size`` bytes over ``sessions``
    connections, several messages per connection; messages/s from the wall time."""
    start = time.monotonic()
    proc = subprocess.run([tool, "-d", "-s", str(sessions), "-m", str(count), "-l", str(size),
                           "-f", "someone@school.example", "-t", "ouder@example.org",
                           f"127.0.0.1:{port}"], capture_output=True, timeout=600)
    r = Result(seconds=time.monotonic() - start)
    r.sent = count
    r.ok = count if proc.returncode == 0 else 0
    r.errors = 0 if proc.returncode == 0 else 1
    return r


def gateway_config(tmp: Path, port: int, sink: int, audit_url: str,
                   workers: int = os.cpu_count() or 1) -> Path:
    shutil.copy(ROOT / "deploy" / "default" / "staff.csv", tmp / "staff.csv")
    cfg = tmp / f"gw-{port}.toml"
    cfg.write_text(f"""
[gateway]
listen = "127.0.0.1:{port}"
next_hop = "smtp://127.0.0.1:{sink}"
hostname = "relay.school.example"
node = "bench"
internal_networks = ["127.0.0.0/8"]
max_message_size = 67108864
max_connections_per_ip = 500
workers = {workers}
policy = "{ROOT / 'policies' / 'skot.toml'}"
[school]
domains = ["school.example"]
postmaster = "postmaster@school.example"
[directory]
csv = "staff.csv"
[audit]
url = "{audit_url}"
[notices]
enabled = false
[dns]
authenticate = false
[logging]
level = "warning"
""")
    return cfg


def line(name: str, r: Result, rss: int | None = None) -> str:
    return (f"  {name:<10} {r.rate:9.1f} msg/s  p50 {r.pct(50):7.1f} ms  p99 {r.pct(99):7.1f} ms"
            f"  ok {r.ok:6d} refused {r.refused:5d} errors {r.errors:4d}"
            + (f"  peak RSS {rss / 1024:6.1f} MiB" if rss is not None else ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=float, default=4.0, help="per run")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds per scenario")
    ap.add_argument("--postgres", action="store_true", help="also the PostgreSQL audit store")
    ap.add_argument("--quick", action="store_true", help="one scenario, short runs")
    ap.add_argument("--only", metavar="MIX,SESSIONS,PER_CONN", default="",
                    help="one scenario, e.g. 2KB,1,10 (mixes: 2KB 50KB 1MB mix)")
    ap.add_argument("--memory", action="store_true",
                    help="only: peak RSS with 50 concurrent 10 MB messages")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="skot-bench-"))
    procs: list[subprocess.Popen[bytes]] = []
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def spawn(cmd: list[str], port: int) -> subprocess.Popen[bytes]:
        p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        procs.append(p)
        wait_port(port)
        return p

    try:
        sink = free_port()
        spawn([sys.executable, str(ROOT / "bench" / "sink.py"), str(sink)], sink)
        base = free_port()
        base_proc = spawn([sys.executable, str(ROOT / "bench" / "baseline.py"), str(base),
                           str(sink)], base)
        targets: dict[str, tuple[int, subprocess.Popen[bytes]]] = {"baseline": (base, base_proc)}
        gw = free_port()
        cfg = gateway_config(tmp, gw, sink, f"sqlite:///{tmp}/audit.sqlite3")
        targets["gateway"] = (gw, spawn([sys.executable, "-m", "milter.cli", "serve",
                                         "--config", str(cfg)], gw))
        if args.postgres:
            import psycopg

            name = f"skot_bench_{os.getpid()}"
            with psycopg.connect("postgresql://postgres@127.0.0.1/postgres",
                                 autocommit=True) as c:
                c.execute(f'DROP DATABASE IF EXISTS "{name}"')
                c.execute(f'CREATE DATABASE "{name}"')
            gp = free_port()
            pcfg = gateway_config(tmp, gp, sink, f"postgresql://postgres@127.0.0.1/{name}")
            targets["gateway-pg"] = (gp, spawn([sys.executable, "-m", "milter.cli", "serve",
                                                "--config", str(pcfg)], gp))
        smtp_sink = shutil.which("smtp-sink")
        if smtp_sink:
            sp = free_port()
            user = ["-u", "postfix"] if os.geteuid() == 0 else []
            targets["smtp-sink"] = (sp, spawn([smtp_sink, *user, "-c", f"127.0.0.1:{sp}",
                                               "256"], sp))

        all_mixes = mixes()
        scenarios = [("mix", 20, 1), ("2KB", 20, 10), ("50KB", 20, 10), ("1MB", 20, 2),
                     ("2KB", 1, 10), ("50KB", 1, 10), ("mix", 20, 10)]
        if args.quick:
            scenarios = [("mix", 20, 10)]
        if args.only:
            name, n, per = args.only.split(",")
            scenarios = [(name, int(n), int(per))]
        if args.memory:
            big = files.mail_with([("archief.pdf", bytes(range(256)) * 40_000,
                                    "application/pdf")])  # ~10 MB after base64
            all_mixes["10MB"] = [("someone@school.example", big)]
            scenarios = [("10MB", 50, 1)]
        print(f"skot-milter benchmark: {args.rounds} interleaved rounds of {args.seconds:.0f} s"
              f" per target, loopback, {os.cpu_count()} cores\n")
        for mix_name, sessions, per_conn in scenarios:
            print(f"{mix_name}, {sessions} session(s), {per_conn} message(s) per connection")
            totals: dict[str, Result] = {}
            pss_peak: dict[str, int] = {}
            for _ in range(args.rounds):
                for name, (port, _proc) in targets.items():
                    if name == "smtp-sink" and (mix_name, sessions) != ("50KB", 20):
                        continue
                    with PeakSampler(_proc.pid) as sampler:
                        r = asyncio.run(run(port, all_mixes[mix_name], sessions, per_conn,
                                            args.seconds))
                    pss_peak[name] = max(pss_peak.get(name, 0), sampler.peak)
                    t = totals.setdefault(name, Result())
                    t.sent += r.sent
                    t.ok += r.ok
                    t.refused += r.refused
                    t.errors += r.errors
                    t.latencies += r.latencies
                    t.seconds += r.seconds
            for name, r in totals.items():
                pid = targets[name][1].pid
                print(line(name, r, rss_kib(tree(pid))))
                if args.memory:
                    print(f"  {'':<10} peak PSS {pss_peak[name] / 1024:6.1f} MiB (sampled; shared "
                          f"pages counted once), {len(tree(pid))} process(es)")
            b = totals["baseline"]
            for name in ("gateway", "gateway-pg", "smtp-sink"):
                if name in totals and name != "smtp-sink":
                    g = totals[name]
                    print(f"  ratio {name}/baseline: throughput {g.rate / b.rate:.2f}x, "
                          f"p99 {g.pct(99) - b.pct(99):+.1f} ms")
            if "gateway-pg" in totals:
                print(f"  ratio PostgreSQL/SQLite: "
                      f"{totals['gateway-pg'].rate / totals['gateway'].rate:.2f}x")
            if "smtp-sink" in totals:
                print(f"  ratio gateway/smtp-sink: "
                      f"{totals['gateway'].rate / totals['smtp-sink'].rate:.3f}x")
            print()
        source = shutil.which("smtp-source")
        if source and not args.memory and not args.only:
            count = 400 if args.quick else 2000
            for label, size in (("2KB", 2048), ("50KB", 51200)):
                print(f"smtp-source (Postfix's C client), {label} plain text, 20 sessions, "
                      f"{count} messages, several per connection")
                res: dict[str, Result] = {}
                for _ in range(args.rounds):
                    for name, (port, _proc) in targets.items():
                        r = smtp_source(source, port, 20, count, size)
                        t = res.setdefault(name, Result())
                        t.sent, t.ok, t.errors = t.sent + r.sent, t.ok + r.ok, t.errors + r.errors
                        t.seconds += r.seconds
                for name, r in res.items():
                    print(f"  {name:<10} {r.rate:9.1f} msg/s" + ("" if not r.errors else
                                                                "  (smtp-source failed)"))
                for name in ("gateway", "gateway-pg"):
                    if name in res:
                        print(f"  ratio {name}/baseline: throughput "
                              f"{res[name].rate / res['baseline'].rate:.2f}x")
                print(f"  ratio gateway/smtp-sink: "
                      f"{res['gateway'].rate / res['smtp-sink'].rate:.3f}x"
                      if "smtp-sink" in res else "")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)
        if args.postgres:
            import psycopg

            with psycopg.connect("postgresql://postgres@127.0.0.1/postgres",
                                 autocommit=True) as c:
                c.execute(f'DROP DATABASE IF EXISTS "skot_bench_{os.getpid()}" WITH (FORCE)')


if __name__ == "__main__":
    main()
