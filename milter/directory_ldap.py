"""The staff directory from LDAP / Active Directory (``[directory] source = "ldap"``).

Read with ldap3: a pure-Python LDAP v3 client (no libldap/libsasl headers or compiler on the
relay, a wheel that installs wherever Python does), with paged searches (Active Directory
returns at most 1000 entries per page) and range retrieval of large groups built in.

One fetch is a bind, a paged subtree search of each base DN and one base read of each group
named in ``[directory] roles``/``groups``; it builds the same ``Directory`` as the CSV source.
Fetching is blocking and slow by nature, so it runs only in ``milter.directory_source``'s
background thread and in ``config check``: never on the message path.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from milter.directory import ROLES, Directory, Person, RoleMap

# The attribute map: our field -> the directory's attribute. "" = not read.
FIELDS = ("address", "aliases", "name", "manager", "member_of", "language")
SCHEMAS: dict[str, dict[str, str]] = {
    "ad": {"address": "mail", "aliases": "proxyAddresses", "name": "displayName",
           "manager": "manager", "member_of": "memberOf", "language": "preferredLanguage"},
    # inetOrgPerson (RFC 2798); memberOf only with slapd's memberof overlay: groups named in
    # [directory] roles/groups are also read from their member/uniqueMember lists.
    "openldap": {"address": "mail", "aliases": "", "name": "displayName",
                 "manager": "manager", "member_of": "memberOf", "language": "preferredLanguage"},
}
FILTERS = {
    # People with a mailbox, not disabled (userAccountControl bit 2: ACCOUNTDISABLE).
    "ad": "(&(objectCategory=person)(objectClass=user)(mail=*)"
          "(!(userAccountControl:1.2.840.113556.1.4.803:=2)))",
    "openldap": "(&(objectClass=inetOrgPerson)(mail=*))",
}
GROUP_MEMBER_ATTRS = ("member", "uniqueMember")
PAGE_SIZE = 500


class SettingError(ValueError):
    """A bad key inside ``[directory.ldap]``; ``key`` names it (config.py reports the path)."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        super().__init__(message)


class LdapError(Exception):
    """The directory could not be read; ``key`` is the config key an admin should look at."""

    def __init__(self, key: str, message: str) -> None:
        self.key, self.message = key, message
        super().__init__(f"{key}: {message}")


@dataclass(frozen=True)
class LdapSettings:
    urls: tuple[str, ...]
    tls: str                           # "ldaps", "starttls" or "none"
    ca_file: str = ""                  # "" = the system's CA store
    bind_dn: str = ""
    bind_password_file: str = ""       # resolved against the config file by the caller
    base_dns: tuple[str, ...] = ()
    filter: str = ""
    schema: str = "ad"
    attributes: Mapping[str, str] = field(default_factory=dict)
    timeout: float = 10.0

    @property
    def attribute_map(self) -> dict[str, str]:
        return {**SCHEMAS[self.schema], **self.attributes}

    @property
    def search_filter(self) -> str:
        return self.filter or FILTERS[self.schema]


LDAP_KEYS = ("url", "tls", "ca_file", "bind_dn", "bind_password_file", "base_dns", "filter",
             "schema", "attributes", "timeout")


