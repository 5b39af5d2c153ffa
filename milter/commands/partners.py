"""``skot-milter partners``: the approved partners of the policy, and the Postfix TLS policy
lines that make mail to them go only over TLS (``smtp_tls_policy_maps``).

Postfix looks its TLS policy up by the *next hop*, not by the recipient's domain: the domain
only when Postfix delivers to it by its MX records; otherwise the verbatim next hop of the
transport table, ``default_transport`` or ``relayhost``, brackets and ``:port`` included
(postconf(5), smtp_tls_policy_maps). A line ``jeugdzorg.example secure`` is never read when
mail to jeugdzorg.example goes to ``[smtp.provider.example]:587``. So, given Postfix's config
directory, these commands ask Postfix itself (``postconf``, ``postmap -q``) where mail to
each partner domain goes, and use that key.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from milter.commands import add_config, load_runtime

# Postfix TLS policy levels that refuse to deliver without encryption.
REQUIRED_LEVELS = ("encrypt", "dane-only", "fingerprint", "verify", "secure")


def register(sub: Any) -> None:
    p = sub.add_parser("partners", help="approved partners: list them, or print the Postfix "
                                        "TLS policy lines that require TLS to them")
    psub = p.add_subparsers(dest="partners_command", metavar="SUBCOMMAND", required=True)
    ls = psub.add_parser("list", help="partners, their legal ground, domains and rules")
    add_config(ls)
    ls.set_defaults(func=run_list)
    tls = psub.add_parser("tls-map", help="lines for Postfix's smtp_tls_policy_maps "
                                          "(deploy/postfix/main.cf.partners): 'DOMAIN secure', "
                                          "and the next hop Postfix really uses for it")
    add_config(tls)
    tls.add_argument("--level", choices=REQUIRED_LEVELS, default="secure",
                     help="Postfix TLS level for partners (default: secure, a verified "
                          "certificate)")
    tls.add_argument("--postfix-config", default=None, metavar="DIR",
                     help="Postfix's config directory, asked where mail to each partner "
                          "goes (default: gateway.postfix_config; '' = do not ask, domains "
                          "only)")
    tls.set_defaults(func=run_tls_map)


def partner_domains(policy: Any) -> list[str]:
    """Every domain mail to a partner goes to (its domains and its addresses' domains)."""
    out: dict[str, None] = {}
    for p in policy.partners:
        for d in p.domains:
            out[d] = None
        for a in p.addresses:
            out[a.rpartition("@")[2]] = None
    return list(out)


@dataclass(frozen=True)
class Route:
    """Where Postfix sends mail for a partner domain, and so what its TLS policy lookup
    asks for: ``key``. ``via``: "mx" (the domain itself), "transport", "default_transport"
    or "relayhost"."""

    domain: str
    key: str
    via: str


def _tool(name: str) -> str | None:
    return shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if Path(p).exists()), None)


def _split(value: str) -> list[str]:
    return [v for v in re.split(r"[\s,]+", value.strip()) if v]


def routes(domains: list[str], postfix_config: str) -> list[Route] | None:
    """Ask Postfix (``postconf -c DIR``, ``postmap -q``) where mail to each domain goes.
    None when it cannot tell (no main.cf there, no Postfix tools)."""
    postconf, postmap = _tool("postconf"), _tool("postmap")
    if not postfix_config or not (Path(postfix_config) / "main.cf").is_file() or \
            postconf is None or postmap is None:
        return None
    names = ("relayhost", "transport_maps", "default_transport")
    try:
        out = subprocess.run([postconf, "-c", postfix_config, "-h", "-x", *names],
                             capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    values = dict(zip(names, [*out.splitlines(), "", "", ""], strict=False))
    relayhost = values["relayhost"].strip()
    default_hop = values["default_transport"].strip().partition(":")[2].strip()
    maps = _split(values["transport_maps"])
    found: list[Route] = []
    for domain in domains:
        entry = _transport(postmap, postfix_config, maps, domain)
        transport, _, nexthop = (entry or ":").partition(":")
        if nexthop.strip():
            found += [Route(domain, hop, "transport") for hop in _split(nexthop)]
        elif transport.strip():  # "smtp:": the recipient domain, whatever relayhost says
            found.append(Route(domain, domain, "mx"))
        elif default_hop:
            found += [Route(domain, hop, "default_transport") for hop in _split(default_hop)]
        elif relayhost:
            found += [Route(domain, hop, "relayhost") for hop in _split(relayhost)]
        else:
            found.append(Route(domain, domain, "mx"))
    return found


def _transport(postmap: str, postfix_config: str, maps: list[str], domain: str) -> str | None:
    """The transport table's result for mail to ``domain`` (the domain, then its parents
    as ``.parent``, as trivial-rewrite looks them up), or None."""
    labels = domain.split(".")
    keys = [domain, *("." + ".".join(labels[i:]) for i in range(1, len(labels)))]
    for table in maps:
        for key in keys:
            result = subprocess.run([postmap, "-c", postfix_config, "-q", key, table],
                                    capture_output=True, text=True, timeout=30)
            if result.returncode == 0 and result.stdout.strip():
                return result.stdout.strip()
    return None


def _levels(map_file: Path) -> dict[str, str]:
    levels: dict[str, str] = {}
    for line in map_file.read_text().splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) >= 2:
            levels[words[0].lower()] = words[1].lower()
    return levels


