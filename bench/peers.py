"""skot-milter against its peer, behind the same Postfix: rspamd as a milter.

    python bench/peers.py [--rounds 3] [--messages 1500] [--sessions 20] [--workers 2]
                          [--classes 2KB,50KB,docx] [--paths plain,rspamd,milter,proxy]

What a school admin would compare: one private Postfix (its own config, queue and data
directories under a temporary directory, loopback high ports, never the system instance) with
one listener per path, every path relaying to the same smtp-sink:

    plain   smtp-source -> Postfix -> smtp-sink                       (Postfix alone)
    rspamd  smtp-source -> Postfix (+ rspamd milter) -> smtp-sink
    milter  smtp-source -> Postfix (+ skot milter) -> smtp-sink
    proxy   smtp-source -> Postfix -> skot before-queue proxy -> Postfix -> smtp-sink

and two floors, the same shapes with the gateway's work taken out (what any Python filter
pays for the language, asyncio and the protocol before it checks a thing):

    bare        smtp-source -> Postfix (+ bench/bare_milter.py) -> smtp-sink
    proxy-bare  smtp-source -> Postfix -> bench/baseline.py (bare aiosmtpd pass-through)
                -> Postfix -> smtp-sink

rspamd is Debian's package (installed with apt-get when missing), run privately: its own
top-level config, config/run/db/log directories under the temporary directory, one loopback
port, the proxy worker in milter mode scanning by itself (self-scan, no normal worker), every
module that needs the network or Redis switched off (RSPAMD_OFF below says which and why) and
DNS pointed at a closed loopback port so a lookup that slips through fails at once instead of
leaving the machine. skot runs `skot-milter serve` with the full policy (policies/skot.toml)
and a durable SQLite audit store, the same number of worker processes as rspamd's proxy
workers (--workers).

The load is Postfix's smtp-source (C, no pipelining), --sessions parallel sessions, several
messages per connection, the same pre-formatted message file for every path. Rounds are
interleaved (each round runs every class on every path, the path order rotated per round) so
a noisy machine hurts every path alike; the table gives the median of the rounds and the
spread (min-max). Filter CPU per message is the user+system time of the filter's processes
(rspamd's main and workers; skot's supervisor and workers), read from /proc before and after
each run. Asserts nothing; prints.

Why the load generator and the sink are not the bottleneck: they are the same for every path,
the "Postfix alone" row is what they sustain with Postfix in between, and the script prints,
per run, the CPU smtp-source and smtp-sink used (percent of one core) and the machine's idle
share, so a saturated source or sink would show.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import export, free_port  # noqa: E402

DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
TICK = os.sysconf("SC_CLK_TCK")
SENDER, RECIPIENT = "someone@school.example", "ouder@example.org"

# rspamd modules switched off, and why. Everything else in Debian's default configuration
# stays on (regexp rules, chartable, mime_types, phishing, once_received, forged_recipients,
# milter_headers, force_actions, ...), so rspamd still parses and scores every message.
RSPAMD_OFF = {
    # DNS lookups
    "rbl": "DNS blocklists (also the SURBL/URIBL URL lists)",
    "surbl": "legacy alias of the URL DNS lists",
    "emails": "DNS blocklists of addresses",
    "spf": "TXT lookups of the sender domain",
    "dkim": "key lookups in DNS",
    "dmarc": "policy lookups in DNS (and Redis for reports)",
    "arc": "key lookups in DNS",
    "asn": "ASN lookups in DNS",
    "hfilter": "A/MX lookups of the HELO name and the sender domain",
    "mx_check": "MX lookups and connections (and Redis)",
    "whitelist": "judges SPF/DKIM/DMARC results (off above) with maps from maps.rspamd.com",
    "bimi": "HTTP fetches of logos and Redis",
    # not network, but no key exists for the bench domain: it would stat a missing key file
    # and log a warning for every outbound message (skot signs nothing here either)
    "dkim_signing": "no DKIM key configured (as skot: [dkim] keys empty)",
    # other network services
    "fuzzy_check": "UDP queries to rspamd.com's fuzzy storage",
    "rspamd_update": "fetches rule updates over HTTP",
    "multimap": "its default rules are freemail/disposable lists fetched from maps.rspamd.com",
    "mid": "a map fetched from maps.rspamd.com",
    "dcc": "external DCC service",
    "antivirus": "external scanner daemons",
    "external_services": "external scanner daemons",
    "spamassassin": "external SpamAssassin rules (off by default)",
    "p0f": "external p0f daemon (and Redis)",
    "clickhouse": "external ClickHouse database",
    "elastic": "external Elasticsearch",
    "metadata_exporter": "pushes to external services",
    "metric_exporter": "pushes to Graphite",
    # Redis
    "greylist": "Redis",
    "ratelimit": "Redis",
    "replies": "Redis",
    "neural": "Redis",
    "reputation": "Redis",
    "history_redis": "Redis",
    "url_redirector": "Redis and HTTP requests to the redirect targets",
    "dynamic_conf": "Redis",
}
# Keys replaced so that modules which stay on read their maps from Debian's local files
# instead of fetching them from maps.rspamd.com.
RSPAMD_OVERRIDES = {
    "mime_types.conf": 'file = ["${CONFDIR}/maps.d/mime_types.inc"];\n',
    "phishing.conf": (
        "phishtank_enabled = false;  # Redis\nopenphish_enabled = false;  # HTTP\n"
        'exceptions = { REDIRECTOR_FALSE = ["${CONFDIR}/maps.d/redirectors.inc"]; };\n'),
}



def wait_port(port: int, timeout: float = 30, proc: subprocess.Popen[bytes] | None = None
              ) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.1)
    raise RuntimeError(f"port {port} did not open")


# -- tools ---------------------------------------------------------------------------------

def ensure_packages() -> None:
    """Install Postfix and rspamd from Debian's archive when they are missing.

    Why each step: the comparison needs the very programs an admin would run (Debian's, not a
    build of ours); apt-get update only when the package lists are empty (a fresh container);
    policy-rc.d answering 101 while installing, because the packages would otherwise start the
    system's own rspamd/Postfix on the standard ports: we run private instances only.
    """
    missing = [pkg for pkg, tool in (("postfix", "/usr/sbin/smtp-source"),
                                     ("rspamd", "/usr/bin/rspamd")) if not Path(tool).exists()]
    if not missing:
        return
    if os.geteuid() != 0:
        sys.exit(f"missing {', '.join(missing)}: run as root, or apt-get install them")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if not any(Path("/var/lib/apt/lists").glob("*Packages*")):
        subprocess.run(["apt-get", "update", "-q"], check=True, env=env)
    guard = Path("/usr/sbin/policy-rc.d")
    made_guard = not guard.exists()
    if made_guard:
        guard.write_text("#!/bin/sh\nexit 101\n")
        guard.chmod(0o755)
    try:
        if "postfix" in missing:  # no debconf questions: a local-only, unconfigured MTA
            subprocess.run(["debconf-set-selections"], input=b"postfix postfix/main_mailer_type "
                           b"select No configuration\n", env=env, check=False)
        subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing],
                       check=True, env=env)
    finally:
        if made_guard:
            guard.unlink()


# -- processes and CPU -----------------------------------------------------------------------

def tree(pid: int) -> list[int]:
    """The process and its descendants."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            todo += [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
        except OSError:
            continue
    return out