def parse_settings(v: Any) -> LdapSettings:
    """Validate the ``[directory.ldap]`` table (the SCHEMA validator for ``directory.ldap``)."""
    if not isinstance(v, dict):
        raise ValueError("expected a table [directory.ldap]")
    for key in v:
        if key not in LDAP_KEYS:
            raise SettingError(key, "unknown key; allowed: " + ", ".join(LDAP_KEYS))

    def text(key: str, default: str = "") -> str:
        value = v.get(key, default)
        if not isinstance(value, str):
            raise SettingError(key, f"expected a string (got {value!r})")
        return value

    raw_urls = v.get("url", [])
    urls = (raw_urls,) if isinstance(raw_urls, str) else raw_urls
    if not isinstance(urls, list | tuple) or not urls or not all(
            isinstance(u, str) and u.lower().startswith(("ldap://", "ldaps://")) for u in urls):
        raise SettingError("url", "expected \"ldaps://dc1.school.example\" or "
                                  "\"ldap://HOST:PORT\" (or a list of them, tried in order)")
    tls = text("tls", "ldaps" if urls[0].lower().startswith("ldaps://") else "starttls")
    if tls not in ("ldaps", "starttls", "none"):
        raise SettingError("tls", f"expected \"ldaps\", \"starttls\" or \"none\" (got {tls!r})")
    if (tls == "ldaps") != all(u.lower().startswith("ldaps://") for u in urls):
        raise SettingError("tls", "\"ldaps\" goes with ldaps:// URLs, \"starttls\" and "
                                  "\"none\" with ldap:// URLs")
    schema = text("schema", "ad")
    if schema not in SCHEMAS:
        raise SettingError("schema", "expected \"ad\" or \"openldap\" (the attribute map's "
                                     f"defaults; got {schema!r})")
    base_dns = v.get("base_dns")
    if isinstance(base_dns, str):
        base_dns = [base_dns]
    if not isinstance(base_dns, list) or not base_dns or not all(
            isinstance(b, str) and "=" in b for b in base_dns):
        raise SettingError("base_dns", "expected a list of DNs, e.g. "
                                       "[\"OU=Personeel,DC=school,DC=example\"]")
    attributes = v.get("attributes", {})
    if not isinstance(attributes, dict) or not all(
            k in FIELDS and isinstance(a, str) for k, a in attributes.items()):
        raise SettingError("attributes", "expected a table of " + ", ".join(FIELDS)
                           + " = \"ldapAttributeName\" (\"\" = not read)")
    if attributes.get("address", "x") == "":
        raise SettingError("attributes", "address cannot be switched off")
    bind_dn = text("bind_dn")
    password_file = text("bind_password_file")
    if bool(bind_dn) != bool(password_file):
        raise SettingError("bind_password_file" if bind_dn else "bind_dn",
                           "bind_dn and bind_password_file go together (neither: anonymous)")
    timeout = v.get("timeout", 10.0)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
        raise SettingError("timeout", f"expected seconds > 0 (got {timeout!r})")
    return LdapSettings(urls=tuple(urls), tls=tls, ca_file=text("ca_file"), bind_dn=bind_dn,
                        bind_password_file=password_file, base_dns=tuple(base_dns),
                        filter=text("filter"), schema=schema, attributes=dict(attributes),
                        timeout=float(timeout))


def normalize_dn(dn: str) -> str:
    """Case- and spacing-insensitive DN for comparisons (``CN=A, OU=B`` == ``cn=a,ou=b``)."""
    return ",".join("=".join(p.strip() for p in rdn.split("=", 1))
                    for rdn in dn.lower().split(","))


def _values(attrs: Mapping[str, Any], name: str) -> list[str]:
    if not name:
        return []
    out: list[str] = []
    wanted = name.lower()
    for key, value in attrs.items():  # names are case-insensitive; AD may send "member;range="
        k = key.lower()
        if k == wanted or k.startswith(wanted + ";"):
            items = value if isinstance(value, list | tuple) else [value]
            out += [x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x)
                    for x in items if x is not None]
    return out


def _language(values: list[str]) -> str:
    for v in values:
        lang = v.strip().lower()[:2]
        if lang in ("nl", "en"):
            return lang
    return ""


def build(entries: Iterable[tuple[str, Mapping[str, Any]]], settings: LdapSettings,
          mapping: RoleMap, group_members: Mapping[str, set[str]]) -> Directory:
    """People from raw entries (DN, attributes). Pure: the tests and the fetch share it.

    A person gets a role or group when a DN named for it in ``mapping`` is one of their
    ``memberOf`` groups, lists them as a member (``group_members``, by normalised DN), or is an
    OU they live under. Without any roles named everyone found is staff; with them, people in
    none are left out. Private addresses are kept for staff only (a pupil's second address is
    often a parent's)."""
    amap = settings.attribute_map
    rows: list[tuple[str, Mapping[str, Any]]] = list(entries)
    address_of: dict[str, str] = {}
    for dn, attrs in rows:
        mail = next(iter(_values(attrs, amap["address"])), "").strip().lower()
        if "@" in mail:
            address_of[normalize_dn(dn)] = mail

    def matches(ndn: str, member_of: set[str], wanted: tuple[str, ...]) -> bool:
        for w in wanted:
            nw = normalize_dn(w)
            if nw in member_of or ndn in group_members.get(nw, ()) or ndn.endswith("," + nw):
                return True
        return False

    people = []
    for dn, attrs in rows:
        ndn = normalize_dn(dn)
        address = address_of.get(ndn)
        if address is None:
            continue
        member_of = {normalize_dn(g) for g in _values(attrs, amap["member_of"])}
        roles = [r for r, wanted in mapping.roles.items() if matches(ndn, member_of, wanted)]
        if mapping.roles and not roles:
            continue
        role = next((r for r in ROLES if r in roles), "staff")
        aliases = tuple(dict.fromkeys(
            a for a in (x.lower().removeprefix("smtp:") for x in _values(attrs, amap["aliases"])
                        if x.lower().startswith("smtp:") or ":" not in x)
            if "@" in a and a != address))
        privates: tuple[str, ...] = ()
        if role == "staff" and mapping.private:
            privates = tuple(dict.fromkeys(
                a for a in (x.strip().lower().removeprefix("smtp:")
                            for x in _values(attrs, mapping.private)) if "@" in a))
        manager = next(iter(_values(attrs, amap["manager"])), "")
        name = next(iter(_values(attrs, amap["name"]) or _values(attrs, "cn")), "")
        people.append(Person(
            address=address, role=role, name=name.strip(), private_addresses=privates,
            supervisor=address_of.get(normalize_dn(manager), "") if manager else "",
            language=_language(_values(attrs, amap["language"])),
            groups=tuple(g for g, wanted in mapping.groups.items()
                         if matches(ndn, member_of, wanted)),
            aliases=aliases))
    return Directory.from_people(people)


