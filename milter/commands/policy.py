"""``skot-milter policy show``: the policy in force (bundled plus the site's changes), or the
bundled policy file itself, so an admin sees what a site policy can change."""

from __future__ import annotations

import argparse
import json
from typing import Any

from milter.commands import CommandError, add_config, load_config


def register(sub: Any) -> None:
    p = sub.add_parser("policy", help="the policy in force")
    psub = p.add_subparsers(dest="policy_command", metavar="SUBCOMMAND", required=True)
    show = psub.add_parser("show", help="each rule with its action, mode and parameters as "
                           "the gateway runs it (the bundled policy plus the site's changes)")
    add_config(show)
    show.add_argument("--bundled", action="store_true",
                      help="print the bundled policy file instead: every rule, key and text "
                           "a site policy can change")
    show.set_defaults(func=run_show)


def run_show(args: argparse.Namespace) -> int:
    from milter import policy as policy_mod
    from milter.config import BUNDLED_POLICY, ConfigError

    if args.bundled:
        print(BUNDLED_POLICY.read_text(encoding="utf-8"), end="")
        return 0
    cfg = load_config(args)
    try:
        pol = policy_mod.load(cfg.policy_path)
    except ConfigError as exc:
        raise CommandError(str(exc)) from None
    print(f"# {pol.name} ({cfg.policy_path})")
    for rid, rule in pol.rules.items():
        params = json.dumps(dict(rule.params), ensure_ascii=False, sort_keys=True)
        print(f"{rid:<28} {rule.action:<10} {rule.mode:<8} {params}")
    return 0
