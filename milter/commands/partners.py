"""``skot-milter partners``: the approved partners of the policy, and the Postfix TLS policy
lines that make mail to them go only over verified TLS (``smtp_tls_policy_maps``)."""

from __future__ import annotations

import argparse
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
                                          "(deploy/postfix/main.cf.partners): 'DOMAIN secure'")
    add_config(tls)
    tls.add_argument("--level", choices=REQUIRED_LEVELS, default="secure",
                     help="Postfix TLS level for partners (default: secure, a verified "
                          "certificate)")
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


def missing_tls(policy: Any, map_file: Path) -> list[str]:
    """Partner domains without a TLS-requiring entry in a Postfix TLS policy map source."""
    levels: dict[str, str] = {}
    for line in map_file.read_text().splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) >= 2:
            levels[words[0].lower().strip("[]")] = words[1].lower()
    return [d for d in partner_domains(policy)
            if levels.get(d, levels.get("." + d, "")) not in REQUIRED_LEVELS]


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
    try:
        missing = missing_tls(policy, path)
    except OSError as exc:
        return [f"{cfg.path}: gateway.tls_policy_map: cannot read {path}: {exc.strerror}"]
    return [f"{path}: no TLS-requiring entry (secure/verify/encrypt) for partner domain {d} "
            f"(add: '{d} secure')" for d in missing]


def run_list(args: argparse.Namespace) -> int:
    policy = load_runtime(args).policy
    for p in policy.partners:
        where = ", ".join([*p.domains, *p.addresses])
        print(f"{p.name} ({p.ground}): {where}; rules {', '.join(p.rules)}")
    if not policy.partners:
        print("no approved partners in the policy")
    return 0


def run_tls_map(args: argparse.Namespace) -> int:
    policy = load_runtime(args).policy
    for domain in partner_domains(policy):
        print(f"{domain} {args.level}")
    return 0