def _password(settings: LdapSettings) -> str:
    if not settings.bind_dn:
        return ""
    try:
        return Path(settings.bind_password_file).read_text(encoding="utf-8").strip("\r\n")
    except OSError as exc:
        raise LdapError("directory.ldap.bind_password_file",
                        f"cannot read {settings.bind_password_file}: {exc.strerror}") from None


def connect(settings: LdapSettings) -> Any:
    """An open, bound, read-only connection; ``LdapError`` naming the key to fix otherwise."""
    import ssl

    import ldap3
    from ldap3.core.exceptions import LDAPException

    # ldap3 does not verify certificates unless told: require it, against ca_file if given.
    tls = ldap3.Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=settings.ca_file or None,
                    version=ssl.PROTOCOL_TLS_CLIENT)
    password = _password(settings)
    # The URLs in order, first that answers (our own loop: ldap3's ServerPool sleeps 10 s
    # between rounds, which would hold a refresh or `config check` for nothing).
    failures = []
    for url in settings.urls:
        server = ldap3.Server(url, use_ssl=settings.tls == "ldaps", tls=tls,
                              get_info=ldap3.NONE, connect_timeout=settings.timeout)
        conn = ldap3.Connection(server, user=settings.bind_dn or None,
                                password=password or None, auto_bind=ldap3.AUTO_BIND_NONE,
                                read_only=True, auto_referrals=False,
                                receive_timeout=max(1, round(settings.timeout)),  # ldap3: int
                                raise_exceptions=False)
        try:
            conn.open()
            break
        except LDAPException as exc:
            failures.append(f"{url}: {_reason(exc)}")
    else:
        if all(f.endswith(UNTRUSTED) for f in failures):
            raise LdapError("directory.ldap.ca_file", "; ".join(failures) + UNTRUSTED_HINT)
        raise LdapError("directory.ldap.url", "cannot reach " + "; ".join(failures))
    where = url
    try:
        if settings.tls == "starttls" and not conn.start_tls():
            raise LdapError("directory.ldap.tls", f"StartTLS refused by {where}: "
                            + str(conn.result.get("description", "")))
        if not conn.bind():
            desc = str(conn.result.get("description", "")) if conn.result else ""
            raise LdapError("directory.ldap.bind_dn", f"the server refused the bind as "
                            f"{settings.bind_dn or '(anonymous)'}: {desc or 'no reason given'}"
                            " (check bind_dn and the password in bind_password_file)")
    except LDAPException as exc:
        _close(conn)
        reason = _reason(exc)
        if reason == UNTRUSTED:
            raise LdapError("directory.ldap.ca_file", f"{where}: {reason}{UNTRUSTED_HINT}"
                            ) from None
        raise LdapError("directory.ldap.tls" if settings.tls != "none"
                        else "directory.ldap.url", f"{where}: {reason}") from None
    except LdapError:
        _close(conn)
        raise
    return conn


def _close(conn: Any) -> None:
    """Unbind, if the connection still can (after a failed handshake its socket is gone)."""
    from ldap3.core.exceptions import LDAPException

    with contextlib.suppress(LDAPException, OSError):
        conn.unbind()


UNTRUSTED = "CERTIFICATE_VERIFY_FAILED"
UNTRUSTED_HINT = (" (the server's certificate is not signed by a CA we trust: name the "
                  "school's CA certificate in ca_file, and use the name the certificate is "
                  "for in url)")


def _reason(exc: Exception) -> str:
    """ldap3's exceptions say the socket error deep inside a list; keep it short."""
    text = str(exc)
    for marker in ("Connection refused", "timed out", "Name or service not known",
                   UNTRUSTED, "No route to host", "doesn't match"):
        if marker in text:
            return marker
    return f"{type(exc).__name__}: {text[:200]}"


