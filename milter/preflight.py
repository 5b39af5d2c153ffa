"""Open every file the config names, as the process running this will: keys, certificates,
user lists, the directories the gateway writes. ``config check`` runs it (as the service user)
and ``serve`` runs it before it listens or forks a worker, so a missing or unreadable key is one
clear line and exit 2, not a traceback per worker restart.

Each problem names the config file, the key, the path, what is wrong and how to fix it.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable
from pathlib import Path

from milter.config import Config


def _who() -> str:
    import pwd

    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return f"uid {os.geteuid()}"


def _mode(path: Path) -> str:
    try:
        st = path.stat()
    except OSError:
        return ""
    import grp
    import pwd

    try:
        owner = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        owner = str(st.st_uid)
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    return f" (owner {owner}:{group}, mode {st.st_mode & 0o777:o})"


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # cannot even look: the folder above cannot be entered
        return False


class Problems:
    """Collects ``file: key: path: problem; fix: ...`` lines."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.lines: list[str] = []

    def add(self, key: str, path: Path | str, problem: str, fix: str = "") -> None:
        self.lines.append(f"{self.cfg.path}: {key}: {path}: {problem}"
                          + (f"; fix: {fix}" if fix else ""))

    def blocked(self, key: str, path: Path, owned: bool = False) -> bool:
        """True (and said) when a folder on the way to ``path`` cannot be entered; ``owned``:
        the gateway's own folder (it writes there), else one it only reads from."""
        for folder in reversed(path.parents):
            if _exists(folder) and not os.access(folder, os.X_OK):
                self.add(key, path, f"the folder {folder} cannot be entered by "
                         f"{_who()}{_mode(folder)}",
                         f"chown {_who()} {folder}" if owned else
                         f"chgrp {self._group()} {folder} && chmod g+x {folder}")
                return True
        return False

    def readable(self, key: str, path: Path, fix_missing: str = "",
                 load: Callable[[Path], object] | None = None) -> None:
        """The file exists, this user can read it, and ``load`` accepts it."""
        if self.blocked(key, path):
            return
        if not path.exists():
            self.add(key, path, "not found", fix_missing or "create it or correct the path")
            return
        try:
            with path.open("rb"):
                pass
        except PermissionError:
            self.add(key, path, f"permission denied for {_who()}{_mode(path)}",
                     f"chgrp {self._group()} {path} && chmod 0640 {path}")
            return
        except OSError as exc:
            self.add(key, path, f"cannot open: {exc.strerror}")
            return
        if load is not None:
            try:
                load(path)
            except Exception as exc:  # the loader's own words: bad PEM, bad key, ...
                self.add(key, path, f"cannot be used: {exc}", "")

    def writable_dir(self, key: str, path: Path) -> None:
        """The folder exists and this user can write it, or its nearest existing parent lets
        this user create it."""
        if self.blocked(key, path, owned=True):
            return
        probe = path
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        if not probe.is_dir():
            self.add(key, path, f"{probe} is not a folder", "correct the path")
        elif not os.access(probe, os.W_OK | os.X_OK):
            what = "cannot be written" if probe == path else f"cannot be created in {probe}"
            self.add(key, path, f"{what} by {_who()}{_mode(probe)}",
                     f"mkdir -p {path} && chown {_who()} {path}" if probe != path
                     else f"chown {_who()} {path}")

    def _group(self) -> str:
        from milter.service_user import SERVICE_USER

        return SERVICE_USER


