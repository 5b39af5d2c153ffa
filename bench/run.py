"""Benchmark: the gateway against a bare aiosmtpd pass-through proxy, side by side.

    python bench/run.py [--seconds 4] [--rounds 2] [--postgres] [--quick] [--only MIX,N,PER]
                        [--memory] [--source] [--messages 2000] [--before REV]

Starts, on loopback only: a sink (bench/sink.py), the baseline (bench/baseline.py) once as one
process and once as as many processes as the gateway has workers (same port, SO_REUSEPORT: the
gateway's ratio against a 1-process baseline flatters it on a multi-core machine), the gateway
(`skot-milter serve` with policies/skot.toml and a SQLite audit store; with --postgres a
PostgreSQL one as well), and Postfix's smtp-sink when installed, and drives each with the same
load (bench/loadgen.py) over the same message mix, interleaving the targets so the ratio holds
on a noisy machine. The size classes are what their names say and every mix prints its
composition. Prints messages/s, p50/p99 latency, peak RSS, the ratios, and the CPU the load
generator and the sink used (percent of one core): the load generator is one asyncio thread, so
near 100 % it, not the target, would set the pace; the loadgen -> smtp-sink row is its ceiling.
Asserts nothing. Needs the test extras (attachments are made with python-docx, reportlab and
Pillow). bench/peers.py compares with rspamd behind a real Postfix.

--memory: 50 concurrent 10 MB messages, all held in flight at once (every session sends its
whole body and holds the final dot until all have), and prints how many were.

--source: only the smtp-source runs (Postfix's C client, 2 KB and 50 KB text, 20 sessions, and
2 KB with one connection per message, the way Postfix's before-queue proxy connects),
with each target's CPU per message (user + system of its processes, from /proc): on a shared,
noisy machine the CPU per message moves far less than msg/s, so compare that. --before REV
adds the gateway as it was at git revision REV (gateway-before), interleaved in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
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

from common import export, free_port  # noqa: E402
from loadgen import Message, Result, in_flight, run  # noqa: E402

from tests.fixtures import files  # noqa: E402

DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"



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
    small = files.mail_with([], body=rng_text)  # 2.0 KB text
    para = ["Verslag van de vergadering over het rooster en de activiteiten. " * 8] * 120
    medium = files.mail_with([("verslag.docx", files.docx(para), DOCX)])  # 50 KB docx
    # 1.0 MB: a PDF and a photo (random pixels: JPEG cannot shrink them)
    large = files.mail_with([("brief.pdf", files.pdf(["Regel tekst"] * 40), "application/pdf"),
                             ("foto.jpg", files.photo(1150, 740), "image/jpeg")])
    bad = [("me@gmail.example", files.mail_with([], frm="me@gmail.example", body=rng_text))]

    def mix(good: list[bytes]) -> list[Message]:
        # 10 % violations (B1: another domain), the rest from the school address
        return [("someone@school.example", good[i % len(good)]) for i in range(9)] + bad

    return {"2KB": mix([small]), "50KB": mix([medium]), "1MB": mix([large]),
            "mix": mix([small, small, medium, large])}


def size_name(n: int) -> str:
    return f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 1024:.1f} KiB"


def composition(mix: list[Message]) -> str:
    """What a mix is made of, from the bytes themselves (each message equally likely)."""
    counts: dict[tuple[int, bool], int] = {}
    for sender, raw in mix:
        key = (len(raw), sender.endswith("@school.example"))
        counts[key] = counts.get(key, 0) + 1
    parts = [f"{100 * c // len(mix)} % {size_name(size)}"
             + ("" if good else " refused (B1: sender of another domain)")
             for (size, good), c in sorted(counts.items(), key=lambda kv: (not kv[0][1], kv[0][0]))]
    mean = sum(len(r) for _, r in mix) / len(mix)
    return ", ".join(parts) + f"; mean {size_name(int(mean))}"


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


def pss_kib(pids: list[int]) -> int:
    """Proportional set size of the trees now: shared pages counted once, not per process."""
    total = 0
    for p in [x for pid in pids for x in tree(pid)]:
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


class PeakSampler:
    """Samples a process tree's PSS every 50 ms in a thread; ``peak`` is the highest sum."""

    def __init__(self, pids: list[int]) -> None:
        self.pids, self.peak, self._stop = pids, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, pss_kib(self.pids))

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def smtp_source(tool: str, port: int, sessions: int, count: int, size: int,
                reuse: bool = True) -> Result:
    """Postfix's C load generator: ``count`` messages of ``size`` bytes over ``sessions``
    connections, several messages per connection (``reuse``) or one connection per message
    (as Postfix's before-queue proxy connects to the gateway); messages/s from the wall
    time."""
    start = time.monotonic()
    proc = subprocess.run([tool, *(["-d"] if reuse else []), "-s", str(sessions), "-m",
                           str(count), "-l", str(size),
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
    return (f"  {name:<12} {r.rate:9.1f} msg/s  p50 {r.pct(50):7.1f} ms  p99 {r.pct(99):7.1f} ms"
            f"  ok {r.ok:6d} refused {r.refused:5d} errors {r.errors:4d}"
            + (f"  peak RSS {rss / 1024:6.1f} MiB" if rss is not None else ""))


def own_cpu() -> float:
    """CPU seconds of this process so far (the load generator runs in it)."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def children_cpu() -> float:
    """CPU seconds of this process's finished children (each smtp-source run, once waited)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def memory(targets: dict[str, tuple[int, list[subprocess.Popen[bytes]]]], timeout: float) -> None:
    """50 concurrent 10 MB messages, all in flight at the same moment, per target."""
    big = files.mail_with([("archief.pdf", bytes(range(256)) * 29_000, "application/pdf")])
    print(f"memory: 50 sessions, one {size_name(len(big))} message each (a PDF, base64), "
          "every body sent and the final dots held until all 50 had been\n")
    for name, (port, plist) in targets.items():
        if name == "smtp-sink":
            continue
        pids = [p.pid for p in plist]
        with PeakSampler(pids) as sampler:
            r, held = asyncio.run(in_flight(port, "someone@school.example", big, 50,
                                            max(timeout, 60)))
        all_pids = [x for p in pids for x in tree(p)]
        print(line(name, r, rss_kib(all_pids)))
        print(f"  {'':<12} {held} of 50 messages in flight at once; peak PSS "
              f"{sampler.peak / 1024:6.1f} MiB (sampled every 50 ms; shared pages counted "
              f"once), {len(all_pids)} process(es)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=float, default=4.0, help="per run")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds per scenario")
    ap.add_argument("--postgres", action="store_true", help="also the PostgreSQL audit store")
    ap.add_argument("--quick", action="store_true", help="one scenario, short runs")
    ap.add_argument("--only", metavar="MIX,SESSIONS,PER_CONN", default="",
                    help="one scenario, e.g. 2KB,1,10 (mixes: 2KB 50KB 1MB mix)")
    ap.add_argument("--memory", action="store_true",
                    help="only: peak memory with 50 10 MB messages in flight at once")
    ap.add_argument("--source", action="store_true",
                    help="only the smtp-source runs, with CPU per message")
    ap.add_argument("--messages", type=int, default=0,
                    help="messages per smtp-source run (default 2000, 400 with --quick)")
    ap.add_argument("--before", metavar="REV",
                    help="also the gateway at git revision REV, or in the source tree at the "
                         "path REV (gateway-before)")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="skot-bench-"))
    procs: list[subprocess.Popen[bytes]] = []
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def spawn(cmd: list[str], port: int, root: Path = ROOT) -> subprocess.Popen[bytes]:
        p = subprocess.Popen(cmd, env={**env, "PYTHONPATH": str(root)}, cwd=root,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        procs.append(p)
        wait_port(port)
        return p

    workers = os.cpu_count() or 1

    try:
        smtp_sink = shutil.which("smtp-sink")
        user = ["-u", "postfix"] if os.geteuid() == 0 else []
        sink = free_port()
        if smtp_sink:  # the next hop: Postfix's C sink, so the next hop is not the limit
            spawn([smtp_sink, *user, f"127.0.0.1:{sink}", "256"], sink)
            sink_name = "Postfix's smtp-sink"
        else:
            spawn([sys.executable, str(ROOT / "bench" / "sink.py"), str(sink)], sink)
            sink_name = "bench/sink.py (install postfix for smtp-sink)"
        sink_pid = procs[-1].pid
        targets: dict[str, tuple[int, list[subprocess.Popen[bytes]]]] = {}
        baseline_cmd = [sys.executable, str(ROOT / "bench" / "baseline.py")]
        base = free_port()
        targets["baseline"] = (base, [spawn([*baseline_cmd, str(base), str(sink)], base)])
        if workers > 1:  # as many processes as the gateway's workers, on one port
            bn = free_port()
            targets[f"baseline-{workers}"] = (bn, [spawn([*baseline_cmd, str(bn), str(sink)], bn)
                                                   for _ in range(workers)])
        gw = free_port()
        cfg = gateway_config(tmp, gw, sink, f"sqlite:///{tmp}/audit.sqlite3", workers)
        targets["gateway"] = (gw, [spawn([sys.executable, "-m", "milter.cli", "serve",
                                          "--config", str(cfg)], gw)])
        if args.before:
            old = Path(args.before) if Path(args.before).is_dir() else \
                export(args.before, tmp / "before")
            gb = free_port()
            bcfg = gateway_config(tmp, gb, sink, f"sqlite:///{tmp}/audit-before.sqlite3",
                                  workers)
            targets["gateway-before"] = (gb, [spawn([sys.executable, "-m", "milter.cli",
                                                     "serve", "--config", str(bcfg)], gb, old)])
        if args.postgres:
            import psycopg

            name = f"skot_bench_{os.getpid()}"
            with psycopg.connect("postgresql://postgres@127.0.0.1/postgres",
                                 autocommit=True) as c:
                c.execute(f'DROP DATABASE IF EXISTS "{name}"')
                c.execute(f'CREATE DATABASE "{name}"')
            gp = free_port()
            pcfg = gateway_config(tmp, gp, sink, f"postgresql://postgres@127.0.0.1/{name}")
            targets["gateway-pg"] = (gp, [spawn([sys.executable, "-m", "milter.cli", "serve",
                                                 "--config", str(pcfg)], gp)])
        if smtp_sink:  # the load generator straight into a sink: its ceiling
            sp = free_port()
            targets["smtp-sink"] = (sp, [spawn([smtp_sink, *user, f"127.0.0.1:{sp}", "256"],
                                               sp)])

        all_mixes = mixes()
        scenarios = [("mix", 20, 1), ("2KB", 20, 10), ("50KB", 20, 10), ("1MB", 20, 2),
                     ("2KB", 1, 10), ("50KB", 1, 10), ("mix", 20, 10)]
        if args.quick:
            scenarios = [("mix", 20, 10)]
        if args.only:
            name, n, per = args.only.split(",")
            scenarios = [(name, int(n), int(per))]
        print(f"skot-milter benchmark: {args.rounds} interleaved rounds of {args.seconds:.0f} s"
              f" per target, loopback, {os.cpu_count()} cores, gateway {workers} worker(s); "
              f"next hop: {sink_name}\n")
        if args.memory:
            memory(targets, args.seconds)
            return
        if args.source:
            scenarios = []
        for name in dict.fromkeys(n for n, _, _ in scenarios):
            print(f"mix {name}: {composition(all_mixes[name])}")
        print()
        for mix_name, sessions, per_conn in scenarios:
            print(f"{mix_name}, {sessions} session(s), {per_conn} message(s) per connection")
            totals: dict[str, Result] = {}
            gen_cpu: dict[str, float] = {}
            sink_cpu: dict[str, float] = {}
            for _ in range(args.rounds):
                for name, (port, _plist) in targets.items():
                    cpu0, sink0 = own_cpu(), cpu_seconds([sink_pid])
                    r = asyncio.run(run(port, all_mixes[mix_name], sessions, per_conn,
                                        args.seconds))
                    gen_cpu[name] = gen_cpu.get(name, 0) + own_cpu() - cpu0
                    sink_cpu[name] = sink_cpu.get(name, 0) + cpu_seconds([sink_pid]) - sink0
                    t = totals.setdefault(name, Result())
                    t.sent += r.sent
                    t.ok += r.ok
                    t.refused += r.refused
                    t.errors += r.errors
                    t.latencies += r.latencies
                    t.seconds += r.seconds
            for name, r in totals.items():
                pids = [x for p in targets[name][1] for x in tree(p.pid)]
                gen = 100 * gen_cpu[name] / r.seconds
                print(line(name, r, rss_kib(pids)) + f"  loadgen {gen:3.0f}%"
                      + ("" if name == "smtp-sink" else
                         f" sink {100 * sink_cpu[name] / r.seconds:3.0f}%")
                      + ("  <- loadgen near its limit: a lower bound" if gen >= 70 else ""))
            b = totals["baseline"]
            for name in (f"baseline-{workers}", "gateway", "gateway-before", "gateway-pg"):
                if name in totals:
                    g = totals[name]
                    print(f"  ratio {name}/baseline (1 process): throughput "
                          f"{g.rate / b.rate:.2f}x, p50 {g.pct(50) - b.pct(50):+.1f} ms, p99 "
                          f"{g.pct(99) - b.pct(99):+.1f} ms")
            bn = totals.get(f"baseline-{workers}")
            if bn is not None:
                for name in ("gateway", "gateway-before", "gateway-pg"):
                    if name in totals:
                        g = totals[name]
                        print(f"  ratio {name}/baseline-{workers} (same process count): "
                              f"throughput {g.rate / bn.rate:.2f}x, "
                              f"p99 {g.pct(99) - bn.pct(99):+.1f} ms")
            if "gateway-pg" in totals:
                print(f"  ratio PostgreSQL/SQLite: "
                      f"{totals['gateway-pg'].rate / totals['gateway'].rate:.2f}x")
            if "smtp-sink" in totals:
                print(f"  ratio gateway/smtp-sink (loadgen straight into Postfix's sink): "
                      f"{totals['gateway'].rate / totals['smtp-sink'].rate:.3f}x (flattering "
                      "when the loadgen is at its limit on smtp-sink: see the smtp-source ratio)")
            print("  (loadgen: CPU of this process, one asyncio thread, in % of one core; near "
                  "100 % it would be the limit. sink: the next hop's CPU.)")
            print()
        source = shutil.which("smtp-source")
        if source and not args.only:
            count = args.messages or (400 if args.quick else 2000)
            for label, size, reuse in (("2KB", 2048, True), ("50KB", 51200, True),
                                       ("2KB", 2048, False)):
                print(f"smtp-source (Postfix's C client), {label} plain text, 20 sessions, "
                      f"{count} messages, " + ("several per connection" if reuse else
                                              "one connection per message (as from Postfix's "
                                              "before-queue proxy)"))
                res: dict[str, Result] = {}
                cpu: dict[str, float] = {}
                src_cpu: dict[str, float] = {}
                sink_cpu = {}
                for _ in range(args.rounds):
                    for name, (port, plist) in targets.items():
                        pids = [x for p in plist for x in tree(p.pid)]
                        c0, s0, k0 = cpu_seconds(pids), children_cpu(), cpu_seconds([sink_pid])
                        r = smtp_source(source, port, 20, count, size, reuse)
                        cpu[name] = cpu.get(name, 0.0) + cpu_seconds(pids) - c0
                        src_cpu[name] = src_cpu.get(name, 0.0) + children_cpu() - s0
                        sink_cpu[name] = sink_cpu.get(name, 0.0) + cpu_seconds([sink_pid]) - k0
                        t = res.setdefault(name, Result())
                        t.sent, t.ok, t.errors = t.sent + r.sent, t.ok + r.ok, t.errors + r.errors
                        t.seconds += r.seconds
                for name, r in res.items():
                    print(f"  {name:<14} {r.rate:9.1f} msg/s  CPU {1000 * cpu[name] / r.sent:5.2f}"
                          f" ms/msg  smtp-source {100 * src_cpu[name] / r.seconds:3.0f}%"
                          + ("" if name == "smtp-sink" else
                             f" next hop {100 * sink_cpu[name] / r.seconds:3.0f}%")
                          + ("" if not r.errors else "  (smtp-source failed)"))
                print("  (CPU: the target's processes per message; smtp-source and the next hop "
                      "in % of one core: far from 100 %, neither sets the pace)")
                if "gateway-before" in res:
                    g, b = res["gateway"], res["gateway-before"]
                    print(f"  ratio gateway/gateway-before: throughput {g.rate / b.rate:.2f}x, "
                          f"CPU per message {cpu['gateway'] / cpu['gateway-before']:.2f}x")
                for name in (f"baseline-{workers}", "gateway", "gateway-pg"):
                    if name in res:
                        print(f"  ratio {name}/baseline (1 process): throughput "
                              f"{res[name].rate / res['baseline'].rate:.2f}x")
                if f"baseline-{workers}" in res:
                    print(f"  ratio gateway/baseline-{workers} (same process count): "
                          f"{res['gateway'].rate / res[f'baseline-{workers}'].rate:.2f}x")
                if "smtp-sink" in res:
                    print(f"  ratio gateway/smtp-sink: "
                          f"{res['gateway'].rate / res['smtp-sink'].rate:.3f}x")
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
