"""``skot-milter init DIR``: write a site (config, site policy, staff CSV template, audit key).

Everything the school changes lives in DIR (``/etc/skot-milter``), never in the installed
package or a checkout: the site policy ``extends`` the bundled one, so an update brings the
board's new rules and texts while the school's own choices stay. A file that exists is kept.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

SITE_POLICY = """\
# The school's policy: the bundled SKOT board policy, plus only what this school changes.
# skot-milter updates bring new rules and texts; this file is never touched by them.
#
# Modes: a rule without its own `mode` follows default_mode below. Start in "monitor" (rules
# are computed and audited, mail passes untouched), read `skot-milter audit list`, then set
# default_mode = "enforce" and `systemctl reload skot-milter`. To keep one rule in monitor
# (or enforce it early), give it its own mode:
#
#   [rules."A5.media-external"]
#   mode = "monitor"
#
# Change an action, a text or a parameter the same way; only the keys you give change:
#
#   [rules."FWD.auto-external"]
#   params = { allowed = ["lijst@vereniging.example"] }
#
#   [rules."A1.confidential-attachment"]
#   enabled = false
#
# The rules, their keys and parameters: the bundled policy, printed by
#   skot-milter policy show

[policy]
extends = "skot"
default_mode = "monitor"
"""

STAFF_TEMPLATE = """\
# Staff directory of the school; lines starting with # are ignored. One person per line.
# Columns: address;role;name;private_addresses;supervisor (optional: language;groups)
#   role: staff, pupil, parent or other
#   private_addresses: the staff member's own addresses (gmail, home), separated by spaces,
#     commas or semicolons inside the field (quote the field when it holds the separator)
#   supervisor: the school address of their supervisor (for notices)
# Or use the file Entra ID / Google Workspace "Download users" gives, as downloaded.
# Example:
# j.jansen@school.example;staff;Jan Jansen;jan.jansen@gmail.com;directeur@school.example
address;role;name;private_addresses;supervisor
"""


def register(sub: Any) -> None:
    p = sub.add_parser("init", help="write a site: config, site policy, staff CSV template "
                       "and audit key (existing files are kept)")
    p.add_argument("dir", metavar="DIR",
                   help="the site folder to write, e.g. /etc/skot-milter")
    p.add_argument("--domain", action="append", default=[], metavar="DOMAIN",
                   help="a school mail domain (repeat for several; subdomains such as the "
                        "pupils' are included); default: school.example, to edit")
    p.add_argument("--hostname", default="",
                   help="this relay's host name (default: relay.FIRST-DOMAIN)")
    p.add_argument("--postmaster", default="",
                   help="the address notices come from (default: postmaster@FIRST-DOMAIN)")
    p.add_argument("--state-dir", default="/var/lib/skot-milter", metavar="DIR",
                   help="where the gateway keeps its state, audit store and quarantine "
                        "(default: /var/lib/skot-milter, the systemd unit's StateDirectory)")
    p.set_defaults(func=run)


def site_config(example: str, domains: list[str], hostname: str, postmaster: str,
                state_dir: str) -> str:
    """The example config with the site's names and state folder."""
    text = re.sub(r'(?m)^domains = \[.*\]$',
                  "domains = [" + ", ".join(f'"{d}"' for d in domains) + "]", example)
    text = re.sub(r'(?m)^hostname = "[^"]*"', f'hostname = "{hostname}"', text)
    text = re.sub(r'(?m)^postmaster = "[^"]*"', f'postmaster = "{postmaster}"', text)
    text = re.sub(r'(?m)^name = "[^"]*"\n', "", text)  # the example school's name
    return text.replace("/var/lib/skot-milter", state_dir.rstrip("/"))


def run(args: argparse.Namespace) -> int:
    from milter.audit import checkpoint
    from milter.config import BUNDLED
    from milter.service_user import account, hand_over

    site = Path(args.dir).expanduser().absolute()
    domains = [d.lower().strip(".") for d in args.domain]
    if not domains:
        domains = ["school.example"]
        print("skot-milter: no --domain given: set [school] domains in the config",
              file=sys.stderr)
    first = domains[0]
    site.mkdir(parents=True, exist_ok=True)
    written: list[str] = []
    kept: list[str] = []

    def write(name: str, text: str, mode: int = 0o644) -> None:
        path = site / name
        if path.exists():
            kept.append(str(path))
            return
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        written.append(str(path))

    example = (BUNDLED / "example" / "skot-milter.toml").read_text(encoding="utf-8")
    write("skot-milter.toml", site_config(example, domains, args.hostname or f"relay.{first}",
                                          args.postmaster or f"postmaster@{first}",
                                          args.state_dir))
    write("policy.toml", SITE_POLICY)
    write("staff.csv", STAFF_TEMPLATE)
    if str(site / "staff.csv") in written:  # names and private addresses: the service only
        hand_over(site / "staff.csv")
    state = Path(args.state_dir)
    if not state.exists():  # the gateway's own (systemd's StateDirectory= makes it too)
        state.mkdir(parents=True, mode=0o750)
        user = account()
        if os.geteuid() == 0 and user is not None:
            os.chown(state, user.pw_uid, user.pw_gid)
        written.append(f"{state}/ (state)")
    keys = site / "keys"
    if (keys / "epoch-1.key").exists():
        kept.append(str(keys / "epoch-1.key"))
    else:
        keys.mkdir(exist_ok=True)
        hand_over(keys, directory=True)
        priv, pub = checkpoint.generate(keys, 1)
        written.append(hand_over(priv))
        written.append(str(pub))
        trusted = site / "trusted-keys"
        trusted.mkdir(exist_ok=True)
        if not (trusted / pub.name).exists():
            shutil.copyfile(pub, trusted / pub.name)
            written.append(str(trusted / pub.name))
    for path in written:
        print(f"wrote {path}")
    for path in kept:
        print(f"kept  {path} (exists)")
    user = account()
    print(f"next: edit {site / 'staff.csv'} and {site / 'skot-milter.toml'}, then run "
          f"skot-milter config check --config {site / 'skot-milter.toml'}"
          + ("" if user is not None or os.geteuid() != 0 else
             " (create the service user first: useradd --system skot-milter)"))
    return 0
