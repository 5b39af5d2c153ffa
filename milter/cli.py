"""The ``skot-milter`` command line.

Subcommands live in ``milter.commands``: each module exposes ``register(subparsers)`` and is
found automatically, so a new command never edits this file. Exit codes: 0 success, 1 a check
failed, 2 usage or configuration error with a one-line reason on stderr.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence

from milter import __version__, commands
from milter.commands import CONFIG_HELP, CommandError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="skot-milter",
                                     description="SKOT mail gateway policy filter")
    parser.add_argument("--version", action="version", version=f"skot-milter {__version__}")
    parser.add_argument("--config", metavar="FILE", default=None, help=CONFIG_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda i: i.name):
        module = importlib.import_module(f"milter.commands.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except CommandError as exc:
        print(f"skot-milter: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # output piped into head & co.
        sys.stderr.close()
        return 0
    return code


if __name__ == "__main__":
    sys.exit(main())