def _search(conn: Any, base: str, flt: str, attributes: list[str],
            key: str) -> list[tuple[str, Mapping[str, Any]]]:
    import ldap3
    from ldap3.core.exceptions import LDAPException

    out: list[tuple[str, Mapping[str, Any]]] = []
    try:
        for item in conn.extend.standard.paged_search(
                base, flt, search_scope=ldap3.SUBTREE, attributes=attributes,
                paged_size=PAGE_SIZE, generator=True):
            if item.get("type") == "searchResEntry":
                out.append((item["dn"], item.get("raw_attributes") or {}))
    except LDAPException as exc:
        raise LdapError(key, f"{base!r}: {type(exc).__name__}: {exc}") from None
    result = conn.result or {}
    if result.get("result", 0) not in (0, 4):  # 4: sizeLimitExceeded still gave entries
        desc = result.get("description", "")
        if desc == "noSuchObject":
            raise LdapError(key, f"{base!r}: no such entry on the server")
        if desc == "filterError":
            raise LdapError("directory.ldap.filter", f"the server rejected {flt!r}")
        raise LdapError(key, f"{base!r}: search failed: {desc}")
    return out


def _group_members(conn: Any, dn: str, key: str) -> set[str]:
    """Member DNs of the entry ``dn``; empty for an OU; LdapError when it does not exist."""
    import ldap3

    ok = conn.search(dn, "(objectClass=*)", search_scope=ldap3.BASE,
                     attributes=list(GROUP_MEMBER_ATTRS))
    if not ok:
        desc = (conn.result or {}).get("description", "")
        if desc == "noSuchObject":
            raise LdapError(key, f"{dn!r}: no such group or OU on the server")
        raise LdapError(key, f"{dn!r}: cannot read: {desc}")
    members: set[str] = set()
    for item in conn.response or []:
        for attr in GROUP_MEMBER_ATTRS:
            members.update(normalize_dn(m) for m in _values(item.get("raw_attributes") or {},
                                                             attr))
    return members


def fetch(settings: LdapSettings, mapping: RoleMap) -> Directory:
    """Read the whole directory once; ``LdapError`` (naming a config key) on any failure."""
    conn = connect(settings)
    try:
        amap = settings.attribute_map
        attributes = sorted({a for a in amap.values() if a} | {"cn"}
                            | ({mapping.private} if mapping.private else set()))
        entries: list[tuple[str, Mapping[str, Any]]] = []
        for base in settings.base_dns:
            entries += _search(conn, base, settings.search_filter, attributes,
                               "directory.ldap.base_dns")
        group_members: dict[str, set[str]] = {}
        for table, name in ((mapping.roles, "roles"), (mapping.groups, "groups")):
            for label, dns in table.items():
                for dn in dns:
                    group_members[normalize_dn(dn)] = _group_members(
                        conn, dn, f"directory.{name}.{label}")
        return build(_decoded(entries), settings, mapping, group_members)
    finally:
        _close(conn)


def _decoded(entries: list[tuple[str, Mapping[str, Any]]]
             ) -> list[tuple[str, Mapping[str, Any]]]:
    """Raw attribute values (bytes, as sent: no schema needed) as text."""
    return [(dn, {k: [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
                      for v in vals] for k, vals in attrs.items()}) for dn, attrs in entries]


# -- staff sign-in to the web view with the school's own password ---------------------------

class LoginRefused(Exception):
    """The directory did not let this person in: ``why`` goes on record (the page says
    "unknown user or wrong password" for all of them: no probing who exists)."""

    def __init__(self, why: str) -> None:
        self.why = why
        super().__init__(why)


LOOPBACK_HOSTS = ("127.", "localhost", "[::1]", "::1")


def plain_text_problem(settings: LdapSettings) -> str:
    """Why a person's password may not be sent to these URLs, or "": a simple bind without
    TLS hands the password to anyone on the path, so ``tls = "none"`` is for loopback only."""
    if settings.tls != "none":
        return ""
    far = [u for u in settings.urls
           if not u.lower().removeprefix("ldap://").startswith(LOOPBACK_HOSTS)]
    if far:
        return (f"tls = \"none\" would send staff passwords in clear text to {far[0]}: use "
                "\"starttls\" or an ldaps:// URL (plain LDAP is for a loopback server only)")
    return ""


