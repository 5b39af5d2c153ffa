"""The account the gateway runs as (``skot-milter``, as in the systemd unit).

Admins run ``init``, ``audit keygen``, ``dkim keygen`` and ``config check`` as root; the service
then runs as ``skot-milter``. A secret written as root must be readable by the service (owner
root, group skot-milter, mode 0640), and a check run as root must look at files the way the
service will, not the way root does.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
from collections.abc import Callable
from pathlib import Path
from typing import Any

SERVICE_USER = "skot-milter"


def account(name: str = "") -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam(name or SERVICE_USER)
    except KeyError:
        return None


def hand_over(path: Path, directory: bool = False) -> str:
    """Make a file written by root readable by the service user and no one else (root:GROUP
    0640; a directory 0750). Run by anyone else, the file stays theirs (0600 / 0700).
    Returns how the file was left, for the command's output."""
    mode = 0o750 if directory else 0o640
    user = account()
    if os.geteuid() != 0 or user is None:
        os.chmod(path, 0o700 if directory else 0o600)
        return f"{path} (mode {0o700 if directory else 0o600:o}, owner {_owner(os.geteuid())})"
    os.chown(path, 0, user.pw_gid)
    os.chmod(path, mode)
    return f"{path} (mode {mode:o}, root:{grp.getgrgid(user.pw_gid).gr_name})"


def _owner(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def default_check_user() -> str:
    """Whom ``config check`` checks as: the service user when root runs it and that account
    exists (root can read what the service cannot), else whoever runs it."""
    if os.geteuid() == 0 and account() is not None:
        return SERVICE_USER
    return _owner(os.geteuid())


def run_as(name: str, fn: Callable[[], Any]) -> Any:
    """``fn()`` in a child process running as user ``name`` (its groups too), its JSON-able
    result returned here; the current process when that is already who we are."""
    user = account(name)
    if user is None:
        raise LookupError(f"no such user {name!r}")
    if user.pw_uid == os.geteuid():
        return fn()
    if os.geteuid() != 0:
        raise PermissionError(f"only root can check as another user ({name})")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop to the user, run, report, exit without cleanup handlers
        code = 0
        try:
            os.close(read_end)
            os.setgroups(os.getgrouplist(name, user.pw_gid))
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)
            payload = json.dumps({"ok": fn()})
        except BaseException as exc:  # reported to the parent, which raises it
            payload, code = json.dumps({"error": f"{type(exc).__name__}: {exc}"}), 1
        with os.fdopen(write_end, "w") as out:
            out.write(payload)
        os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end) as inp:
        data = inp.read()
    os.waitpid(pid, 0)
    result = json.loads(data) if data else {"error": "the check process died"}
    if "error" in result:
        raise RuntimeError(result["error"])
    return result["ok"]
