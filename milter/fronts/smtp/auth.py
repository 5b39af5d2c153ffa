"""SMTP AUTH for staff who submit directly to the gateway (only over TLS).

The users file (``gateway.auth_users``) has one ``login:hash`` per line, where ``hash`` is
``scrypt$N$r$p$salt$key`` (hex), made by ``hash_password``. Lines starting with ``#`` are
comments. The login is what B1.auth-identity checks the sender against.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import AuthResult, LoginPassword

from milter.config import Config, ConfigError

Authenticator = Callable[[Any, Any, Any, str, Any], AuthResult]


def hash_password(password: str, *, n: int = 2**14, r: int = 8, p: int = 1) -> str:
    salt = os.urandom(16)
    key = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=32)
    return f"scrypt${n}${r}${p}${salt.hex()}${key.hex()}"


def check_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, key = stored.split("$")
        if scheme != "scrypt":
            return False
        got = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r),
                             p=int(p), dklen=len(bytes.fromhex(key)))
    except (ValueError, MemoryError):
        return False
    return hmac.compare_digest(got, bytes.fromhex(key))


def read_users(path: Path) -> dict[str, str]:
    users: dict[str, str] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(path, "gateway.auth_users", f"cannot read: {exc.strerror}") from None
    for n, line in enumerate(lines, start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        login, sep, stored = line.strip().partition(":")
        if not sep or not stored.startswith("scrypt$"):
            raise ConfigError(path, f"line {n}", "expected login:scrypt$N$r$p$salt$key")
        users[login.lower()] = stored
    return users


def load_authenticator(cfg: Config) -> Authenticator | None:
    """An aiosmtpd authenticator for the configured users file, or None without one."""
    name = cfg.gateway.auth_users
    if not name:
        return None
    users = read_users(cfg.resolve(name))

    def authenticate(server: Any, session: Any, envelope: Any, mechanism: str,
                     auth_data: Any) -> AuthResult:
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        login = auth_data.login.decode("utf-8", "replace").lower()
        stored = users.get(login)
        ok = stored is not None and check_password(auth_data.password.decode("utf-8",
                                                                            "replace"), stored)
        return AuthResult(success=ok, handled=False, auth_data=login if ok else None)

    return authenticate
