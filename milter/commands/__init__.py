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


def add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", default=None,
                        help="config file (default: the bundled defaults)")


def load_config(args: argparse.Namespace) -> Any:
    """The validated config for ``--config``; a bad one is exit 2 with its reason."""
    from milter import config as config_mod

    try:
        return config_mod.load(args.config)
    except ConfigError as exc:
        raise CommandError(str(exc)) from None


def load_runtime(args: argparse.Namespace) -> Any:
    """The runtime for ``--config``; a bad config is exit 2 with its one-line reason."""
    from milter.runtime import Runtime

    try:
        return Runtime.load(args.config)
    except ConfigError as exc:
        raise CommandError(str(exc)) from None


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, ensure_ascii=False, indent=2, default=str)
    sys.stdout.write("\n")
