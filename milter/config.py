"""Load and validate the gateway's TOML configuration.

Every error names the file, the key and what is allowed, because the person reading it is an
IT admin at a relay, not a Python developer. Unknown keys are errors: a typo must not silently
turn a rule off.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from milter.core.limits import Limits
from milter.directory import ROLES
from milter.directory_ldap import LdapSettings, plain_text_problem
from milter.directory_ldap import parse_settings as _ldap_table

# Bytes of spooled messages processed at once per process (``gateway.message_memory``).
DEFAULT_MESSAGE_MEMORY = 48 * 2**20

# Package data (``milter/bundled``, in the wheel too): the defaults ``serve`` runs on without a
# config, and the board's policy with its notice templates, which a site policy overrides.
BUNDLED = Path(__file__).resolve().parent / "bundled"
DEFAULT_CONFIG = BUNDLED / "default" / "skot-milter.toml"
BUNDLED_POLICY = BUNDLED / "policies" / "skot.toml"
# Where admins keep the site's config (the systemd unit and `skot-milter init` use it).
SITE_CONFIG = Path("/etc/skot-milter/skot-milter.toml")
CONFIG_ENV = "SKOT_MILTER_CONFIG"


class ConfigError(Exception):
    """A configuration problem, phrased for the admin: file, key, what is allowed."""

    def __init__(self, file: Path | str, key: str, message: str) -> None:
        self.file = str(file)
        self.key = key
        self.message = message
        super().__init__(f"{file}: {key}: {message}" if key else f"{file}: {message}")


Validator = Callable[[Any], Any]


def _str(v: Any) -> str:
    if not isinstance(v, str) or not v:
        raise ValueError("expected a non-empty string")
    return v


def _opt_str(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError("expected a string")
    return v


def _int(minimum: int = 0) -> Validator:
    def check(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise ValueError(f"expected a whole number >= {minimum}")
        return v

    return check


def _workers(v: Any) -> int:
    n = _int(0)(v)
    return n or (os.cpu_count() or 1)


def _float(minimum: float = 0.0) -> Validator:
    def check(v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, int | float) or v < minimum:
            raise ValueError(f"expected a number >= {minimum}")
        return float(v)

    return check


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError("expected true or false")
    return v


def _str_list(v: Any) -> tuple[str, ...]:
    if not isinstance(v, list) or not all(isinstance(x, str) and x for x in v):
        raise ValueError("expected a list of non-empty strings")
    return tuple(v)


def _domains(v: Any) -> tuple[str, ...]:
    items = _str_list(v)
    if not items:
        raise ValueError("expected at least one domain, e.g. [\"school.example\"]")
    return tuple(d.lower().rstrip(".") for d in items)


def _networks(v: Any) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    out = []
    for item in _str_list(v):
        try:
            out.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not a network; use CIDR like \"10.0.0.0/8\"") from None
    return tuple(out)


def _hostport(v: Any) -> str:
    s = _str(v)
    if s.startswith("unix:"):
        return s
    host, sep, port = s.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError("expected \"HOST:PORT\", e.g. \"127.0.0.1:10025\"")
    return s


def _opt_hostport(v: Any) -> str:
    return "" if v == "" else _hostport(v)


def _public_url(v: Any) -> str:
    """The web view's address as the staff's browsers reach it (in notices' release
    links): https, or http only for loopback tests; no path, query or fragment."""
    if v == "":
        return ""
    s = _str(v).rstrip("/")
    m = re.fullmatch(r"(https?)://([A-Za-z0-9.:\[\]-]+)", s)
    if m is None:
        raise ValueError("expected \"https://HOST\" (or \"https://HOST:PORT\"), no path")
    if m.group(1) == "http" and not m.group(2).startswith(("127.", "localhost", "[::1]")):
        raise ValueError("expected https (http only for a loopback address)")
    return s


def _next_hop(v: Any) -> str:
    s = _str(v)
    if s.startswith("maildir:") and len(s) > len("maildir:"):
        return s
    if s.startswith("smtp://"):
        _hostport(s[len("smtp://"):])
        return s
    raise ValueError("expected \"smtp://HOST:PORT\" or \"maildir:PATH\"")


def _audit_url(v: Any) -> str:
    s = _str(v)
    if s.startswith("sqlite:///") or s.startswith(("postgresql://", "postgres://")):
        return s
    raise ValueError("expected \"sqlite:///relative/path\", \"sqlite:////absolute/path\" "
                     "or \"postgresql://user@host/db\"")


def _dkim_keys(v: Any) -> tuple[dict[str, str], ...]:
    if not isinstance(v, list):
        raise ValueError("expected a list of tables: [[dkim.keys]] domain, selector, key")
    out = []
    for i, item in enumerate(v):
        if not isinstance(item, dict) or set(item) - {"domain", "selector", "key"} or not all(
                isinstance(item.get(k), str) and item.get(k) for k in ("domain", "selector",
                                                                         "key")):
            raise ValueError(f"entry {i + 1}: expected domain, selector and key (a file)")
        out.append({k: str(item[k]) for k in ("domain", "selector", "key")})
    return tuple(out)


def _choice(*allowed: str) -> Validator:
    def check(v: Any) -> str:
        if v not in allowed:
            raise ValueError("expected one of " + ", ".join(f'"{a}"' for a in allowed))
        return str(v)

    return check


def _timezone(v: Any) -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    s = _str(v)
    try:
        ZoneInfo(s)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError("expected a time zone name such as \"Europe/Amsterdam\"") from None
    return s


def _language(v: Any) -> str:
    if v not in ("nl", "en"):
        raise ValueError("expected \"nl\" or \"en\"")
    return str(v)


def _names_table(allowed: tuple[str, ...] | None) -> Validator:
    """``{name = ["value", ...]}``: directory roles (names from ``allowed``) or groups."""
    def check(v: Any) -> dict[str, tuple[str, ...]]:
        if not isinstance(v, dict):
            raise ValueError("expected a table, e.g. { staff = [\"CN=Personeel,OU=...\"] }")
        out = {}
        for name, values in v.items():
            if allowed is not None and name not in allowed:
                raise ValueError(f"{name!r} is not a role; allowed: " + ", ".join(allowed))
            out[name] = _str_list([values] if isinstance(values, str) else values)
        return out

    return check


# section -> key -> (validator, default). A default of REQUIRED means the key must be given.
REQUIRED = object()
SCHEMA: dict[str, dict[str, tuple[Validator, Any]]] = {
    "gateway": {
        "listen": (_opt_hostport, "127.0.0.1:10025"),   # "" = no SMTP front (milter only)
        "next_hop": (_next_hop, REQUIRED),
        "hostname": (_str, "localhost"),
        "node": (_str, "node1"),
        "internal_networks": (_networks, ("127.0.0.0/8", "::1/128")),
        "max_message_size": (_int(1024), 26214400),
        "max_recipients": (_int(1), 1000),
        # The site policy ("" = the bundled board policy); a site file with
        # [policy] extends = "skot" changes only what it names.
        "policy": (_opt_str, ""),
        "next_hop_timeout": (_float(0.1), 100.0),
        "session_timeout": (_float(0.1), 300.0),
        # Total time a client may take to send DATA: a slow-drip sender is cut off.
        "data_timeout": (_float(0.1), 600.0),
        # Seconds to wait before the greeting; a client that talks first gets 554 (as
        # Postfix's postscreen does). 0: early talkers are tolerated.
        "greet_pause": (_float(0.0), 0.0),
        "max_connections": (_int(1), 500),
        # A message past this many bytes is received into a temporary file in
        # <state>/spool instead of memory; at most message_memory bytes of such messages
        # (counted three times: raw, decoded, working copy) are processed at once per process.
        "spool_threshold": (_int(4096), 256 * 1024),
        # Local state (spool, metrics of several workers, notice limits, the quarantine
        # unless [quarantine] says otherwise); default: beside a SQLite audit store, else
        # beside this file. Must be writable (the systemd unit allows /var/lib/skot-milter).
        "state_dir": (_opt_str, ""),
        "message_memory": (_int(2**20), DEFAULT_MESSAGE_MEMORY),
        # Worker processes sharing the listening ports (SO_REUSEPORT): one per core uses the
        # whole machine; 0 means exactly that. Worker 1 exports the metrics of all of them.
        "workers": (_workers, 1),
        "max_connections_per_ip": (_int(1), 50),
        # NOOPs and RSETs per dialogue (from connect or the end of a message to the end of
        # the next DATA), every other command but MAIL/RCPT/DATA per connection.
        "noop_limit": (_int(1), 20),
        "rset_limit": (_int(1), 50),
        "command_limit": (_int(10), 500),
        # The dialogue before DATA in all: seconds and commands (RCPTs included; keep it
        # above max_recipients). A client dripping EHLOs or RCPTs gets 421 and its slot back.
        "dialogue_timeout": (_float(1.0), 180.0),
        "dialogue_commands": (_int(10), 2000),
        # Of max_connections, this many (at most half) only for clients from
        # internal_networks.
        "reserved_connections": (_int(0), 50),
        # Seconds a balancer has to send its PROXY header (with proxy_protocol_from).
        "proxy_protocol_timeout": (_float(0.1), 5.0),
        # Idle next-hop sessions kept for reuse, and for how long.
        "next_hop_pool_size": (_int(0), 32),
        "next_hop_pool_idle": (_float(0.1), 30.0),
        # At SIGTERM: seconds to let transactions in flight finish.
        "shutdown_grace": (_float(0.0), 30.0),
        "tls_cert": (_opt_str, ""),
        "tls_key": (_opt_str, ""),
        "auth_users": (_opt_str, ""),
        "xforward_from": (_networks, ()),
        "proxy_protocol_from": (_networks, ()),  # HAProxy PROXY v1/v2 from these only
        # Postfix's smtp_tls_policy_maps source: config check requires TLS to every partner.
        "tls_policy_map": (_opt_str, ""),
        # Postfix's config directory: config check asks it (postconf, postmap) which next
        # hop mail to each partner goes to, the key its TLS policy lookup uses. Skipped
        # when there is no main.cf there.
        "postfix_config": (_opt_str, "/etc/postfix"),
    },
    "logging": {
        "format": (_choice("text", "json"), "text"),
        "level": (_choice("debug", "info", "warning", "error"), "info"),
    },
    "metrics": {
        "listen": (_opt_hostport, ""),          # Prometheus /metrics, e.g. "127.0.0.1:9125"
    },
    "school": {
        "domains": (_domains, REQUIRED),
        "postmaster": (_str, REQUIRED),
        "language": (_language, "nl"),
        "name": (_opt_str, ""),
    },
    "directory": {
        "source": (_choice("csv", "ldap"), "csv"),
        # csv: this project's columns, or an Entra ID / Google Workspace user export.
        "csv": (_opt_str, ""),
        # Who has which role / is in which group (the A5 media group is "media"): LDAP group
        # or OU DNs; Entra ID export: department; Google Workspace export: org unit path.
        "roles": (_names_table(ROLES), {}),
        "groups": (_names_table(None), {}),
        # The LDAP attribute or export column holding staff members' private addresses.
        "private_addresses": (_opt_str, ""),
        "refresh_minutes": (_float(1.0), 15.0),   # LDAP: read again in the background
        "ldap": (_ldap_table, None),              # [directory.ldap], see directory_ldap.py
    },
    "audit": {
        "url": (_audit_url, REQUIRED),
        # Personal fields of older records are purged by the running gateway (hashes stay),
        # except under a legal hold. 0 keeps them forever (config check warns).
        "retention_days": (_int(0), 730),
        "purge_every_hours": (_float(0.0), 24.0),  # how often; 0: only `audit purge` does
        # Ed25519 key file (outside the database); "": <state_dir>/audit-keys/epoch-N.key,
        # created at first start (its .pub belongs with the auditors).
        "checkpoint_key": (_opt_str, ""),
        "checkpoint_dir": (_opt_str, ""),      # signed checkpoints; "": <state_dir>/checkpoints
        "checkpoint_every": (_int(1), 100),    # records
        "checkpoint_minutes": (_float(0.1), 5.0),
        # A second directory every checkpoint is also written to: another disk, or better a
        # share the auditors own (the anchor a root user on this box cannot rewrite).
        "checkpoint_copy": (_opt_str, ""),
        # Directory of epoch-N.pub files for verify; "": those beside the default key.
        "trusted_keys": (_opt_str, ""),
    },
    "inspection": {   # defaults: milter.core.limits.Limits
        "max_depth": (_int(1), Limits.max_depth),
        "max_members": (_int(1), Limits.max_members),
        "max_expanded_bytes": (_int(1024), Limits.max_expanded_bytes),
        "max_ratio": (_int(2), Limits.max_ratio),
        "max_text_chars": (_int(1000), Limits.max_text_chars),
        "time_budget": (_float(0.1), Limits.time_budget),
    },
    "dns": {
        "authenticate": (_bool, True),      # SPF/DKIM/DMARC for inbound mail
        "nameservers": (_str_list, ()),     # empty: the system's resolv.conf
        "port": (_int(1), 53),
        "timeout": (_float(0.1), 5.0),
        "cache_seconds": (_float(0.0), 300.0),   # answers kept at most this long
        "cache_entries": (_int(0), 10000),
    },
    "dkim": {
        "sign": (_bool, True),
        "keys": (_dkim_keys, ()),
    },
    "notices": {
        "enabled": (_bool, True),
        "templates": (_opt_str, ""),       # default: notices/ beside the policy file
        "rate_per_hour": (_int(1), 5),
        "retries": (_int(1), 3),
        "retry_delay": (_float(0.0), 30.0),
        # Times in notices are local times in words, in this zone (IANA name).
        "timezone": (_timezone, "Europe/Amsterdam"),
        # Dutch notices address staff as "je" or "u" (policies/notices/nl or nl-u).
        "register_nl": (_choice("je", "u"), "je"),
    },
    "milter": {
        "listen": (_opt_hostport, ""),          # "127.0.0.1:8894" or "unix:/path"; "" = off
        "idle_timeout": (_float(1.0), 300.0),
        # Connections at once (Postfix opens one per smtpd process); more are closed.
        "max_connections": (_int(1), 500),
    },
    "web": {
        "listen": (_hostport, "127.0.0.1:8080"),
        "users": (_opt_str, "web-users.txt"),   # managed with `skot-milter web adduser`
        "secure_cookies": (_bool, True),
        "session_minutes": (_int(1), 60),
        # Where staff reach the web view ("https://mailcontrole.school.nl"): notices then
        # offer a release link next to the reply address; "" = reply only.
        "public_url": (_public_url, ""),
        # Staff sign in with their own school account (directory source "ldap"): their
        # address and directory password, checked by a bind as them. Other roles stay in
        # the users file.
        "staff_ldap_login": (_bool, False),
    },
    "quarantine": {
        "directory": (_opt_str, ""),
        "retention_days": (_int(1), 30),
    },
}



Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class GatewaySettings:
    listen: str
    next_hop: str
    hostname: str
    node: str
    internal_networks: tuple[Network, ...]
    max_message_size: int
    max_recipients: int
    policy: str
    next_hop_timeout: float
    session_timeout: float
    data_timeout: float
    greet_pause: float
    max_connections: int
    spool_threshold: int
    state_dir: str
    message_memory: int
    workers: int
    max_connections_per_ip: int
    noop_limit: int
    rset_limit: int
    command_limit: int
    dialogue_timeout: float
    dialogue_commands: int
    reserved_connections: int
    proxy_protocol_timeout: float
    next_hop_pool_size: int
    next_hop_pool_idle: float
    shutdown_grace: float
    tls_cert: str
    tls_key: str
    auth_users: str
    xforward_from: tuple[Network, ...]
    proxy_protocol_from: tuple[Network, ...]
    tls_policy_map: str
    postfix_config: str


@dataclass(frozen=True)
class LoggingSettings:
    format: str
    level: str


@dataclass(frozen=True)
class MetricsSettings:
    listen: str


@dataclass(frozen=True)
class SchoolSettings:
    domains: tuple[str, ...]
    postmaster: str
    language: str
    name: str


@dataclass(frozen=True)
class DirectorySettings:
    source: str
    csv: str
    roles: dict[str, tuple[str, ...]]
    groups: dict[str, tuple[str, ...]]
    private_addresses: str
    refresh_minutes: float
    ldap: LdapSettings | None


@dataclass(frozen=True)
class AuditSettings:
    url: str
    retention_days: int
    purge_every_hours: float
    checkpoint_key: str
    checkpoint_dir: str
    checkpoint_every: int
    checkpoint_minutes: float
    checkpoint_copy: str
    trusted_keys: str


@dataclass(frozen=True)
class DNSSettings:
    authenticate: bool
    nameservers: tuple[str, ...]
    port: int
    timeout: float
    cache_seconds: float
    cache_entries: int


@dataclass(frozen=True)
class DKIMSettings:
    sign: bool
    keys: tuple[dict[str, str], ...]


@dataclass(frozen=True)
class NoticesSettings:
    enabled: bool
    templates: str
    rate_per_hour: int
    retries: int
    retry_delay: float
    timezone: str
    register_nl: str


@dataclass(frozen=True)
class MilterSettings:
    listen: str
    idle_timeout: float
    max_connections: int


@dataclass(frozen=True)
class WebSettings:
    listen: str
    users: str
    secure_cookies: bool
    session_minutes: int
    public_url: str
    staff_ldap_login: bool


@dataclass(frozen=True)
class QuarantineSettings:
    directory: str
    retention_days: int


# One typed section per [table]; a test keeps their fields and SCHEMA's keys the same.
SECTION_TYPES: dict[str, type[Any]] = {
    "gateway": GatewaySettings, "logging": LoggingSettings, "metrics": MetricsSettings,
    "school": SchoolSettings, "directory": DirectorySettings, "audit": AuditSettings,
    "inspection": Limits, "dns": DNSSettings, "dkim": DKIMSettings,
    "notices": NoticesSettings, "milter": MilterSettings, "web": WebSettings,
    "quarantine": QuarantineSettings,
}


@dataclass(frozen=True)
class Config:
    """The validated configuration, read once, one typed section per table (defaults
    applied): ``cfg.gateway.hostname``, so a misspelt key is a type error, not a KeyError
    at run time."""

    path: Path
    gateway: GatewaySettings
    logging: LoggingSettings
    metrics: MetricsSettings
    school: SchoolSettings
    directory: DirectorySettings
    audit: AuditSettings
    inspection: Limits
    dns: DNSSettings
    dkim: DKIMSettings
    notices: NoticesSettings
    milter: MilterSettings
    web: WebSettings
    quarantine: QuarantineSettings
    # Where relative paths resolve: beside the config file, except for the bundled defaults,
    # whose state (Maildir, audit, quarantine) goes into the folder ``serve`` runs in.
    root: Path | None = None
    # How the file was found (--config, SKOT_MILTER_CONFIG, /etc, the bundled defaults).
    origin: str = ""

    @property
    def base_dir(self) -> Path:
        return self.root if self.root is not None else self.path.parent

    def resolve(self, value: str) -> Path:
        """Resolve a path from the config relative to the config file."""
        p = Path(value).expanduser()
        return p if p.is_absolute() else (self.base_dir / p).resolve()

    def optional_path(self, value: str) -> Path | None:
        """A path key that may be empty (not configured)."""
        return self.resolve(value) if value else None

    # Derived values every front needs.
    @property
    def school_domains(self) -> tuple[str, ...]:
        return self.school.domains

    @property
    def internal_networks(self) -> tuple[Network, ...]:
        return self.gateway.internal_networks

    @property
    def policy_path(self) -> Path:
        return self.resolve(self.gateway.policy) if self.gateway.policy else BUNDLED_POLICY

    @property
    def directory_path(self) -> Path | None:
        return self.optional_path(self.directory.csv)

    @property
    def next_hop(self) -> str:
        """``smtp://host:port`` as given, or ``maildir:`` with an absolute path."""
        v = self.gateway.next_hop
        if v.startswith("maildir:"):
            return "maildir:" + str(self.resolve(v[len("maildir:"):]))
        return v

    @property
    def audit_url(self) -> str:
        """The audit URL with a relative SQLite path made absolute against the config file."""
        v = self.audit.url
        if v.startswith("sqlite:///") and not v.startswith("sqlite:////"):
            return "sqlite:///" + str(self.resolve(v[len("sqlite:///"):]))
        if v.startswith("sqlite:////"):
            return "sqlite:///" + v[len("sqlite:////") - 1:]
        return v

    @property
    def state_dir(self) -> Path:
        """Where local state lives: ``gateway.state_dir``, else beside a SQLite audit store,
        else beside the config file."""
        if self.gateway.state_dir:
            return self.resolve(self.gateway.state_dir)
        url = self.audit_url
        if url.startswith("sqlite:///"):
            return Path(url[len("sqlite:///"):]).parent
        return self.base_dir

    # The audit trail's tamper evidence (checkpoints) is on by default: these say where.
    @property
    def audit_key_dir(self) -> Path:
        """Where the signing key lives when ``[audit] checkpoint_key`` is not given."""
        return self.state_dir / "audit-keys"

    @property
    def checkpoint_dir(self) -> Path:
        v = self.audit.checkpoint_dir
        return self.resolve(v) if v else self.state_dir / "checkpoints"

    @property
    def checkpoint_copies(self) -> tuple[Path, ...]:
        v = self.audit.checkpoint_copy
        return (self.resolve(v),) if v else ()

    @property
    def trusted_keys_dir(self) -> Path | None:
        """Public keys for ``audit verify``: as configured, else beside the default key."""
        if self.audit.trusted_keys:
            return self.resolve(self.audit.trusted_keys)
        return None if self.audit.checkpoint_key else self.audit_key_dir

    @property
    def notice_templates(self) -> Path:
        """``notices.templates``, else ``notices/`` beside the policy file when the site has
        one, else the bundled templates."""
        v = self.notices.templates
        if v:
            return self.resolve(v)
        beside = self.policy_path.parent / "notices"
        return beside if beside.is_dir() else BUNDLED_POLICY.parent / "notices"

    @property
    def quarantine_dir(self) -> Path:
        v = self.quarantine.directory
        return self.resolve(v) if v else self.state_dir / "quarantine"


