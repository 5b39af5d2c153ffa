"""``skot-milter config check``: validate config, policy and directory; list every problem."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from milter import config as config_mod
from milter import directory as directory_mod
from milter import policy as policy_mod
from milter.commands import add_config
from milter.directory_source import ldap_settings


def register(sub: Any) -> None:
    p = sub.add_parser("config", help="configuration commands")
    csub = p.add_subparsers(dest="config_command", metavar="SUBCOMMAND", required=True)
    check = csub.add_parser("check", help="validate the config, the policy and the directory; "
                            "open every file the config names as the service user would")
    add_config(check)
    check.add_argument("--user", metavar="NAME", default=None,
                       help="check files as this user (default: skot-milter when run as "
                            "root and that user exists, else yourself)")
    check.set_defaults(func=run_check)


def problems(path: str | None, notes: list[str] | None = None) -> list[str]:
    """Every problem found, each naming file, key and what is allowed; ``notes`` gets what
    an admin should see besides (how many people of each role the directory has)."""
    try:
        cfg_path, _ = config_mod.locate(path)
        data = config_mod.read_toml(cfg_path)
    except config_mod.ConfigError as exc:
        return [str(exc)]
    errors = [str(e) for e in config_mod.iter_errors(data, cfg_path)]
    if errors:
        return errors
    cfg = config_mod.load(path)
    try:
        if cfg.policy_path.exists():  # a missing one is named by its key below
            errors += [str(e) for e in policy_mod.iter_errors(policy_mod.read(cfg.policy_path),
                                                              cfg.policy_path)]
    except config_mod.ConfigError as exc:
        errors.append(str(exc))
    notes = notes if notes is not None else []
    csv = cfg.directory_path if cfg.directory.source == "csv" else None
    if csv is None or os.access(csv, os.R_OK):  # a missing or unreadable CSV: named below
        errors += _directory(cfg, notes)
    if cfg.audit.retention_days == 0:
        notes.append(f"warning: {cfg.path}: audit.retention_days = 0 keeps personal data in "
                     "the audit store forever; a privacy officer expects a limit (default "
                     "730 days; records under a legal hold are kept regardless)")
    elif cfg.audit.purge_every_hours == 0:
        notes.append(f"warning: {cfg.path}: audit.purge_every_hours = 0: the gateway does not "
                     "purge by itself; run `skot-milter audit purge` from cron")
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
        return [str(e) for e in exc.problems]
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
        rules = policy_mod.read(cfg.policy_path).get("rules")
        if isinstance(rules, dict):
            rule_ids = set(rules)
    except config_mod.ConfigError:
        pass
    from milter.notices import text_set

    sets = {text_set(lang, cfg.notices.register_nl) for lang in ("nl", "en")}
    return template_problems(cfg.notice_templates, rule_ids, sorted(sets))


def _files(cfg: config_mod.Config) -> list[str]:
    from milter.preflight import file_problems

    return file_problems(cfg)


# Subsystems (notice templates, DKIM keys, ...) add checks of the form cfg -> [problem].
def _partner_tls(cfg: config_mod.Config) -> list[str]:
    from milter.commands.partners import tls_problems

    return tls_problems(cfg)



EXTRA_CHECKS: list[Any] = [_notice_templates, _files, _partner_tls]


def _preload() -> None:
    """Import what the checks use before dropping to the service user, who may not be able
    to read this Python's own library folder (a Python installed under /root, say)."""
    import codecs
    import importlib

    from milter.directory import address_problem
    from milter.rules import load_all

    codecs.lookup("utf-8-sig")
    address_problem("a@school.example")
    load_all()
    for name in ("ssl", "milter.preflight", "milter.notices", "milter.audit.checkpoint",
                 "milter.dkimsign", "milter.directory_source", "milter.directory_ldap",
                 "milter.service_user"):
        importlib.import_module(name)


def run_check(args: argparse.Namespace) -> int:
    from milter.service_user import default_check_user, run_as

    user = args.user or default_check_user()
    path, origin = config_mod.locate(args.config)
    print(f"skot-milter: config {path} ({origin}), files checked as user {user}",
          file=sys.stderr)

    def check() -> tuple[list[str], list[str]]:
        notes: list[str] = []
        return problems(args.config, notes), notes

    _preload()
    try:
        errors, notes = run_as(user, check)
    except (LookupError, PermissionError, RuntimeError) as exc:
        print(f"skot-milter: config check --user {user}: {exc}", file=sys.stderr)
        return 2
    for note in notes:
        print(note)
    for e in errors:
        print(e, file=sys.stderr)
    if errors:
        print(f"{len(errors)} problem(s) found", file=sys.stderr)
        return 1
    print("config ok")
    return 0
