"""Subcommands of ``skot-milter``; each module has ``register(subparsers)``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from milter.config import ConfigError


class CommandError(Exception):
    """A one-line reason for stderr, and the exit code (2: usage or configuration)."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


CONFIG_HELP = ("config file (default: $SKOT_MILTER_CONFIG, else "
               "/etc/skot-milter/skot-milter.toml, else the bundled defaults)")


def add_config(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS: a --config given before the subcommand (``skot-milter --config X audit list``)
    # is not overwritten by this option's default.
    parser.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS, help=CONFIG_HELP)


def announce(cfg: Any) -> None:
    """Say on stderr which config a command reads: reading the wrong store silently is worse
    than a line of noise."""
    print(f"skot-milter: config {cfg.path} ({cfg.origin})", file=sys.stderr)


def load_config(args: argparse.Namespace) -> Any:
    """The validated config for ``--config`` (or as ``config.locate`` finds it), said on
    stderr; a bad one is exit 2 with its reason."""
    from milter import config as config_mod

    try:
        cfg = config_mod.load(getattr(args, "config", None))
    except ConfigError as exc:
        raise CommandError(str(exc)) from None
    announce(cfg)
    return cfg


def load_runtime(args: argparse.Namespace) -> Any:
    """The runtime for the config ``load_config`` finds; a bad config is exit 2."""
    from milter.runtime import Runtime

    cfg = load_config(args)
    try:
        return Runtime.from_config(cfg)
    except ConfigError as exc:
        raise CommandError(str(exc)) from None


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, ensure_ascii=False, indent=2, default=str)
    sys.stdout.write("\n")