def cpu_seconds(pids: list[int], which: slice = slice(11, 15)) -> float:
    """user + system time of the processes (and of their reaped children); ``which``
    picks the /proc/PID/stat fields (default utime stime cutime cstime; 12:13 is stime)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(x) for x in fields[which])
    return total / TICK


def machine_idle() -> tuple[float, float]:
    """(idle+iowait, total) jiffies of all CPUs, for the idle share of a run."""
    parts = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return parts[3] + parts[4], sum(parts)


# -- the messages ----------------------------------------------------------------------------

def message_files(tmp: Path) -> dict[str, Path]:
    """The three classes, as LF-terminated files for smtp-source -F (it appends CRLF)."""
    from tests.fixtures import files

    prose = ("Beste ouders, hierbij de informatie over de activiteiten van deze week. Op "
             "dinsdag is er een studiedag en vrijdag sluiten we af met een voorstelling. ")
    out: dict[str, Path] = {}

    def text_mail(size: int) -> bytes:
        body = ""
        while len(body) < size - 600:
            body += prose + "\n"
        return files.mail_with([], body=body)

    def docx_mail(size: int) -> bytes:
        para = "Verslag van de vergadering over het rooster en de activiteiten. " * 8
        lo, hi = 1, 4000
        while lo < hi:  # the most paragraphs whose mail stays within the size
            mid = (lo + hi + 1) // 2
            if len(files.mail_with([("verslag.docx", files.docx([para] * mid), DOCX)])) <= size:
                lo = mid
            else:
                hi = mid - 1
        return files.mail_with([("verslag.docx", files.docx([para] * lo), DOCX)])

    for name, raw in (("2KB", text_mail(2048)), ("50KB", text_mail(51200)),
                      ("docx", docx_mail(51200))):
        path = tmp / f"{name}.eml"
        path.write_bytes(raw.replace(b"\r\n", b"\n"))
        out[name] = path
    return out


CLASS_TITLES = {"2KB": "2 KB text", "50KB": "50 KB text", "docx": "50 KB docx"}


# -- the services ----------------------------------------------------------------------------

class Services:
    def __init__(self, tmp: Path, workers: int) -> None:
        self.tmp, self.workers = tmp, workers
        self.procs: list[subprocess.Popen[bytes]] = []
        self.postfix_conf: Path | None = None
        self.filters: dict[str, list[int]] = {}  # path -> pids of the filter's top processes
        self.ports: dict[str, int] = {}
        self.sink_pid = 0
        self.rspamd_log_level = "warning"  # "info" logs every scan with its symbols

    def spawn(self, cmd: list[str], port: int, timeout: float = 30, **kw: object
              ) -> subprocess.Popen[bytes]:
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw)  # type: ignore[call-overload]
        self.procs.append(p)
        try:
            wait_port(port, timeout, proc=p)
        except RuntimeError:
            done = p.poll() is not None and p.stderr is not None
            err = p.stderr.read().decode(errors="replace") if done and p.stderr else ""
            raise RuntimeError(f"{cmd[0]} did not listen on {port}: {err[-2000:]}") from None
        return p

    def sink(self) -> int:
        port = free_port()
        user = ["-u", "postfix"] if os.geteuid() == 0 else []
        # smtp-sink: Postfix's C sink, accepts and discards; 256 = listen backlog
        p = self.spawn(["/usr/sbin/smtp-sink", *user, f"127.0.0.1:{port}", "256"], port)
        self.sink_pid = p.pid
        return port

    def rspamd(self) -> int:
        port = free_port()
        base = self.tmp / "rspamd"
        dirs = {n: base / n for n in ("local", "run", "db", "log")}
        for d in dirs.values():
            d.mkdir(parents=True)
        (dirs["local"] / "local.d").mkdir()
        (dirs["local"] / "override.d").mkdir()
        for module in RSPAMD_OFF:
            (dirs["local"] / "local.d" / f"{module}.conf").write_text("enabled = false;\n")
        for name, text in RSPAMD_OVERRIDES.items():
            (dirs["local"] / "override.d" / name).write_text(text)
        closed = free_port()  # nothing listens: a DNS query fails at once, stays local
        (dirs["local"] / "local.d" / "options.inc").write_text(
            f'dns {{ nameserver = ["127.0.0.1:{closed}"]; timeout = 0.2s; retransmits = 1; }}\n')
        conf = base / "rspamd.conf"
        # Debian's rspamd.conf minus its fixed ports and workers, and minus statistic.conf
        # (the Bayes classifier's only backend is Redis).
        conf.write_text(f"""
