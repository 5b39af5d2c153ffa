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
from milter.directory_source import ldap_settings


def register(sub: Any) -> None:
    p = sub.add_parser("config", help="configuration commands")
    csub = p.add_subparsers(dest="config_command", metavar="SUBCOMMAND", required=True)
    check = csub.add_parser("check", help="validate the config, the policy and the directory")
    add_config(check)
    check.set_defaults(func=run_check)


def problems(path: str | None, notes: list[str] | None = None) -> list[str]:
    """Every problem found, each naming file, key and what is allowed; ``notes`` gets what
    an admin should see besides (how many people of each role the directory has)."""
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
    errors += _directory(cfg, notes if notes is not None else [])
    if notes is not None:
        notes.append(_audit_key_note(cfg))
    for extra in EXTRA_CHECKS:
        errors += extra(cfg)
    return errors


def _directory(cfg: config_mod.Config, notes: list[str]) -> list[str]:
    """Read the directory as the gateway will (LDAP: bind and search, now) and count it."""
    from milter.directory_ldap import LdapError
    from milter.directory_source import DirectorySource, counts_text

    source = DirectorySource(cfg)
    try:
        directory = source.fetch()
    except directory_mod.DirectoryError as exc:
        return [str(exc)]
    except LdapError as exc:
        return [str(config_mod.ConfigError(cfg.path, exc.key, exc.message))]
    if source.kind == "ldap":
        where = "LDAP " + ", ".join(ldap_settings(cfg).urls) + " (bind ok)"
    elif cfg.directory_path is not None:
        where = str(cfg.directory_path)
    else:
        return []
    people = {id(p): p for p in directory.people.values()}.values()
    groups = ", ".join(f"{g} {sum(1 for p in people if g in p.groups)}"
                       for g in cfg.directory.groups)
    notes.append(f"directory {where}: {counts_text(directory)}"
                 + (f"; groups: {groups}" if groups else ""))
    return []


def _audit_key_note(cfg: config_mod.Config) -> str:
    """Where the checkpoint signing key is, and who must hold its public half."""
    if cfg.audit.checkpoint_key:
        key = cfg.resolve(cfg.audit.checkpoint_key)
        state = "configured"
    else:
        keys = sorted(cfg.audit_key_dir.glob("epoch-*.key"))
        key = keys[-1] if keys else cfg.audit_key_dir / "epoch-1.key"
        state = "exists" if keys else "created at first start"
    return (f"audit signing key: {key} ({state}); checkpoints in {cfg.checkpoint_dir}"
            + (f", copied to {', '.join(map(str, cfg.checkpoint_copies))}"
               if cfg.checkpoint_copies else " (no [audit] checkpoint_copy: set one off this "
                                             "box)")
            + f". Give {key.with_suffix('.pub')} to the auditors (audit.trusted_keys on their "
              "side): only they can tell our checkpoints from forged ones")


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
    notes: list[str] = []
    errors = problems(args.config, notes)
    for note in notes:
        print(note)
    for e in errors:
        print(e, file=sys.stderr)
    if errors:
        print(f"{len(errors)} problem(s) found", file=sys.stderr)
        return 1
    print("config ok")
    return 0
