"""Web users: ``name:role:argon2-hash`` per line, managed with ``skot-milter web adduser``."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

# statistics: the dashboard and the monthly summary only, without names (counts per rule,
# article and month), for a board member or works council that may not see persons.
# staff: a teacher releasing their own held message by the notice's link, nothing else; the
# login name is their school address, which must be the held message's sender.
ROLES = ("auditor", "admin", "statistics", "staff")
_HASHER = PasswordHasher()
_ADDRESS = re.compile(r"[^@\s:]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")


@dataclass(frozen=True)
class User:
    name: str
    role: str


def read(path: Path) -> dict[str, tuple[str, str]]:
    users: dict[str, tuple[str, str]] = {}
    if not path.exists():
        return users
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, role, digest = line.split(":", 2)
        users[name] = (role, digest)
    return users


def add(path: Path, name: str, role: str, password: str) -> None:
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    if not name or ":" in name or len(password) < 10:
        raise ValueError("a name without ':' and a password of at least 10 characters")
    if role == "staff" and not _ADDRESS.fullmatch(name):
        raise ValueError("a staff account is named after the person's school address "
                         "(juf@school.nl): they may release only mail they sent")
    users = read(path)
    users[name] = (role, _HASHER.hash(password))
    _write(path, users)


def set_password(path: Path, name: str, password: str) -> None:
    users = read(path)
    if name not in users:
        raise ValueError(f"no web user {name!r}")
    add(path, name, users[name][0], password)


def remove(path: Path, name: str) -> None:
    users = read(path)
    if users.pop(name, None) is None:
        raise ValueError(f"no web user {name!r}")
    _write(path, users)


def stamp(path: Path, name: str) -> str:
    """What a session was granted on: the role and the password hash. A session whose stamp
    no longer matches (user removed, role or password changed) is over."""
    entry = read(path).get(name)
    return f"{entry[0]}:{entry[1]}" if entry is not None else ""


def _write(path: Path, users: dict[str, tuple[str, str]]) -> None:
    text = "".join(f"{n}:{r}:{d}\n" for n, (r, d) in sorted(users.items()))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)


def authenticate(path: Path, name: str, password: str) -> User | None:
    entry = read(path).get(name)
    if entry is None:
        _HASHER.hash(password)  # same work for unknown names: no user enumeration by timing
        return None
    try:
        _HASHER.verify(entry[1], password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return None
    return User(name, entry[0])