def file_problems(cfg: Config) -> list[str]:
    """Every file and folder the config names, opened as this process's user."""
    from milter.service_user import SERVICE_USER

    p = Problems(cfg)
    g = cfg.gateway
    if g.policy:
        p.readable("gateway.policy", cfg.policy_path,
                   "write one with: skot-milter init DIR (or leave gateway.policy out: the "
                   "bundled policy)")
    if g.tls_cert:
        cert = cfg.resolve(g.tls_cert)
        key = cfg.resolve(g.tls_key) if g.tls_key else None
        p.readable("gateway.tls_cert", cert)
        if key is not None:
            p.readable("gateway.tls_key", key)
        if not p.lines:
            try:
                ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
            except (OSError, ssl.SSLError) as exc:
                p.add("gateway.tls_cert", cert, f"certificate and key do not load: {exc}",
                      "give the PEM certificate chain and its private key")
    if g.auth_users:
        p.readable("gateway.auth_users", cfg.resolve(g.auth_users))
    d = cfg.directory
    if d.source == "csv" and d.csv:
        p.readable("directory.csv", cfg.resolve(d.csv),
                   "write one (skot-milter init DIR writes a template) or correct the path")
    elif d.source == "ldap" and d.ldap is not None:
        if d.ldap.bind_password_file:
            p.readable("directory.ldap.bind_password_file", cfg.resolve(d.ldap.bind_password_file),
                       "write the bind password alone into it")
        if d.ldap.ca_file:
            p.readable("directory.ldap.ca_file", cfg.resolve(d.ldap.ca_file))
    if g.next_hop.startswith("maildir:"):
        p.writable_dir("gateway.next_hop", Path(cfg.next_hop[len("maildir:"):]))
    p.writable_dir("gateway.state_dir" if g.state_dir else "gateway.state_dir (default)",
                   cfg.state_dir)
    p.writable_dir("quarantine.directory" if cfg.quarantine.directory else
                   "quarantine.directory (default)", cfg.quarantine_dir)
    url = cfg.audit_url
    if url.startswith("sqlite:///"):
        db = Path(url[len("sqlite:///"):])
        if _exists(db) and not os.access(db, os.R_OK | os.W_OK):
            p.add("audit.url", db, f"cannot be written by {_who()}{_mode(db)}",
                  f"chown {SERVICE_USER} {db}")
        p.writable_dir("audit.url", db.parent)  # WAL: the -wal and -shm files beside it
    a = cfg.audit
    if a.checkpoint_key:
        from milter.audit.checkpoint import load_signing_key

        key_path = cfg.resolve(a.checkpoint_key)
        epoch = "".join(c for c in key_path.stem if c.isdigit()) or "1"
        p.readable("audit.checkpoint_key", key_path,
                   f"skot-milter audit keygen --epoch {epoch} --dir {key_path.parent}",
                   load=load_signing_key)
    if a.checkpoint_dir:
        p.writable_dir("audit.checkpoint_dir", cfg.resolve(a.checkpoint_dir))
    if a.trusted_keys:
        trusted = cfg.resolve(a.trusted_keys)
        if p.blocked("audit.trusted_keys", trusted):
            pass
        elif not trusted.is_dir():
            p.add("audit.trusted_keys", trusted, "not a folder",
                  "a folder of epoch-N.pub files (audit keygen writes them)")
        elif not os.access(trusted, os.R_OK | os.X_OK):
            p.add("audit.trusted_keys", trusted, f"cannot be read by {_who()}{_mode(trusted)}")
    if cfg.dkim.sign:
        from milter.dkimsign import read_key

        for i, k in enumerate(cfg.dkim.keys):
            def load_key(path: Path, k: dict[str, str] = k) -> object:
                return read_key(path, k["domain"], k["selector"])

            p.readable(f"dkim.keys[{i + 1}].key", cfg.resolve(k["key"]),
                       f"skot-milter dkim keygen {k['domain']} {k['selector']} "
                       f"--dir {cfg.resolve(k['key']).parent}", load=load_key)
    if cfg.notices.enabled:
        templates = cfg.notice_templates
        if not p.blocked("notices.templates", templates) and _exists(templates) and \
                not os.access(templates, os.R_OK | os.X_OK):
            p.add("notices.templates", templates, f"cannot be read by {_who()}"
                  f"{_mode(templates)}", f"chmod 0755 {templates}")
    users = cfg.resolve(cfg.web.users) if cfg.web.users else None
    if users is not None and _exists(users):
        p.readable("web.users", users)
    return p.lines