lua = "$RULESDIR/rspamd.lua";
.include "$CONFDIR/metrics.conf"
.include "$CONFDIR/actions.conf"
.include "$CONFDIR/groups.conf"
.include "$CONFDIR/composites.conf"
.include "$CONFDIR/modules.conf"
.include "$CONFDIR/settings.conf"
modules {{
  path = "${{PLUGINSDIR}}";
  fallback_path = "${{SHAREDIR}}/lua";
}}
options {{
  pidfile = "$RUNDIR/rspamd.pid";
  .include "$CONFDIR/options.inc"
  .include(try=true; priority=1,duplicate=merge) "$LOCAL_CONFDIR/local.d/options.inc"
}}
logging {{
  type = "file";
  filename = "$LOGDIR/rspamd.log";
  level = "{self.rspamd_log_level}";
}}
worker "controller" {{  # as in a default install: maps, stats, periodic scripts
  bind_socket = "127.0.0.1:{free_port()}";
  .include "$CONFDIR/worker-controller.inc"
}}
worker "rspamd_proxy" {{
  bind_socket = "127.0.0.1:{port}";
  milter = yes;
  timeout = 120s;
  count = {self.workers};
  upstream "local" {{
    default = yes;
    self_scan = yes;
  }}
  discard_on_reject = false;
  quarantine_on_reject = false;
  spam_header = "X-Spam";
  reject_message = "Spam message rejected";
}}
""")
        user: list[str] = []
        if os.geteuid() == 0:
            subprocess.run(["chown", "-R", "_rspamd:_rspamd", str(base)], check=True)
            user = ["-u", "_rspamd", "-g", "_rspamd"]
        self.rspamd_log = dirs["log"] / "rspamd.log"
        p = self.spawn(["/usr/bin/rspamd", "-f", *user, "-c", str(conf),
                        f"--var=LOCAL_CONFDIR={dirs['local']}", f"--var=RUNDIR={dirs['run']}",
                        f"--var=DBDIR={dirs['db']}", f"--var=LOGDIR={dirs['log']}"], port,
                       timeout=180)  # it compiles its rules first: slow on a busy machine
        self.filters["rspamd"] = [p.pid]
        return port

    def bare_milter(self) -> int:
        """The milter floor (bench/bare_milter.py), as many processes as skot's workers."""
        port = free_port()
        p = self.spawn([sys.executable, str(ROOT / "bench" / "bare_milter.py"), str(port),
                        str(self.workers)], port)
        self.filters["bare"] = [p.pid]
        time.sleep(0.5)  # the forked workers
        return port

    def bare_proxy(self, next_hop: int) -> int:
        """The proxy floor (bench/baseline.py), one process per skot worker on one port."""
        port = free_port()
        cmd = [sys.executable, str(ROOT / "bench" / "baseline.py"), str(port), str(next_hop)]
        self.filters["proxy-bare"] = [self.spawn(cmd, port).pid]
        for _ in range(self.workers - 1):
            p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            self.procs.append(p)
            assert p.stdout is not None and p.stdout.readline().strip() == b"ready"
            self.filters["proxy-bare"].append(p.pid)
        return port

    def skot(self, name: str, listen: str, milter: str, next_hop: str, root: Path = ROOT
             ) -> int:
        d = self.tmp / name
        d.mkdir()
        shutil.copy(ROOT / "deploy" / "default" / "staff.csv", d / "staff.csv")
        cfg = d / "skot-milter.toml"
        cfg.write_text(f"""
[gateway]
listen = "{listen}"
next_hop = "{next_hop}"
hostname = "relay.school.example"
node = "bench-{name}"
internal_networks = ["127.0.0.0/8"]
xforward_from = ["127.0.0.1/32"]
max_message_size = 67108864
max_connections_per_ip = 500
workers = {self.workers}
policy = "{root / 'policies' / 'skot.toml'}"
[school]
domains = ["school.example"]
postmaster = "postmaster@school.example"
[directory]
csv = "staff.csv"
[audit]
url = "sqlite:///{d}/audit.sqlite3"
[notices]
enabled = false
[dns]
authenticate = false
[logging]
level = "warning"
[milter]
listen = "{milter}"
""")
        port = int((milter or listen).rsplit(":", 1)[1])
        env = {**os.environ, "PYTHONPATH": str(root)}  # this tree's code, not the venv's
        p = self.spawn([sys.executable, "-m", "milter.cli", "serve", "--config", str(cfg)], port,
                       env=env, cwd=root)
        self.filters[name] = [p.pid]
        # wait for every worker, not just the first one, to be up
        time.sleep(1.0)
        return port

    def postfix(self, relay: int, filters: dict[str, str], reinject: int) -> None:
        """One listener per path; ``filters``: path -> its smtpd option (milter or proxy)."""
        from tests.postfix.conftest import _no_chroot

        d = self.tmp / "postfix"
        conf, queue, data = d / "c", d / "q", d / "d"
        for x in (conf, queue, data):
            x.mkdir(parents=True)
        d.chmod(0o755)
        shutil.chown(data, "postfix")
        milter_cf = (ROOT / "deploy" / "postfix" / "main.cf.milter").read_text()
        milter_cf = re.sub(r"(?m)^smtpd_milters\s*=.*$", "", milter_cf)  # per listener below
        (conf / "main.cf").write_text(f"""
compatibility_level = 3.6
queue_directory = {queue}
data_directory = {data}
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = mx.school.example
mydestination =
mynetworks = 127.0.0.0/8
relayhost = [127.0.0.1]:{relay}
maillog_file = {d}/maillog
maillog_file_prefixes = {d}
smtputf8_enable = no
smtpd_relay_restrictions = permit_mynetworks, reject
biff = no
delay_warning_time = 0
notify_classes =
{milter_cf}
{(ROOT / "deploy" / "postfix" / "main.cf.proxy").read_text()}
""")
        listeners = ""
        for name, extra in {"plain": "", **filters}.items():
            self.ports[name] = free_port()
            listeners += f"127.0.0.1:{self.ports[name]} inet n - n - - smtpd {extra}\n"
        # the re-injection listener of deploy/postfix/master.cf.proxy (no filtering again)
        master_proxy = (ROOT / "deploy" / "postfix" / "master.cf.proxy").read_text()
        listener = master_proxy[re.search(r"(?m)^127\.0\.0\.1:10026\s", master_proxy)
                                .start():]  # type: ignore[union-attr]
        listeners += listener.replace("127.0.0.1:10026", f"127.0.0.1:{reinject}")
        base = Path("/etc/postfix/master.cf").read_text()
        base = re.sub(r"(?m)^smtp\s+inet\s.*$", "# (port 25 not used)", base)
        (conf / "master.cf").write_text(_no_chroot(base) + "\n" + listeners)
        self.postfix_conf, self.postfix_queue = conf, queue
        r = subprocess.run(["/usr/sbin/postfix", "-c", str(conf), "start"], capture_output=True,
                           text=True)
        for port in self.ports.values():
            try:
                wait_port(port, 20)
            except RuntimeError:
                raise RuntimeError(f"postfix did not start: {r.stderr}") from None

    def postfix_pids(self) -> list[int]:
        """Postfix's master and its live children; the CPU of the children it reaped is in
        the master's cutime/cstime, so the sum moves on smoothly as they come and go."""
        try:
            pid = int((self.postfix_queue / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return []
        return tree(pid)

    def queue_size(self) -> int:
        n = 0
        for sub in ("maildrop", "incoming", "active", "deferred", "hold"):
            q = self.postfix_queue / sub
            if q.exists():
                n += sum(1 for p in q.rglob("*") if p.is_file())
        return n

    def drain(self, timeout: float = 120) -> None:
        end = time.monotonic() + timeout
        while self.queue_size() and time.monotonic() < end:
            time.sleep(0.2)

    def stop(self) -> None:
        if self.postfix_conf is not None:
            subprocess.run(["/usr/sbin/postfix", "-c", str(self.postfix_conf), "stop"],
                           capture_output=True)
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()


# -- one run ---------------------------------------------------------------------------------

@dataclass
class Run:
    rate: float
    filter_ms: float | None
    filter_sys_ms: float
    postfix_ms: float   # Postfix's own CPU per message (all its processes)
    source_pct: float
    sink_pct: float
    idle_pct: float


@dataclass
class Cell:
    runs: list[Run] = field(default_factory=list)

    def med(self, attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in self.runs)


def one_run(svc: Services, path: str, eml: Path, sessions: int, count: int,
            profile: Path | None = None) -> Run:
    svc.drain()
    filt = [pid for top in svc.filters.get(path, []) for pid in tree(top)]
    spy = None
    if profile is not None and path in ("milter", "proxy"):
        # py-spy (pip install py-spy) samples the supervisor and its workers while they hold
        # the GIL (Python CPU time); collapsed stacks, one line per stack with its count
        spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record",
                                "--subprocesses", "--nonblocking", "--gil", "-r", "1000",
                                "-f", "raw",
                                "-o", str(profile / f"{path}-{eml.stem}.txt"),
                                "-p", str(svc.filters[path][0])],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)
    cpu0, sink0 = cpu_seconds(filt), cpu_seconds([svc.sink_pid])
    sys0 = cpu_seconds(filt, slice(12, 13))
    pf0 = cpu_seconds(svc.postfix_pids())
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    idle0, all0 = machine_idle()
    start = time.monotonic()
    proc = subprocess.run(["/usr/sbin/smtp-source", "-d", "-s", str(sessions), "-m", str(count),
                           "-f", SENDER, "-t", RECIPIENT, "-F", str(eml),
                           f"127.0.0.1:{svc.ports[path]}"], capture_output=True, timeout=900)
    wall = time.monotonic() - start
    idle1, all1 = machine_idle()
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    filt_cpu = cpu_seconds(filt) - cpu0 if filt else None
    filt_sys = cpu_seconds(filt, slice(12, 13)) - sys0
    pf_cpu = cpu_seconds(svc.postfix_pids()) - pf0
    sink_cpu = cpu_seconds([svc.sink_pid]) - sink0
    if spy is not None:
        spy.send_signal(2)  # SIGINT: py-spy writes its file and exits
        spy.wait(timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"smtp-source on {path} failed: {proc.stderr.decode()[-500:]}")
    src = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    return Run(rate=count / wall,
               filter_ms=None if filt_cpu is None else filt_cpu * 1000 / count,
               filter_sys_ms=filt_sys * 1000 / count,
               postfix_ms=pf_cpu * 1000 / count,
               source_pct=100 * src / wall,
               sink_pct=100 * sink_cpu / wall,
               idle_pct=100 * (idle1 - idle0) / max(1, all1 - all0))