def section_fields(section: str) -> tuple[str, ...]:
    return tuple(f.name for f in fields(SECTION_TYPES[section]))


def _default_for(default: Any, validator: Validator) -> Any:
    if isinstance(default, tuple) and default and isinstance(default[0], str):
        try:
            return validator(list(default))
        except ValueError:
            return default
    return default


def validate(data: Mapping[str, Any], path: Path, root: Path | None = None,
             origin: str = "") -> Config:
    """Validate parsed TOML against SCHEMA; raise ConfigError naming the first bad key."""
    errors = list(iter_errors(data, path))
    if errors:
        raise errors[0]
    sections: dict[str, dict[str, Any]] = {}
    for section, keys in SCHEMA.items():
        given = data.get(section, {})
        out: dict[str, Any] = {}
        for key, (validator, default) in keys.items():
            out[key] = validator(given[key]) if key in given else _default_for(default, validator)
        sections[section] = out
    typed = {name: SECTION_TYPES[name](**values) for name, values in sections.items()}
    return Config(path=path, root=root, origin=origin, **typed)


def iter_errors(data: Mapping[str, Any], path: Path) -> list[ConfigError]:
    """All problems in one config, so that ``config check`` can list them at once."""
    errors: list[ConfigError] = []
    for section, value in data.items():
        if section not in SCHEMA:
            errors.append(ConfigError(path, section, "unknown section; allowed: "
                                      + ", ".join(f"[{s}]" for s in SCHEMA)))
            continue
        if not isinstance(value, dict):
            errors.append(ConfigError(path, section, "expected a table [" + section + "]"))
            continue
        for key, v in value.items():
            spec = SCHEMA[section].get(key)
            if spec is None:
                errors.append(ConfigError(path, f"{section}.{key}", "unknown key; allowed: "
                                          + ", ".join(SCHEMA[section])))
                continue
            try:
                spec[0](v)
            except ValueError as exc:
                # A table's validator names its own bad key; never echo a whole table.
                sub = getattr(exc, "key", "")
                errors.append(ConfigError(path, f"{section}.{key}" + (f".{sub}" if sub else ""),
                                          str(exc) if isinstance(v, dict) else
                                          f"{exc} (got {v!r})"))
    for section, keys in SCHEMA.items():
        given = data.get(section, {})
        if not isinstance(given, dict):
            continue
        for key, (_, default) in keys.items():
            if default is REQUIRED and key not in given:
                errors.append(ConfigError(path, f"{section}.{key}", "required key is missing"))
    directory = data.get("directory")
    if isinstance(directory, dict) and directory.get("source") == "ldap" and \
            "ldap" not in directory:
        errors.append(ConfigError(path, "directory.ldap", "source = \"ldap\" needs a "
                                  "[directory.ldap] table (url, bind_dn, base_dns, ...)"))
    web = data.get("web")
    if isinstance(web, dict) and web.get("staff_ldap_login") is True:
        if not isinstance(directory, dict) or directory.get("source") != "ldap":
            errors.append(ConfigError(path, "web.staff_ldap_login", "signing in with the "
                                      "school account needs [directory] source = \"ldap\""))
        else:
            try:
                problem = plain_text_problem(_ldap_table(directory.get("ldap")))
            except ValueError:  # reported above as directory.ldap.*
                problem = ""
            if problem:
                errors.append(ConfigError(path, "directory.ldap.tls", problem))
    return errors


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(path, "", "file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, "", f"not valid TOML: {exc}") from None
    except PermissionError:
        raise ConfigError(path, "", "cannot read: permission denied; fix: chgrp skot-milter "
                          f"{path} && chmod 0640 {path}") from None
    except OSError as exc:
        raise ConfigError(path, "", f"cannot read: {exc.strerror}") from None


def locate(path: Path | str | None = None) -> tuple[Path, str]:
    """The config file to use and how it was found: ``--config``, else ``$SKOT_MILTER_CONFIG``,
    else ``/etc/skot-milter/skot-milter.toml`` when it exists, else the bundled defaults."""
    if path:
        return Path(path).expanduser().resolve(), "--config"
    env = os.environ.get(CONFIG_ENV, "")
    if env:
        return Path(env).expanduser().resolve(), CONFIG_ENV
    if SITE_CONFIG.exists():
        return SITE_CONFIG, str(SITE_CONFIG.parent) + "/"
    return DEFAULT_CONFIG, "bundled defaults"


def load(path: Path | str | None = None) -> Config:
    """Load the config ``locate`` finds and validate it. The bundled defaults keep their state
    (``var/``) in the current directory, so ``serve`` works from an installed wheel."""
    p, origin = locate(path)
    if p == DEFAULT_CONFIG:
        if not p.exists():
            raise ConfigError(p, "", "bundled default config not found in the installed "
                              "package; pass --config FILE")
        return validate(read_toml(p), p, root=Path.cwd(), origin=origin)
    return validate(read_toml(p), p, origin=origin)