def _level(levels: dict[str, str], key: str) -> str:
    """The policy Postfix finds for ``key``: verbatim; a bare domain also by its parents
    (``.parent``), as postconf(5) says."""
    key = key.lower()
    if key in levels or key.startswith("[") or ":" in key:
        return levels.get(key, "")
    labels = key.split(".")
    for i in range(1, len(labels)):
        parent = "." + ".".join(labels[i:])
        if parent in levels:
            return levels[parent]
    return ""


def missing_tls(policy: Any, map_file: Path, found: list[Route] | None = None) -> list[Route]:
    """Routes to partners without a TLS-requiring entry in a Postfix TLS policy map source
    (by the domain itself when Postfix's routing is not known)."""
    levels = _levels(map_file)
    routes_ = found if found is not None else [Route(d, d, "mx")
                                               for d in partner_domains(policy)]
    return [r for r in routes_ if _level(levels, r.key) not in REQUIRED_LEVELS]


def tls_problems(cfg: Any) -> list[str]:
    """``config check``: partners get confidential mail; Postfix must not send it in clear."""
    from milter import policy as policy_mod
    from milter.config import ConfigError

    try:
        policy = policy_mod.load(cfg.policy_path)
    except ConfigError:
        return []  # reported by the policy check itself
    if not policy.partners:
        return []
    domains = partner_domains(policy)
    if not cfg.gateway.tls_policy_map:
        return [f"{cfg.path}: gateway.tls_policy_map: not set, so nothing shows that mail to "
                f"the approved partners ({', '.join(domains)}) goes over TLS only; set it to "
                "the file behind Postfix's smtp_tls_policy_maps (`skot-milter partners "
                "tls-map` prints the lines)"]
    path = cfg.resolve(cfg.gateway.tls_policy_map)
    found = routes(domains, cfg.gateway.postfix_config)
    problems = []
    for r in found or []:
        if r.via == "relayhost":
            problems.append(
                f"{cfg.gateway.postfix_config}/main.cf: relayhost = {r.key}: Postfix sends "
                f"mail for partner domain {r.domain} through it, so its TLS policy is looked "
                f"up for '{r.key}', never for '{r.domain}', and TLS beyond {r.key} is up to "
                f"that relay; give the partner its own route (transport_maps: "
                f"'{r.domain} smtp:') or require TLS to the relay ('{r.key} secure')")
    try:
        missing = missing_tls(policy, path, found)
    except OSError as exc:
        return [f"{cfg.path}: gateway.tls_policy_map: cannot read {path}: {exc.strerror}"]
    for r in missing:
        where = "" if r.key == r.domain else \
            f" (Postfix sends its mail to {r.key}, via {r.via}: that is the lookup key)"
        problems.append(f"{path}: no TLS-requiring entry (secure/verify/encrypt) for partner "
                        f"domain {r.domain}{where} (add: '{r.key} secure')")
    return problems


def run_list(args: argparse.Namespace) -> int:
    policy = load_runtime(args).policy
    for p in policy.partners:
        where = ", ".join([*p.domains, *p.addresses])
        print(f"{p.name} ({p.ground}): {where}; rules {', '.join(p.rules)}")
    if not policy.partners:
        print("no approved partners in the policy")
    return 0


def run_tls_map(args: argparse.Namespace) -> int:
    """One line per partner domain, and, when Postfix sends that domain's mail to another
    next hop, a line for that key too (the one Postfix actually looks up)."""
    runtime = load_runtime(args)
    cfg, policy = runtime.config, runtime.policy
    domains = partner_domains(policy)
    where = cfg.gateway.postfix_config if args.postfix_config is None else args.postfix_config
    found = routes(domains, where) or []
    printed: set[str] = set()
    for domain in domains:
        print(f"{domain} {args.level}")
        printed.add(domain)
    for r in found:
        if r.key in printed:
            continue
        printed.add(r.key)
        if r.via == "relayhost":
            print(f"# {r.domain} goes through relayhost {r.key}: this line requires TLS to "
                  "the relay for ALL mail; beyond it, TLS is up to the relay")
            print(f"warning: mail to partner {r.domain} goes through relayhost {r.key}; "
                  f"give it its own route (transport_maps: '{r.domain} smtp:') for TLS to "
                  "the partner itself", file=sys.stderr)
        else:
            print(f"# {r.domain}: Postfix delivers to {r.key} ({r.via})")
        print(f"{r.key} {args.level}")
    return 0
