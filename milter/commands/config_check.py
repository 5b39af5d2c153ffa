"""``skot-milter config check``: validate config, policy and directory; list every problem."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from milter import config as config_mod
from milter import directory as directory_mod
from milter import policy as policy_mod
from milter.commands import add_config


def register(sub: Any) -> None:
    p = sub.add_parser("config", help="configuration commands")
    csub = p.add_subparsers(dest="config_command", metavar="SUBCOMMAND", required=True)
    check = csub.add_parser("check", help="validate the config, the policy and the directory")
    add_config(check)
    check.set_defaults(func=run_check)


def problems(path: str | None) -> list[str]:
    """Every problem found, each naming file, key and what is allowed."""
    try:
        cfg_path = Path(path).resolve() if path else config_mod.DEFAULT_CONFIG
        data = config_mod.read_toml(cfg_path)
    except config_mod.ConfigError as exc:
        return [str(exc)]
    errors = [str(e) for e in config_mod.iter_errors(data, cfg_path)]
    if errors:
        return errors
    cfg = config_mod.validate(data, cfg_path)
    try:
        errors += [str(e) for e in policy_mod.iter_errors(config_mod.read_toml(cfg.policy_path),
                                                          cfg.policy_path)]
    except config_mod.ConfigError as exc:
        errors.append(str(exc))
    try:
        directory_mod.load(cfg.directory_path)
    except directory_mod.DirectoryError as exc:
        errors.append(str(exc))
    for extra in EXTRA_CHECKS:
        errors += extra(cfg)
    return errors


def _notice_templates(cfg: config_mod.Config) -> list[str]:
    from milter.notices import template_problems

    if not cfg.notices.enabled:
        return []
    # Overrides are named for rules (disabled ones too); a broken policy is reported above.
    rule_ids: set[str] | None = None
    try:
        rules = config_mod.read_toml(cfg.policy_path).get("rules")
        if isinstance(rules, dict):
            rule_ids = set(rules)
    except config_mod.ConfigError:
        pass
    return template_problems(cfg.notice_templates, rule_ids)


# Subsystems (notice templates, DKIM keys, ...) add checks of the form cfg -> [problem].
EXTRA_CHECKS: list[Any] = [_notice_templates]


def run_check(args: argparse.Namespace) -> int:
    errors = problems(args.config)
    for e in errors:
        print(e, file=sys.stderr)
    if errors:
        print(f"{len(errors)} problem(s) found", file=sys.stderr)
        return 1
    print("config ok")
    return 0
