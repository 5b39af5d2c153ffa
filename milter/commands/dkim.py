"""``skot-milter dkim keygen DOMAIN SELECTOR``: a key pair and the DNS TXT record to publish."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from milter.commands import add_config


def register(sub: Any) -> None:
    p = sub.add_parser("dkim", help="DKIM signing keys")
    dsub = p.add_subparsers(dest="dkim_command", metavar="SUBCOMMAND", required=True)
    gen = dsub.add_parser("keygen", help="write a key pair and print the DNS TXT record")
    add_config(gen)
    gen.add_argument("domain", help="the mail domain the key signs for, e.g. school.example")
    gen.add_argument("selector", help="the DNS selector, e.g. 2026 (the TXT record is "
                     "SELECTOR._domainkey.DOMAIN)")
    gen.add_argument("--type", choices=("rsa", "ed25519"), default="rsa",
                     help="rsa (2048 bits, default) or ed25519")
    gen.add_argument("--dir", default=".", help="where to write the private key")
    gen.set_defaults(func=run_keygen)


def run_keygen(args: argparse.Namespace) -> int:
    from milter.dkimsign import keygen
    from milter.service_user import hand_over

    path, record = keygen(args.domain.lower(), args.selector, Path(args.dir), args.type)
    print(f"private key: {hand_over(path)}; name it in [[dkim.keys]] key = ...")
    print("publish this DNS record:")
    # TXT strings are limited to 255 octets: split for zone files
    chunks = " ".join(f'"{record[i:i + 250]}"' for i in range(0, len(record), 250))
    print(f"{args.selector}._domainkey.{args.domain.lower()}. IN TXT ( {chunks} )")
    return 0