PATH_TITLES = {"plain": "Postfix alone", "rspamd": "Postfix + rspamd milter",
               "milter": "Postfix + skot milter",
               "proxy": "Postfix → skot before-queue proxy → Postfix",
               "bare": "Postfix + bare Python milter (floor: no policy, no audit)",
               "proxy-bare": "Postfix → bare aiosmtpd proxy → Postfix (floor)"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    ap.add_argument("--messages", type=int, default=1500, help="messages per run")
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--workers", type=int, default=2,
                    help="rspamd proxy workers = skot worker processes")
    ap.add_argument("--classes", default="2KB,50KB,docx")
    ap.add_argument("--paths", default="plain,rspamd,milter,proxy,bare,proxy-bare")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--rspamd-log", default="warning",
                    help="rspamd's log level (info: every scan and its symbols, with --keep)")
    ap.add_argument("--before", metavar="REV",
                    help="also skot at git revision REV (milter-before, proxy-before), same run")
    ap.add_argument("--profile", metavar="DIR", type=Path,
                    help="py-spy the skot paths (collapsed stacks per path and class in DIR)")
    args = ap.parse_args()
    classes = args.classes.split(",")
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    paths = args.paths.split(",")

    ensure_packages()
    tmp = Path(tempfile.mkdtemp(prefix="skot-peers-", dir="/tmp"))
    tmp.chmod(0o755)  # the postfix and _rspamd users must reach their directories
    svc = Services(tmp, args.workers)
    svc.rspamd_log_level = args.rspamd_log
    try:
        emls = message_files(tmp)
        relay = svc.sink()
        reinject = free_port()  # the proxies' next hop: Postfix's re-injection listener
        filters: dict[str, str] = {}
        if "rspamd" in paths:
            filters["rspamd"] = f"-o smtpd_milters=inet:127.0.0.1:{svc.rspamd()}"
        if "bare" in paths:
            filters["bare"] = f"-o smtpd_milters=inet:127.0.0.1:{svc.bare_milter()}"
        if "proxy-bare" in paths:
            filters["proxy-bare"] = f"-o smtpd_proxy_filter=127.0.0.1:{svc.bare_proxy(reinject)}"
        trees = {"": ROOT}
        if args.before:
            trees["-before"] = export(args.before, tmp / "before")
            paths += [f"{p}-before" for p in ("milter", "proxy") if p in paths]
        for suffix, root in trees.items():
            if f"milter{suffix}" in paths:
                port = svc.skot(f"milter{suffix}", "", f"127.0.0.1:{free_port()}",
                                f"smtp://127.0.0.1:{relay}", root)
                filters[f"milter{suffix}"] = f"-o smtpd_milters=inet:127.0.0.1:{port}"
            if f"proxy{suffix}" in paths:
                port = svc.skot(f"proxy{suffix}", f"127.0.0.1:{free_port()}", "",
                                f"smtp://127.0.0.1:{reinject}", root)
                filters[f"proxy{suffix}"] = f"-o smtpd_proxy_filter=127.0.0.1:{port}"
        svc.postfix(relay, filters, reinject)
        if args.before:
            PATH_TITLES["milter-before"] = f"Postfix + skot milter, before ({args.before})"
            PATH_TITLES["proxy-before"] = f"Postfix → skot proxy → Postfix, before ({args.before})"
        print(f"peers benchmark: {args.rounds} interleaved rounds, {args.messages} messages per "
              f"run, smtp-source -s {args.sessions} -d, {os.cpu_count()} cores, "
              f"{args.workers} filter workers; rspamd {rspamd_version()}, Postfix "
              f"{postfix_version()}")
        for c in classes:
            print(f"  {c}: {CLASS_TITLES[c]}, {emls[c].stat().st_size} bytes as sent "
                  f"({emls[c].name}, LF endings; smtp-source sends CRLF)")
        print(f"  rspamd modules off (network or Redis): {', '.join(sorted(RSPAMD_OFF))}")
        # warm-up: every path once, small, so no first-run start-up cost lands in a round
        for p in paths:
            one_run(svc, p, emls[classes[0]], min(args.sessions, 5), 50)
        cells: dict[tuple[str, str], Cell] = {}
        for rnd in range(args.rounds):
            order = paths[rnd % len(paths):] + paths[:rnd % len(paths)]
            for c in classes:
                for p in order:
                    r = one_run(svc, p, emls[c], args.sessions, args.messages, args.profile)
                    cells.setdefault((c, p), Cell()).runs.append(r)
                    print(f"  round {rnd + 1} {c:<5} {p:<13} {r.rate:7.1f} msg/s"
                          + (f"  filter {r.filter_ms:5.2f} ms/msg ({r.filter_sys_ms:4.2f} system)"
                             if r.filter_ms is not None else " " * 37)
                          + f"  Postfix {r.postfix_ms:4.2f} ms/msg"
                          + f"  smtp-source {r.source_pct:3.0f}% smtp-sink {r.sink_pct:3.0f}%"
                            f" of a core, machine idle {r.idle_pct:3.0f}%", flush=True)
        svc.drain()
        print()
        print_table(cells, classes, paths)
    finally:
        svc.stop()
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)