# Active Directory says why a bind failed in its diagnostic message ("... data 775, ...").
AD_BIND_DATA = {"52e": "wrong password", "525": "no such user", "530": "not allowed to sign "
                "in at this time", "531": "not allowed to sign in from here", "532": "password "
                "expired", "533": "account disabled", "701": "account expired",
                "773": "must change the password first", "775": "account locked"}


def bind_refusal(result: Mapping[str, Any]) -> str:
    """The audit record's words for a refused bind (an LDAP result: description, message)."""
    desc = str(result.get("description", "")) or "refused"
    found = re.search(r"\bdata ([0-9a-f]{3})\b", str(result.get("message", "")))
    if found and found.group(1) in AD_BIND_DATA:
        return AD_BIND_DATA[found.group(1)]
    return "wrong password" if desc == "invalidCredentials" else \
        f"the directory refused the bind: {desc}"


def _staff_entry(conn: Any, settings: LdapSettings, mapping: RoleMap,
                 address: str) -> tuple[str, Person]:
    """The one directory entry with ``address`` (found by the service bind within the
    configured filter) and its person, when the role is staff; else ``LoginRefused``."""
    from ldap3.utils.conv import escape_filter_chars

    amap = settings.attribute_map
    flt = f"(&{settings.search_filter}({amap['address']}={escape_filter_chars(address)}))"
    attributes = sorted({a for a in amap.values() if a} | {"cn"})
    entries: list[tuple[str, Mapping[str, Any]]] = []
    for base in settings.base_dns:
        entries += _search(conn, base, flt, attributes, "directory.ldap.base_dns")
    entries = [(dn, attrs) for dn, attrs in _decoded(entries)
               if address in (v.strip().lower() for v in _values(attrs, amap["address"]))]
    if not entries:
        raise LoginRefused("not in the directory (no entry with this address)")
    if len({normalize_dn(dn) for dn, _ in entries}) > 1:
        raise LoginRefused("several directory entries have this address")
    # The role as the gateway's own directory read decides it: the same OUs and groups.
    group_members = {normalize_dn(g): _group_members(conn, g, f"directory.roles.{label}")
                     for label, dns in mapping.roles.items() for g in dns}
    people = build(entries[:1], settings, RoleMap(roles=mapping.roles), group_members)
    person = next(iter(people.people.values()), None)  # the one entry, or none
    if person is None:
        raise LoginRefused("in none of the roles of [directory] roles")
    if person.role != "staff":
        raise LoginRefused(f"role {person.role} in the directory, not staff")
    return entries[0][0], person


def _checked(address: str) -> str:
    address = address.strip().lower()
    if "@" not in address or any(c in address for c in "\0\r\n"):
        raise LoginRefused("not an address")
    return address


def login(settings: LdapSettings, mapping: RoleMap, address: str, password: str) -> Person:
    """Check a person's own directory password; their entry as a ``Person`` when they may
    sign in. The entry is found by the service bind (mail attribute = ``address``, within
    the configured filter, so disabled AD accounts are not found), its role must be staff, and
    then its DN binds with ``password`` over the same TLS as the directory read.

    ``LoginRefused``: the person's attempt failed (why, for the record). ``LdapError``: the
    directory could not answer (unreachable, TLS, service account): nobody's fault at the
    keyboard. An empty password never reaches the server: a simple bind with a DN and no
    password is an "unauthenticated bind" that many servers answer with success."""
    import ldap3
    from ldap3.core.exceptions import LDAPException

    if not password:
        raise LoginRefused("empty password")
    address = _checked(address)
    problem = plain_text_problem(settings)
    if problem:
        raise LdapError("directory.ldap.tls", problem)
    conn = connect(settings)
    try:
        dn, person = _staff_entry(conn, settings, mapping, address)
        try:
            ok = conn.rebind(user=dn, password=password, authentication=ldap3.SIMPLE)
        except LDAPException as exc:  # a bind the server turns down is a result, not this
            raise LdapError("directory.ldap.url", f"bind as the person: {_reason(exc)}"
                            ) from None
        if not ok:
            raise LoginRefused(bind_refusal(conn.result or {}))
        return person
    finally:
        _close(conn)


def still_staff(settings: LdapSettings, mapping: RoleMap, address: str) -> Person:
    """A signed-in teacher is still staff in the directory: found by the service bind within
    the filter, with the staff role (no password: she proved it at sign-in). Asked before a
    release, so an account the school disabled or moved out of staff releases nothing for
    the rest of its session. ``LoginRefused`` / ``LdapError`` as for ``login``."""
    address = _checked(address)
    conn = connect(settings)
    try:
        return _staff_entry(conn, settings, mapping, address)[1]
    finally:
        _close(conn)