def rspamd_version() -> str:
    out = subprocess.run(["/usr/bin/rspamd", "-v"], capture_output=True, text=True).stdout
    return out.strip().split()[-1] if out.strip() else "?"


def postfix_version() -> str:
    out = subprocess.run(["/usr/sbin/postconf", "-d", "-h", "mail_version"], capture_output=True,
                         text=True).stdout
    return out.strip() or "?"


def print_table(cells: dict[tuple[str, str], Cell], classes: list[str], paths: list[str]) -> None:
    print("msg/s median [min-max] (filter CPU ms per message, median; Postfix's own CPU ms per "
          "message, median)")
    print("| path | " + " | ".join(CLASS_TITLES[c] for c in classes) + " |")
    print("| --- |" + " --- |" * len(classes))
    for p in paths:
        row = []
        for c in classes:
            cell = cells[(c, p)]
            rates = [r.rate for r in cell.runs]
            txt = f"{statistics.median(rates):.0f} [{min(rates):.0f}-{max(rates):.0f}]"
            if cell.runs[0].filter_ms is not None:
                txt += f" ({cell.med('filter_ms'):.2f})"
            txt += f" Postfix {cell.med('postfix_ms'):.2f}"
            row.append(txt)
        print(f"| {PATH_TITLES[p]} | " + " | ".join(row) + " |")
    print()
    ratios = [("skot milter / rspamd milter", "milter", "rspamd"),
              ("skot milter / the same before", "milter", "milter-before"),
              ("skot proxy / the same before", "proxy", "proxy-before"),
              ("skot milter before / rspamd", "milter-before", "rspamd"),
              ("skot proxy before / Postfix", "proxy-before", "plain"),
              ("skot proxy / Postfix alone", "proxy", "plain"),
              ("skot milter / Postfix alone", "milter", "plain"),
              ("rspamd milter / Postfix alone", "rspamd", "plain"),
              ("bare Python milter / rspamd", "bare", "rspamd"),
              ("skot milter / bare milter", "milter", "bare"),
              ("bare aiosmtpd proxy / Postfix", "proxy-bare", "plain"),
              ("skot proxy / bare proxy", "proxy", "proxy-bare")]
    print("ratios of the medians (throughput; filter CPU per message where both have it)")
    for title, a, b in ratios:
        if a not in paths or b not in paths:
            continue
        parts = []
        for c in classes:
            ca, cb = cells[(c, a)], cells[(c, b)]
            s = f"{ca.med('rate') / cb.med('rate'):.2f}x"
            if ca.runs[0].filter_ms is not None and cb.runs[0].filter_ms is not None:
                s += f" (CPU {ca.med('filter_ms') / cb.med('filter_ms'):.2f}x)"
            parts.append(f"{c} {s}")
        print(f"  {title:<31} " + ", ".join(parts))
    print()
    print("bottleneck check (medians over all runs): smtp-source "
          f"{statistics.median(r.source_pct for c in cells.values() for r in c.runs):.0f}% and "
          f"smtp-sink {statistics.median(r.sink_pct for c in cells.values() for r in c.runs):.0f}%"
          " of one core; the Postfix-alone row is what source and sink sustain through Postfix")


if __name__ == "__main__":
    main()
